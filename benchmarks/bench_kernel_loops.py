"""The fused kernel's chunk loops alone, in cache: what the arithmetic costs.

    python benchmarks/bench_kernel_loops.py [--kernel-dir DIR]

Compiles benchmarks/kernel_loops.cc against gluon_focal/kernel/ with the
library's optimisation flags (one binary; each instruction set's loops run
only where the CPU has it) and prints ns per element of one 8192-element
chunk, forward and backward, best of 7, at one thread.  Next to
bench_loss.py's floor row it shows how much of the fused op's time is
computation: a chunk in L1/L2 moves nothing to or from memory.
``--kernel-dir`` compiles another checkout's kernel sources (an A/B of the
loops on one machine).
"""
import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from gluon_focal.kernel import build  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--kernel-dir', default=os.path.join(ROOT, 'gluon_focal', 'kernel'))
    kernel_dir = os.path.abspath(ap.parse_args().kernel_dir)
    mx_include = os.path.join(build.find_mxnet_dir(), 'include')
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, 'kernel_loops')
        cmd = build.find_compiler().split() + [
            '-std=c++14', '-O3', '-ffp-contract=fast', '-fno-math-errno',
            '-mavx512f', '-mavx512bw', '-mavx512dq', '-mavx512vl', '-mavx2', '-mfma', '-mf16c',
            '-Wno-uninitialized', '-Wno-maybe-uninitialized', '-I' + kernel_dir, '-I' + mx_include,
            os.path.join(HERE, 'kernel_loops.cc'), '-o', exe]
        subprocess.check_call(cmd)
        subprocess.check_call([exe])


if __name__ == '__main__':
    main()
