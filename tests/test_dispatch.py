"""Device-aware dispatch: the fused kernel is CPU-only, decided by one pure function.

No GPU is needed: ``kernel.choose_backend`` takes the context (mx.gpu(0) is only a
descriptor), and FocalLoss asks it with each call's ``pred.context``.
"""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

import gluon_focal
from gluon_focal import FocalLoss, kernel
from gluon_focal.validation import ResolvedLabels
from test_focal_loss import run_loss

GPU = mx.Context('gpu', 0)


@pytest.mark.parametrize('impl, available, context, layout, num_gpus, expected', [
    ('auto', True, mx.cpu(), True, 0, 'fused'),
    ('auto', True, mx.cpu(), True, 4, 'fused'),          # a CPU array on a GPU machine
    ('auto', True, mx.Context('cpu_pinned', 0), True, 0, 'fused'),
    ('auto', True, GPU, True, 1, 'composite'),
    ('auto', False, mx.cpu(), True, 0, 'composite'),
    ('auto', True, mx.cpu(), False, 0, 'composite'),     # a layout the kernel cannot reduce
    ('auto', True, None, True, 0, 'fused'),              # Symbol, CPU-only machine
    ('auto', True, None, True, 2, 'composite'),          # Symbol, GPUs visible: runs anywhere
    ('composite', True, mx.cpu(), True, 0, 'composite'),
    ('composite', True, GPU, True, 1, 'composite'),
    ('fused', True, mx.cpu(), True, 0, 'fused'),
    ('fused', True, None, True, 2, 'fused'),             # asked for explicitly
])
def test_choose_backend_table(impl, available, context, layout, num_gpus, expected):
    assert kernel.choose_backend(impl, available, context, layout, num_gpus) == expected


def test_fused_on_a_non_cpu_context_is_a_clear_error():
    with pytest.raises(ValueError, match=r"impl='fused' runs on CPU only, but pred is on "
                                         r"gpu\(0\).*impl='auto'"):
        kernel.choose_backend('fused', True, GPU)


def test_fused_without_the_kernel_says_why():
    with pytest.raises(RuntimeError, match="impl='fused' but the fused focal-loss kernel"):
        kernel.choose_backend('fused', False, mx.cpu())


@pytest.mark.parametrize('impl, expected', [('auto', 'composite'), ('composite', 'composite')])
def test_focal_loss_asks_with_the_array_context(impl, expected):
    """What FocalLoss.forward does with pred.context, for a GPU context."""
    loss_fn = FocalLoss(axis=1, impl=impl)
    resolved = ResolvedLabels('sparse', 1, False, 'float32', 4)
    assert loss_fn._choose_backend(resolved, GPU, 4) == expected
    assert loss_fn._choose_backend(resolved, mx.cpu(), 4) == \
        ('fused' if impl == 'auto' else 'composite')


def test_focal_loss_fused_on_gpu_context_raises():
    loss_fn = FocalLoss(axis=1, impl='fused')
    resolved = ResolvedLabels('sparse', 1, False, 'float32', 4)
    with pytest.raises(ValueError, match='runs on CPU only'):
        loss_fn._choose_backend(resolved, GPU, 4)


class Parent(gluon.HybridBlock):
    def __init__(self, loss):
        super(Parent, self).__init__()
        self.loss = loss

    def hybrid_forward(self, F, x, y):
        return self.loss(x, y)


def _ops(num_gpus, monkeypatch):
    monkeypatch.setattr(mx.context, 'num_gpus', lambda: num_gpus)
    out = Parent(FocalLoss(axis=1, label_mode='sparse'))(mx.sym.var('x'), mx.sym.var('y'))
    return [n['op'] for n in json.loads(out.tojson())['nodes']]


def test_symbols_use_the_kernel_only_when_no_gpu_is_visible(monkeypatch):
    assert 'gluon_focal_loss' in _ops(0, monkeypatch)
    assert 'gluon_focal_loss' not in _ops(1, monkeypatch)


def test_auto_on_cpu_arrays_runs_the_kernel():
    """The decision is per call: the CPU array below runs the kernel (its node name)."""
    loss_fn = FocalLoss(axis=1)
    loss_fn.hybridize()
    loss_fn(mx.nd.zeros((2, 3, 4, 4)), mx.nd.zeros((2, 4, 4)))
    assert loss_fn._runs == 'fused'
    assert gluon_focal.kernel.runs_on(mx.cpu()) and not gluon_focal.kernel.runs_on(GPU)


def _composite_gradient(pred, label, nested, dtype='float32'):
    loss_fn = FocalLoss(label_mode='dense', alpha=0.25, gamma=2.0, normalization='none',
                        impl='composite')
    block = Parent(loss_fn) if nested else loss_fn
    block.hybridize()
    return run_loss(block, np.array(pred), np.array(label), dtype=dtype)


def test_composite_gradient_of_huge_and_infinite_logits():
    """The closed-form gradient is attached through clip(pred, -b, b): b = 1e38 for
    float32 NDArrays, float16's largest value inside a parent's graph (README)."""
    wrong_side = [[6e4, -6e4, 1e5, -1e5]]       # targets 0, 1, 0, 1: loss alpha_t |x|
    label = [[0, 1, 0, 1]]
    expected_loss = [[0.75 * 6e4, 0.25 * 6e4, 0.75 * 1e5, 0.25 * 1e5]]
    loss, grad = _composite_gradient(wrong_side, label, nested=False)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    np.testing.assert_allclose(grad, [[0.75, -0.25, 0.75, -0.25]], rtol=1e-6)
    loss, grad = _composite_gradient(wrong_side, label, nested=True)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    np.testing.assert_allclose(grad, [[0.75, -0.25, 0, 0]], rtol=1e-6)
    for dtype in ('float16', 'float32'):      # inf and nan-free at float16's overflow
        loss, grad = _composite_gradient([[np.inf, -np.inf, np.inf, 0.0]], [[1, 0, 0, 0.5]],
                                         nested=True, dtype=dtype)
        assert loss[0, 0] == 0 and loss[0, 1] == 0 and loss[0, 2] == np.inf, (dtype, loss)
        assert np.isfinite(loss[0, 3]) and np.isfinite(grad).all(), (dtype, loss, grad)
        assert (grad[0, :3] == 0).all(), (dtype, grad)   # inf: beyond the bound
