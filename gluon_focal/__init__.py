"""gluon-focal: a sigmoid focal loss for Apache MXNet Gluon, done right."""
import warnings

from . import kernel

try:
    kernel.load()
except Exception as err:  # any failure leaves the portable composite graph
    warnings.warn('gluon_focal: fused focal-loss kernel unavailable (%s); FocalLoss uses the '
                  'composite MXNet graph, which gives the same numbers more slowly.' % err,
                  stacklevel=2)

from .init import PriorProbability  # noqa: E402
from .validation import resolve_label_mode  # noqa: E402
from .loss import FocalLoss  # noqa: E402
from . import nn  # noqa: E402
from . import optim  # noqa: E402  (registers the 'multiadam' optimizer)

__version__ = '0.1.0'
__all__ = ['FocalLoss', 'PriorProbability', 'resolve_label_mode', 'kernel', 'nn', 'optim']
