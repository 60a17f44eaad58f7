"""gluon_focal.nn.GroupNorm: the fused kernel against MXNet's GroupNorm and a numpy
reference, on every path (imperative, hybridized, nested, exported, grad_req='add',
fallback), and its errors."""
import json

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon

from gluon_focal import kernel
from gluon_focal.nn import GROUP_NORM_OP, GroupNorm

pytestmark = pytest.mark.skipif(not kernel.available(), reason='kernel library not built')


# -- numpy reference (MXNet 1.x semantics: gamma and beta per group) --------------------------
def reference(x, gamma, beta, groups, eps, dy):
    """(out, d x, d gamma, d beta) in float64, from the formula."""
    n = x.shape[0]
    xg = x.astype(np.float64).reshape(n, groups, -1)
    dyg = dy.astype(np.float64).reshape(n, groups, -1)
    g = gamma.astype(np.float64)[None, :, None]
    mean = xg.mean(-1, keepdims=True)
    inv_std = 1 / np.sqrt(xg.var(-1, keepdims=True) + eps)
    xhat = (xg - mean) * inv_std
    out = xhat * g + beta.astype(np.float64)[None, :, None]
    dxhat = dyg * g
    dx = inv_std * (dxhat - dxhat.mean(-1, keepdims=True)
                    - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return (out.reshape(x.shape), dx.reshape(x.shape), (dyg * xhat).sum((0, 2)),
            dyg.sum((0, 2)))


def inputs(shape, groups, dtype, seed):
    rng = np.random.RandomState(seed)
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    gamma = rng.uniform(0.5, 2, groups).astype(dtype)
    beta = rng.standard_normal(groups).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, gamma, beta, dy


def run_block(block, x, gamma, beta, dy, grad_req='write'):
    """(out, d x, d gamma, d beta) of an initialised block for one head gradient dy."""
    block.gamma.set_data(mx.nd.array(gamma, dtype=gamma.dtype))
    block.beta.set_data(mx.nd.array(beta, dtype=beta.dtype))
    data = mx.nd.array(x, dtype=x.dtype)
    data.attach_grad(grad_req)
    with autograd.record():
        # a view of the leaf (like a conv output) unless the test asks for grad_req='add'
        out = block(data if grad_req == 'add' else data.reshape(x.shape))
    out.backward(mx.nd.array(dy, dtype=dy.dtype))
    return (out.asnumpy(), data.grad.asnumpy(), block.gamma.grad().asnumpy(),
            block.beta.grad().asnumpy())


def make(groups, dtype='float32', eps=1e-5, impl='auto', hybridize=False):
    block = GroupNorm(num_groups=groups, epsilon=eps, impl=impl)
    block.initialize()
    block.cast(dtype)
    if hybridize:
        block.hybridize()
    return block


@pytest.fixture
def threads():
    old = kernel.get_num_threads()
    yield kernel.set_num_threads
    kernel.set_num_threads(old)


SHAPES = [((2, 4, 3), 2), ((1, 6, 5, 7), 3), ((3, 8, 1, 1), 8), ((2, 4, 3, 5, 2), 1),
          ((1, 12, 3, 3), 4), ((4, 64, 16, 16), 8)]   # the last one is split over threads


@pytest.mark.parametrize('dtype, tol', [('float32', 2e-5), ('float64', 1e-11)])
@pytest.mark.parametrize('shape, groups', SHAPES)
def test_matches_numpy_and_mxnet(shape, groups, dtype, tol, threads):
    x, gamma, beta, dy = inputs(shape, groups, dtype, seed=sum(shape))
    expected = reference(x, gamma, beta, groups, 1e-5, dy)
    mxnet_results = run_block(make(groups, dtype, impl='composite'), x, gamma, beta, dy)
    fused = {}
    for n in (1, 2):
        threads(n)
        fused[n] = run_block(make(groups, dtype), x, gamma, beta, dy)
        for name, got, want, theirs in zip(('out', 'dx', 'dgamma', 'dbeta'), fused[n],
                                           expected, mxnet_results):
            scale = max(1.0, np.abs(want).max())
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=name)
            np.testing.assert_allclose(got, theirs, rtol=10 * tol, atol=10 * tol * scale,
                                       err_msg=name)
    for a, b in zip(fused[1], fused[2]):   # any thread count gives the same bits
        np.testing.assert_array_equal(a, b)


