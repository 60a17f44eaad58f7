"""The dense-detection loss core shared by RetinaNetLoss and SSDFocalMultiBoxLoss."""
import numpy as np
import mxnet as mx
import pytest

pytest.importorskip('gluoncv')

from gluon_focal.detection import RetinaNetLoss, SSDFocalMultiBoxLoss  # noqa: E402
from gluon_focal.detection.loss import DenseDetectionLoss, count_positives  # noqa: E402

NUM_CLASS = 3
CTX = [mx.cpu(0), mx.cpu(1)]


def _case(seed=0):
    """Per-device sparse labels {-2 ignore, -1 background, 0..C-1}, logits, boxes."""
    rng = np.random.RandomState(seed)
    labels = [np.array([[2, -1, -2, 0, -1], [-1, -1, 1, -2, -1]], np.float32),
              np.array([[-1, -2, -1, -1, 1]], np.float32)]
    logits = [rng.randn(*(l.shape + (NUM_CLASS,))).astype(np.float32) * 2 for l in labels]
    boxes = [rng.randn(*(l.shape + (4,))).astype(np.float32) for l in labels]
    targets = [rng.randn(*(l.shape + (4,))).astype(np.float32) for l in labels]
    nd = lambda arrs: [mx.nd.array(a, ctx=c) for a, c in zip(arrs, CTX)]  # noqa: E731
    return nd(logits), nd(boxes), nd(labels), nd(targets)


def _values(result):
    return [[v.asnumpy() for v in part] for part in result]


def test_retinanet_and_ssd_losses_are_one_loss():
    """SSD's targets/outputs (background column 0, labels shifted by one) give
    exactly RetinaNetLoss's numbers: the same core, the same normaliser."""
    logits, boxes, labels, targets = _case()
    retina = RetinaNetLoss(num_class=NUM_CLASS, box_weight=2.0, rho=0.5)(
        logits, boxes, labels, targets)
    ssd_logits = [mx.nd.concat(mx.nd.random.normal(shape=l.shape[:2] + (1,), ctx=l.context),
                               l, dim=-1) for l in logits]
    ssd_targets = [mx.nd.where(l == -2, -mx.nd.ones_like(l), l + 1) for l in labels]
    ssd = SSDFocalMultiBoxLoss(box_weight=2.0, rho=0.5)(ssd_logits, boxes, ssd_targets, targets)
    for mine, theirs in zip(_values(retina), _values(ssd)):
        for a, b in zip(mine, theirs):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    # one normaliser: the 4 positives of both devices
    assert count_positives(labels) == 4.0
    total, cls, box = _values(retina)
    for t, c, b in zip(total, cls, box):
        np.testing.assert_allclose(t, c + 2.0 * b, rtol=1e-6)


def test_avg_factor_is_the_callers_normaliser():
    logits, boxes, labels, targets = _case(1)
    loss = DenseDetectionLoss()
    default = _values(loss(logits, boxes, labels, targets))
    given = _values(loss(logits, boxes, labels, targets, avg_factor=20.0))  # e.g. 4 workers
    for d, g in zip(default, given):
        for a, b in zip(d, g):
            np.testing.assert_allclose(b, a * 4.0 / 20.0, rtol=1e-6)
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match='avg_factor'):
            loss(logits, boxes, labels, targets, avg_factor=bad)
    # a batch without positives divides by 1, never by 0
    background = [mx.nd.ones_like(l) * -1 for l in labels]
    assert count_positives(background) == 1.0
    _, cls, box = _values(loss(logits, boxes, background, targets))
    assert all(np.isfinite(c).all() and (c > 0).all() for c in cls)
    assert all((b == 0).all() for b in box)


def test_one_return_convention_lists_per_device():
    logits, boxes, labels, targets = _case(2)
    for loss, extra in ((RetinaNetLoss(NUM_CLASS), 0), (SSDFocalMultiBoxLoss(), 1)):
        c = logits[0] if not extra else mx.nd.concat(mx.nd.zeros((2, 5, 1)), logits[0], dim=-1)
        l = labels[0] if not extra else mx.nd.where(labels[0] == -2, -mx.nd.ones_like(labels[0]),
                                                    labels[0] + 1)
        single = loss(c, boxes[0], l, targets[0])
        assert isinstance(single, tuple) and len(single) == 3
        assert all(isinstance(part, list) and len(part) == 1 and part[0].shape == (2,)
                   for part in single)
    with pytest.raises(ValueError, match='one entry per device'):
        RetinaNetLoss(NUM_CLASS)(logits, boxes[:1], labels, targets)


