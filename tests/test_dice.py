"""Tests for the soft Dice loss and its combination with the focal loss.

Expected values come from a few lines of float64 numpy written from the
formula ``1 - (2 I + smooth_nr) / (S + smooth_dr)``, not from the library.
"""
import numpy as np
import pytest

import mxnet as mx
from mxnet import autograd

from gluoncv.utils.parallel import DataParallelCriterion

from gluon_focal.segmentation import DiceLoss, SegmentationBCELoss, SegmentationFocalLoss

RNG = np.random.RandomState(11)


def nd(a, dtype='float32'):
    return mx.nd.array(a, dtype=dtype)


def np_dice(x, label, ignore=-1, smooth_nr=1.0, smooth_dr=1.0, batch=False,
            from_sigmoid=False):
    """Per-sample Dice loss (N,) of N x C x ... logits and dense targets."""
    x = np.asarray(x, np.float64)
    p = x if from_sigmoid else 1 / (1 + np.exp(-x))
    valid = (label != ignore).astype(np.float64)
    t = np.where(valid > 0, label, 0).astype(np.float64)
    axes = tuple(range(2, x.ndim))
    if batch:
        axes = (0,) + axes
    inter = (p * t * valid).sum(axis=axes)
    total = (p * valid).sum(axis=axes) + (t * valid).sum(axis=axes)
    loss = (1 - (2 * inter + smooth_nr) / (total + smooth_dr)).mean(axis=-1)
    return np.broadcast_to(loss, (len(x),))


def np_focal(x, t, alpha=0.25, gamma=2.0):
    p = 1 / (1 + np.exp(-np.asarray(x, np.float64)))
    p_t = p * t + (1 - p) * (1 - t)
    ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    a_t = 1.0 if alpha is None else alpha * t + (1 - alpha) * (1 - t)
    return a_t * (1 - p_t) ** gamma * ce


def np_focal_valid(x, target, valid, **kw):
    """SegmentationFocalLoss's default 'valid' normalisation, per sample."""
    elem = np_focal(x, target, **kw) * valid
    return elem.reshape(len(x), -1).sum(1) / np.maximum(valid.reshape(len(x), -1).sum(1), 1)


def masks(shape, fg=0.3, ignore=0.15):
    label = (RNG.rand(*shape) < fg).astype(np.float64)
    label[RNG.rand(*shape) < ignore] = -1
    return label


# ------------------------------------------------------------------------ the formula
@pytest.mark.parametrize('batch', [False, True])
@pytest.mark.parametrize('num_class', [1, 3])
@pytest.mark.parametrize('smooth', [(1.0, 1.0), (1e-5, 1e-5), (0.0, 0.5)])
def test_matches_numpy_formula(batch, num_class, smooth):
    x = RNG.randn(4, num_class, 5, 6) * 2
    label = masks(x.shape)
    loss = DiceLoss(batch=batch, smooth_nr=smooth[0], smooth_dr=smooth[1], ignore_label=-1)
    out = loss(nd(x), nd(label)).asnumpy()
    assert out.shape == (4,)
    expected = np_dice(x, label, -1, smooth[0], smooth[1], batch)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    loss.hybridize()
    np.testing.assert_allclose(loss(nd(x), nd(label)).asnumpy(), expected, rtol=1e-5,
                               atol=1e-6)


