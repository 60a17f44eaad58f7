"""SSDFocalMultiBoxLoss against GluonCV's SSD pipeline and a numpy reference."""
import numpy as np
import mxnet as mx
import pytest
from mxnet import autograd, gluon

gcv = pytest.importorskip('gluoncv')
pytest.importorskip('cv2')

from gluoncv.data.batchify import Stack, Tuple  # noqa: E402
from gluoncv.data.transforms.presets.ssd import SSDDefaultTrainTransform  # noqa: E402
from gluoncv.loss import SSDMultiBoxLoss  # noqa: E402

from gluon_focal.detection import (CLASSES, SigmoidSSD, SSDFocalMultiBoxLoss,  # noqa: E402
                                   SyntheticShapesDetection, init_focal_bias, ssd_anchors,
                                   tiny_ssd)

SIZE = 64
CTX = [mx.cpu(0), mx.cpu(1)]


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def reference_losses(cls_preds, box_preds, cls_targets, box_targets, alpha=0.25, gamma=2.0,
                     rho=1.0, box_weight=1.0):
    """Independent float64 numpy: focal on foreground columns, smooth-L1 on
    positives, both / positives over all devices."""
    num_pos = max(1.0, sum(float((ct > 0).sum()) for ct in cls_targets))
    out = []
    for cp, bp, ct, bt in zip(cls_preds, box_preds, cls_targets, box_targets):
        cp, bp, ct, bt = [np.asarray(a, np.float64) for a in (cp, bp, ct, bt)]
        num_fg = cp.shape[-1] - 1
        p = _sigmoid(cp[..., 1:])
        target = (ct[..., None] == np.arange(1, num_fg + 1)).astype(np.float64)
        p_t = np.where(target == 1, p, 1 - p)
        a_t = np.where(target == 1, alpha, 1 - alpha)
        focal = -a_t * (1 - p_t) ** gamma * np.log(p_t)
        focal = focal * (ct >= 0)[..., None]             # -1: ignored entirely
        cls = focal.reshape(len(cp), -1).sum(1) / num_pos
        d = np.abs(bp - bt)
        sl1 = np.where(d > rho, d - 0.5 * rho, 0.5 / rho * d ** 2) * (ct > 0)[..., None]
        box = sl1.reshape(len(bp), -1).sum(1) / num_pos
        out.append((cls + box_weight * box, cls, box))
    return out


@pytest.fixture(scope='module')
def ssd_batch():
    """A real tiny SSD on two CPU contexts and real SSDDefaultTrainTransform targets."""
    mx.random.seed(0)
    np.random.seed(0)
    net = tiny_ssd(CLASSES, base_size=SIZE, channels=(8, 16, 16, 16), num_outputs=2)
    net.initialize(mx.init.Xavier(), ctx=CTX)
    anchors = ssd_anchors(net, (SIZE, SIZE))
    ds = SyntheticShapesDetection(num_images=8, size=SIZE, seed=0, min_size=10)
    ds = ds.transform(SSDDefaultTrainTransform(SIZE, SIZE, anchors))
    x, cls_t, box_t = Tuple(Stack(), Stack(), Stack())([ds[i] for i in range(4)])
    split = lambda a: gluon.utils.split_and_load(a, CTX)
    return net, anchors, split(x), split(cls_t), split(box_t)


def _forward(net, xs):
    cls_preds, box_preds = [], []
    for x in xs:
        c, b, _ = net(x)
        cls_preds.append(c)
        box_preds.append(b)
    return cls_preds, box_preds


