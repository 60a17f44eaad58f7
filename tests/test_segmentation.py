"""Tests for gluon_focal.segmentation: loss layouts, aux weighting, metric,
synthetic data, VOC folder round trip, training, and the example script.

Expected loss values are computed here with a few lines of float64 numpy
written from the paper's formula, not with the library's code.
"""
import os
import sys

import numpy as np
import pytest

import mxnet as mx
from mxnet import autograd, gluon

import gluoncv
from gluoncv.utils.metrics import SegmentationMetric
from gluoncv.utils.parallel import DataParallelCriterion, DataParallelModel

from gluon_focal.segmentation import (SegmentationBCELoss, SegmentationFocalLoss,
                                      SigmoidSegmentationMetric, SyntheticSmallTargets,
                                      make_sample, sigmoid_to_two_class, voc_segmentation,
                                      write_voc_segmentation)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------- helpers
def np_focal(x, t, alpha=0.25, gamma=2.0):
    """Elementwise sigmoid focal loss, float64, straight from the formula."""
    x = np.asarray(x, np.float64)
    p = 1.0 / (1.0 + np.exp(-x))
    p_t = p * t + (1 - p) * (1 - t)
    ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    a_t = 1.0 if alpha is None else alpha * t + (1 - alpha) * (1 - t)
    return a_t * (1 - p_t) ** gamma * ce


def np_seg_loss(x, target, valid, normalization='valid', **kw):
    """Per-sample loss of N x C x H x W logits with dense target/valid masks."""
    elem = np_focal(x, target, **kw) * valid
    total = elem.reshape(len(x), -1).sum(1)
    if normalization == 'valid':
        return total / np.maximum(valid.reshape(len(x), -1).sum(1), 1)
    if normalization == 'mean':
        return total / elem[0].size
    if normalization == 'sum':
        return total
    if normalization == 'positive':
        return total / max((target * valid).sum(), 1)
    raise ValueError(normalization)


def one_hot_targets(label, num_class, ignore):
    """Sparse N x H x W labels -> (N x C x H x W target, valid)."""
    valid = (label != ignore)[:, None].astype(np.float64) * np.ones((1, num_class, 1, 1))
    target = (label[:, None] == np.arange(num_class)[None, :, None, None]).astype(np.float64)
    return target * valid, valid


def nd(a, dtype='float32'):
    return mx.nd.array(a, dtype=dtype)


RNG = np.random.RandomState(7)


# ------------------------------------------------------------------- multi-class loss
@pytest.mark.parametrize('dtype', ['int32', 'float32'])
@pytest.mark.parametrize('ignore', [-1, 255])
def test_multiclass_sparse_labels_match_numpy(dtype, ignore):
    x = RNG.randn(2, 4, 5, 6) * 2
    label = RNG.randint(0, 4, size=(2, 5, 6))
    label[0, :2, :3] = ignore
    label[1, 4, :] = ignore
    loss = SegmentationFocalLoss(aux=False, ignore_label=ignore)
    out = loss(nd(x), nd(label, dtype)).asnumpy()
    target, valid = one_hot_targets(label, 4, ignore)
    expected = np_seg_loss(x, target, valid)
    assert out.shape == (2,)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)


def test_ignored_pixels_do_not_matter():
    x = RNG.randn(1, 3, 4, 4)
    label = RNG.randint(0, 3, size=(1, 4, 4))
    label[0, 0] = -1
    loss = SegmentationFocalLoss(aux=False)
    x2 = x.copy()
    x2[0, :, 0] = 50.0                          # wild logits only where ignored
    a, b = loss(nd(x), nd(label)).asnumpy(), loss(nd(x2), nd(label)).asnumpy()
    np.testing.assert_allclose(a, b, rtol=1e-6)
    x3 = x.copy()
    x3[0, :, 1] += 3.0                          # ... but not where labelled
    assert abs(loss(nd(x3), nd(label)).asscalar() - a[0]) > 1e-4


