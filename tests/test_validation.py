"""Checks that never depend on hybridize, and the smaller user-facing rules of issue 9.

Every check runs imperative and hybridized, fused and composite, and inside a parent's
hybridized graph. Imperative calls and the hybridized composite graph raise ValueError
(a host check per call); the hybridized fused kernel raises MXNetError at the next sync
(it checks every value it reads); inside a parent's graph the composite path's validator
op fails the graph with MXNetError after MXNet printed the ValueError.
"""
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import reference
from gluon_focal import FocalLoss
from gluon_focal.segmentation import SegmentationFocalLoss
from gluon_focal.validation import (SOFTMAX_MIN_POSITIONS, ValueRules, check_numpy_values,
                                    looks_like_softmax, softmax_statistics)

IMPLS = ['composite', 'fused']


def call(loss_fn, pred, label, hybridize):
    if hybridize:
        loss_fn.hybridize(static_alloc=True)
    x = mx.nd.array(pred)
    x.attach_grad()
    with autograd.record():
        out = loss_fn(x, mx.nd.array(label))
    out.backward()
    return out.asnumpy(), x.grad.asnumpy()


def drain_async_errors():
    """An op that failed asynchronously also fails the ops queued after it (the
    backward), and MXNet raises those again at a later waitall: clear them here,
    where they are expected, so that they cannot fail a later test."""
    for _ in range(10):
        try:
            mx.nd.waitall()
            return
        except mx.base.MXNetError:
            pass


def expect_refusal(impl, hybridize, pattern, fn):
    """ValueError on the Python-checked paths, MXNetError from the hybridized kernel."""
    if impl == 'fused' and hybridize:
        with pytest.raises(mx.base.MXNetError, match='gluon_focal_loss: .*' + pattern):
            fn()
        drain_async_errors()
    else:
        with pytest.raises(ValueError, match=pattern):
            fn()


# -- 1. checks hybridized or not -------------------------------------------------------------------
BAD_INPUTS = [
    # id, kwargs, pred, label, pattern (value and position named)
    ('binary-0/255-mask', dict(axis=1, label_mode='binary'), np.zeros((2, 1, 3, 3)),
     np.full((2, 3, 3), 255.0), r'label value 255 at position \(0, 0, 0\).*'),
    ('sparse-label=C', dict(axis=1), np.zeros((2, 3, 2, 2)),
     np.array([[[0, 1], [2, 3]], [[0, 0], [0, 0]]]),
     r'label value 3 at (label )?position \(0, 1, 1\)'),
    ('sparse-label=nan', dict(label_mode='sparse'), np.zeros((2, 3)), np.array([0, np.nan]),
     r'label value nan at (label )?position \(1,\)'),
    ('dense-label=1.5', dict(label_mode='dense'), np.zeros((2, 3)),
     np.array([[0, 1.5, 0], [0, 0, 1]]), r'label value 1.5 at position \(0, 1\)'),
    ('probability-above-1', dict(label_mode='dense', from_sigmoid=True),
     np.array([[0.2, 1.5, 0.3], [0.1, 0.2, 0.3]]), np.zeros((2, 3)),
     r'pred value 1.5 at position \(0, 1\)'),
]


