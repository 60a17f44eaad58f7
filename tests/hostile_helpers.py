"""Small shared fixtures for the "nothing breaks" suites (test_properties,
test_hostile_inputs, test_extreme_and_soak, test_crash_safety).

The reference helpers ``make_case``/``run_loss``/``assert_close`` live in
test_focal_loss.py and are imported from there, not duplicated.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np

import gluon_focal

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Both implementations, always listed: a missing fused kernel must FAIL its
# cases (require_impl), never skip them.
IMPLS = ['composite', 'fused']


def require_impl(impl):
    """Fail (not skip) when ``impl`` cannot run in this process."""
    if impl == 'fused':
        assert gluon_focal.kernel.available(), (
            "impl='fused' is part of the contract but the fused kernel is not loaded: %s"
            % gluon_focal.kernel.unavailable_reason())


def rss_bytes():
    """Resident set size of this process, from /proc/self/statm (no psutil)."""
    with open('/proc/self/statm') as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf('SC_PAGE_SIZE')


def subprocess_env():
    """The current environment with the repository importable."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [REPO] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
    env.setdefault('OMP_NUM_THREADS', '1')
    env.setdefault('MXNET_CPU_WORKER_NTHREADS', '1')
    return env


def run_python(code, *args, timeout=120, cwd=None):
    """Run ``code`` in a fresh interpreter; a segfault shows up as a negative
    returncode instead of taking the test run down."""
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=timeout, env=subprocess_env(),
                          cwd=cwd or REPO)


def describe_returncode(returncode):
    if returncode < 0:
        import signal
        try:
            return 'killed by %s' % signal.Signals(-returncode).name
        except ValueError:
            return 'killed by signal %d' % -returncode
    return 'exit status %d' % returncode


def not_softmax_like(pred, axis, binary=False):
    """Random probabilities can sum to ~1 along the class axis by chance
    (FocalLoss then refuses them as softmax outputs); nudge them off it.

    With binary labels FocalLoss currently checks along axis 0, the batch
    axis (a bug, see the 'binary-probabilities-summing-to-1-over-batch' row
    of test_hostile_inputs), so that axis is nudged off as well."""
    for ax in ((axis, 0) if binary else (axis,)):
        if pred.ndim and pred.shape[ax] >= 2 and np.all(np.abs(pred.sum(axis=ax) - 1) < 5e-3):
            pred = pred * 0.9
    return pred