def test_large_mean_does_not_cancel():
    # |mean| / std = 1e4: a one-pass E[x^2] - E[x]^2 in float32 would lose the variance
    x, gamma, beta, dy = inputs((2, 4, 6, 6), 2, 'float32', seed=1)
    x = (x - x.mean() + 1e4).astype('float32')
    got = run_block(make(2), x, gamma, beta, dy)
    want = reference(x, gamma, beta, 2, 1e-5, dy)
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=5e-3)
    np.testing.assert_allclose(got[2], want[2], rtol=1e-3, atol=1e-3)


def test_numerical_gradient():
    shape, groups, eps = (2, 6, 3, 2), 3, 1e-3
    x, gamma, beta, dy = inputs(shape, groups, 'float64', seed=3)
    _, dx, dgamma, dbeta = run_block(make(groups, 'float64', eps=eps), x, gamma, beta, dy)

    def loss(x_, gamma_, beta_):
        return float((reference(x_, gamma_, beta_, groups, eps, dy)[0] * dy).sum())
    h = 1e-6
    for analytic, index in ((dx, 0), (dgamma, 1), (dbeta, 2)):
        args = [x, gamma, beta]
        flat = args[index].reshape(-1)
        numeric = np.zeros_like(flat)
        for i in range(flat.size):
            plus, minus = [a.copy() for a in args], [a.copy() for a in args]
            plus[index].reshape(-1)[i] += h
            minus[index].reshape(-1)[i] -= h
            numeric[i] = (loss(*plus) - loss(*minus)) / (2 * h)
        np.testing.assert_allclose(analytic.reshape(-1), numeric, rtol=1e-6, atol=1e-7)


def test_float16_is_computed_in_float32():
    x, gamma, beta, dy = inputs((2, 8, 5, 5), 4, 'float16', seed=4)
    got = run_block(make(4, 'float16'), x, gamma, beta, dy)
    want = reference(x, gamma, beta, 4, 1e-5, dy)
    assert all(a.dtype == np.float16 for a in got)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2 * max(1.0, np.abs(b).max()))


# -- graphs ------------------------------------------------------------------------------------
def conv_gn(norm_cls, **kwargs):
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(8, 3, padding=1, in_channels=3), norm_cls(num_groups=4, **kwargs),
            gluon.nn.Activation('relu'))
    net.initialize(mx.init.Xavier())
    net[1].gamma.set_data(mx.nd.array([0.5, 1, 2, 3]))
    net[1].beta.set_data(mx.nd.array([0, 1, -1, 2]))
    return net


def train_step(net, x):
    with autograd.record():
        out = net(x)
    out.backward(mx.nd.sin(mx.nd.arange(out.size).reshape(out.shape)))
    return [out.asnumpy()] + [p.grad().asnumpy() for p in net.collect_params().values()]


