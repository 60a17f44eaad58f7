"""gluon_focal.nn.Conv2D: nn.Conv2D with its output channels padded to MKLDNN's
16-channel blocks. Same parameters (names, shapes), outputs and gradients as
MXNet's Conv2D on every path (imperative, hybridized, nested, exported), padded
only where it helps, and a clear error for a bad option."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, gluon
from mxnet.gluon import nn

from gluon_focal.nn import Conv2D

MKLDNN = mx.runtime.Features().is_enabled('MKLDNN')


def pair(channels, in_channels=8, seed=0, **kwargs):
    """(MXNet's Conv2D, ours) with the same parameter values."""
    mx.random.seed(seed)
    ref = nn.Conv2D(channels, 3, padding=1, in_channels=in_channels, **kwargs)
    ref.initialize(mx.init.Normal(0.5))
    ours = Conv2D(channels, 3, padding=1, in_channels=in_channels, pad_channels=True,
                  **kwargs)
    ours.initialize()
    for a, b in zip(ref.collect_params().values(), ours.collect_params().values()):
        b.set_data(a.data())
    return ref, ours


def run(block, x, dy):
    x = x.copy()
    x.attach_grad()
    with autograd.record():
        y = block(x)
    y.backward(dy)
    return [y.asnumpy(), x.grad.asnumpy()] + [p.grad().asnumpy()
                                             for p in block.collect_params().values()]


@pytest.mark.parametrize('channels,use_bias,activation', [(45, True, None), (36, False, None),
                                                          (13, True, 'relu')])
@pytest.mark.parametrize('hybridize', [False, True])
def test_same_outputs_and_gradients_as_mxnet_conv2d(channels, use_bias, activation, hybridize):
    ref, ours = pair(channels, use_bias=use_bias, activation=activation)
    assert ours._pads(mx.nd.zeros(1))   # padded: 45 -> 48, 36 -> 48, 13 -> 16
    if hybridize:
        ref.hybridize()
        ours.hybridize()
    rng = np.random.RandomState(1)
    x = mx.nd.array(rng.standard_normal((2, 8, 7, 5)))
    dy = mx.nd.array(rng.standard_normal((2, channels, 7, 5)))
    want, got = run(ref, x, dy), run(ours, x, dy)
    assert len(got) == (4 if use_bias else 3)
    for a, b in zip(want, got):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    # the gradient is not zero (the padding's zeros are sliced off, not mixed in)
    assert np.abs(got[2]).min() > 0


def test_same_parameter_names_so_checkpoints_load_either_way(tmp_path):
    ref = nn.Conv2D(45, 3, in_channels=8)
    ours = Conv2D(45, 3, in_channels=8)
    assert [p.name.split('_', 1)[1] for p in ref.collect_params().values()] == \
        [p.name.split('_', 1)[1] for p in ours.collect_params().values()] == ['weight', 'bias']
    ref.initialize()
    ref.save_parameters(str(tmp_path / 'conv.params'))
    ours.load_parameters(str(tmp_path / 'conv.params'))
    np.testing.assert_array_equal(ours.weight.data().asnumpy(), ref.weight.data().asnumpy())


def test_pads_only_where_it_helps():
    cpu = mx.nd.zeros(1)
    # a multiple of 16 needs nothing; few channels would cost more than they save
    for channels in (16, 64, 4, 9, 11):
        assert not Conv2D(channels, 3)._pads(cpu)
    assert Conv2D(45, 3)._pads(cpu) == MKLDNN
    assert Conv2D(12, 3)._pads(cpu) == MKLDNN
    assert not Conv2D(45, 3, pad_channels=False)._pads(cpu)
    assert not Conv2D(45, 3, layout='NHWC', pad_channels=True)._pads(cpu)
    # a Symbol (inside a hybridized parent): padded when the graph can only run on CPU
    assert Conv2D(45, 3)._pads(mx.sym.var('x')) == (MKLDNN and mx.context.num_gpus() == 0)


def test_nested_in_hybridized_parent_and_exported(tmp_path):
    ref, ours = pair(45)
    net = nn.HybridSequential()
    net.add(ours, nn.Activation('relu'))
    net.hybridize()
    x = mx.nd.array(np.random.RandomState(2).standard_normal((2, 8, 6, 6)))
    want = mx.nd.relu(ref(x)).asnumpy()
    np.testing.assert_allclose(net(x).asnumpy(), want, rtol=1e-5, atol=1e-5)
    net.export(str(tmp_path / 'net'))
    loaded = gluon.SymbolBlock.imports(str(tmp_path / 'net-symbol.json'), ['data'],
                                       str(tmp_path / 'net-0000.params'))
    np.testing.assert_allclose(loaded(x).asnumpy(), want, rtol=1e-5, atol=1e-5)


def test_bad_pad_channels_is_refused():
    with pytest.raises(ValueError, match="pad_channels must be 'auto', True or False, got 'yes'"):
        Conv2D(45, 3, pad_channels='yes')