def test_labels_validated_every_call_unless_told_not_to():
    logits, boxes, labels, targets = _case(3)
    bad = [l.copy() for l in labels]
    bad[1][0, 0] = NUM_CLASS               # a class index out of range
    for _ in range(2):                       # not only the first call
        with pytest.raises(ValueError, match='label'):
            RetinaNetLoss(NUM_CLASS)(logits, boxes, bad, targets)
    ssd_bad = [mx.nd.where(l == -2, -mx.nd.ones_like(l), l + 1) for l in bad]
    ssd_logits = [mx.nd.concat(mx.nd.zeros(l.shape[:2] + (1,), ctx=l.context), l, dim=-1)
                  for l in logits]
    with pytest.raises(ValueError, match='label'):
        SSDFocalMultiBoxLoss()(ssd_logits, boxes, ssd_bad, targets)
    # validate=False trusts targets valid by construction (no device sync)
    ok = SSDFocalMultiBoxLoss(validate=False)(
        ssd_logits, boxes, [mx.nd.where(l == -2, -mx.nd.ones_like(l), l + 1) for l in labels],
        targets)
    assert all(np.isfinite(v.asnumpy()).all() for v in ok[0])
    assert not RetinaNetLoss(NUM_CLASS).focal._active   # checks are not skipped by hybridize


def test_smooth_l1_box_term_matches_formula():
    logits, boxes, labels, targets = _case(4)
    rho, weight = 0.3, 1.5
    total, cls, box = RetinaNetLoss(NUM_CLASS, rho=rho, box_weight=weight)(
        logits, boxes, labels, targets)
    num_pos = count_positives(labels)
    for t, c, b, p, bt, l in zip(total, cls, box, boxes, targets, labels):
        d = np.abs(p.asnumpy().astype(np.float64) - bt.asnumpy())
        sl1 = np.where(d > rho, d - 0.5 * rho, 0.5 / rho * d ** 2) * (l.asnumpy() >= 0)[..., None]
        np.testing.assert_allclose(b.asnumpy(), sl1.sum(axis=(1, 2)) / num_pos, rtol=1e-5)
        np.testing.assert_allclose(t.asnumpy(), c.asnumpy() + weight * b.asnumpy(), rtol=1e-5)


def _no_host_sync(monkeypatch):
    """Make every device -> host read (and host -> device sync copy) fail."""
    def refuse(*args, **kwargs):
        raise AssertionError('host sync')
    monkeypatch.setattr(mx.nd.NDArray, 'asnumpy', refuse)
    monkeypatch.setattr(mx.nd.NDArray, '_sync_copyfrom', refuse)


def test_hybridized_loss_trains_without_host_sync_and_still_checks_labels(monkeypatch):
    """The training demo hybridizes the loss: the default normaliser is counted on
    the devices and the labels are checked in the graph, so a batch queues without
    waiting for the engine -- same values and gradients as imperatively."""
    logits, boxes, labels, targets = _case(4)
    results = []
    for hybridize in (False, True):
        loss = RetinaNetLoss(NUM_CLASS, box_weight=2.0)
        if hybridize:
            loss.hybridize(static_alloc=True, static_shape=True)
            loss(logits, boxes, labels, targets)   # builds the graphs
        for x in logits + boxes:
            x.attach_grad()
        with monkeypatch.context() as patch:
            if hybridize:
                _no_host_sync(patch)
            with mx.autograd.record():
                out = loss(logits, boxes, labels, targets)
            mx.autograd.backward(out[0])
        results.append(_values(out) + [[x.grad.asnumpy() for x in logits + boxes]])
    for imperative, hybrid in zip(*results):
        for a, b in zip(imperative, hybrid):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    bad = [l.copy() for l in labels]
    bad[1][0, 0] = NUM_CLASS
    with pytest.raises(mx.base.MXNetError, match='label'):
        out = loss(logits, boxes, bad, targets)
        mx.nd.waitall()
