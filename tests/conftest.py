import os
import sys
import warnings

# tests import the numpy reference as a plain module
sys.path.insert(0, os.path.dirname(__file__))
warnings.filterwarnings('ignore', category=DeprecationWarning)