def test_real_ssd_outputs_same_structure_as_multibox(ssd_batch):
    net, anchors, xs, cts, bts = ssd_batch
    num_anchors = anchors.shape[1]
    assert cts[0].shape == (2, num_anchors) and bts[0].shape == (2, num_anchors, 4)
    assert (np.concatenate([c.asnumpy() for c in cts]) > 0).any()
    with autograd.train_mode():
        cls_preds, box_preds = _forward(net, xs)
    assert cls_preds[0].shape == (2, num_anchors, len(CLASSES) + 1)
    ours = SSDFocalMultiBoxLoss()(cls_preds, box_preds, cts, bts)
    theirs = SSDMultiBoxLoss()(cls_preds, box_preds, cts, bts)
    assert len(ours) == len(theirs) == 3
    for mine, ref in zip(ours, theirs):
        assert isinstance(mine, list) and len(mine) == len(ref) == len(CTX)
        for m, r, ctx in zip(mine, ref, CTX):
            assert m.shape == r.shape == (2,) and m.context == r.context == ctx
            assert np.isfinite(m.asnumpy()).all()
    # the box term is SSDMultiBoxLoss's exactly
    for m, r in zip(ours[2], theirs[2]):
        np.testing.assert_allclose(m.asnumpy(), r.asnumpy(), rtol=1e-5, atol=1e-6)
    # and the numbers are the numpy reference's on the real outputs
    ref = reference_losses([c.asnumpy() for c in cls_preds], [b.asnumpy() for b in box_preds],
                           [c.asnumpy() for c in cts], [b.asnumpy() for b in bts])
    for d, (s, c, b) in enumerate(ref):
        np.testing.assert_allclose(ours[0][d].asnumpy(), s, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(ours[1][d].asnumpy(), c, rtol=1e-4, atol=1e-6)
    # single NDArrays work too (one device)
    single = SSDFocalMultiBoxLoss()(cls_preds[0], box_preds[0], cts[0], bts[0])
    assert all(len(v) == 1 for v in single)


def test_matches_numpy_on_hand_made_case():
    rng = np.random.RandomState(7)
    num_fg = 3
    # device 0: anchors of class 2, background, ignored, class 1; device 1: no positive
    ct = [np.array([[2, 0, -1, 1], [0, 0, 3, -1]], np.float32),
          np.array([[0, -1, 0, 0]], np.float32)]
    cp = [rng.randn(2, 4, num_fg + 1).astype(np.float32) * 2,
          rng.randn(1, 4, num_fg + 1).astype(np.float32) * 2]
    bp = [rng.randn(2, 4, 4).astype(np.float32) * 1.5, rng.randn(1, 4, 4).astype(np.float32)]
    bt = [rng.randn(2, 4, 4).astype(np.float32), rng.randn(1, 4, 4).astype(np.float32)]
    ctxs = [mx.cpu(0), mx.cpu(1)]
    to_nd = lambda arrs: [mx.nd.array(a, ctx=c) for a, c in zip(arrs, ctxs)]
    for kw in ({}, {'alpha': 0.5, 'gamma': 0.0, 'rho': 0.5, 'box_weight': 2.0},
               {'alpha': 0.1, 'gamma': 3.0, 'rho': 2.0}):
        loss = SSDFocalMultiBoxLoss(**kw)
        got = loss(to_nd(cp), to_nd(bp), to_nd(ct), to_nd(bt))
        ref = reference_losses(cp, bp, ct, bt, **kw)
        for d in range(2):
            for k in range(3):
                np.testing.assert_allclose(got[k][d].asnumpy(), ref[d][k], rtol=1e-5, atol=1e-7)
    # normalization is by the 4 positives of BOTH devices: device 1 has none but
    # still gets a (negatives-only) classification loss divided by 4
    assert got[2][1].asnumpy().tolist() == [0.0]
    assert got[1][1].asnumpy()[0] > 0
    # ignored anchors do not matter at all
    cp_changed = [cp[0].copy(), cp[1]]
    cp_changed[0][0, 2] += 100.0
    cp_changed[0][1, 3] -= 50.0
    again = SSDFocalMultiBoxLoss(**kw)(to_nd(cp_changed), to_nd(bp), to_nd(ct), to_nd(bt))
    for k in range(3):
        np.testing.assert_allclose(again[k][0].asnumpy(), got[k][0].asnumpy(), rtol=1e-6)


def test_no_hard_negative_mining_every_negative_counts():
    ct = mx.nd.array([[1] + [0] * 20])
    cp = mx.nd.zeros((1, 21, 3))
    bp = bt = mx.nd.zeros((1, 21, 4))
    loss = SSDFocalMultiBoxLoss()
    base = loss(cp, bp, ct, bt)[1][0].asscalar()
    cp2 = cp.copy()
    cp2[0, 20, 1] = 3.0          # make the LAST negative confident-wrong
    assert loss(cp2, bp, ct, bt)[1][0].asscalar() > base + 0.1


def test_background_column_gets_zero_gradient(ssd_batch):
    _, _, _, cts, bts = ssd_batch
    rng = np.random.RandomState(0)
    cps = [mx.nd.array(rng.randn(*(c.shape + (len(CLASSES) + 1,))), ctx=c.context) for c in cts]
    bps = [mx.nd.array(rng.randn(*b.shape), ctx=b.context) for b in bts]
    for a in cps + bps:
        a.attach_grad()
    with autograd.record():
        s, _, _ = SSDFocalMultiBoxLoss()(cps, bps, cts, bts)
    autograd.backward(s)
    for cp, ct in zip(cps, cts):
        grad = cp.grad.asnumpy()
        assert np.all(grad[:, :, 0] == 0)
        assert np.abs(grad[:, :, 1:]).sum() > 0
        ignored = ct.asnumpy() < 0
        assert np.all(grad[ignored] == 0)
    for bp, ct in zip(bps, cts):
        grad = bp.grad.asnumpy()
        neg = ct.asnumpy() <= 0
        assert np.all(grad[neg] == 0) and np.abs(grad[~neg]).sum() > 0


def test_gradient_matches_finite_differences():
    rng = np.random.RandomState(3)
    ct = mx.nd.array([[2, 0, -1, 1, 0]])
    cp = mx.nd.array(rng.randn(1, 5, 3))
    bp = mx.nd.array(rng.randn(1, 5, 4))
    bt = mx.nd.array(rng.randn(1, 5, 4))
    loss = SSDFocalMultiBoxLoss(gamma=1.5)
    cp.attach_grad()
    with autograd.record():
        out = loss(cp, bp, ct, bt)[0][0]
    out.backward()
    analytic = cp.grad.asnumpy()
    base = cp.asnumpy().astype(np.float64)
    eps = 1e-3
    for idx in [(0, 0, 1), (0, 1, 2), (0, 3, 1), (0, 3, 2), (0, 4, 1)]:
        plus, minus = base.copy(), base.copy()
        plus[idx] += eps
        minus[idx] -= eps
        f = lambda a: reference_losses([a], [bp.asnumpy()], [ct.asnumpy()], [bt.asnumpy()],
                                       gamma=1.5)[0][0][0]
        numeric = (f(plus) - f(minus)) / (2 * eps)
        np.testing.assert_allclose(analytic[idx], numeric, rtol=2e-3, atol=1e-5)


def test_training_steps_reduce_loss(ssd_batch):
    net, _, xs, cts, bts = ssd_batch
    init_focal_bias(net)
    loss_fn = SSDFocalMultiBoxLoss()
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.05, 'momentum': 0.9})
    history = []
    for _ in range(12):
        with autograd.record():
            cls_preds, box_preds = _forward(net, xs)
            s, _, _ = loss_fn(cls_preds, box_preds, cts, bts)
        autograd.backward(s)
        trainer.step(1)
        history.append(sum(v.sum().asscalar() for v in s))
    assert np.isfinite(history).all()
    assert history[-1] < 0.7 * history[0]


