"""Compile the fused focal-loss operator library.

Used by setup.py (``build_ext``, for ``pip install .`` and ``pip install -e .``)
and for in-place development rebuilds::

    python -m gluon_focal.kernel.build            # rebuild next to the sources
    python -m gluon_focal.kernel.build --out DIR  # build elsewhere

Needs a C++14 compiler (``$CXX`` or g++/c++/clang++) and the headers shipped
in the installed mxnet wheel (``mxnet/include/mxnet/lib_api.h`` and
``mxnet/src/lib_api.cc``).  Each source is compiled on its own; the per-ISA
loops (``loops_avx2.cc``, ``loops_avx512.cc``) get their instruction-set flags
and are called only on CPUs that have them, so the library runs on any x86-64
CPU (no ``-march=native``).  Threads come from the library's own pool.

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
COMMON_SOURCES = ['operator.cc', 'attributes.cc', 'plan.cc', 'compute.cc', 'thread_pool.cc',
                  'errors.cc', 'simd_dispatch.cc', 'loops_scalar.cc', 'group_norm.cc',
                  'multi_adam.cc']
# extra flags of some common sources: multi_adam.cc rounds as MXNet's adam_update
# (no fused multiply-add on any ISA)
SOURCE_FLAGS = {'multi_adam.cc': ['-ffp-contract=off']}
# per-ISA loops: source -> flags (x86 only)
ISA_SOURCES = {
    'loops_avx2.cc': ['-mavx2', '-mfma', '-mf16c'],
    # GCC 12's AVX-512 intrinsics trip -Wmaybe-uninitialized on their own internals
    'loops_avx512.cc': ['-mavx512f', '-mavx512bw', '-mavx512dq', '-mavx512vl', '-mavx2', '-mfma',
                        '-mf16c', '-Wno-uninitialized', '-Wno-maybe-uninitialized'],
}


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


def _is_x86():
    import platform
    return platform.machine().lower() in ('x86_64', 'amd64', 'i386', 'i686')


def compile_commands(cxx, mx_dir, obj_dir):
    """(object path, command) for every source, lib_api.cc included."""
    base = cxx.split() + ['-std=c++14', '-O3', '-fPIC', '-ffp-contract=fast', '-fno-math-errno',
                          '-pthread', '-Wall', '-I' + os.path.join(mx_dir, 'include'), '-I' + HERE]
    sources = [(os.path.join(HERE, s), SOURCE_FLAGS.get(s, [])) for s in COMMON_SOURCES]
    if _is_x86():
        sources += [(os.path.join(HERE, s), flags) for s, flags in sorted(ISA_SOURCES.items())]
    sources.append((os.path.join(mx_dir, 'src', 'lib_api.cc'), []))
    jobs = []
    for src, flags in sources:
        obj = os.path.join(obj_dir, os.path.basename(src) + '.o')
        jobs.append((obj, base + flags + ['-c', src, '-o', obj]))
    return jobs


def _run_parallel(jobs, log, verbose):
    """Run the compile commands, at most os.cpu_count() at a time; returns the
    output of the failed ones."""
    errors, running, pending = [], [], list(jobs)
    width = max(1, os.cpu_count() or 1)
    while pending or running:
        while pending and len(running) < width:
            cmd = pending.pop(0)
            if verbose:
                log('gluon_focal: ' + ' '.join(cmd))
            running.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                             universal_newlines=True))
        proc = running.pop(0)
        out, _ = proc.communicate()
        if proc.returncode != 0:
            errors.append(out[-4000:])
    return errors


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
    with tempfile.TemporaryDirectory(prefix='gluon_focal_build_') as obj_dir:
        jobs = compile_commands(cxx, mx_dir, obj_dir)
        errors = _run_parallel([cmd for _, cmd in jobs], log, verbose)
        if errors:
            raise BuildError('compiling the fused focal-loss operator failed:\n' + '\n'.join(errors))
        tmp = os.path.join(obj_dir, LIB_NAME)
        link = cxx.split() + ['-shared', '-pthread'] + [obj for obj, _ in jobs] + ['-o', tmp]
        if verbose:
            log('gluon_focal: ' + ' '.join(link))
        proc = subprocess.run(link, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True)
        if proc.returncode != 0:
            raise BuildError('linking the fused focal-loss operator failed:\n' + proc.stdout[-4000:])
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o755 & ~umask)
        staged = os.path.join(out_dir, '.' + LIB_NAME + '.%d' % os.getpid())
        shutil.copyfile(tmp, staged)
        os.chmod(staged, 0o755 & ~umask)
        os.replace(staged, target)   # atomic: a concurrent loader sees the old or the new file
    return target


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