def test_closed_forms_and_monai_smp_semantics():
    # perfect probabilities and equal smoothing: loss 0; disjoint: 1 - s / (S + s)
    t = np.zeros((1, 1, 4, 4))
    t[0, 0, :2] = 1
    out = DiceLoss(from_sigmoid=True)(nd(t), nd(t)).asscalar()
    assert out == pytest.approx(0.0, abs=1e-7)
    out = DiceLoss(from_sigmoid=True)(nd(1 - t), nd(t)).asscalar()
    assert out == pytest.approx(1 - 1 / (16 + 1), rel=1e-6)
    # SMP DiceLoss(smooth=s) reduces over batch and pixels: our batch=True with
    # smooth_nr = smooth_dr = s (every class present, so SMP's empty-class mask is moot)
    p = RNG.rand(3, 2, 4, 4)
    label = (RNG.rand(3, 2, 4, 4) < 0.5).astype(np.float64)
    label[0, :, 0, 0] = 1
    s = 0.3
    inter = (p * label).sum(axis=(0, 2, 3))
    card = (p + label).sum(axis=(0, 2, 3))
    smp = np.mean(1 - (2 * inter + s) / (card + s))
    out = DiceLoss(from_sigmoid=True, batch=True, smooth_nr=s, smooth_dr=s)(nd(p), nd(label))
    np.testing.assert_allclose(out.asnumpy(), smp, rtol=1e-5)
    # MONAI DiceLoss(reduction='mean') is the mean over samples and classes
    monai = np.mean(1 - (2 * (p * label).sum(axis=(2, 3)) + 1e-5)
                    / ((p + label).sum(axis=(2, 3)) + 1e-5))
    out = DiceLoss(from_sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)(nd(p), nd(label))
    assert out.asnumpy().mean() == pytest.approx(monai, rel=1e-5)


def test_ignored_elements_count_nowhere():
    x = RNG.randn(2, 1, 6, 6)
    label = masks(x.shape)
    x2 = np.where(label == -1, 40.0, x)          # wild logits only where ignored
    loss = DiceLoss(ignore_label=-1)
    np.testing.assert_allclose(loss(nd(x), nd(label)).asnumpy(),
                               loss(nd(x2), nd(label)).asnumpy(), rtol=1e-6)
    assert not np.allclose(loss(nd(x + 1), nd(label)).asnumpy(),
                           loss(nd(x), nd(label)).asnumpy())


def test_empty_foreground_and_all_ignored_are_finite():
    x = nd(np.full((2, 1, 4, 4), -8.0))
    empty = nd(np.zeros((2, 1, 4, 4)))
    ignored = nd(np.full((2, 1, 4, 4), -1.0))
    x.attach_grad()
    for label in (empty, ignored):
        with autograd.record():
            out = DiceLoss(ignore_label=-1)(x, label)
        out.backward()
        assert np.isfinite(out.asnumpy()).all() and np.isfinite(x.grad.asnumpy()).all()
    # empty image, confident background: nearly no loss; a false positive costs
    out = DiceLoss()(x, empty).asnumpy()
    assert out.max() < 0.01
    x_fp = np.full((1, 1, 4, 4), -8.0)
    x_fp[0, 0, 0, 0] = 8.0
    assert DiceLoss()(nd(x_fp), empty[:1]).asscalar() > 0.4
    # all ignored: 1 - smooth_nr / smooth_dr
    assert DiceLoss(ignore_label=-1, smooth_nr=0.5)(x, ignored).asnumpy() == \
        pytest.approx([0.5, 0.5])


def test_numerical_gradient():
    x = RNG.randn(2, 2, 3, 3)
    label = masks(x.shape)
    for batch in (False, True):
        loss = DiceLoss(batch=batch, ignore_label=-1, smooth_nr=0.1, smooth_dr=0.2)
        xv = nd(x, 'float64')
        xv.attach_grad()
        with autograd.record():
            out = loss(xv, nd(label, 'float64'))
        out.backward()                       # d sum(out) / dx
        analytic = xv.grad.asnumpy()
        numeric = np.zeros_like(x)
        h = 1e-6
        for idx in np.ndindex(*x.shape):
            hi, lo = x.copy(), x.copy()
            hi[idx] += h
            lo[idx] -= h
            numeric[idx] = (np_dice(hi, label, -1, 0.1, 0.2, batch).sum()
                            - np_dice(lo, label, -1, 0.1, 0.2, batch).sum()) / (2 * h)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)
        assert np.all(analytic[label == -1] == 0)