@pytest.mark.parametrize('normalization', ['mean', 'sum', 'positive', 'valid'])
def test_normalizations(normalization):
    x = RNG.randn(2, 3, 4, 4)
    label = RNG.randint(-1, 3, size=(2, 4, 4))
    out = SegmentationFocalLoss(aux=False, normalization=normalization)(nd(x), nd(label))
    target, valid = one_hot_targets(label, 3, -1)
    np.testing.assert_allclose(out.asnumpy(), np_seg_loss(x, target, valid, normalization),
                               rtol=1e-5, atol=1e-7)


def test_multiclass_rejects_out_of_range_labels():
    x = nd(RNG.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match='class indices'):
        SegmentationFocalLoss(aux=False)(x, nd(np.full((1, 4, 4), 3)))
    with pytest.raises(ValueError, match='does not fit'):
        SegmentationFocalLoss(aux=False)(x, nd(np.zeros((1, 4, 5))))


# ------------------------------------------------------------------------- binary loss
@pytest.mark.parametrize('layout', ['NHW', 'N1HW'])
@pytest.mark.parametrize('dtype', ['float32', 'int32'])
@pytest.mark.parametrize('values', [(0, 1), (0, 255)])
def test_binary_masks(layout, dtype, values):
    x = RNG.randn(3, 1, 6, 5) * 3
    mask01 = (RNG.rand(3, 6, 5) < 0.2).astype(np.float64)
    ignore = RNG.rand(3, 6, 5) < 0.15
    raw = np.where(ignore, -1, mask01 * values[1])
    if layout == 'N1HW':
        raw = raw[:, None]
    loss = SegmentationFocalLoss(aux=False, binary_values=values)
    out = loss(nd(x), nd(raw, dtype)).asnumpy()
    valid = (~ignore)[:, None].astype(np.float64)
    expected = np_seg_loss(x, mask01[:, None] * valid, valid)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)


def test_binary_uint8_0_255_without_ignore():
    x = RNG.randn(2, 1, 4, 4)
    mask = (RNG.rand(2, 4, 4) < 0.3).astype(np.uint8) * 255
    out = SegmentationFocalLoss(aux=False, binary_values=(0, 255), ignore_label=None)(
        nd(x), nd(mask, 'uint8'))
    target = (mask[:, None] == 255).astype(np.float64)
    np.testing.assert_allclose(out.asnumpy(), np_seg_loss(x, target, np.ones_like(target)),
                               rtol=1e-5, atol=1e-7)


def test_binary_0_255_mask_with_default_values_raises():
    x = nd(RNG.randn(1, 1, 4, 4))
    mask = nd(np.where(RNG.rand(1, 4, 4) < 0.5, 255, 0))
    with pytest.raises(ValueError, match=r'binary_values=\(0, 255\)'):
        SegmentationFocalLoss(aux=False)(x, mask)
    with pytest.raises(ValueError, match='outside'):     # 1s in a 0/255 loss
        SegmentationFocalLoss(aux=False, binary_values=(0, 255))(x, nd(np.ones((1, 4, 4))))


def test_soft_binary_masks_need_validate_false():
    x = RNG.randn(1, 1, 3, 3)
    soft = RNG.rand(1, 3, 3) * 255
    with pytest.raises(ValueError):
        SegmentationFocalLoss(aux=False, binary_values=(0, 255))(nd(x), nd(soft))
    out = SegmentationFocalLoss(aux=False, binary_values=(0, 255), validate=False)(
        nd(x), nd(soft))
    t = soft[:, None] / 255.0
    np.testing.assert_allclose(out.asnumpy(), np_seg_loss(x, t, np.ones_like(t)), rtol=1e-5)


def test_multilabel_dense_targets_with_ignore():
    x = RNG.randn(2, 3, 4, 4)
    label = (RNG.rand(2, 3, 4, 4) < 0.3).astype(np.float64)
    label[RNG.rand(2, 3, 4, 4) < 0.1] = -1
    out = SegmentationFocalLoss(aux=False)(nd(x), nd(label)).asnumpy()
    valid = (label != -1).astype(np.float64)
    np.testing.assert_allclose(out, np_seg_loss(x, np.where(label == 1, 1.0, 0.0), valid),
                               rtol=1e-5, atol=1e-7)