def test_init_focal_bias_sets_prior(ssd_batch):
    net, _, xs, _, _ = ssd_batch
    init_focal_bias(net, prior=0.01)
    for cp in net.class_predictors:
        for data in cp.predictor.bias.list_data():   # every context
            b = data.asnumpy().reshape(-1, len(CLASSES) + 1)
            np.testing.assert_allclose(b[:, 0], 0)
            np.testing.assert_allclose(_sigmoid(b[:, 1:]), 0.01, rtol=1e-5)


def test_sigmoid_ssd_inference(ssd_batch):
    net, _, xs, _, _ = ssd_batch
    det = SigmoidSSD(net)
    assert det.classes == net.classes
    x = xs[0]
    with autograd.train_mode():
        raw = net(x)
        wrapped = det(x)
    for r, w in zip(raw, wrapped):
        np.testing.assert_array_equal(r.asnumpy(), w.asnumpy())
    # inference-mode logits (BatchNorm with running statistics)
    feats = net.features(x)
    cls_preds = mx.nd.concat(*[cp(f).transpose((0, 2, 3, 1)).flatten()
                               for f, cp in zip(feats, net.class_predictors)], dim=1)
    cls_preds = cls_preds.reshape((0, -1, len(CLASSES) + 1)).asnumpy()
    det.set_nms(nms_thresh=2.0, post_nms=-1)   # no NMS: every (anchor, class) above 0.01
    ids, scores, bboxes = det(x)
    ref_ids, _, ref_boxes = net(x)
    assert ids.shape == ref_ids.shape and bboxes.shape == ref_boxes.shape
    scores = scores.asnumpy()[0, :, 0]
    ids = ids.asnumpy()[0, :, 0]
    # the scores are the sigmoids of the foreground logits, class-major
    num_anchors = cls_preds.shape[1]
    expected = _sigmoid(cls_preds[0, :, 1:].T.astype(np.float64)).ravel()
    expected_ids = np.repeat(np.arange(len(CLASSES)), num_anchors)
    keep = expected > 0.01
    np.testing.assert_allclose(scores[keep], expected[keep], rtol=1e-5)
    np.testing.assert_array_equal(ids[keep], expected_ids[keep])
    assert np.all(ids[~keep] == -1)
    # hybridized gives the same
    det.set_nms(0.45, 400, 100)
    eager = [o.asnumpy() for o in det(x)]
    det.hybridize()
    for e, h in zip(eager, det(x)):
        np.testing.assert_allclose(e, h.asnumpy(), rtol=1e-5, atol=1e-5)