@pytest.mark.parametrize('hybridize', [False, True], ids=['imperative', 'hybridized'])
@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('case', BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_values_are_refused_hybridized_or_not(case, impl, hybridize):
    _, kwargs, pred, label, pattern = case
    loss_fn = FocalLoss(impl=impl, **kwargs)
    expect_refusal(impl, hybridize, pattern, lambda: call(loss_fn, pred, label, hybridize))


@pytest.mark.parametrize('impl', IMPLS)
def test_validate_false_is_the_opt_out(impl):
    """No host check and validate='0' for the kernel: a 0/255 mask runs (and is wrong)."""
    loss_fn = FocalLoss(axis=1, label_mode='binary', impl=impl, validate=False)
    loss, _ = call(loss_fn, np.zeros((2, 1, 3, 3)), np.full((2, 3, 3), 255.0), True)
    assert loss.shape == (2,)
    sym = loss_fn(mx.sym.var('x'), mx.sym.var('y'))
    assert 'Custom' not in sym.tojson()          # nothing a plain MXNet runtime lacks
    if impl == 'fused':
        assert '"validate": "0"' in sym.tojson()


class Parent(gluon.HybridBlock):
    """FocalLoss nested in a hybridized network: it sees Symbols."""

    def __init__(self, loss):
        super(Parent, self).__init__()
        self.loss = loss

    def hybrid_forward(self, F, x, y):
        return self.loss(x * 1, y)


@pytest.mark.parametrize('impl', IMPLS)
def test_checks_stay_on_inside_a_parent_graph(impl, capfd):
    net = Parent(FocalLoss(axis=1, label_mode='binary', impl=impl))
    net.hybridize()
    pred, good = mx.nd.zeros((2, 1, 3, 3)), mx.nd.ones((2, 3, 3))
    assert np.isfinite(net(pred, good).asnumpy()).all()
    with pytest.raises(mx.base.MXNetError) as err:
        net(pred, good * 255).asnumpy()
    drain_async_errors()
    if impl == 'fused':  # the kernel's own message
        assert 'label value 255' in str(err.value)
    else:  # MXNet prints the validator's ValueError before failing the graph
        printed = capfd.readouterr()
        assert 'label value 255 at position (0, 0, 0)' in printed.out + printed.err


def test_segmentation_loss_checks_hybridized():
    """No wrapper hybridizes its inner loss to skip checks; hybridized, they still run."""
    criterion = SegmentationFocalLoss(aux=False)
    assert not criterion.focal._active
    criterion.hybridize()
    with pytest.raises(ValueError, match=r'label value 255.*binary_values=\(0, 255\)'):
        criterion(mx.nd.zeros((2, 1, 3, 3)), mx.nd.full((2, 3, 3), 255))


def test_segmentation_loss_takes_sample_weight_by_keyword():
    rng = np.random.RandomState(0)
    pred, label = rng.normal(size=(2, 3, 4, 4)), rng.randint(0, 3, (2, 4, 4))
    weight = rng.uniform(0.5, 2, (2, 1, 4, 4))
    criterion = SegmentationFocalLoss(aux=False, normalization='sum', ignore_label=None)
    out = criterion(mx.nd.array(pred), mx.nd.array(label), sample_weight=mx.nd.array(weight))
    expected, _ = reference.focal_loss(pred, label, label_mode='sparse', axis=1,
                                       normalization='sum', sample_weight=weight)
    np.testing.assert_allclose(out.asnumpy(), expected, rtol=1e-5)


# -- 3. dtype-generic composite graph inside a parent's graph --------------------------------------
@pytest.mark.parametrize('dtype, rtol', [('float16', 3e-3), ('float32', 1e-5),
                                         ('float64', 1e-5)])
@pytest.mark.parametrize('mode', ['sparse', 'binary-squeezed'])
def test_composite_inside_a_parent_graph_any_dtype(mode, dtype, rtol):
    rng = np.random.RandomState(1)
    if mode == 'sparse':
        pred, label = rng.normal(0, 3, (2, 4, 3, 3)), rng.randint(0, 4, (2, 3, 3))
        loss_fn, ref_mode = FocalLoss(axis=1, label_mode='sparse', impl='composite'), 'sparse'
    else:  # N x 1 x H x W logits, N x H x W mask
        pred, label = rng.normal(0, 3, (2, 1, 3, 3)), (rng.rand(2, 3, 3) < 0.3) * 1.0
        loss_fn, ref_mode = FocalLoss(axis=1, label_mode='binary', impl='composite'), 'binary'
    pred = pred.astype(dtype).astype(np.float64)       # the values dtype can hold
    net = Parent(loss_fn)
    net.hybridize()
    x = mx.nd.array(pred, dtype=dtype)
    x.attach_grad()
    with autograd.record():
        out = net(x, mx.nd.array(label))
    out.backward()
    expected, grad = reference.focal_loss(pred, label, label_mode=ref_mode, axis=1)
    np.testing.assert_allclose(out.asnumpy(), expected, rtol=rtol)
    assert x.grad.dtype == np.dtype(dtype)
    np.testing.assert_allclose(x.grad.asnumpy().astype(np.float64), grad, rtol=rtol * 10,
                               atol=rtol * np.abs(grad).max())


def test_composite_inside_a_parent_graph_keeps_stability():
    """+-1e4 logits stay finite; +-inf on the target side gives loss and gradient 0."""
    net = Parent(FocalLoss(label_mode='sparse', impl='composite', normalization='none'))
    net.hybridize()
    x = mx.nd.array([[1e4, -1e4, 0.5], [np.inf, -np.inf, -np.inf]])
    x.attach_grad()
    with autograd.record():
        out = net(x, mx.nd.array([1, 0]))
    out.backward()
    loss, grad = out.asnumpy(), x.grad.asnumpy()
    expected, _ = reference.focal_loss(np.array([[1e4, -1e4, 0.5]]), [1], label_mode='sparse',
                                       normalization='none')
    np.testing.assert_allclose(loss[0], expected[0], rtol=1e-6)
    assert np.all(loss[1] == 0) and np.all(grad[1] == 0) and np.isfinite(grad).all()


# -- 4. softmax refusal without false positives ----------------------------------------------------
def _confident(rng):
    one_hot = np.eye(5)[rng.randint(0, 5, 64)]
    return one_hot * 0.9999 + 2e-5


ACCEPTED = {
    'confident-sigmoid-C5-64-positions': _confident,
    'exact-one-hot': lambda rng: np.eye(4)[rng.randint(0, 4, 16)],
    '100-class-prior-initialisation': lambda rng: np.full((32, 100), 0.01),
    'single-position-C2': lambda rng: np.array([[0.3, 0.7]]),
}


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('name', sorted(ACCEPTED))
def test_real_sigmoid_outputs_are_accepted(name, impl):
    pred = ACCEPTED[name](np.random.RandomState(2)).astype(np.float32)
    label = np.zeros(pred.shape[:1])
    loss_fn = FocalLoss(label_mode='sparse', from_sigmoid=True, impl=impl)
    loss, grad = call(loss_fn, pred, label, hybridize=False)
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    if name != 'exact-one-hot':  # (0 and 1 are clipped to float32's [eps, 1 - eps])
        expected, _ = reference.focal_loss(pred, label, label_mode='sparse', from_sigmoid=True)
        np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-5 * expected.max())
    hybrid = FocalLoss(label_mode='sparse', from_sigmoid=True, impl=impl)
    np.testing.assert_allclose(call(hybrid, pred, label, hybridize=True)[0], loss, rtol=1e-6)