def test_bce_is_gamma0_alpha_none():
    x = RNG.randn(2, 1, 4, 4)
    mask = (RNG.rand(2, 4, 4) < 0.3).astype(np.float64)
    out = SegmentationBCELoss(aux=False)(nd(x), nd(mask)).asnumpy()
    p = 1 / (1 + np.exp(-x[:, 0]))
    bce = -(mask * np.log(p) + (1 - mask) * np.log(1 - p))
    np.testing.assert_allclose(out, bce.mean(axis=(1, 2)), rtol=1e-5)
    with pytest.raises(ValueError):
        SegmentationBCELoss(gamma=2.0)


# ------------------------------------------------------------------------ aux weighting
def test_aux_weight_is_hand_computed_sum():
    main, aux = RNG.randn(2, 3, 5, 5), RNG.randn(2, 3, 5, 5)
    label = RNG.randint(-1, 3, size=(2, 5, 5)).astype(np.float32)
    out = SegmentationFocalLoss(aux=True, aux_weight=0.4)(nd(main), nd(aux), nd(label))
    target, valid = one_hot_targets(label, 3, -1)
    expected = np_seg_loss(main, target, valid) + 0.4 * np_seg_loss(aux, target, valid)
    np.testing.assert_allclose(out.asnumpy(), expected, rtol=1e-5)
    # two aux outputs with their own weights
    aux2 = RNG.randn(2, 3, 5, 5)
    out2 = SegmentationFocalLoss(aux_weight=[0.4, 0.1])(nd(main), nd(aux), nd(aux2), nd(label))
    np.testing.assert_allclose(out2.asnumpy(),
                               expected + 0.1 * np_seg_loss(aux2, target, valid), rtol=1e-5)


def test_aux_gradient_is_weighted():
    x = nd(RNG.randn(2, 1, 4, 4))
    label = nd((RNG.rand(2, 4, 4) < 0.3).astype(np.float32))
    main, aux = x.copy(), x.copy()
    main.attach_grad()
    aux.attach_grad()
    with autograd.record():
        loss = SegmentationFocalLoss(aux_weight=0.2)(main, aux, label)
    loss.backward()
    assert np.abs(main.grad.asnumpy()).max() > 0
    np.testing.assert_allclose(aux.grad.asnumpy(), 0.2 * main.grad.asnumpy(), rtol=1e-5,
                               atol=1e-9)


def test_aux_argument_errors():
    x, label = nd(RNG.randn(1, 1, 4, 4)), nd(np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match='aux=False'):
        SegmentationFocalLoss(aux=False)(x, x, label)
    with pytest.raises(ValueError, match='aux_weight'):
        SegmentationFocalLoss(aux_weight=[0.1, 0.2])(x, x, label)
    with pytest.raises(ValueError, match='differs'):
        SegmentationFocalLoss()(x, nd(np.zeros((1, 1, 2, 2))), label)


def test_hybridized_matches_imperative():
    main, aux = RNG.randn(2, 1, 6, 6), RNG.randn(2, 1, 6, 6)
    label = np.where(RNG.rand(2, 6, 6) < 0.1, -1, (RNG.rand(2, 6, 6) < 0.3) * 255)
    loss = SegmentationFocalLoss(binary_values=(0, 255))
    a = loss(nd(main), nd(aux), nd(label)).asnumpy()
    loss.hybridize()
    b = loss(nd(main), nd(aux), nd(label)).asnumpy()
    c = loss(nd(main), nd(aux), nd(label)).asnumpy()
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(a, c, rtol=1e-6)


# ---------------------------------------------------------------- with GluonCV models
def _fastscnn(nclass=1, size=64):
    net = gluoncv.model_zoo.FastSCNN(nclass, aux=True, pretrained_base=False, crop_size=size)
    net.collect_params().initialize(mx.init.Xavier(), force_reinit=True)
    return net


