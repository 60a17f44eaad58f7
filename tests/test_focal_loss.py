"""FocalLoss against the float64 numpy reference written from the paper."""
import itertools
import os
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import gluon_focal
import reference

IMPLS = ['composite', 'fused']
RTOL = 1e-5


def make_case(rng, mode, shape, axis, ignore_label=None, background_label=None,
              from_sigmoid=False):
    """Random predictions and labels for one label mode."""
    pred = rng.uniform(0.02, 0.98, shape) if from_sigmoid else rng.normal(0, 3, shape)
    class_axis = axis % len(shape)
    if mode == 'sparse':
        label_shape = tuple(s for i, s in enumerate(shape) if i != class_axis)
        label = rng.randint(0, shape[class_axis], label_shape).astype(np.float32)
        for special in (ignore_label, background_label):
            if special is not None:
                label[rng.rand(*label_shape) < 0.2] = special
    elif mode == 'binary':
        label_shape = tuple(s for i, s in enumerate(shape) if i != class_axis)
        label = (rng.rand(*label_shape) < 0.3).astype(np.float32)
        if ignore_label is not None:
            label[rng.rand(*label_shape) < 0.2] = ignore_label
    else:
        label = rng.rand(*shape).astype(np.float32)
        label[rng.rand(*shape) < 0.5] = 0
        label[rng.rand(*shape) < 0.2] = 1
        if ignore_label is not None:
            label[rng.rand(*shape) < 0.2] = ignore_label
    return pred.astype(np.float32), label


def run_loss(loss_fn, pred, label, head_grad=None, sample_weight=None, dtype='float32'):
    """Forward + backward; returns (loss, d(sum(loss * head_grad))/d pred)."""
    x = mx.nd.array(pred, dtype=dtype)
    x.attach_grad()
    args = [mx.nd.array(label)]
    if sample_weight is not None:
        args.append(mx.nd.array(sample_weight, dtype=dtype))
    with autograd.record():
        out = loss_fn(x, *args)
    out.backward(None if head_grad is None else mx.nd.array(head_grad, dtype=dtype))
    return out.asnumpy().astype(np.float64), x.grad.asnumpy().astype(np.float64)


