"""Compile the fused focal-loss operator library.

Used by setup.py (``build_ext``, for ``pip install .`` and ``pip install -e .``)
and for in-place development rebuilds::

    python -m gluon_focal.kernel.build            # rebuild next to the sources
    python -m gluon_focal.kernel.build --out DIR  # build elsewhere

Needs a C++11 compiler (``$CXX`` or g++/c++/clang++) and the headers shipped
in the installed mxnet wheel (``mxnet/include/mxnet/lib_api.h`` and
``mxnet/src/lib_api.cc``).  The AVX2/FMA/F16C kernels are compiled through
target pragmas and picked at run time, so the library is portable across
x86-64 CPUs; no ``-march=native``.  Threads come from a small std::thread work
pool in the library (``-pthread``); ``-fopenmp`` is passed when the compiler
supports it (only for ``omp_get_num_procs``), else the library is built
without it, still multi-threaded.

This module must not import mxnet or the package (setup.py imports it by path).
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
LIB_NAME = 'libgluon_focal_op.so'
SOURCES = ['focal_loss_op.cc']
HEADERS = ['focal_math.h', 'focal_elem.inc', 'focal_cpu.inc', 'focal_driver.inc', 'simd_avx2.h',
           'focal_fast_avx2.inc']


class BuildError(RuntimeError):
    """The operator library could not be compiled."""


def _has_lib_api(mx_dir):
    return (os.path.isfile(os.path.join(mx_dir, 'include', 'mxnet', 'lib_api.h'))
            and os.path.isfile(os.path.join(mx_dir, 'src', 'lib_api.cc')))


def find_mxnet_dir():
    """Directory of the installed mxnet package that ships lib_api.h/.cc.

    Looks at ``GLUON_FOCAL_MXNET_DIR`` (build-time override), the importable
    ``mxnet`` spec, and the interpreter's site-packages (which stay reachable
    from pip's isolated build environment through sysconfig).
    """
    cands = []
    env = os.environ.get('GLUON_FOCAL_MXNET_DIR')
    if env:
        cands.append(env)
    try:
        import importlib.util
        spec = importlib.util.find_spec('mxnet')
        if spec is not None and spec.submodule_search_locations:
            cands.extend(spec.submodule_search_locations)
    except Exception:  # noqa: BLE001
        pass
    for key in ('purelib', 'platlib'):
        try:
            cands.append(os.path.join(sysconfig.get_paths()[key], 'mxnet'))
        except Exception:  # noqa: BLE001
            pass
    for p in sys.path:
        if p:
            cands.append(os.path.join(p, 'mxnet'))
    for base in {sys.prefix, getattr(sys, 'base_prefix', sys.prefix)}:
        cands.extend(glob.glob(os.path.join(base, 'lib', 'python3*', 'site-packages', 'mxnet')))
    seen = set()
    for c in cands:
        c = os.path.abspath(c)
        if c in seen:
            continue
        seen.add(c)
        if _has_lib_api(c):
            return c
    raise BuildError('could not find an installed mxnet with include/mxnet/lib_api.h and '
                     'src/lib_api.cc (install mxnet==1.9.1 first, or set '
                     'GLUON_FOCAL_MXNET_DIR to its package directory)')


def find_compiler():
    for c in [os.environ.get('CXX'), 'g++', 'c++', 'clang++']:
        if c and shutil.which(c.split()[0]):
            return c
    raise BuildError('no C++ compiler found (set CXX or install g++)')


def compile_command(cxx, mx_dir, out_path, openmp=True):
    cmd = cxx.split() + [
        '-std=c++14', '-O3', '-fPIC', '-shared', '-ffp-contract=fast',
        '-fno-math-errno', '-pthread', '-Wall', '-Wno-unused-function',
        '-I' + os.path.join(mx_dir, 'include'), '-I' + HERE,
    ]
    if openmp:
        cmd.append('-fopenmp')
    cmd += [os.path.join(HERE, s) for s in SOURCES]
    cmd += [os.path.join(mx_dir, 'src', 'lib_api.cc'), '-o', out_path]
    return cmd


def build(out_dir=None, verbose=True, log=None):
    """Compile the library into ``out_dir`` (default: next to this file).

    Returns the path of the library.  Raises :class:`BuildError` with the
    compiler output when compilation fails.  The library is written to a
    temporary file first and renamed, so a concurrent loader never sees a
    half-written file.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out_dir = os.path.abspath(out_dir or HERE)
    os.makedirs(out_dir, exist_ok=True)
    mx_dir = find_mxnet_dir()
    cxx = find_compiler()
    target = os.path.join(out_dir, LIB_NAME)
    fd, tmp = tempfile.mkstemp(prefix='.' + LIB_NAME, suffix='.so', dir=out_dir)
    os.close(fd)
    errors = []
    try:
        for openmp in (True, False):
            cmd = compile_command(cxx, mx_dir, tmp, openmp=openmp)
            if verbose:
                log('gluon_focal: ' + ' '.join(cmd))
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  universal_newlines=True)
            if proc.returncode == 0:
                if not openmp:
                    log('gluon_focal: built without OpenMP (threads still come from the std::thread pool)')
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o755 & ~umask)
                os.replace(tmp, target)
                return target
            errors.append(proc.stdout[-4000:])
        raise BuildError('compiling the fused focal-loss operator failed:\n' + '\n'.join(errors))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default=None, help='output directory (default: package dir)')
    ap.add_argument('-q', '--quiet', action='store_true')
    args = ap.parse_args(argv)
    try:
        path = build(args.out, verbose=not args.quiet)
    except BuildError as err:
        print(str(err), file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