def test_real_gluoncv_model_outputs_and_data_parallel_criterion():
    mx.random.seed(0)
    net = _fastscnn()
    data = SyntheticSmallTargets('train', 4, 64, seed=3)
    x = mx.nd.stack(*[data[i][0] for i in range(4)]).transpose((0, 3, 1, 2)).astype('f') / 255
    label = mx.nd.stack(*[data[i][1] for i in range(4)])
    main, aux = net(x)                                  # inference mode: BN running stats
    assert main.shape == aux.shape == (4, 1, 64, 64)
    criterion = SegmentationFocalLoss()
    direct = criterion(main, aux, label).asnumpy()
    lab = label.asnumpy()
    valid = (lab != -1)[:, None].astype(np.float64)
    target = (lab == 1)[:, None] * valid
    expected = np_seg_loss(main.asnumpy(), target, valid) + \
        0.2 * np_seg_loss(aux.asnumpy(), target, valid)
    np.testing.assert_allclose(direct, expected, rtol=1e-4)

    # GluonCV's multi-device wrappers: criterion(*outputs, target) per device
    ctx = [mx.cpu(0), mx.cpu(1)]
    net.collect_params().reset_ctx(ctx)
    model = DataParallelModel(net, ctx_list=ctx)
    outputs = model(x)
    assert len(outputs) == 2 and len(outputs[0]) == 2   # per device: (main, aux)
    losses = DataParallelCriterion(criterion, ctx_list=ctx)(outputs, label)
    assert len(losses) == 2
    together = np.concatenate([l.asnumpy().reshape(-1) for l in losses])
    np.testing.assert_allclose(together, direct, rtol=1e-4)
    # a single context goes through DataParallelCriterion's other branch
    single = DataParallelCriterion(criterion, ctx_list=[mx.cpu(0)])(
        [tuple(o.as_in_context(mx.cpu(0)) for o in net(x))], label)
    np.testing.assert_allclose(np.concatenate([l.asnumpy() for l in single]), direct, rtol=1e-4)


def training_losses(net, criterion, size, seed, steps):
    """The mean loss of each of ``steps`` adam steps of ``net`` on one batch of eight
    SyntheticSmallTargets images of side ``size``."""
    data = SyntheticSmallTargets('train', 8, size, seed=seed)
    x = mx.nd.stack(*[data[i][0] for i in range(8)]).transpose((0, 3, 1, 2)).astype('f')
    x = (x / 255 - 0.5) / 0.25
    label = mx.nd.stack(*[data[i][1] for i in range(8)])
    criterion.hybridize()
    trainer = gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 0.01})
    losses = []
    for _ in range(steps):
        with autograd.record():
            loss = criterion(*net(x), label)
        loss.backward()
        trainer.step(8)
        losses.append(loss.mean().asscalar())
    return losses


def test_a_few_training_steps_reduce_the_loss():
    mx.random.seed(1)
    net = _fastscnn()
    for conv in (net.classifier.conv, net.auxlayer.block[-1]):
        conv.bias.initialize(mx.init.Constant(-4.6), force_reinit=True)
    net.hybridize()
    losses = training_losses(net, SegmentationFocalLoss(normalization='positive'),
                             size=64, seed=1, steps=12)
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2]), losses


# ------------------------------------------------------------------------------ metric
def test_metric_binary_hand_computed():
    # logits -> positive where > 0 (threshold 0.5)
    pred = np.array([[[[2., -1., 3.], [-2., 1., -3.]]]])      # 1 x 1 x 2 x 3
    label = np.array([[[1, 1, -1], [0, 0, 1]]])                # ignore at (0, 2)
    m = SigmoidSegmentationMetric()
    m.update(nd(label), nd(pred))
    # counted: (0,0) tp, (0,1) fn, (1,0) tn, (1,1) fp, (1,2) fn
    names, (pix, iou, f1) = m.get()
    assert names == ['pixAcc', 'IoU', 'F1']
    assert pix == pytest.approx(2 / 5)
    assert iou == pytest.approx(1 / 4)
    assert f1 == pytest.approx(2 / 5)
    # accumulates: the same batch again with N x 1 x H x W labels leaves ratios equal
    m.update([nd(label[:, None])], [nd(pred)])
    assert m.get()[1][1] == pytest.approx(1 / 4)
    assert m.tp[0] == 2 and m.fn[0] == 4
    m.reset()
    assert np.isnan(m.get()[1][1])