@pytest.mark.parametrize('dtype', ['float16', 'float64'])
def test_dtypes_and_integer_labels(dtype):
    x = RNG.randn(2, 1, 4, 4)
    label = (RNG.rand(2, 1, 4, 4) < 0.4).astype(np.int32)
    out = DiceLoss()(nd(x, dtype), nd(label, 'int32'))
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_allclose(out.asnumpy().astype(np.float64), np_dice(x, label),
                               rtol=2e-3 if dtype == 'float16' else 1e-10)


def test_float16_large_image_does_not_overflow():
    # sum(p) + sum(t) over 300 x 300 pixels is ~9e4 > 65504, float16's largest value
    x = nd(np.full((1, 1, 300, 300), 0.5), 'float16')
    label = nd(np.ones((1, 1, 300, 300)), 'float16')
    x.attach_grad()
    with autograd.record():
        out = DiceLoss()(x, label)
    out.backward()
    expected = np_dice(np.full((1, 1, 300, 300), 0.5), np.ones((1, 1, 300, 300)))
    assert out.dtype == np.float16 and np.isfinite(x.grad.asnumpy()).all()
    np.testing.assert_allclose(out.asnumpy().astype(np.float64), expected, rtol=2e-3)


def test_weights_and_errors():
    x, label = RNG.randn(3, 1, 4, 4), masks((3, 1, 4, 4))
    base = np_dice(x, label)
    out = DiceLoss(ignore_label=-1, weight=0.5)(nd(x), nd(label), nd([1.0, 2.0, 0.0]))
    np.testing.assert_allclose(out.asnumpy(), 0.5 * base * [1, 2, 0], rtol=1e-5)
    with pytest.raises(ValueError, match='smooth_dr'):
        DiceLoss(smooth_dr=0)
    with pytest.raises(ValueError, match='smooth_nr'):
        DiceLoss(smooth_nr=-1)
    with pytest.raises(ValueError, match='same shape'):
        DiceLoss()(nd(x), nd(label[:, 0]))
    with pytest.raises(ValueError, match='one weight per sample'):
        DiceLoss()(nd(x), nd(label), nd(np.ones((3, 4))))


# ------------------------------------------------------------- focal + Dice combined
@pytest.mark.parametrize('dice_batch', [False, True])
def test_binary_focal_plus_dice_with_aux(dice_batch):
    main, aux = RNG.randn(3, 1, 5, 5) * 2, RNG.randn(3, 1, 5, 5) * 2
    label = masks((3, 5, 5))                                     # N x H x W mask
    loss = SegmentationFocalLoss(aux_weight=0.4, dice_weight=2.0, dice_batch=dice_batch)
    out = loss(nd(main), nd(aux), nd(label)).asnumpy()
    lab = label[:, None]
    valid = (lab != -1).astype(np.float64)
    target = np.where(lab == 1, 1.0, 0.0)

    def one(x):
        return np_focal_valid(x, target, valid) + 2.0 * np_dice(x, lab, batch=dice_batch)
    np.testing.assert_allclose(out, one(main) + 0.4 * one(aux), rtol=1e-5)
    loss.hybridize()
    np.testing.assert_allclose(loss(nd(main), nd(aux), nd(label)).asnumpy(),
                               one(main) + 0.4 * one(aux), rtol=1e-5)


