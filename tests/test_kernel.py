"""Tests of the fused ``gluon_focal_loss`` operator against tests/reference.py.

The kernel must be built (setup.py / ``python -m gluon_focal.kernel.build``);
if it is not, these tests FAIL rather than skip.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mxnet as mx

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import reference as R  # noqa: E402

from gluon_focal import kernel  # noqa: E402


def test_kernel_is_built_and_loads():
    assert kernel.available(), kernel.unavailable_reason()
    assert kernel.unavailable_reason() is None
    assert hasattr(mx.nd, kernel.OP_NAME) and hasattr(mx.sym, kernel.OP_NAME)
    assert kernel.load() is True          # idempotent
    assert os.path.isabs(kernel.library_path())
    assert kernel.get_num_threads() >= 1


TOL = {'float64': (1e-10, 1e-12), 'float32': (1e-5, 1e-6), 'float16': (2e-2, 2e-2)}


def _close(got, ref, dtype, what):
    rtol, arel = TOL[dtype]
    got = np.asarray(got, dtype=np.float64)
    scale = max(np.abs(ref).max(), 1e-30)
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=arel * scale, err_msg=what)


def run_op(pred, label, dtype='float32', label_dtype='float32', head_grad=None, **attrs):
    x = mx.nd.array(pred, dtype=dtype)
    lab = mx.nd.array(label, dtype=label_dtype)
    x.attach_grad()
    with mx.autograd.record():
        out = kernel.fused_focal_loss(mx.nd, x, lab, grad_add=False, **attrs)
    hg = np.ones(out.shape) if head_grad is None else head_grad
    out.backward(mx.nd.array(hg, dtype=dtype))
    return out.asnumpy(), x.grad.asnumpy(), x.asnumpy().astype(np.float64)


def check(pred, label, mode, dtype='float32', label_dtype='float32', ref_label=None, seed=0,
          **kw):
    rng = np.random.RandomState(seed)
    ref_kw = dict(kw)
    scale = ref_kw.pop('scale', 1.0)
    ref_kw.pop('validate', None)
    norm = kw.get('normalization', 'mean')
    # one forward to learn the output shape, then use a random head gradient
    out_shape = pred.shape if norm == 'none' else (pred.shape[kw.get('batch_axis', 0)],)
    hg = rng.uniform(0.5, 1.5, size=out_shape)
    out, grad, xq = run_op(pred, label, dtype, label_dtype, head_grad=hg, mode=mode, **kw)
    rl, rg = R.focal_loss(xq, label if ref_label is None else ref_label, label_mode=mode,
                          head_grad=hg, weight=scale, **ref_kw)
    assert out.shape == rl.shape
    what = '%s %s %s' % (mode, dtype, kw)
    _close(out, rl, dtype, 'loss ' + what)
    # the reference derives the gradient from float64 pred; fp16 grads are
    # rounded to fp16 on output
    _close(grad, rg, dtype, 'grad ' + what)
    assert np.isfinite(out).all() and np.isfinite(grad).all()


RNG = np.random.RandomState(1234)
LOGITS_SPARSE = RNG.randn(3, 40, 7) * 3
LABELS_SPARSE = RNG.randint(-1, 7, size=(3, 40)).astype(np.float64)   # -1: ignore / bg
NORMS = ['none', 'sum', 'mean', 'valid', 'positive']
GAMMAS = [0.0, 0.5, 2.0]
ALPHAS = [None, 0.25, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]]


@pytest.mark.parametrize('norm', NORMS)
@pytest.mark.parametrize('gamma', GAMMAS)
@pytest.mark.parametrize('alpha_i', range(3))
def test_sparse_last_axis(norm, gamma, alpha_i):
    lab = LABELS_SPARSE.copy()
    lab[0, :5] = 3            # background label 3 appears
    check(LOGITS_SPARSE, lab, 'sparse', axis=-1, normalization=norm, gamma=gamma,
          alpha=ALPHAS[alpha_i], ignore_label=-1, background_label=3)


@pytest.mark.parametrize('norm', NORMS)
@pytest.mark.parametrize('from_sigmoid', [False, True])
def test_sparse_axis1_nchw(norm, from_sigmoid):
    rng = np.random.RandomState(2)
    pred = rng.randn(2, 5, 9, 70) * 3           # inner = 630 -> row layout
    if from_sigmoid:
        pred = rng.uniform(-0.05, 1.05, size=pred.shape)
    lab = rng.randint(0, 5, size=(2, 9, 70)).astype(np.float64)
    lab[0, 0, :10] = 255
    # probabilities outside [0, 1] exercise the clip, so the value checks are off
    check(pred, lab, 'sparse', axis=1, normalization=norm, gamma=2.0,
          alpha=[0.9, 0.1, 0.25, 0.5, 0.75], ignore_label=255, from_sigmoid=from_sigmoid,
          validate=not from_sigmoid)
    # small inner (pattern layout with gathers)
    pred2 = rng.randn(2, 5, 3, 4) * 2
    lab2 = rng.randint(0, 5, size=(2, 3, 4))
    check(pred2, lab2, 'sparse', axis=1, normalization=norm, gamma=0.5, alpha=0.25,
          from_sigmoid=False, label_dtype='int32')


@pytest.mark.parametrize('norm', NORMS)
@pytest.mark.parametrize('kind', ['onehot', 'multilabel', 'soft'])
def test_dense(norm, kind):
    rng = np.random.RandomState(3)
    pred = rng.randn(4, 30, 6) * 3
    if kind == 'onehot':
        lab = np.eye(6)[rng.randint(0, 6, size=(4, 30))]
    elif kind == 'multilabel':
        lab = (rng.rand(4, 30, 6) < 0.3).astype(np.float64)
    else:
        lab = rng.rand(4, 30, 6)
    lab[1, 2, :] = -1
    for gamma, alpha in [(2.0, 0.25), (0.5, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), (0.0, None)]:
        check(pred, lab, 'dense', axis=-1, normalization=norm, gamma=gamma, alpha=alpha,
              ignore_label=-1)
        check(rng.uniform(-0.1, 1.1, size=pred.shape), lab, 'dense', axis=-1,
              normalization=norm, gamma=gamma, alpha=alpha, ignore_label=-1,
              from_sigmoid=True, eps=1e-6, validate=False)   # exercises the clip


@pytest.mark.parametrize('norm', NORMS)
def test_binary_masks(norm):
    rng = np.random.RandomState(4)
    pred = rng.randn(2, 1, 20, 24) * 4
    mask = (rng.rand(2, 20, 24) < 0.2).astype(np.float64)
    mask[0, 0, :4] = 255
    # N x H x W mask for N x 1 x H x W pred, and the N x 1 x H x W mask
    check(pred, mask, 'dense', axis=1, normalization=norm, gamma=2.0, alpha=0.25,
          ignore_label=255, label_dtype='uint8')
    check(pred, mask[:, None], 'dense', axis=1, normalization=norm, gamma=2.0, alpha=0.25,
          ignore_label=255)


@pytest.mark.parametrize('dtype', ['float16', 'float64'])
@pytest.mark.parametrize('mode', ['sparse', 'dense'])
def test_dtypes(dtype, mode):
    rng = np.random.RandomState(5)
    pred = rng.randn(3, 50, 5) * 2
    if mode == 'sparse':
        lab = rng.randint(0, 5, size=(3, 50))
    else:
        lab = (rng.rand(3, 50, 5) < 0.3).astype(np.float64)
    for norm in ['none', 'mean', 'positive']:
        for ldt in ['float16', 'int64', 'int8', 'float64']:
            check(pred, lab, mode, dtype=dtype, label_dtype=ldt, normalization=norm, gamma=2.0,
                  alpha=0.25, axis=-1, scale=0.5)


@pytest.mark.parametrize('gamma', [1.0, 3.0, 1.5])
def test_fast_logit_path_gammas_tails_and_mixed_targets(gamma):
    """The AVX2 logit kernel (shared exp(-|x|), sign-flip form for 0/1
    targets, per-vector fallback for soft targets) against the reference:
    integer and non-integer gamma, lengths that are no multiple of 8, logits
    from -30 to 30 (log1p of tiny exp), soft targets mixed into vectors of
    hard ones, both chunk layouts, elementwise and reduced outputs."""
    rng = np.random.RandomState(11)
    pred = rng.uniform(-30, 30, size=(3, 37, 7))
    pred[0, 0] = [0.0, -0.0, 1e-4, -1e-4, 17.0, -17.0, 88.0]
    lab = rng.randint(0, 7, size=(3, 37)).astype(np.float64)
    lab[1, :3] = -1
    dense = np.eye(7)[rng.randint(0, 7, size=(3, 37))]
    dense[2, 5, 3] = 0.3                       # one soft target among hard ones
    dense[0, 1, :] = -1
    pred4 = rng.randn(2, 3, 9, 11) * 6          # inner = 99: row layout
    lab4 = rng.randint(0, 3, size=(2, 9, 11))
    for norm in ['none', 'mean']:
        check(pred, lab, 'sparse', axis=-1, normalization=norm, gamma=gamma, alpha=0.25,
              ignore_label=-1)
        check(pred, dense, 'dense', axis=-1, normalization=norm, gamma=gamma, alpha=0.25,
              ignore_label=-1)
        check(pred4, lab4, 'sparse', axis=1, normalization=norm, gamma=gamma, alpha=None,
              background_label=2)


def _simd_battery():
    """(pred, label, mode, attrs) covering every loop: sparse labels in the
    pattern layout (codes) and the row layout, binary masks, dense soft
    targets, probabilities, every gamma kind, per-class alpha, elementwise and
    reduced outputs, lengths that are no multiple of 8 or 16 (tails)."""
    rng = np.random.RandomState(21)
    pattern = rng.uniform(-30, 30, size=(3, 37, 7))
    pattern[0, 0] = [0.0, -0.0, 1e-4, -1e-4, 17.0, -17.0, 88.0]
    pattern_labels = rng.randint(-1, 7, size=(3, 37)).astype(np.float64)
    rows = rng.randn(2, 3, 5, 29) * 6                    # inner = 145: row layout
    row_labels = rng.randint(0, 3, size=(2, 5, 29)).astype(np.float64)
    mask = (rng.rand(2, 1, 9, 13) < 0.3).astype(np.float64)
    mask[0, 0, 0, :3] = 255
    soft = rng.rand(3, 11, 5)
    soft[1, 2, :] = -1
    probs = rng.uniform(0.0, 1.0, size=(3, 11, 5))
    cases = []
    for gamma in (0.0, 1.0, 2.0, 1.5):
        for norm in ('none', 'mean', 'positive'):
            cases += [
                (pattern, pattern_labels, 'sparse', dict(axis=-1, ignore_label=-1, gamma=gamma,
                                                         normalization=norm, alpha=0.25)),
                (rows, row_labels, 'sparse', dict(axis=1, background_label=2, gamma=gamma,
                                                  normalization=norm, alpha=[0.2, 0.5, 0.7])),
                (rng.randn(2, 1, 9, 13) * 4, mask, 'binary', dict(axis=1, ignore_label=255,
                                                                  gamma=gamma, normalization=norm)),
                (rng.randn(3, 11, 5) * 3, soft, 'dense', dict(axis=-1, ignore_label=-1, gamma=gamma,
                                                              normalization=norm,
                                                              alpha=[0.1, 0.3, 0.5, 0.7, 0.9])),
                (probs, soft, 'dense', dict(axis=-1, ignore_label=-1, gamma=gamma,
                                            normalization=norm, from_sigmoid=True, eps=1e-6)),
            ]
    return cases


@pytest.mark.parametrize('level', ['avx2', 'avx512'])
def test_simd_loops_match_scalar_and_reference(level):
    """Each instruction set's loops (chosen at run time) against the scalar
    loops (within 1e-6 relative) and the numpy reference."""
    if kernel.SIMD_LEVELS.index(kernel.cpu_simd_level()) < kernel.SIMD_LEVELS.index(level):
        pytest.skip('this CPU has no %s (it has %s)' % (level, kernel.cpu_simd_level()))
    try:
        for i, (pred, label, mode, attrs) in enumerate(_simd_battery()):
            assert kernel._limit_simd('scalar') == 'scalar'
            scalar = run_op(pred, label, mode=mode, **attrs)[:2]
            assert kernel._limit_simd(level) == level
            check(pred, label, mode, seed=i, **attrs)
            simd = run_op(pred, label, mode=mode, **attrs)[:2]
            for got, want, what in zip(simd, scalar, ('loss', 'grad')):
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max(),
                                           err_msg='%s %s %s %s' % (level, what, mode, attrs))
    finally:
        kernel._limit_simd('avx512')
    assert kernel.simd_level() == kernel.cpu_simd_level()


def test_scale_and_batch_axis():
    rng = np.random.RandomState(6)
    pred = rng.randn(6, 4, 3) * 2          # batch axis 1 precedes class axis 2
    lab = rng.randint(0, 3, size=(6, 4))
    for norm in ['sum', 'valid', 'mean']:
        check(pred, lab, 'sparse', axis=2, batch_axis=1, normalization=norm, scale=2.5)
    # 1-D binary pred: the class axis coincides with the batch axis
    check(rng.randn(50), (rng.rand(50) < 0.5) * 1.0, 'dense', axis=-1, normalization='sum')


def test_extreme_logits_finite():
    for dtype, big in [('float32', 1e4), ('float16', 60000.0)]:
        pred = np.array([[-big, -100, -20, 0, 20, 100, big]] * 2)
        for mode, lab in [('dense', np.tile([0., 1., 0., 1., 0., 1., 0.], (2, 1))),
                          ('sparse', np.array([0, 6]))]:
            for gamma in [0.0, 0.5, 2.0]:
                for norm in ['none', 'mean']:
                    out, grad, _ = run_op(pred, lab, dtype, mode=mode, gamma=gamma,
                                          normalization=norm, alpha=0.25)
                    assert np.isfinite(out).all() and np.isfinite(grad).all(), (dtype, mode, gamma)
        check(np.array([[-1e4, -80., 80., 1e4]]), np.array([[1., 0., 1., 0.]]), 'dense',
              normalization='none', gamma=2.0)


def test_threads_agree_and_scalar_path():
    rng = np.random.RandomState(7)
    pred = rng.randn(4, 9000, 9).astype(np.float32)       # big enough to thread
    lab = rng.randint(0, 9, size=(4, 9000))
    res = []
    old = kernel.get_num_threads()
    try:
        for nt in (1, 2, 1):
            kernel.set_num_threads(nt)
            res.append(run_op(pred, lab, mode='sparse', normalization='positive')[:2])
        kernel._limit_simd("scalar")
        scalar = run_op(pred, lab, mode='sparse', normalization='positive')[:2]
    finally:
        kernel._limit_simd("avx512")
        kernel.set_num_threads(0)
    assert kernel.get_num_threads() == kernel.default_num_threads()
    for a, b in zip(res[0], res[1]):
        assert np.array_equal(a, b)            # bit-identical across thread counts
    for a, b in zip(res[0], res[2]):
        assert np.array_equal(a, b)
    for a, b in zip(res[0], scalar):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-12)
    kernel.set_num_threads(old)


def test_grad_req_add():
    rng = np.random.RandomState(8)
    pred = mx.nd.array(rng.randn(2, 30, 5))
    lab = mx.nd.array(rng.randint(0, 5, size=(2, 30)))
    kw = dict(mode='sparse', normalization='sum')

    pred.attach_grad()
    with mx.autograd.record():
        loss = kernel.fused_focal_loss(mx.nd, pred, lab, **kw)
    loss.backward()
    g1 = pred.grad.asnumpy().copy()

    # imperative: 'auto' detects the attached gradient
    pred.attach_grad(grad_req='add')
    for _ in range(3):
        with mx.autograd.record():
            loss = kernel.fused_focal_loss(mx.nd, pred, lab, **kw)
        loss.backward()
    np.testing.assert_allclose(pred.grad.asnumpy(), 3 * g1, rtol=1e-6)

    class Block(mx.gluon.HybridBlock):
        def __init__(self, grad_add):
            super(Block, self).__init__()
            self.grad_add = grad_add

        def hybrid_forward(self, F, x, y):
            return kernel.fused_focal_loss(F, x, y, grad_add=self.grad_add, **kw)

    blk = Block(True)
    blk.hybridize()
    pred.attach_grad(grad_req='add')
    for _ in range(2):
        with mx.autograd.record():
            loss = blk(pred, lab)
        loss.backward()
    np.testing.assert_allclose(pred.grad.asnumpy(), 2 * g1, rtol=1e-6)

    # documented limitation of the raw op: it overwrites
    raw = Block(False)
    raw.hybridize()
    pred.attach_grad(grad_req='add')
    for _ in range(2):
        with mx.autograd.record():
            loss = raw(pred, lab)
        loss.backward()
    np.testing.assert_allclose(pred.grad.asnumpy(), g1, rtol=1e-6)

    # two consumers of one prediction: MXNet sums the two gradients itself
    x = mx.nd.array(rng.randn(2, 30, 5))
    x.attach_grad()
    with mx.autograd.record():
        h = x * 1.0
        loss = (kernel.fused_focal_loss(mx.nd, h, lab, **kw)
                + kernel.fused_focal_loss(mx.nd, h, lab, **kw))
    loss.backward()
    x2 = x.copy()
    x2.attach_grad()
    with mx.autograd.record():
        loss = kernel.fused_focal_loss(mx.nd, x2 * 1.0, lab, **kw)
    loss.backward()
    np.testing.assert_allclose(x.grad.asnumpy(), 2 * x2.grad.asnumpy(), rtol=1e-6)


def test_hybridized_equals_imperative_and_label_grad():
    rng = np.random.RandomState(9)
    kw = dict(mode='sparse', axis=1, normalization='valid', ignore_label=-1, gamma=0.5,
              alpha=[0.2, 0.3, 0.5])

    class Block(mx.gluon.HybridBlock):
        def hybrid_forward(self, F, x, y):
            return kernel.fused_focal_loss(F, x, y, grad_add=False, **kw)

    pred = rng.randn(2, 3, 8, 8)
    lab = rng.randint(-1, 3, size=(2, 8, 8))
    results = []
    for hybrid in (False, True):
        blk = Block()
        if hybrid:
            blk.hybridize(static_alloc=True, static_shape=True)
        x = mx.nd.array(pred)
        y = mx.nd.array(lab)
        x.attach_grad()
        y.attach_grad()
        with mx.autograd.record():
            out = blk(x, y)
        out.backward()
        results.append((out.asnumpy(), x.grad.asnumpy()))
        assert not y.grad.asnumpy().any()
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


# Each case: (name, pred, label, attrs, what MXNetError must say or None for no
# error).  Run in a child process: a failed op leaves MXNet's engine holding
# the exception until exit.
BAD_VALUE_SCRIPT = textwrap.dedent("""
    import json, os, sys, numpy as np, mxnet as mx
    from gluon_focal import kernel
    kernel.load()
    cases = json.loads(sys.stdin.read())

    class Block(mx.gluon.HybridBlock):
        def __init__(self, attrs):
            super(Block, self).__init__()
            self.attrs = attrs

        def hybrid_forward(self, F, x, y):
            return kernel.fused_focal_loss(F, x, y, grad_add=False, **self.attrs)

    def call(path, pred, label, attrs):
        x, y = mx.nd.array(pred), mx.nd.array(label)
        if path == 'forward':
            return kernel.fused_focal_loss(mx.nd, x, y, **attrs).asnumpy()
        if path == 'imperative':
            x.attach_grad()
            with mx.autograd.record():
                out = kernel.fused_focal_loss(mx.nd, x, y, grad_add=False, **attrs)
            out.backward()
            return x.grad.asnumpy()
        blk = Block(attrs)
        blk.hybridize()
        x.attach_grad()
        with mx.autograd.record():
            out = blk(x, y)
        out.backward()
        return x.grad.asnumpy()

    results = {}
    for name, pred, label, attrs, threads in cases:
        kernel.set_num_threads(threads)
        for path in ('forward', 'imperative', 'hybridized'):
            try:
                out = call(path, np.array(pred), np.array(label), attrs)
                results[name + '/' + path] = 'OK finite' if np.isfinite(out).all() else 'OK nonfinite'
            except mx.base.MXNetError as err:
                results[name + '/' + path] = 'ERROR ' + str(err).replace('\\n', ' ')
    print(json.dumps(results), flush=True)
    # the messages are what this test checks; how a process that raised many
    # kernel errors exits is test_validation's subject
    os._exit(0)