def test_metric_threshold_probabilities_and_0_255():
    prob = np.array([[[[0.9, 0.35], [0.25, 0.05]]]])
    label = np.array([[[255, 255], [0, 0]]])
    m = SigmoidSegmentationMetric(threshold=0.3, from_sigmoid=True, binary_values=(0, 255))
    m.update(nd(label), nd(prob))
    assert m.get()[1][1] == pytest.approx(1.0)
    m = SigmoidSegmentationMetric(threshold=0.5, from_sigmoid=True, binary_values=(0, 255))
    m.update(nd(label), nd(prob))
    assert m.get()[1][1] == pytest.approx(0.5)
    # the metric checks labels with the loss's validator: value, position and the mapping
    with pytest.raises(ValueError, match=r'label value 255 at position \(0, 0, 0\).*'
                                         r'binary_values=\(0, 1\)'):
        SigmoidSegmentationMetric().update(nd(label), nd(prob))


def test_metric_per_class_multiclass_and_multilabel():
    pred = np.full((1, 2, 2, 2), -5.0)
    pred[0, 0, 0, :] = 5          # class 0 predicted on row 0
    pred[0, 1, :, 1] = 5          # class 1 predicted on column 1
    sparse = np.array([[[0, 0], [1, -1]]])
    m = SigmoidSegmentationMetric()
    m.update(nd(sparse), nd(pred))
    per = m.get_per_class()
    # class 0: pred {(0,0),(0,1)}, true {(0,0),(0,1)} -> IoU 1
    # class 1: pred {(0,1)} (1,1) ignored, true {(1,0)} -> IoU 0
    np.testing.assert_allclose(per['IoU'], [1.0, 0.0])
    np.testing.assert_allclose(per['F1'], [1.0, 0.0])
    assert m.get()[1][1] == pytest.approx(0.5)
    dense = np.zeros((1, 2, 2, 2))
    dense[0, 0, 0, 0] = 1
    dense[0, 1, :, 1] = 1
    dense[0, 1, 0, 0] = -1
    m = SigmoidSegmentationMetric()
    m.update(nd(dense), nd(pred))
    # class 0: pred 2 px, true 1 px, tp 1 -> IoU 1/2; class 1: exact -> 1
    np.testing.assert_allclose(m.get_per_class()['IoU'], [0.5, 1.0])


def test_metric_best_threshold_hand_computed():
    # probabilities and labels of 6 pixels, the last one ignored
    prob = np.array([[[[0.9, 0.6, 0.3, 0.2, 0.1, 0.95]]]])
    label = np.array([[[1, 1, 0, 1, 0, -1]]])
    m = SigmoidSegmentationMetric(from_sigmoid=True, sweep=(0.75, 0.5, 0.25, 0.15))
    m.update(nd(label), nd(prob))
    # p > t:  0.15 -> tp 3 fp 1 fn 0;  0.25 -> tp 2 fp 1 fn 1;  0.5 -> tp 2 fn 1;  0.75 -> tp 1 fn 2
    by_t = m.get_by_threshold()
    assert list(by_t) == [0.15, 0.25, 0.5, 0.75]
    np.testing.assert_allclose(list(by_t.values()), [3 / 4, 2 / 4, 2 / 3, 1 / 3])
    assert m.get_best_threshold() == (0.15, pytest.approx(0.75))
    assert m.get()[1][1] == pytest.approx(by_t[0.5])        # the main threshold agrees
    m.update(nd(label), nd(prob))                           # accumulates like the rest
    assert m.get_best_threshold() == (0.15, pytest.approx(0.75))
    assert m.swept[0.15][0][0] == 6
    # logits in (the default) give the same counts
    logits = np.log(prob) - np.log1p(-prob)
    m2 = SigmoidSegmentationMetric(sweep=(0.75, 0.5, 0.25, 0.15))
    m2.update(nd(label), nd(logits))
    assert m2.get_by_threshold() == pytest.approx(by_t)
    m.reset()
    assert np.isnan(m.get_best_threshold()[1])
    off = SigmoidSegmentationMetric(from_sigmoid=True, sweep=())
    off.update(nd(label), nd(prob))
    assert off.get_by_threshold() == {} and np.isnan(off.get_best_threshold()[0])
    with pytest.raises(ValueError, match='threshold'):
        SigmoidSegmentationMetric(sweep=(0.5, 1.0))