@pytest.mark.parametrize('hybridize', [False, True], ids=['imperative', 'hybridized'])
@pytest.mark.parametrize('num_class', [3, 10])
def test_softmax_outputs_are_refused(num_class, hybridize):
    pred = mx.nd.softmax(mx.nd.array(np.random.RandomState(3).normal(0, 2, (8, num_class))))
    loss_fn = FocalLoss(label_mode='sparse', from_sigmoid=True, impl='composite')
    with pytest.raises(ValueError, match='looks like a softmax output'):
        call(loss_fn, pred.asnumpy(), np.zeros(8), hybridize)


def test_softmax_rule_itself():
    """Every row sums to 1 and at least SOFTMAX_MIN_POSITIONS rows are informative."""
    softmax = np.exp(np.random.RandomState(4).normal(size=(6, 3)))
    softmax /= softmax.sum(axis=1, keepdims=True)
    assert looks_like_softmax(*softmax_statistics(np, softmax, 1), num_class=3)
    few = softmax[:SOFTMAX_MIN_POSITIONS - 1]
    assert not looks_like_softmax(*softmax_statistics(np, few, 1), num_class=3)
    off = softmax.copy()
    off[0] *= 1.01                                    # one row does not sum to 1
    assert not looks_like_softmax(*softmax_statistics(np, off, 1), num_class=3)


