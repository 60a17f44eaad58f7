"""Tests for SmallTargetUNet: output shapes, prior init, export, and a few
training steps that must reduce the focal + Dice loss."""
import numpy as np
import pytest

import mxnet as mx
from mxnet import gluon

from gluon_focal.segmentation import (SegmentationFocalLoss, SmallTargetUNet,
                                      get_small_target_unet)
from test_segmentation import training_losses


@pytest.mark.parametrize('nclass, aux, size', [(1, True, (64, 48)), (3, False, (37, 29))])
def test_output_shapes_are_full_resolution(nclass, aux, size):
    net = get_small_target_unet(nclass, aux=aux, width=4)
    x = mx.nd.random.normal(shape=(2, 3) + size)
    outputs = net(x)
    assert isinstance(outputs, tuple) and len(outputs) == (2 if aux else 1)
    for out in outputs:
        assert out.shape == (2, nclass) + size
    net.hybridize()
    hybrid = net(x)
    for a, b in zip(outputs, hybrid):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-4, atol=1e-5)


def test_prior_probability_init_and_no_pretrained():
    net = get_small_target_unet(1, width=4, prior_pi=0.01)
    # zero input: every conv without bias gives 0, inference BN keeps 0, so the
    # logits are the final biases, i.e. p = pi for every pixel of both outputs
    for out in net(mx.nd.zeros((1, 3, 16, 16))):
        np.testing.assert_allclose(mx.nd.sigmoid(out).asnumpy(), 0.01, rtol=1e-5)
    assert len(net.final_convs()) == 2
    with pytest.raises(ValueError, match='pretrained'):
        get_small_target_unet(pretrained=True)


def test_exports_and_reloads(tmp_path):
    net = get_small_target_unet(1, width=4)
    net.hybridize()
    x = mx.nd.random.normal(shape=(1, 3, 24, 24))
    expected = net(x)
    prefix = str(tmp_path / 'unet')
    net.export(prefix)
    loaded = gluon.SymbolBlock.imports(prefix + '-symbol.json', ['data'],
                                       prefix + '-0000.params')
    for a, b in zip(expected, loaded(x)):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-5, atol=1e-6)


def test_a_few_steps_reduce_focal_plus_dice_loss():
    mx.random.seed(2)
    net = SmallTargetUNet(1, width=8)
    net.initialize(mx.init.Xavier(magnitude=2))
    net.hybridize()
    losses = training_losses(net, SegmentationFocalLoss(dice_weight=1.0,
                                                        normalization='positive'),
                             size=32, seed=4, steps=10)
    assert np.isfinite(losses).all()
    assert np.mean(losses[-2:]) < 0.7 * np.mean(losses[:2]), losses