def test_sigmoid_to_two_class_feeds_gluoncv_metric():
    logits = np.array([[[[2., -1.], [0.5, -3.]]]])
    label = np.array([[[1, 1], [0, -1]]])
    two = sigmoid_to_two_class(nd(logits))
    assert two.shape == (1, 2, 2, 2)
    np.testing.assert_array_equal(two.asnumpy()[0, 1], [[1, 0], [1, 0]])
    m = SegmentationMetric(nclass=2)
    m.update(nd(label), two)
    pix, miou = m.get()
    # counted: (0,0) fg/fg, (0,1) fg->bg, (1,0) bg->fg: bg IoU 0/2, fg IoU 1/3
    assert pix == pytest.approx(1 / 3)
    assert miou == pytest.approx((0 + 1 / 3) / 2)
    # ... which matches this library's metric on the foreground class
    ours = SigmoidSegmentationMetric()
    ours.update(nd(label), nd(logits))
    assert ours.get()[1][1] == pytest.approx(m.total_inter[1] / m.total_union[1])


# -------------------------------------------------------------------------------- data
def test_synthetic_data_is_deterministic_small_and_sparse():
    a, b = SyntheticSmallTargets('train', 40, 64, seed=5), SyntheticSmallTargets('train', 40, 64,
                                                                                 seed=5)
    img, mask = a[3]
    assert img.dtype == np.uint8 and img.shape == (64, 64, 3)
    assert mask.dtype == np.int32 and mask.shape == (64, 64)
    np.testing.assert_array_equal(img.asnumpy(), b[3][0].asnumpy())
    assert not np.array_equal(img.asnumpy(), a[4][0].asnumpy())
    assert not np.array_equal(a.sample(3)[0], SyntheticSmallTargets('val', 40, 64,
                                                                    seed=5).sample(3)[0])
    fractions = []
    for i in range(40):
        m = a.sample(i)[1]
        assert set(np.unique(m)) <= {-1, 0, 1}
        fg = (m == 1).sum()
        assert 1 <= fg <= 0.01 * m.size
        fractions.append(fg / m.size)
    assert np.mean(fractions) < 0.01
    # faint: a target's mean brightness is only a little above its surroundings
    img, m = make_sample(5, 'train', 0)
    grey = img.astype(np.float64).mean(axis=2)
    assert grey[m == 1].mean() - grey[m == 0].mean() < 0.35 * 255
    with pytest.raises(IndexError):
        a.sample(40)


def test_voc_folder_round_trip(tmp_path):
    root = str(tmp_path / 'VOCdevkit')
    write_voc_segmentation(root, num_train=5, num_val=3, size=48, seed=2)
    for sub in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation/train.txt',
                'ImageSets/Segmentation/val.txt', 'ImageSets/Segmentation/trainval.txt'):
        assert os.path.exists(os.path.join(root, 'VOC2012', sub))
    val = gluoncv.data.VOCSegmentation(root=root, split='val', mode='testval')
    ours = SyntheticSmallTargets('val', 3, 48, seed=2)
    assert len(val) == 3
    for i in range(3):
        img, mask = val[i]
        ref_img, ref_mask = ours[i]
        np.testing.assert_array_equal(mask.asnumpy(), ref_mask.asnumpy())   # 255 -> -1
        diff = np.abs(img.asnumpy().astype(np.int32) - ref_img.asnumpy().astype(np.int32))
        assert diff.mean() < 2.0 and diff.max() < 40
    # GluonCV's split='train' reads trainval.txt; voc_segmentation keeps train.txt's ids
    assert len(gluoncv.data.VOCSegmentation(root=root, split='train')) == 8
    train = voc_segmentation(root, 'train', mode='testval')
    assert len(train) == 5
    assert all('train_' in os.path.basename(p) for p in train.images)
    np.testing.assert_array_equal(train[4][1].asnumpy(),
                                  SyntheticSmallTargets('train', 5, 48, seed=2)[4][1].asnumpy())