@pytest.mark.parametrize('hybridize', [False, True])
def test_nested_in_a_hybridized_parent_matches_mxnet(hybridize, tmp_path):
    x = mx.nd.random.normal(shape=(2, 3, 7, 5))
    ours, theirs = conv_gn(GroupNorm), conv_gn(gluon.nn.GroupNorm)
    path = str(tmp_path / 'net.params')
    ours.save_parameters(path)
    theirs.load_parameters(path)   # checkpoints are interchangeable
    if hybridize:
        ours.hybridize()
        theirs.hybridize()
    for got, want in zip(train_step(ours, x), train_step(theirs, x)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert ours[1]._runs == 'fused'
    if hybridize:
        ops = {n['op'] for n in json.loads(ours._cached_graph[1].tojson())['nodes']}
        assert GROUP_NORM_OP in ops and 'GroupNorm' not in ops


def test_export_and_reload(tmp_path):
    net = conv_gn(GroupNorm)
    net.hybridize()
    x = mx.nd.random.normal(shape=(2, 3, 6, 6))
    expected = net(x).asnumpy()
    net.export(str(tmp_path / 'net'))
    graph = json.loads((tmp_path / 'net-symbol.json').read_text())
    assert GROUP_NORM_OP in {n['op'] for n in graph['nodes']}
    loaded = gluon.SymbolBlock.imports(str(tmp_path / 'net-symbol.json'), ['data'],
                                       str(tmp_path / 'net-0000.params'))
    np.testing.assert_allclose(loaded(x).asnumpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('hybridize', [False, True])
def test_grad_req_add_accumulates(hybridize):
    x, gamma, beta, dy = inputs((2, 8, 4, 3), 4, 'float32', seed=5)
    block = make(4, hybridize=hybridize)
    block.collect_params().setattr('grad_req', 'add')
    block.collect_params().zero_grad()
    once = run_block(make(4), x, gamma, beta, dy)
    data = mx.nd.array(x)
    data.attach_grad('add')
    block.gamma.set_data(mx.nd.array(gamma))
    block.beta.set_data(mx.nd.array(beta))
    for _ in range(2):
        with autograd.record():
            out = block(data)
        out.backward(mx.nd.array(dy))
    for got, want in zip((data.grad, block.gamma.grad(), block.beta.grad()), once[1:]):
        np.testing.assert_allclose(got.asnumpy(), 2 * want, rtol=1e-5, atol=1e-5)


# -- dispatch ----------------------------------------------------------------------------------
def test_falls_back_without_the_kernel(monkeypatch):
    x, gamma, beta, dy = inputs((2, 8, 3, 3), 4, 'float32', seed=6)
    fused = run_block(make(4), x, gamma, beta, dy)
    monkeypatch.setattr(kernel, 'available', lambda: False)
    block = make(4, hybridize=True)
    fallback = run_block(block, x, gamma, beta, dy)
    assert block._runs == 'composite'
    for a, b in zip(fused, fallback):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match='not loaded'):
        GroupNorm(num_groups=4, impl='fused')


def test_symbolic_graph_with_a_visible_gpu_uses_mxnet(monkeypatch):
    # the graph's context is unknown while a parent traces it: with a GPU visible it
    # may run there, where only MXNet's GroupNorm exists
    monkeypatch.setattr(mx.context, 'num_gpus', lambda: 1)
    block = make(4)
    out = block(mx.sym.var('data'))
    assert block._runs == 'composite'
    assert 'GroupNorm' in {n['op'] for n in json.loads(out.tojson())['nodes']}
    monkeypatch.setattr(mx.context, 'num_gpus', lambda: 0)
    out = block(mx.sym.var('data'))
    assert block._runs == 'fused'
    assert GROUP_NORM_OP in {n['op'] for n in json.loads(out.tojson())['nodes']}


def test_retinanet_gn_heads_use_it():
    from gluon_focal.detection.retinanet import _subnet
    head = _subnet(16, 16, 2, 4, 'zeros', norm='gn')
    norms = [b for b in head if isinstance(b, gluon.nn.GroupNorm)]
    assert len(norms) == 2 and all(isinstance(b, GroupNorm) for b in norms)
    assert norms[0].gamma.shape == (2,)


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize('shape, groups, match', [
    ((2, 8, 3), 3, r'gluon_focal_group_norm: num_groups=3 does not divide the 8 channels '
                   r'\(axis 1\) of data of shape \(2, 8, 3\)'),
    ((2, 8), 4, r'data must have at least 3 dimensions \(N x C x spatial...\), got shape \(2, 8\)'),
])
def test_bad_data_shape(shape, groups, match):
    with pytest.raises(mx.base.MXNetError, match=match):
        mx.nd.gluon_focal_group_norm(mx.nd.ones(shape), mx.nd.ones(groups), mx.nd.ones(groups),
                                     num_groups=groups)


def test_bad_parameters_and_dtypes():
    x = mx.nd.ones((2, 8, 3))
    with pytest.raises(mx.base.MXNetError, match=r'gamma must have shape \(4,\) \(one value per '
                                                 r'group.*got \(8,\)'):
        mx.nd.gluon_focal_group_norm(x, mx.nd.ones(8), mx.nd.ones(4), num_groups=4)
    with pytest.raises(mx.base.MXNetError, match=r'data must be float16, float32 or float64'):
        mx.nd.gluon_focal_group_norm(x.astype('int32'), mx.nd.ones(4, dtype='int32'),
                                     mx.nd.ones(4, dtype='int32'), num_groups=4)
    with pytest.raises(mx.base.MXNetError, match=r"attribute num_groups='0' must be an integer"):
        mx.nd.gluon_focal_group_norm(x, mx.nd.ones(4), mx.nd.ones(4), num_groups=0)
    with pytest.raises(mx.base.MXNetError, match=r"attribute eps='-1.0' must be a finite"):
        mx.nd.gluon_focal_group_norm(x, mx.nd.ones(4), mx.nd.ones(4), num_groups=4, eps=-1.0)
    with pytest.raises(ValueError, match="impl='bogus' is not one of"):
        GroupNorm(num_groups=4, impl='bogus')
    block = make(3)
    with pytest.raises(mx.base.MXNetError, match='num_groups=3 does not divide the 8 channels'):
        block(x).wait_to_read()
