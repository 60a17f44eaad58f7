"""gluon-focal: a sigmoid focal loss for Apache MXNet Gluon."""
import importlib.util
import os
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

_HERE = os.path.dirname(os.path.abspath(__file__))
_KERNEL_LIB = 'gluon_focal.kernel.libgluon_focal_op'
_ONNX = ['onnx>=1.18,<1.19', 'onnxruntime']  # gluon_focal.deploy


def _kernel_builder():
    """gluon_focal/kernel/build.py, imported by path (the package itself
    imports mxnet, which the build must not need)."""
    path = os.path.join(_HERE, 'gluon_focal', 'kernel', 'build.py')
    spec = importlib.util.spec_from_file_location('_gluon_focal_kernel_build', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class BuildFusedKernel(build_ext):
    """Compile the fused focal-loss operator with g++ against the installed
    mxnet's lib_api.h.  Works for `pip install .` (into the build dir) and
    `pip install -e .` (in place).  A failed compile never fails the install:
    gluon_focal then falls back to the composite graph and says why."""

    def get_ext_filename(self, fullname):
        if fullname == _KERNEL_LIB:
            return os.path.join(*fullname.split('.')) + '.so'   # fixed name, no ABI tag
        return super().get_ext_filename(fullname)

    def build_extension(self, ext):
        if ext.name != _KERNEL_LIB:
            return super().build_extension(ext)
        out_dir = os.path.dirname(os.path.abspath(self.get_ext_fullpath(ext.name)))
        try:
            path = _kernel_builder().build(out_dir, verbose=True,
                                           log=lambda m: print(m, file=sys.stderr))
            print('gluon_focal: built fused kernel %s' % path, file=sys.stderr)
        except Exception as err:  # noqa: BLE001 - install must still succeed
            print('gluon_focal: WARNING: the fused focal-loss kernel was not built (%s). '
                  'FocalLoss will use the composite MXNet graph. Rebuild later with '
                  '`python -m gluon_focal.kernel.build`.' % err, file=sys.stderr)

    def get_outputs(self):
        return [p for p in super().get_outputs() if os.path.exists(p)]


setup(
    name='gluon-focal',
    version='0.1.0',
    description='Sigmoid focal loss for MXNet Gluon with explicit label modes and a fused kernel',
    packages=find_packages(include=['gluon_focal', 'gluon_focal.*']),
    package_data={'gluon_focal.kernel': ['*.cc', '*.h']},
    ext_modules=[Extension(_KERNEL_LIB, sources=[])],
    cmdclass={'build_ext': BuildFusedKernel},
    zip_safe=False,
    python_requires='>=3.8',
    install_requires=[
        'mxnet==1.9.1',
        'gluoncv==0.10.5.post0',
        'numpy<1.24',
        'matplotlib',
        'pycocotools',  # COCO evaluation (GluonCV's COCODetectionMetric)
    ],
    extras_require={
        # MXNet 1.9.1's ONNX exporter imports onnx.mapping, which onnx 1.19 removed
        'onnx': _ONNX,
        'test': ['pytest', 'hypothesis', 'psutil'] + _ONNX,
    },
)