def assert_close(actual, expected, rtol=RTOL, what=''):
    scale = max(np.abs(expected).max(), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


LAYOUTS = [  # (mode, pred shape, axis)
    ('sparse', (4, 7, 5), -1),          # N x A x C, class axis last (SSD)
    ('sparse', (2, 4, 3, 5), 1),        # N x C x H x W (segmentation)
    ('dense', (3, 6, 4), -1),           # one-hot / multi-label / soft
    ('dense', (2, 3, 4, 2), 1),
    ('binary', (2, 1, 5, 6), 1),        # N x 1 x H x W logits, N x H x W mask
    ('binary', (8, 1), 1),              # N x 1 logits with N labels
]


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('mode,shape,axis', LAYOUTS)
def test_matches_reference_over_modes_and_options(impl, mode, shape, axis):
    rng = np.random.RandomState(abs(hash((mode, shape, axis))) % 2 ** 31)
    num_class = shape[axis]
    options = itertools.product(
        [None, 0.25, list(rng.uniform(0.1, 0.9, num_class))],   # alpha
        [0.0, 0.5, 2.0],                                          # gamma
        ['mean', 'sum', 'valid', 'positive', 'none'],
        [None, -1],                                               # ignore_label
        [False, True])                                            # from_sigmoid
    for alpha, gamma, normalization, ignore_label, from_sigmoid in options:
        background = -2 if (mode == 'sparse' and ignore_label is not None) else None
        pred, label = make_case(rng, mode, shape, axis, ignore_label, background, from_sigmoid)
        loss_fn = gluon_focal.FocalLoss(
            axis=axis, label_mode=mode, alpha=alpha, gamma=gamma, from_sigmoid=from_sigmoid,
            ignore_label=ignore_label, background_label=background,
            normalization=normalization, impl=impl)
        expected_shape = shape if normalization == 'none' else (shape[0],)
        head_grad = rng.uniform(0.5, 1.5, expected_shape)
        loss, grad = run_loss(loss_fn, pred, label, head_grad)
        ref_loss, ref_grad = reference.focal_loss(
            pred, label, label_mode=mode, axis=axis, alpha=alpha, gamma=gamma,
            from_sigmoid=from_sigmoid, ignore_label=ignore_label, background_label=background,
            normalization=normalization, head_grad=head_grad)
        what = '%s alpha=%s gamma=%s %s ignore=%s sigmoid=%s' % (
            mode, alpha, gamma, normalization, ignore_label, from_sigmoid)
        assert loss.shape == expected_shape, what
        assert_close(loss, ref_loss, what='loss ' + what)
        assert_close(grad, ref_grad, what='grad ' + what)


@pytest.mark.parametrize('impl', IMPLS)
def test_auto_mode_matches_explicit_modes(impl):
    rng = np.random.RandomState(1)
    for mode, shape, axis in LAYOUTS:
        pred, label = make_case(rng, mode, shape, axis)
        auto = run_loss(gluon_focal.FocalLoss(axis=axis, impl=impl), pred, label)
        explicit = run_loss(gluon_focal.FocalLoss(axis=axis, label_mode=mode, impl=impl),
                            pred, label)
        assert_close(auto[0], explicit[0])
        assert_close(auto[1], explicit[1])


@pytest.mark.parametrize('impl', IMPLS)
def test_binary_mask_with_or_without_class_axis_gives_same_loss(impl):
    rng = np.random.RandomState(2)
    pred, mask = make_case(rng, 'binary', (2, 1, 6, 6), 1, ignore_label=255)
    loss_fn = gluon_focal.FocalLoss(axis=1, label_mode='binary', ignore_label=255, impl=impl)
    without_axis = run_loss(loss_fn, pred, mask)
    with_axis = run_loss(loss_fn, pred, mask[:, None])
    assert_close(without_axis[0], with_axis[0])
    assert_close(without_axis[1], with_axis[1])


@pytest.mark.parametrize('impl', IMPLS)
def test_sample_weight_and_weight_scale_the_elementwise_loss(impl):
    rng = np.random.RandomState(3)
    pred, label = make_case(rng, 'sparse', (3, 5, 4), -1, ignore_label=-1)
    sample_weight = rng.uniform(0, 2, (3, 5, 1))
    for normalization in ('mean', 'valid', 'positive', 'none'):
        loss_fn = gluon_focal.FocalLoss(label_mode='sparse', ignore_label=-1, weight=0.7,
                                        normalization=normalization, impl=impl)
        loss, grad = run_loss(loss_fn, pred, label, sample_weight=sample_weight)
        ref_loss, ref_grad = reference.focal_loss(
            pred, label, label_mode='sparse', ignore_label=-1, weight=0.7,
            normalization=normalization, sample_weight=sample_weight)
        assert_close(loss, ref_loss, what=normalization)
        assert_close(grad, ref_grad, what=normalization)


def test_gamma_zero_without_alpha_equals_sigmoid_bce():
    rng = np.random.RandomState(4)
    pred = rng.normal(0, 4, (6, 10)).astype(np.float32)
    label = (rng.rand(6, 10) < 0.3).astype(np.float32)
    bce = run_loss(gluon.loss.SigmoidBCELoss(), pred, label)
    for impl in IMPLS:
        focal = run_loss(gluon_focal.FocalLoss(label_mode='dense', alpha=None, gamma=0,
                                               impl=impl), pred, label)
        np.testing.assert_allclose(focal[0], bce[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(focal[1], bce[1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('impl', IMPLS)
def test_gradient_matches_finite_differences(impl):
    rng = np.random.RandomState(5)
    for mode, shape, axis in LAYOUTS[:5]:
        for gamma, from_sigmoid in ((2.0, False), (0.5, False), (1.5, True)):
            pred, label = make_case(rng, mode, shape, axis, from_sigmoid=from_sigmoid)
            loss_fn = gluon_focal.FocalLoss(axis=axis, label_mode=mode, gamma=gamma,
                                            alpha=0.3, from_sigmoid=from_sigmoid,
                                            normalization='sum', impl=impl)
            pred64 = pred.astype(np.float64)
            _, grad = run_loss(loss_fn, pred64, label, dtype='float64')
            step = 1e-6
            flat = pred64.reshape(-1)
            for index in rng.choice(flat.size, 6, replace=False):
                plus, minus = flat.copy(), flat.copy()
                plus[index] += step
                minus[index] -= step
                value = [loss_fn(mx.nd.array(v.reshape(pred.shape), dtype='float64'),
                                 mx.nd.array(label)).asnumpy().sum() for v in (plus, minus)]
                numeric = (value[0] - value[1]) / (2 * step)
                assert abs(grad.reshape(-1)[index] - numeric) <= 1e-5 * max(1, abs(numeric)), \
                    (mode, gamma, from_sigmoid, index)


@pytest.mark.parametrize('impl', IMPLS)
def test_gradient_at_zero_logit_is_sigmoid_minus_target(impl):
    # MXNet's abs/relu have gradient 0 at 0; the loss must still be exact there
    loss_fn = gluon_focal.FocalLoss(label_mode='dense', alpha=None, gamma=0,
                                    normalization='sum', impl=impl)
    _, grad = run_loss(loss_fn, np.zeros((1, 3)), np.array([[0.0, 1.0, 0.25]]))
    np.testing.assert_allclose(grad, [[0.5, -0.5, 0.25]], rtol=1e-6)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('logit', [100.0, 1e4])
def test_extreme_logits_give_finite_loss_and_gradient(impl, logit):
    pred = np.array([[logit, -logit, logit, -logit]], dtype=np.float32)
    label = np.array([[1, 0, 0, 1]], dtype=np.float32)
    for gamma in (0.0, 0.5, 2.0):
        loss_fn = gluon_focal.FocalLoss(label_mode='dense', gamma=gamma, alpha=0.25,
                                        normalization='none', impl=impl)
        loss, grad = run_loss(loss_fn, pred, label)
        assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad)), gamma
        ref_loss, ref_grad = reference.focal_loss(pred, label, label_mode='dense', gamma=gamma,
                                                  normalization='none')
        assert_close(loss, ref_loss, what='gamma=%s' % gamma)
        assert_close(grad, ref_grad, what='gamma=%s' % gamma)


@pytest.mark.parametrize('impl', IMPLS)
def test_float16_inputs_match_reference(impl):
    rng = np.random.RandomState(6)
    pred, label = make_case(rng, 'sparse', (2, 3, 4, 4), 1, ignore_label=-1)
    loss_fn = gluon_focal.FocalLoss(axis=1, label_mode='sparse', ignore_label=-1, impl=impl)
    loss, grad = run_loss(loss_fn, pred.astype(np.float16), label, dtype='float16')
    ref_loss, ref_grad = reference.focal_loss(pred.astype(np.float16), label, axis=1,
                                              label_mode='sparse', ignore_label=-1)
    assert_close(loss, ref_loss, rtol=3e-3)
    assert_close(grad, ref_grad, rtol=3e-3)


# --- validation: every bad input gets a clear error naming what is wrong ---------------------

@pytest.mark.parametrize('kwargs,message', [
    (dict(num_class=0), 'num_class=0 must be a positive integer'),
    (dict(num_class=2.5), 'num_class=2.5 must be a positive integer'),
    (dict(gamma=-1), 'gamma=-1 must be a finite number >= 0'),
    (dict(gamma=float('nan')), 'gamma=nan must be a finite number >= 0'),
    (dict(alpha=1.5), r'alpha=1.5 must be in \[0, 1\]'),
    (dict(alpha=[0.2, -0.1]), r'alpha values must be in \[0, 1\]'),
    (dict(alpha=[0.2, 0.3], num_class=3), 'alpha has 2 per-class values but num_class=3'),
    (dict(label_mode='onehot'), "label_mode='onehot' is not one of"),
    (dict(normalization='batch'), "normalization='batch' is not one of"),
    (dict(impl='cuda'), "impl='cuda' is not one of"),
    (dict(label_mode='dense', background_label=0), 'background_label applies to sparse'),
])
def test_bad_arguments_are_rejected_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gluon_focal.FocalLoss(**kwargs)


def _call(loss_fn, pred, label):
    return loss_fn(mx.nd.array(pred), mx.nd.array(label))


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('kwargs,pred_shape,label,message', [
    (dict(), (2, 3, 4, 4), np.zeros((2, 4, 4)),
     r'label shape \(2, 4, 4\) does not fit pred shape \(2, 3, 4, 4\) with axis=-1.*'
     r'did you mean axis=1\?'),
    (dict(label_mode='sparse', axis=1), (2, 3, 4), np.zeros((2, 3, 4)),
     r"expected pred's shape without the class axis, \(2, 4\)"),
    (dict(label_mode='dense'), (2, 3), np.zeros((2,)), r"expected pred's shape \(2, 3\)"),
    (dict(label_mode='binary', axis=1), (2, 3, 4), np.zeros((2, 4)),
     r'when the class axis has size 1'),
    (dict(num_class=4), (2, 3), np.zeros((2,)),
     r'num_class=4 but pred.shape\[axis=1\] is 3'),
    (dict(axis=3), (2, 3), np.zeros((2,)), r'axis=3 is out of range for pred with 2 dim'),
    (dict(alpha=[0.1, 0.2]), (2, 3), np.zeros((2,)),
     r'alpha has 2 per-class values but pred.shape\[axis=1\] is 3'),
    (dict(label_mode='sparse'), (2, 3), np.array([0, 3]),
     r'outside the sparse label mode, e.g. \[3.0\]; expected integer class indices in \[0, 3\)'),
    (dict(label_mode='sparse'), (2, 3), np.array([0, 1.5]), r'e.g. \[1.5\]'),
    (dict(label_mode='sparse', ignore_label=-1), (2, 3), np.array([-2, 1]),
     r'e.g. \[-2.0\].*or ignore_label=-1'),
    (dict(label_mode='binary', axis=1), (2, 1), np.array([0, 255]),
     r'expected binary mask values 0 or 1 \(divide 0/255 masks by 255\)'),
    (dict(label_mode='dense'), (1, 2), np.array([[0.5, 2.0]]), r'expected targets in \[0, 1\]'),
])
def test_bad_inputs_are_rejected_with_shapes_and_values(impl, kwargs, pred_shape, label,
                                                        message):
    loss_fn = gluon_focal.FocalLoss(impl=impl, **kwargs)
    with pytest.raises(ValueError, match=message):
        _call(loss_fn, np.zeros(pred_shape), label)


@pytest.mark.parametrize('impl', IMPLS)
def test_softmax_outputs_are_refused_with_an_explanation(impl):
    probs = mx.nd.softmax(mx.nd.random.normal(shape=(4, 5))).asnumpy()
    loss_fn = gluon_focal.FocalLoss(from_sigmoid=True, impl=impl)
    with pytest.raises(ValueError, match='looks like a softmax output.*per-class sigmoid'):
        _call(loss_fn, probs, np.zeros(4))
    with pytest.raises(ValueError, match=r'probabilities in \[0, 1\].*max 3'):
        _call(loss_fn, np.array([[0.5, 3.0]]), np.zeros(1))


def test_symbol_inputs_need_an_explicit_label_mode():
    with pytest.raises(ValueError, match="label_mode='auto' needs the input shapes"):
        gluon_focal.FocalLoss()(mx.sym.var('pred'), mx.sym.var('label'))


# --- one loss, every way of running it --------------------------------------------------------

def _layout_cases():
    rng = np.random.RandomState(7)
    yield 'sparse', 1, make_case(rng, 'sparse', (2, 4, 3, 3), 1, ignore_label=-1), \
        dict(alpha=[0.1, 0.2, 0.3, 0.4], ignore_label=-1, normalization='valid')
    yield 'dense', -1, make_case(rng, 'dense', (3, 5, 2), -1), dict(normalization='positive')
    yield 'binary', 1, make_case(rng, 'binary', (2, 1, 4, 4), 1), dict(normalization='mean')


@pytest.mark.parametrize('impl', IMPLS)
def test_hybridized_and_symbolic_equal_imperative(impl):
    for mode, axis, (pred, label), kwargs in _layout_cases():
        def make():
            return gluon_focal.FocalLoss(axis=axis, label_mode=mode, impl=impl, **kwargs)
        imperative = run_loss(make(), pred, label)
        hybrid = make()
        hybrid.hybridize(static_alloc=True, static_shape=True)
        for _ in range(2):  # the second call runs the cached graph
            hybridized = run_loss(hybrid, pred, label)
        np.testing.assert_allclose(hybridized[0], imperative[0], rtol=1e-6)
        np.testing.assert_allclose(hybridized[1], imperative[1], rtol=1e-6, atol=1e-9)

        if mode == 'binary':
            label = label[:, None]  # symbols carry no shapes: masks must have pred's
        sym_loss = make()
        run_loss(sym_loss, pred, label)  # places the per-class alpha constant
        out = sym_loss(mx.sym.var('pred'), mx.sym.var('label'))
        args = {name: param.data() for name, param in sym_loss.collect_params().items()}
        args.update(pred=mx.nd.array(pred), label=mx.nd.array(label))
        symbolic = out.eval(ctx=mx.cpu(), **args)[0].asnumpy()
        np.testing.assert_allclose(symbolic, imperative[0], rtol=1e-6)


@pytest.mark.parametrize('impl', IMPLS)
def test_exported_graph_reloads_in_a_fresh_process_with_identical_numbers(impl, tmp_path):
    for index, (mode, axis, (pred, label), kwargs) in enumerate(_layout_cases()):
        loss_fn = gluon_focal.FocalLoss(axis=axis, label_mode=mode, impl=impl, **kwargs)
        loss_fn.hybridize()
        expected = _call(loss_fn, pred, label).asnumpy()
        prefix = str(tmp_path / ('loss%d' % index))
        loss_fn.export(prefix)
        np.save(prefix + '-pred.npy', pred)
        np.save(prefix + '-label.npy', label)
        np.save(prefix + '-expected.npy', expected)
        script = textwrap.dedent('''
            import sys, numpy as np, mxnet as mx
            import gluon_focal  # registers the fused operator
            prefix = sys.argv[1]
            net = mx.gluon.SymbolBlock.imports(prefix + '-symbol.json', ['data0', 'data1'],
                                               prefix + '-0000.params')
            out = net(mx.nd.array(np.load(prefix + '-pred.npy')),
                      mx.nd.array(np.load(prefix + '-label.npy'))).asnumpy()
            assert np.array_equal(out, np.load(prefix + '-expected.npy')), (out, prefix)
            print('reloaded', out.shape)
        ''')
        result = subprocess.run([sys.executable, '-c', script, prefix], capture_output=True,
                                text=True, timeout=120, env=dict(os.environ))
        assert result.returncode == 0, result.stderr[-3000:]
        assert 'reloaded' in result.stdout


# --- prior-probability bias initialisation ----------------------------------------------------

def test_prior_probability_bias_gives_pi_after_sigmoid():
    conv = gluon.nn.Conv2D(9, 3, padding=1, bias_initializer='priorprobability',
                           weight_initializer=mx.init.Normal(0.01))
    conv.initialize()
    probs = mx.nd.sigmoid(conv(mx.nd.random.normal(shape=(2, 4, 8, 8))))
    assert abs(probs.mean().asscalar() - 0.01) < 2e-3
    bias = conv.bias.data().asnumpy()
    np.testing.assert_allclose(bias, -np.log(0.99 / 0.01), rtol=1e-6)
    custom = gluon.nn.Dense(3, bias_initializer=gluon_focal.PriorProbability(0.2))
    custom.initialize()
    custom(mx.nd.ones((1, 2)))
    np.testing.assert_allclose(custom.bias.data().asnumpy(), -np.log(0.8 / 0.2), rtol=1e-6)


def test_prior_probability_survives_a_saved_symbol_graph(tmp_path):
    bias = mx.sym.var('cls_bias', init=gluon_focal.PriorProbability(0.05))
    net = mx.sym.FullyConnected(mx.sym.var('data'), bias=bias, num_hidden=4, name='cls')
    path = str(tmp_path / 'net.json')
    net.save(path)
    module = mx.mod.Module(mx.sym.load(path), data_names=['data'], label_names=None)
    module.bind(data_shapes=[('data', (1, 3))])
    module.init_params(mx.init.Uniform(0.1))
    arg_params, _ = module.get_params()
    np.testing.assert_allclose(arg_params['cls_bias'].asnumpy(), -np.log(0.95 / 0.05),
                               rtol=1e-6)
    with pytest.raises(ValueError, match=r'pi=1.5 must be in \(0, 1\)'):
        gluon_focal.PriorProbability(1.5)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('hybridize', [False, True])
def test_grad_req_add_accumulates(impl, hybridize):
    rng = np.random.RandomState(8)
    pred, label = make_case(rng, 'sparse', (3, 6, 4), -1)
    loss_fn = gluon_focal.FocalLoss(label_mode='sparse', impl=impl)
    if hybridize:
        loss_fn.hybridize(static_alloc=True)
    _, once = run_loss(loss_fn, pred, label)
    x = mx.nd.array(pred)
    x.attach_grad(grad_req='add')
    for _ in range(3):
        with autograd.record():
            out = loss_fn(x, mx.nd.array(label))
        out.backward()
    np.testing.assert_allclose(x.grad.asnumpy(), 3 * once, rtol=1e-5, atol=1e-9)


def test_batch_axis_after_the_class_axis_falls_back_to_the_composite_graph():
    rng = np.random.RandomState(9)
    pred = rng.normal(0, 2, (3, 4)).astype(np.float32)   # class axis 0, batch axis 1
    label = rng.randint(0, 3, (4,)).astype(np.float32)
    kwargs = dict(axis=0, batch_axis=1, label_mode='sparse', normalization='sum')
    auto = run_loss(gluon_focal.FocalLoss(impl='auto', **kwargs), pred, label)
    composite = run_loss(gluon_focal.FocalLoss(impl='composite', **kwargs), pred, label)
    assert_close(auto[0], composite[0])
    assert_close(auto[1], composite[1])
    with pytest.raises(ValueError, match=r"impl='fused' cannot run this layout: batch_axis \(1\) must come before"):
        _call(gluon_focal.FocalLoss(impl='fused', **kwargs), pred, label)


@pytest.mark.parametrize('impl', IMPLS)
def test_background_label_with_dense_labels_is_refused_by_name(impl):
    loss_fn = gluon_focal.FocalLoss(background_label=-1, impl=impl)
    with pytest.raises(ValueError, match='background_label applies to sparse labels only'):
        _call(loss_fn, np.zeros((2, 3)), np.zeros((2, 3)))


@pytest.mark.parametrize('alpha', [0.25, (0.1, 0.5, 0.9, 0.3)])
def test_dense_one_hot_and_soft_targets_alternate_in_one_hybridized_composite_loss(alpha):
    """Checked 0/1 dense targets run the hard-target graph, soft ones the general
    graph; one hybridized loss switches between them and both match the reference."""
    rng = np.random.RandomState(7)
    pred = rng.normal(0, 3, (3, 5, 4))
    one_hot = (rng.rand(3, 5, 4) < 0.3).astype(np.float64)
    soft = rng.rand(3, 5, 4)
    loss_fn = gluon_focal.FocalLoss(label_mode='dense', alpha=alpha, impl='composite')
    loss_fn.hybridize()
    for label in (one_hot, soft, one_hot):
        loss, grad = run_loss(loss_fn, pred, label)
        assert loss_fn._resolved.mode == ('binary' if label is one_hot else 'dense')
        expected, expected_grad = reference.focal_loss(pred, label, label_mode='dense',
                                                       alpha=alpha)
        assert_close(loss, expected)
        assert_close(grad, expected_grad)
