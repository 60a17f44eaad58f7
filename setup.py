"""gluon-focal: a sigmoid focal loss for Apache MXNet Gluon."""
from setuptools import find_packages, setup

setup(
    name='gluon-focal',
    version='0.1.0',
    description='Sigmoid focal loss for MXNet Gluon with explicit label modes and a fused kernel',
    packages=find_packages(include=['gluon_focal', 'gluon_focal.*']),
    python_requires='>=3.8',
    install_requires=[
        'mxnet==1.9.1',
        'gluoncv==0.10.5.post0',
        'numpy<1.24',
        'matplotlib',
    ],
    extras_require={'test': ['pytest', 'hypothesis', 'psutil']},
)