""")


def _bad_value_cases():
    nan = float('nan')
    zeros = np.zeros((2, 3, 4)).tolist()
    big = np.zeros((2, 5, 3, 4000))           # 120000 elements: threaded, row layout
    big_label = np.zeros((2, 3, 4000))
    big_label[1, 2, 3999] = 9                 # last chunk
    big_label[0, 1, 7] = 5                    # earlier chunk: the one reported
    mask = np.zeros((1, 1, 4, 6))
    mask[0, 0, 3, 4] = 255
    probs = np.full((2, 3), 0.5)
    probs[1, 2] = 1.5
    return [
        ('sparse7', zeros, [[0, 1, 2], [7, 0, 1]], dict(mode='sparse', ignore_label=-1),
         'sparse label value 7 at position (1, 0) is not a valid class index; '
         'expected an integer in [0, 4) (or ignore_label=-1)'),
        ('sparse1.5', zeros, [[0, 1.5, 2], [0, 0, 1]], dict(mode='sparse'),
         'sparse label value 1.5 at position (0, 1) is not a valid class index'),
        ('sparse-3', zeros, [[0, 1, -3], [0, 0, 1]],
         dict(mode='sparse', ignore_label=-1, background_label=9),
         'sparse label value -3 at position (0, 2) is not a valid class index; '
         'expected an integer in [0, 4) (or ignore_label=-1, background_label=9)'),
        ('sparse_nan', zeros, [[0, 1, 2], [0, nan, 1]], dict(mode='sparse'),
         'sparse label value nan at position (1, 1)'),
        ('sparse_ok', zeros, [[0, -1, 3], [9, 0, 1]],
         dict(mode='sparse', ignore_label=-1, background_label=9), None),
        ('sparse_rows_first_of_two', big.tolist(), big_label.tolist(),
         dict(mode='sparse', axis=1), 'sparse label value 5 at position (0, 1, 7)'),
        ('binary255', np.zeros((1, 1, 4, 6)).tolist(), mask[:, 0].tolist(),
         dict(mode='binary', axis=1),
         'gluon_focal_loss: label value 255 at position (0, 3, 4) is outside the binary label '
         'mode; expected 0 or 1 (or ignore_label)'),
        ('binary_half', zeros, (np.ones((2, 3, 4)) * 0.5).tolist(), dict(mode='binary'),
         'label value 0.5 at position (0, 0, 0) is outside the binary label mode'),
        ('binary_ignored', np.zeros((1, 1, 4, 6)).tolist(), mask[:, 0].tolist(),
         dict(mode='binary', axis=1, ignore_label=255), None),
        ('dense1.5', zeros, np.full((2, 3, 4), 0.25).tolist() , dict(mode='dense'), None),
        ('dense_out', zeros, [[[0, 0, 0, 0]] * 3, [[0, 0, 1.5, 0]] * 3], dict(mode='dense'),
         'label value 1.5 at position (1, 0, 2) is outside the dense label mode; '
         'expected a target in [0, 1]'),
        ('dense_nan', zeros, [[[0, 0, 0, 0]] * 3, [[0, nan, 0, 0]] * 3],
         dict(mode='dense', ignore_label=-1),
         'label value nan at position (1, 0, 1) is outside the dense label mode; expected a '
         'target in [0, 1] (or ignore_label=-1)'),
        ('pred1.5', probs.tolist(), [[0, 1, 0], [1, 0, 1]],
         dict(mode='dense', from_sigmoid=True),
         'pred value 1.5 at position (1, 2) is not a probability; expected a value in [0, 1]'),
        ('pred_nan', [[0.5, nan, 0.5], [0.5, 0.5, 0.5]], [[0, 1, 0], [1, 0, 1]],
         dict(mode='dense', from_sigmoid=True), 'pred value nan at position (0, 1)'),
        ('pred_ignored', probs.tolist(), [[0, 1, 0], [1, 0, -1]],
         dict(mode='dense', from_sigmoid=True, ignore_label=-1), None),
    ]


def test_bad_values_raise_on_every_path():
    """validate=1 (default): the first bad label / probability in array order
    raises MXNetError naming the argument, the value, its position and what
    was expected, on the raw forward, under autograd and hybridized, at 1 and
    2 threads; validate=0 turns the checks off; a message never repeats an
    earlier call's."""
    cases, expected = [], {}
    for name, pred, label, attrs, needle in _bad_value_cases():
        for threads in (1, 2):
            cases.append(('%s@%d' % (name, threads), pred, label, attrs, threads))
            expected['%s@%d' % (name, threads)] = needle
            if needle is not None:
                off = dict(attrs, validate=False)
                cases.append(('%s@%d/off' % (name, threads), pred, label, off, threads))
                expected['%s@%d/off' % (name, threads)] = 'no error'
    proc = subprocess.run([sys.executable, '-c', BAD_VALUE_SCRIPT], input=json.dumps(cases),
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, needle in expected.items():
        for path in ('forward', 'imperative', 'hybridized'):
            got = results[name + '/' + path]
            if needle is None:
                assert got == 'OK finite', (name, path, got)
            elif needle == 'no error':   # unchecked NaN labels may give NaN
                assert got.startswith('OK'), (name, path, got)
            else:
                assert got.startswith('ERROR') and needle in got, (name, path, needle, got)
                assert got.count('gluon_focal_loss: ') == 1, (name, path, got)


ERROR_RACE_SCRIPT = textwrap.dedent("""
    import json, os, sys, mxnet as mx
    from gluon_focal import kernel
    kernel.load()
    x = mx.nd.zeros((6, 4))
    bad = mx.nd.array([0, 1, 7, 0, 1, 2])
    good = mx.nd.array([0, 1, 2, 3, 0, 1])
    messages = []
    for i in range(int(sys.argv[1])):
        failing = kernel.fused_focal_loss(mx.nd, x, bad, mode='sparse')  # fails on an engine thread
        for _ in range(8):   # meanwhile the main thread calls into the library
            kernel.fused_focal_loss(mx.nd, x, good, mode='sparse')
        try:
            failing.asnumpy()
        except mx.base.MXNetError as err:
            messages.append(str(err))
    print(json.dumps(messages[-3:] + [len(messages)]), flush=True)
    os._exit(0)
""")


def test_errors_on_an_engine_thread_while_the_main_thread_calls_the_library():
    """MXNet reads the library's error list after every call, on the calling
    thread, without a lock: an op failing on an engine thread while the main thread
    pushes more calls once made that read hit freed memory (a segfault, or a
    garbled message, in 2 of 4 runs of 2000 rounds). Each message is one entry,
    complete before MXNet can see it, so failures stay clean and every call reads
    one message, not all earlier ones."""
    proc = subprocess.run([sys.executable, '-c', ERROR_RACE_SCRIPT, '1500'], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    *last, count = json.loads(proc.stdout.strip().splitlines()[-1])
    assert count == 1500
    for message in last:
        assert message.count('gluon_focal_loss: ') == 1, message
        assert 'sparse label value 7 at position (2,)' in message, message
        # the traceback has one entry, not one per earlier failure
        assert '[0] gluon_focal_loss: ' in message and '[1]' not in message, message



def test_attribute_and_shape_errors():
    x = mx.nd.zeros((2, 3, 4))
    with pytest.raises(mx.base.MXNetError, match='sparse.*needs label shape'):
        kernel.fused_focal_loss(mx.nd, x, mx.nd.zeros((2, 4)), mode='sparse').wait_to_read()
    with pytest.raises(mx.base.MXNetError, match='alpha has 2 entries'):
        kernel.fused_focal_loss(mx.nd, x, x, alpha=[0.1, 0.2]).wait_to_read()
    with pytest.raises(mx.base.MXNetError, match='normalization'):
        mx.nd.gluon_focal_loss(x, x, normalization='avg').wait_to_read()
    with pytest.raises(ValueError):
        kernel.op_attrs(normalization='avg')


def test_layout_problem_is_the_kernels_own_decision():
    """kernel.layout_problem asks the library, and the op refuses exactly
    those layouts with the same sentence."""
    assert kernel.layout_problem(3, 2, 1, 'sparse', False, 'mean') is None
    assert kernel.layout_problem(3, 1, 2, 'sparse', False, 'none') is None
    assert kernel.layout_problem(3, 1, 2, 'dense', False, 'mean') is None   # axis irrelevant
    why = kernel.layout_problem(3, 1, 2, 'dense', True, 'sum')             # per-class alpha
    assert why is not None and 'batch_axis (2) must come before the class axis (1)' in why
    why = kernel.layout_problem(3, 1, 2, 'sparse', False, 'mean')
    assert why is not None
    x = mx.nd.zeros((2, 3, 4))
    with pytest.raises(mx.base.MXNetError) as err:
        kernel.fused_focal_loss(mx.nd, x, mx.nd.zeros((2, 4)), mode='sparse', axis=1,
                                batch_axis=2).wait_to_read()
    assert why in str(err.value)


EXPORT_SCRIPT = textwrap.dedent('''
    import os, sys, numpy as np, mxnet as mx
    tmp = sys.argv[1]
    if sys.argv[2] == 'export':
        from gluon_focal import kernel
        class Net(mx.gluon.HybridBlock):
            def hybrid_forward(self, F, x, y):
                return kernel.fused_focal_loss(F, x, y, mode='sparse', normalization='sum',
                                               grad_add=False)
        net = Net(); net.hybridize()
        x = mx.nd.array(np.arange(24).reshape(2, 3, 4) / 10.0); y = mx.nd.array([[0, 1, 2], [3, 3, 0]])
        np.save(os.path.join(tmp, 'ref.npy'), net(x, y).asnumpy())
        net.export(os.path.join(tmp, 'net'))
        print('EXPORTED')
    else:
        if sys.argv[2] == 'import_with':
            import gluon_focal.kernel as k; k.load()
        try:
            blk = mx.gluon.SymbolBlock.imports(os.path.join(tmp, 'net-symbol.json'),
                                               ['data0', 'data1'])
            x = mx.nd.array(np.arange(24).reshape(2, 3, 4) / 10.0); y = mx.nd.array([[0, 1, 2], [3, 3, 0]])
            out = blk(x, y).asnumpy()
            print('MATCH' if np.allclose(out, np.load(os.path.join(tmp, 'ref.npy'))) else 'DIFF')
        except Exception as err:
            print('FAILED', type(err).__name__, str(err)[:300].replace('\\n', ' '))
''')


def test_export_import_needs_gluon_focal(tmp_path):
    def run(mode):
        proc = subprocess.run([sys.executable, '-c', EXPORT_SCRIPT, str(tmp_path), mode],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=120)
        return proc.stdout + proc.stderr[-1500:]
    assert 'EXPORTED' in run('export')
    assert 'MATCH' in run('import_with')
    without = run('import_without')
    # MXNet prints the node name, which says what to import
    assert 'FAILED' in without and 'needs_import_gluon_focal' in without, without