def test_multiclass_dice_is_one_vs_all_and_multilabel_per_class():
    x = RNG.randn(2, 3, 4, 5)
    sparse = RNG.randint(-1, 3, size=(2, 4, 5))
    out = SegmentationFocalLoss(aux=False, dice_weight=1.0)(nd(x), nd(sparse)).asnumpy()
    one_hot = (sparse[:, None] == np.arange(3)[None, :, None, None]).astype(np.float64)
    dense = np.where((sparse == -1)[:, None], -1.0, one_hot)
    valid = (dense != -1).astype(np.float64)
    expected = np_focal_valid(x, one_hot * valid, valid) + np_dice(x, dense)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    # multilabel 0/255 masks: mapped to 0/1 before the Dice term too
    multi = masks(x.shape)
    raw = np.where(multi == 1, 255, multi)
    out = SegmentationFocalLoss(aux=False, dice_weight=0.5, binary_values=(0, 255))(
        nd(x), nd(raw)).asnumpy()
    valid = (multi != -1).astype(np.float64)
    expected = np_focal_valid(x, np.where(multi == 1, 1.0, 0.0), valid) + \
        0.5 * np_dice(x, multi)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_bce_plus_dice_and_arguments():
    x, label = RNG.randn(2, 1, 4, 4), masks((2, 1, 4, 4))
    out = SegmentationBCELoss(aux=False, dice_weight=1.0)(nd(x), nd(label)).asnumpy()
    valid = (label != -1).astype(np.float64)
    expected = np_focal_valid(x, np.where(label == 1, 1.0, 0.0), valid, alpha=None,
                              gamma=0.0) + np_dice(x, label)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    # dice_weight=0 is the focal loss alone, with no Dice child
    plain = SegmentationFocalLoss(aux=False)
    assert plain.dice is None
    np.testing.assert_allclose(
        SegmentationFocalLoss(aux=False, dice_weight=0.0)(nd(x), nd(label)).asnumpy(),
        plain(nd(x), nd(label)).asnumpy())
    for bad in (-1.0, True, 'x'):
        with pytest.raises(ValueError, match='dice_weight'):
            SegmentationFocalLoss(dice_weight=bad)
    with pytest.raises(ValueError, match='sample_weight with dice_weight'):
        SegmentationFocalLoss(aux=False, dice_weight=1.0).forward(
            nd(x), nd(label), sample_weight=nd(np.ones(2)))


def test_focal_plus_dice_through_data_parallel_criterion_and_gradients():
    main, aux = RNG.randn(4, 1, 6, 6), RNG.randn(4, 1, 6, 6)
    label = masks((4, 6, 6))
    criterion = SegmentationFocalLoss(dice_weight=1.0)
    direct = criterion(nd(main), nd(aux), nd(label)).asnumpy()
    ctx = [mx.cpu(0), mx.cpu(1)]
    outputs = [(nd(main[:2]).as_in_context(ctx[0]), nd(aux[:2]).as_in_context(ctx[0])),
               (nd(main[2:]).as_in_context(ctx[1]), nd(aux[2:]).as_in_context(ctx[1]))]
    losses = DataParallelCriterion(criterion, ctx_list=ctx)(outputs, nd(label))
    np.testing.assert_allclose(np.concatenate([l.asnumpy() for l in losses]), direct,
                               rtol=1e-5)
    # the gradient flows into both outputs, and the aux one is weighted 0.2
    m, a = nd(main), nd(main)
    m.attach_grad()
    a.attach_grad()
    with autograd.record():
        out = criterion(m, a, nd(label))
    out.backward()
    assert np.abs(m.grad.asnumpy()).max() > 0
    np.testing.assert_allclose(a.grad.asnumpy(), 0.2 * m.grad.asnumpy(), rtol=1e-5,
                               atol=1e-9)


def test_nested_in_a_hybridized_block():
    """DiceLoss as a child of a larger HybridBlock runs symbolically (F = mx.sym)."""
    class WithLoss(mx.gluon.HybridBlock):
        def __init__(self):
            super().__init__()
            with self.name_scope():
                self.conv = mx.gluon.nn.Conv2D(2, 1, in_channels=3)
                self.dice = DiceLoss(batch=True, ignore_label=-1)

        def hybrid_forward(self, F, x, label):
            return self.dice(self.conv(x), label)

    block = WithLoss()
    block.initialize(mx.init.Xavier())
    x = nd(RNG.randn(3, 3, 4, 4))
    label = nd(masks((3, 2, 4, 4)))
    imperative = block(x, label).asnumpy()
    block.hybridize()
    np.testing.assert_allclose(block(x, label).asnumpy(), imperative, rtol=1e-5)
    conv_out = block.conv(x).asnumpy()
    np.testing.assert_allclose(imperative, np_dice(conv_out, label.asnumpy(), batch=True),
                               rtol=1e-5)