# -- 5. smaller things -----------------------------------------------------------------------------
@pytest.mark.parametrize('name, value, hint', [
    ('from_logits', False, r'from_sigmoid \(inverted meaning'),
    ('sparse_label', True, r"label_mode='sparse'"),
    ('size_average', True, r"normalization='mean'"),
])
def test_gluoncv_argument_names_say_what_to_use(name, value, hint):
    with pytest.raises(TypeError, match='gluoncv.loss.FocalLoss argument %s=.*use %s'
                                        % (name, hint)):
        FocalLoss(**{name: value})


def test_binary_mask_with_default_axis_suggests_axis_1():
    with pytest.raises(ValueError, match=r'did you mean axis=1\?'):
        FocalLoss(label_mode='binary')(mx.nd.zeros((2, 1, 3, 4)), mx.nd.zeros((2, 3, 4)))


def test_ambiguous_class_axis_warns_once():
    loss_fn = FocalLoss()                                  # axis left at its default
    pred, label = mx.nd.zeros((2, 4, 4, 4)), mx.nd.zeros((2, 4, 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        loss_fn(pred, label)
        loss_fn(pred, label)
        FocalLoss(axis=1)(pred, label)                     # explicit axis: no warning
    messages = [str(w.message) for w in caught if 'more than one class axis' in str(w.message)]
    assert len(messages) == 1 and 'axis=1' in messages[0]


@pytest.mark.parametrize('impl', IMPLS)
def test_float16_sum_overflow_is_inf_as_documented(impl):
    """float16 'sum' is computed in float32 and returned in float16: above 65504, inf."""
    pred = np.full((1, 40000, 2), 10.0)                    # loss ~7.5 per element
    label = np.zeros((1, 40000))
    loss_fn = FocalLoss(label_mode='sparse', normalization='sum', impl=impl)
    out = loss_fn(mx.nd.array(pred, dtype='float16'), mx.nd.array(label))
    assert out.dtype == np.float16 and np.isinf(out.asnumpy()).all()
    mean = FocalLoss(label_mode='sparse', impl=impl)(mx.nd.array(pred, dtype='float16'),
                                                     mx.nd.array(label))
    assert np.isfinite(mean.asnumpy()).all()


def test_numpy_checks_name_value_position_and_expectation():
    rules = ValueRules('binary', 1, 1, -1, None, False)
    with pytest.raises(ValueError, match=r'outside the binary label mode.*expected binary mask '
                                         r'values 0 or 1.*ignore_label=-1.*'
                                         r'label value 255 at position \(1, 2\)'):
        check_numpy_values(None, np.array([[0, 1, -1], [0, 0, 255]]), rules)


def test_a_script_ending_right_after_backward_through_a_validator_node_exits():
    """MXNet's exit handler could hang while a validator node was still queued (a few
    runs in twenty, more on a loaded machine): gluon_focal finishes queued work first.
    Three short scripts, each must exit cleanly."""
    from hostile_helpers import run_python
    code = '''
        import mxnet as mx
        from mxnet import autograd, gluon
        from gluon_focal import FocalLoss

        class Net(gluon.HybridBlock):
            def __init__(self):
                super().__init__()
                self.loss = FocalLoss(label_mode='dense', impl='composite')

            def hybrid_forward(self, F, x, y):
                return self.loss(x, y)

        net = Net()
        net.hybridize(static_alloc=True, static_shape=True)
        x = mx.nd.random.normal(shape=(4, 20000, 8))
        y = mx.nd.random.uniform(shape=(4, 20000, 8)) < 0.01
        x.attach_grad()
        for _ in range(2):
            with autograd.record():
                loss = net(x, y)
            loss.backward()
        x.grad.wait_to_read()
        print('trained')
    '''
    for _ in range(3):
        done = run_python(code, timeout=60)
        assert done.returncode == 0 and 'trained' in done.stdout, done.stderr[-2000:]