def _load_example():
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(__file__), '..', 'examples', 'train_ssd.py')
    spec = importlib.util.spec_from_file_location('train_ssd_example', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('loss', ['focal', 'multibox'])
def test_train_ssd_example_runs_and_resumes(tmp_path, loss):
    import json
    import os
    example = _load_example()
    common = ['--loss', loss, '--num-train', '16', '--num-val', '8', '--data-shape', '64',
              '--batch-size', '8', '--num-cpu-contexts', '2', '--kvstore', 'local',
              '--num-vis', '2', '--out-dir', str(tmp_path)]
    history = example.train(example.parse_args(common + ['--epochs', '2']))
    assert len(history['val_mAP']) == 2 and np.isfinite(history['loss']).all()
    for name in ('curves.png', 'detections.png', 'results.json', 'checkpoint.json'):
        assert os.path.getsize(os.path.join(str(tmp_path), name)) > 0
    with open(os.path.join(str(tmp_path), 'results.json')) as f:
        first = json.load(f)
    assert first['epochs'] == [1, 2] and len(first['history']['images_per_s']) == 2
    # --resume continues after the last complete epoch instead of starting over
    history = example.train(example.parse_args(common + ['--epochs', '3', '--resume']))
    assert len(history['val_mAP']) == 3
    assert history['loss'][:2] == first['history']['loss']
    assert history['val_mAP'][:2] == first['history']['val_mAP']


def test_train_ssd_example_defaults():
    """The default network is resnet_ssd at 128 px; each loss has its own default box
    weight (the best of one sweep), and an explicit --box-weight wins."""
    example = _load_example()
    focal, multibox = (example.parse_args(['--loss', loss]) for loss in ('focal', 'multibox'))
    assert (focal.network, focal.data_shape, focal.optimizer) == ('resnet18_v1b', 128, 'adam')
    assert focal.box_weight == example.BOX_WEIGHT['focal'] < 1
    assert multibox.box_weight == example.BOX_WEIGHT['multibox'] < 1
    assert example.parse_args(['--loss', 'focal', '--box-weight', '1']).box_weight == 1
    assert example.parse_args(['--network', 'ssd_300_vgg16_atrous_voc']).data_shape == 300


@pytest.mark.parametrize('network', ['ssd_512_mobilenet1.0_voc', 'ssd_512_resnet50_v1_custom',
                                     'tiny'])
def test_train_ssd_example_zoo_network_offline(tmp_path, network):
    """GluonCV zoo SSDs (a preset with reset_class, a _custom one) and tiny_ssd train offline."""
    import os
    example = _load_example()
    args = example.parse_args(['--network', network, '--data-shape', '96', '--num-train', '1',
                               '--num-val', '1', '--batch-size', '1', '--epochs', '1',
                               '--num-vis', '0', '--out-dir', str(tmp_path)])
    assert args.pretrained_base is False
    history = example.train(args)
    assert len(history['val_mAP']) == 1 and np.isfinite(history['loss']).all()
    assert os.path.getsize(os.path.join(str(tmp_path), 'curves.png')) > 0


def test_resnet_ssd_layout_and_anchors():
    """The example's default SSD: GluonCV's SSD over C3-C5 of a width-scaled
    ResNetV1b + one extra layer, anchors sized to the input."""
    from gluon_focal.detection import resnet_ssd
    net = resnet_ssd(CLASSES, width=0.25, base_size=SIZE)
    net.initialize()
    with autograd.train_mode():
        features = net.features(mx.nd.zeros((1, 3, SIZE, SIZE)))
        cls_pred, box_pred, anchors = net(mx.nd.zeros((2, 3, SIZE, SIZE)))
    # strides 8, 16, 32 (C3-C5) and 64 (the extra layer)
    assert [f.shape[2] for f in features] == [SIZE // 8, SIZE // 16, SIZE // 32, SIZE // 64]
    num = sum((SIZE // s) ** 2 for s in (8, 16, 32, 64)) * 4  # 2 squares + ratios 2, 1/2
    assert anchors.shape == (1, num, 4)
    assert cls_pred.shape == (2, num, len(CLASSES) + 1) and box_pred.shape == (2, num, 4)
    # first location of the first layer: centre step / 2, squares of 3/32 and
    # sqrt(3/32 * 3/16) of the input side, then ratio 2 (wider) and 1/2
    first = anchors[0, :4].asnumpy()
    side = SIZE * 3 / 32.
    np.testing.assert_allclose(first[:, :2], 4.0)
    np.testing.assert_allclose(first[:, 2:], [[side, side], [side * 2 ** 0.5] * 2,
                                              [side * 2 ** 0.5, side / 2 ** 0.5],
                                              [side / 2 ** 0.5, side * 2 ** 0.5]], rtol=1e-5)
    with pytest.raises(ValueError, match='sizes needs 5 entries'):
        resnet_ssd(CLASSES, sizes=(12, 24, 48))
    with pytest.raises(ValueError, match="backbone='resnet18' is not a GluonCV ResNetV1b"):
        resnet_ssd(CLASSES, 'resnet18')


def test_zoo_ssd_classes_and_errors():
    from gluon_focal.detection import zoo_ssd
    net = zoo_ssd('ssd_512_mobilenet1.0_coco', CLASSES)
    assert tuple(net.classes) == CLASSES
    with autograd.train_mode():
        cls_pred, box_pred, anchors = net(mx.nd.zeros((1, 3, 64, 64)))
    assert cls_pred.shape == (1, anchors.shape[1], len(CLASSES) + 1)
    with pytest.raises(ValueError, match='not a GluonCV model-zoo SSD.*ssd_300_vgg16_atrous'):
        zoo_ssd('ssd_300_vgg17', CLASSES)


def test_init_focal_bias_controls_logit_spread_vgg16_atrous():
    """GluonCV's BatchNorm-free VGG16-atrous SSD: with the prior bias alone the
    foreground logits spread so widely that the focal loss and its class-
    predictor gradients dwarf SSDMultiBoxLoss's on the first batch (the cause
    of divergence at GluonCV's default lr); init_focal_bias's spread control
    brings both back to the prior's closed form."""
    from gluon_focal.detection import zoo_ssd
    import random
    size = 260  # the smallest input the 300 layout takes is ~257
    mx.random.seed(0)
    np.random.seed(0)
    random.seed(0)  # SSDDefaultTrainTransform's crops
    net = zoo_ssd('ssd_300_vgg16_atrous_voc', CLASSES)
    anchors = ssd_anchors(net, (size, size))
    ds = SyntheticShapesDetection(num_images=1, size=size, seed=0)
    x, ct, bt = [a.expand_dims(0) for a in
                 SSDDefaultTrainTransform(size, size, anchors)(*ds[0])]
    num_pos = float((ct > 0).sum().asscalar())
    assert num_pos > 0
    with autograd.train_mode():
        features = net.features(x)        # the predictors' inputs, computed once
        _, box_pred, _ = net(x)
    weights = [cp.predictor.weight for cp in net.class_predictors]

    def first_batch(loss_fn):
        """(fg logits, class loss, norm of the class predictors' weight gradient)."""
        with autograd.record():
            cls_pred = mx.nd.concat(*[cp(f).transpose((0, 2, 3, 1)).flatten()
                                      for f, cp in zip(features, net.class_predictors)], dim=1)
            cls_pred = cls_pred.reshape((0, -1, len(CLASSES) + 1))
            total, cls_loss, _ = loss_fn([cls_pred], [box_pred], [ct], [bt])
        autograd.backward(total)
        grad = np.sqrt(sum(float((w.grad() ** 2).sum().asscalar()) for w in weights))
        return cls_pred.asnumpy()[..., 1:], float(cls_loss[0].sum().asscalar()), grad

    _, multibox_loss, multibox_grad = first_batch(SSDMultiBoxLoss())  # GluonCV's init
    init_focal_bias(net, logit_std=None)                               # the bias alone
    logits, bias_only_loss, bias_only_grad = first_batch(SSDFocalMultiBoxLoss())
    assert logits.std() > 1 and _sigmoid(logits).mean() > 0.03       # not the 0.01 prior
    print('first batch: multibox %.3g (grad %.3g), bias only %.3g (grad %.3g)'
          % (multibox_loss, multibox_grad, bias_only_loss, bias_only_grad))
    assert bias_only_loss > 2 * multibox_loss and bias_only_grad > 2 * multibox_grad
    init_focal_bias(net)                                               # bias + spread
    logits, loss, grad = first_batch(SSDFocalMultiBoxLoss())
    assert 0.002 < logits.std() < 0.05
    np.testing.assert_allclose(_sigmoid(logits).mean(), 0.01, rtol=0.02)
    # every probability ~0.01: alpha (1 - p)^2 log(1 / p) per positive, and
    # (1 - alpha) p^2 log(1 / (1 - p)) per negative (anchor, class) pair
    num_neg = float((ct >= 0).sum().asscalar()) * len(CLASSES) - num_pos
    expected = (0.25 * 0.99 ** 2 * np.log(100) * num_pos
                + 0.75 * 0.01 ** 2 * -np.log(0.99) * num_neg) / num_pos
    np.testing.assert_allclose(loss, expected, rtol=0.05)
    print('bias + spread: %.3g (grad %.3g), logit std %.3g' % (loss, grad, logits.std()))
    assert loss < multibox_loss and grad < 0.2 * multibox_grad