# ---------------------------------------------------------------------- example script
def test_example_script_checkpoints_resume_and_pictures(tmp_path, capsys):
    import json
    sys.path.insert(0, os.path.join(ROOT, 'examples'))
    try:
        import train_segmentation as example
    finally:
        sys.path.pop(0)
    out = str(tmp_path / 'run')
    common = ['--train-size', '16', '--val-size', '8', '--batch-size', '8',
              '--out-dir', out, '--num-panels', '2']
    first = example.main(['--epochs', '1'] + common)
    assert len(first['val_IoU']) == 1 and 0.0 <= first['val_IoU'][0] <= 1.0
    assert sorted(os.listdir(out)) == ['checkpoint.json', 'curves.png', 'epoch-0001.params',
                                       'epoch-0001.states', 'predictions.png', 'results.json']
    # a larger --epochs extends the run (and its poly schedule) to the new end
    resumed = example.main(['--epochs', '2', '--resume'] + common)
    assert resumed['loss'][:1] == first['loss'] and len(resumed['loss']) == 2
    with open(os.path.join(out, 'checkpoint.json')) as f:
        entry = json.load(f)
    assert entry['epoch'] == 2 and entry['params'] == 'epoch-0002.params'
    assert entry['history'] == resumed
    with open(os.path.join(out, 'results.json')) as f:
        results = json.load(f)
    assert results['epochs'] == [1, 2] and results['history'] == resumed
    final = results['final']
    assert final['val_IoU'] == resumed['val_IoU'][-1]
    assert final['best_threshold_IoU'] >= final['val_IoU']
    assert results['args']['epochs'] == 2 and results['args']['resume'] is True
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith('final validation IoU %.3f at threshold 0.50' % final['val_IoU'])
    assert 'after 2 epochs' in last
    for name in ('predictions.png', 'curves.png'):
        path = os.path.join(out, name)
        assert os.path.getsize(path) > 1000
        with open(path, 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    # fewer epochs than already trained: refused, the checkpoint left as it was
    with pytest.raises(SystemExit, match='holds 2 trained epochs but --epochs is 1'):
        example.main(['--epochs', '1', '--resume'] + common)
    with open(os.path.join(out, 'checkpoint.json')) as f:
        assert json.load(f) == entry


# ------------------------------------------------ GluonCV's scripts/segmentation/train.py
def _docs_block(marker):
    """The fenced code block that follows ``<!-- recipe:<marker> ...`` in the docs."""
    with open(os.path.join(ROOT, 'docs', 'segmentation.md')) as f:
        text = f.read()
    start = text.index('<!-- recipe:%s' % marker)
    start = text.index('```python\n', start) + len('```python\n')
    return text[start:text.index('```', start)]


def test_gluoncv_train_script_binary_recipe(tmp_path):
    """The docs' binary recipe, making the calls GluonCV's train.py makes."""
    from mxnet.gluon.data.vision import transforms
    from gluoncv.data import datasets, get_segmentation_dataset
    from gluoncv.model_zoo.segbase import SegEvalModel, get_segmentation_model
    root = str(tmp_path / 'onecls')
    write_voc_segmentation(root, num_train=4, num_val=4, size=64, seed=6)
    namespace = {}
    exec(compile(_docs_block('onecls.py'), 'onecls.py', 'exec'), namespace)
    namespace['ROOT'] = root
    try:
        # Trainer.__init__: datasets and model from --dataset onecls --model fastscnn --aux
        transform = transforms.Compose([transforms.ToTensor(),
                                        transforms.Normalize([.485, .456, .406],
                                                             [.229, .224, .225])])
        data_kwargs = {'transform': transform, 'base_size': 64, 'crop_size': 64}
        trainset = get_segmentation_dataset('onecls', split='train', mode='train',
                                            **data_kwargs)
        valset = get_segmentation_dataset('onecls', split='val', mode='val', **data_kwargs)
        assert trainset.num_class == 1
        model = get_segmentation_model(model='fastscnn', dataset='onecls', backbone='resnet50',
                                       norm_layer=mx.gluon.nn.BatchNorm, norm_kwargs={},
                                       aux=True, base_size=64, crop_size=64)
        ctx = [mx.cpu(0)]
        net = DataParallelModel(model, ctx)
        evaluator = DataParallelModel(SegEvalModel(model), ctx)
        criterion = DataParallelCriterion(
            SegmentationFocalLoss(True, aux_weight=0.5, dice_weight=1.0), ctx)
        trainer = gluon.Trainer(model.collect_params(), 'sgd',
                                {'learning_rate': 0.01, 'momentum': 0.9})
        # Trainer.training: one step
        data, target = next(iter(gluon.data.DataLoader(trainset, 4, shuffle=True)))
        with autograd.record(True):
            outputs = net(data)
            losses = criterion(outputs, target)
        autograd.backward(losses)
        trainer.step(4)
        assert outputs[0][0].shape == (4, 1, 64, 64)
        assert all(np.isfinite(l.asnumpy()).all() for l in losses)
        # Trainer.validation with the edited metric lines
        metric = gluoncv.utils.metrics.SegmentationMetric(2)
        ours = SigmoidSegmentationMetric()
        for data, target in gluon.data.DataLoader(valset, 2):
            outputs = [x[0] for x in evaluator(data)]
            targets = gluon.utils.split_and_load(target, ctx, even_split=False)
            metric.update(targets, [sigmoid_to_two_class(x) for x in outputs])
            ours.update(targets, outputs)
        pix_acc, miou = metric.get()
        assert 0 <= pix_acc <= 1 and 0 <= miou <= 1
        # GluonCV's foreground class is exactly this library's foreground IoU
        np.testing.assert_allclose(metric.total_inter[1] / max(metric.total_union[1], 1),
                                   np.nan_to_num(ours.get()[1][1]), rtol=1e-6)
    finally:
        datasets.pop('onecls', None)


def test_gluoncv_train_script_multiclass_recipe(tmp_path):
    """Multi-class: only the loss line changes; the script's metric argmaxes the logits."""
    from gluoncv.data import get_segmentation_dataset
    from gluoncv.model_zoo.segbase import SegEvalModel, get_segmentation_model
    root = str(tmp_path / 'voc')
    write_voc_segmentation(root, num_train=2, num_val=2, size=64, seed=7)
    trainset = get_segmentation_dataset('pascal_voc', root=root, split='train', mode='train',
                                        transform=lambda img: mx.nd.image.to_tensor(img),
                                        base_size=64, crop_size=64)
    model = get_segmentation_model(model='fastscnn', dataset='pascal_voc', backbone='resnet50',
                                   norm_layer=mx.gluon.nn.BatchNorm, norm_kwargs={}, aux=True,
                                   base_size=64, crop_size=64)
    ctx = [mx.cpu(0)]
    net = DataParallelModel(model, ctx)
    criterion = DataParallelCriterion(SegmentationFocalLoss(True, aux_weight=0.5), ctx)
    data, target = next(iter(gluon.data.DataLoader(trainset, 2)))
    with autograd.record(True):
        outputs = net(data)
        losses = criterion(outputs, target)
    autograd.backward(losses)
    assert outputs[0][0].shape == (2, 21, 64, 64)
    assert all(np.isfinite(l.asnumpy()).all() and (l.asnumpy() > 0).all() for l in losses)
    metric = gluoncv.utils.metrics.SegmentationMetric(trainset.num_class)
    outputs = [x[0] for x in DataParallelModel(SegEvalModel(model), ctx)(data)]
    metric.update(gluon.utils.split_and_load(target, ctx), outputs)
    pix_acc, miou = metric.get()
    assert 0 <= pix_acc <= 1 and 0 <= miou <= 1
