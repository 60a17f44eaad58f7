"""RetinaNet: anchor targets, prior init, shapes, inference post-processing,
training, loss normalisation and export.

Small configurations (ResNet-18, 16-channel FPN and heads, 64x64 inputs) keep
the whole file well under a minute and a half on two cores.
"""
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

mx = pytest.importorskip('mxnet')
pytest.importorskip('gluoncv')
from mxnet import autograd, gluon  # noqa: E402

from gluon_focal import FocalLoss  # noqa: E402
from gluon_focal.detection.retinanet import (RetinaNetLoss, get_retinanet,  # noqa: E402
                                             stage_output_names)
from gluon_focal.detection.targets import (BACKGROUND_LABEL, IGNORE_LABEL,  # noqa: E402
                                           RetinaNetTargetGenerator, RetinaNetTrainTransform,
                                           box_iou)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ['a', 'b', 'c']
SIZE = 64


def tiny_net(**kwargs):
    cfg = dict(classes=CLASSES, fpn_channels=16, head_channels=16, head_layers=2,
               anchor_size=2, anchor_alloc_size=128)
    cfg.update(kwargs)
    mx.random.seed(0)
    net = get_retinanet('resnet18_v1b', **cfg)
    net.initialize()
    return net


@pytest.fixture(scope='module')
def net():
    return tiny_net()


# ---------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------
GT = np.array([[0, 0, 10, 10]], dtype=np.float32)
# IoU with GT:          1.0       0.8          0.5 (pos)    0.4 (ignore)  0.333 (bg)   0.0
ANCHORS = np.array([[0, 0, 10, 10], [0, 0, 10, 12.5], [0, 0, 10, 20], [0, 0, 10, 25],
                    [0, 0, 10, 30], [50, 50, 60, 60]], dtype=np.float32)


def test_targets_thresholds():
    gen = RetinaNetTargetGenerator(allow_low_quality_matches=False)
    cls_t, box_t = gen(ANCHORS, GT, [2])
    assert cls_t.tolist() == [2, 2, 2, IGNORE_LABEL, BACKGROUND_LABEL, BACKGROUND_LABEL]
    assert BACKGROUND_LABEL == -1 and IGNORE_LABEL == -2
    # box targets: zero where the anchor is the box, zero at non-positives
    np.testing.assert_allclose(box_t[0], 0, atol=1e-6)
    assert np.all(box_t[3:] == 0)
    assert np.abs(box_t[1]).sum() > 0


def test_targets_decode_back_to_gt():
    from gluoncv.nn.coder import NormalizedBoxCenterDecoder
    gen = RetinaNetTargetGenerator()
    gt = np.array([[3, 4, 30, 21], [40, 40, 60, 70]], dtype=np.float32)
    anchors = np.array([[0, 0, 32, 24], [38, 42, 62, 66], [5, 5, 28, 20], [0, 40, 5, 45]],
                       dtype=np.float32)
    cls_t, box_t = gen(anchors, gt, [0, 1])
    assert cls_t.tolist()[:3] == [0, 1, 0]
    decoded = NormalizedBoxCenterDecoder(convert_anchor=True)(
        mx.nd.array(box_t[None]), mx.nd.array(anchors[None]))[0].asnumpy()
    np.testing.assert_allclose(decoded[:3], gt[[0, 1, 0]], atol=1e-3)


def test_numpy_box_encoding_is_gluoncvs():
    from gluoncv.nn.coder import NormalizedBoxCenterEncoder
    rng = np.random.RandomState(0)
    xy = rng.uniform(0, 50, (40, 2))
    anchors = np.concatenate([xy, xy + rng.uniform(2, 30, (40, 2))], 1).astype(np.float32)
    xy = rng.uniform(0, 50, (5, 2))
    gt = np.concatenate([xy, xy + rng.uniform(2, 30, (5, 2))], 1).astype(np.float32)
    matches = rng.randint(0, 5, 40)
    stds = (0.1, 0.2, 0.3, 0.4)
    ours = RetinaNetTargetGenerator(stds=stds).encode(anchors, gt[matches])
    theirs, _ = NormalizedBoxCenterEncoder(stds=stds)(
        mx.nd.ones((1, 40)), mx.nd.array(matches[None]), mx.nd.array(anchors[None]),
        mx.nd.array(gt[None]))
    np.testing.assert_allclose(ours, theirs[0].asnumpy(), rtol=1e-5, atol=1e-5)


def test_targets_low_quality_matches():
    # a box whose best anchor has IoU 0.25: below both thresholds
    gt = np.array([[0, 0, 10, 10]], dtype=np.float32)
    anchors = np.array([[0, 0, 20, 20], [0, 0, 40, 40], [100, 100, 120, 120]], np.float32)
    strict, _ = RetinaNetTargetGenerator(allow_low_quality_matches=False)(anchors, gt, [1])
    assert strict.tolist() == [BACKGROUND_LABEL] * 3
    loose, box_t = RetinaNetTargetGenerator()(anchors, gt, [1])
    assert loose.tolist() == [1, BACKGROUND_LABEL, BACKGROUND_LABEL]
    assert np.abs(box_t[0]).sum() > 0


def test_targets_empty_and_padding():
    gen = RetinaNetTargetGenerator()
    cls_t, box_t = gen(ANCHORS, np.zeros((0, 4)), np.zeros((0,)))
    assert np.all(cls_t == BACKGROUND_LABEL) and np.all(box_t == 0)
    # padding rows (class -1, as from batchify Pad) are not boxes
    cls_t, _ = gen(ANCHORS, np.concatenate([GT, -np.ones((1, 4))]), [0, -1])
    assert cls_t[0] == 0 and (cls_t == 0).sum() == 3


def test_targets_feed_focal_loss():
    """FocalLoss(sparse, background/ignore labels) counts exactly our positives."""
    cls_t, _ = RetinaNetTargetGenerator(allow_low_quality_matches=False)(ANCHORS, GT, [2])
    logits = mx.nd.zeros((1, len(ANCHORS), 3))
    loss = FocalLoss(num_class=3, label_mode='sparse', background_label=BACKGROUND_LABEL,
                     ignore_label=IGNORE_LABEL, normalization='positive', alpha=None, gamma=0)
    # at p = 0.5 every valid (anchor, class) element costs log 2; 5 valid anchors x 3 classes
    expected = 5 * 3 * math.log(2) / 3  # divided by the 3 positives
    np.testing.assert_allclose(loss(logits, mx.nd.array(cls_t[None])).asscalar(), expected,
                               rtol=1e-5)


def test_box_iou_is_gluoncvs_bbox_iou():
    from gluoncv.utils.bbox import bbox_iou
    rng = np.random.RandomState(3)
    corners = rng.uniform(0, 50, (200, 2)).astype(np.float32)
    a = np.hstack([corners, corners + rng.uniform(1, 30, (200, 2)).astype(np.float32)])
    b = np.vstack([a[:3], [[0, 0, 100, 100], [60, 60, 70, 90], [200, 200, 210, 210]]])
    b = b.astype(np.float32)   # identical, containing, partial and disjoint boxes
    got = box_iou(a, b)
    np.testing.assert_allclose(got, bbox_iou(a, b, offset=0), rtol=1e-6, atol=0)
    assert got.shape == (200, 6) and got[[0, 1, 2], [0, 1, 2]].tolist() == [1, 1, 1]
    assert (got[:, 5] == 0).all() and (got[:, 3] > 0).all()


def test_train_transform(net):
    anchors = net.get_anchors(SIZE, SIZE)
    tf = RetinaNetTrainTransform(SIZE, SIZE, anchors, flip=False)
    img = mx.nd.array(np.random.RandomState(0).randint(0, 255, (96, 128, 3)), dtype='uint8')
    label = np.array([[20, 30, 60, 80, 1, 0]], dtype=np.float64)
    x, cls_t, box_t = tf(img, label)
    assert x.shape == (3, SIZE, SIZE) and cls_t.shape == (len(anchors),)
    assert box_t.shape == (len(anchors), 4)
    pos = cls_t.asnumpy() >= 0
    assert pos.any() and np.all(cls_t.asnumpy()[pos] == 1)
    # the positives' anchors overlap the resized box (10, 20, 30, 53.3)
    from gluoncv.utils.bbox import bbox_iou
    iou = bbox_iou(anchors[pos], np.array([[10, 20, 30, 160 / 3.]]))
    assert iou.min() > 0.1


def test_train_transform_memoises_targets_per_boxes(net):
    """Each (image, flip) is matched once: later epochs get the same targets from
    the cache (fresh arrays, so the cached ones stay intact); a full cache or
    ``target_cache_mb=0`` computes them every time."""
    anchors = net.get_anchors(SIZE, SIZE)
    generator = RetinaNetTargetGenerator()
    rng = np.random.RandomState(1)
    cases = [rng.uniform(0, SIZE / 2, (n, 2)) for n in (1, 3, 0)]
    cases = [np.hstack([c, c + rng.uniform(4, SIZE / 2, c.shape), rng.randint(0, 3, (len(c), 1))])
             .astype(np.float32) for c in cases]
    for limit, stored in ((256, 3), (0, 0)):
        tf = RetinaNetTrainTransform(SIZE, SIZE, anchors, target_cache_mb=limit)
        for _ in range(2):
            for label in cases:
                cls_t, box_t = tf.targets(label[:, :4], label[:, 4])
                cls_ref, box_ref = generator(anchors, label[:, :4], label[:, 4])
                np.testing.assert_array_equal(cls_t, cls_ref)
                np.testing.assert_array_equal(box_t, box_ref)
                assert (cls_ref >= 0).any() == (len(label) > 0)
                cls_t[:] = 7  # the caller owns the arrays it gets
                box_t[:] = 7
        assert len(tf._cache) == stored


def test_train_loader_queues_a_batch_without_host_sync(net, monkeypatch):
    """The demo's loader overlaps the training step only if it never waits for the
    engine: the cached synthetic image and the targets become arrays zero-copy
    (``mx.nd.array`` syncs), the cache stays intact, the targets are the generator's."""
    from gluoncv.data.batchify import Stack, Tuple
    from gluon_focal.detection.data import SyntheticShapesDetection
    anchors = net.get_anchors(SIZE, SIZE)
    data = SyntheticShapesDetection(num_images=4, size=SIZE, seed=3, cache=True)
    raw = [data[i] for i in range(4)]             # renders and caches
    tf = RetinaNetTrainTransform(SIZE, SIZE, anchors, flip=False)
    loader = gluon.data.DataLoader(data.transform(tf), 4, batchify_fn=Tuple(Stack(), Stack(),
                                                                             Stack()))

    def refuse(*args, **kwargs):
        raise AssertionError('host sync in the loader')
    with monkeypatch.context() as patch:
        patch.setattr(mx.nd.NDArray, 'asnumpy', refuse)
        patch.setattr(mx.nd.NDArray, '_sync_copyfrom', refuse)
        imgs, cls_t, box_t = next(iter(loader))
    generator = RetinaNetTargetGenerator(stds=tf._target_generator.stds)
    for i, (img, label) in enumerate(raw):
        np.testing.assert_array_equal(data[i][0].asnumpy(), img.asnumpy())  # cache intact
        cls_ref, box_ref = generator(anchors, label[:, :4], label[:, 4])
        np.testing.assert_array_equal(cls_t[i].asnumpy(), cls_ref)
        np.testing.assert_allclose(box_t[i].asnumpy(), box_ref, rtol=1e-6)
        expected = mx.nd.image.normalize(mx.nd.image.to_tensor(img), mean=tf._mean,
                                         std=tf._std)
        np.testing.assert_allclose(imgs[i].asnumpy(), expected.asnumpy(), rtol=1e-6)


# ---------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------
def test_stage_names_match_gluoncv_fpn():
    from gluoncv.model_zoo import resnet50_v1b
    assert stage_output_names(resnet50_v1b()) == [
        'layers2_relu11_fwd', 'layers3_relu17_fwd', 'layers4_relu8_fwd']


def test_prior_init(net):
    x = mx.nd.random.uniform(-2, 2, shape=(2, 3, SIZE, SIZE))
    with autograd.train_mode():
        cls, _, _ = net(x)
    p = mx.nd.sigmoid(cls).asnumpy()
    assert abs(p.mean() - 0.01) < 1e-3 and p.max() < 0.02
    np.testing.assert_allclose(net.class_subnet[-1].bias.data().asnumpy(),
                               -math.log(99), rtol=1e-6)
    other = tiny_net(prior=0.1)
    with autograd.train_mode():
        cls, _, _ = other(x)
    assert abs(mx.nd.sigmoid(cls).mean().asscalar() - 0.1) < 0.01


def test_demo_config_narrow_backbone_with_groupnorm():
    """The CPU demo's configuration: half-width ResNet-18, GroupNorm subnets."""
    net = tiny_net(backbone_width=0.5, head_norm='gn')
    c5 = [p for name, p in net.collect_params().items()
          if 'layers4' in name and name.endswith('conv1_weight')]
    assert c5 and c5[0].shape[0] == 256  # 512 * 0.5
    x = mx.nd.random.uniform(-2, 2, shape=(2, 3, SIZE, SIZE))
    with autograd.train_mode():
        cls, box, anchors = net(x)
    assert cls.shape == (2, anchors.shape[1], 3) and box.shape == (2, anchors.shape[1], 4)
    assert abs(mx.nd.sigmoid(cls).mean().asscalar() - 0.01) < 2e-3
    assert any('groupnorm' in name for name in net.class_subnet.collect_params())


def test_shapes_and_anchors(net):
    x = mx.nd.random.uniform(shape=(2, 3, SIZE, SIZE))
    with autograd.train_mode():
        cls, box, anchors = net(x)
    # P3..P7 of a 64x64 input: 8x8, 4x4, 2x2, 1x1, 1x1 locations x 9 anchors
    n = (64 + 16 + 4 + 1 + 1) * 9
    assert cls.shape == (2, n, 3) and box.shape == (2, n, 4) and anchors.shape == (1, n, 4)
    np.testing.assert_allclose(net.get_anchors(SIZE, SIZE), anchors[0].asnumpy())
    a = anchors[0].asnumpy()
    w, h = a[:, 2] - a[:, 0] + 1, a[:, 3] - a[:, 1] + 1
    side = np.sqrt(w * h)

    def near(values, expected, tol):
        return np.abs(np.asarray(values)[:, None] - np.asarray(expected)[None]).min(1) < tol
    # P3: sides anchor_size 2 x stride 8 = 16 px times 2^0, 2^(1/3), 2^(2/3) (rounded)
    assert near(side[:9], 16 * 2 ** (np.arange(3) / 3.), 2).all()
    assert near(16 * 2 ** (np.arange(3) / 3.), side[:9], 2).all()
    assert near(h / w, [0.5, 1, 2], 0.1).all() and len(set(np.round(h[:9] / w[:9], 1))) == 3
    # P7 (last 9): stride 128
    assert near(side[-9:], 256 * 2 ** (np.arange(3) / 3.), 5).all()
    ids, scores, bboxes = net(x)
    assert ids.shape == (2, 100, 1) and scores.shape == (2, 100, 1) and bboxes.shape == (2, 100, 4)


def _numpy_postprocess(cls, box, anchors, level_sizes, num_class, k, thresh, nms, keep):
    """Reference inference: per-level top-k above thresh, decode, class-wise NMS."""
    from gluoncv.utils.bbox import bbox_iou
    stds = (0.1, 0.1, 0.2, 0.2)
    cands, start = [], 0
    for n in level_sizes:
        s = 1 / (1 + np.exp(-cls[start:start + n].reshape(-1)))
        order = np.argsort(-s, kind='stable')[:k]
        order = order[s[order] > thresh]
        for flat in order:
            i, c = divmod(flat, num_class)
            a, d = anchors[start + i], box[start + i]
            aw, ah = a[2] - a[0], a[3] - a[1]
            ax, ay = a[0] + aw / 2, a[1] + ah / 2
            cx, cy = d[0] * stds[0] * aw + ax, d[1] * stds[1] * ah + ay
            w, h = np.exp(d[2] * stds[2]) * aw, np.exp(d[3] * stds[3]) * ah
            b = np.clip([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 0, SIZE)
            cands.append((s[flat], c, b))
        start += n
    cands.sort(key=lambda t: -t[0])
    kept = []
    for score, c, b in cands:
        if all(kc != c or bbox_iou(b[None], kb[None])[0, 0] <= nms for _, kc, kb in kept):
            kept.append((score, c, b))
    return kept[:keep]


def test_inference_matches_numpy_reference():
    net = tiny_net(pre_nms_topk=40, post_nms=30)
    # make many (anchor, class) pairs pass the score threshold, with distinct scores
    net.class_subnet[-1].bias.set_data(mx.nd.zeros_like(net.class_subnet[-1].bias.data()) - 2)
    net.class_subnet[-1].weight.set_data(net.class_subnet[-1].weight.data() * 200)
    net.box_subnet[-1].weight.set_data(net.box_subnet[-1].weight.data() * 100)
    x = mx.nd.random.uniform(-1, 1, shape=(1, 3, SIZE, SIZE))
    # the raw outputs with inference-mode BatchNorm, per level
    cls, box, anchors = [np.concatenate([o[0].asnumpy() for o in level])
                         for level in net.level_outputs(mx.nd, x)]
    ids, scores, bboxes = [o[0].asnumpy() for o in net(x)]
    # levels of 64, 16, 4, 1, 1 locations: P5-P7 have fewer than k=40 pairs (pad path)
    ref = _numpy_postprocess(cls, box, anchors, [576, 144, 36, 9, 9], 3, 40, 0.05, 0.5, 30)
    valid = ids[:, 0] >= 0
    assert 5 < len(ref) == valid.sum() <= 30
    np.testing.assert_allclose(scores[valid, 0], [r[0] for r in ref], rtol=1e-5)
    assert ids[valid, 0].tolist() == [r[1] for r in ref]
    np.testing.assert_allclose(bboxes[valid], np.stack([r[2] for r in ref]), atol=1e-3)
    assert np.all(ids[~valid, 0] == -1)


def test_hybridized_matches_and_switches_modes():
    net = tiny_net()
    x = mx.nd.random.uniform(shape=(2, 3, SIZE, SIZE))
    with autograd.train_mode():
        cls0, box0, _ = net(x)
    net.hybridize(static_alloc=True, static_shape=True)
    for _ in range(2):  # train -> inference -> train: the cached graph follows the mode
        with autograd.train_mode():
            cls1, box1, anchors = net(x)
        assert cls1.shape[-1] == 3 and anchors.shape[0] == 1
        np.testing.assert_allclose(cls1.asnumpy(), cls0.asnumpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(box1.asnumpy(), box0.asnumpy(), rtol=1e-4, atol=1e-5)
        ids, _, _ = net(x)
        assert ids.shape == (2, 100, 1)


# ---------------------------------------------------------------------------
# loss and training
# ---------------------------------------------------------------------------
def _batch(net, n=4, seed=0):
    rng = np.random.RandomState(seed)
    anchors = net.get_anchors(SIZE, SIZE)
    tf = RetinaNetTrainTransform(SIZE, SIZE, anchors, flip=False)
    items = []
    for i in range(n):
        img = np.full((SIZE, SIZE, 3), 30, np.uint8)
        x0, y0 = rng.randint(0, 30, 2)
        s = rng.randint(16, 30)
        c = i % 3
        img[y0:y0 + s, x0:x0 + s, c] = 250
        items.append(tf(mx.nd.array(img, dtype='uint8'),
                        np.array([[x0, y0, x0 + s - 1, y0 + s - 1, c, 0]], np.float32)))
    return [mx.nd.stack(*parts) for parts in zip(*items)]


def test_loss_split_over_contexts_equals_whole_batch(net):
    x, cls_t, box_t = _batch(net, n=4)
    with autograd.train_mode():
        cls, box, _ = net(x)
    loss_fn = RetinaNetLoss(num_class=3)
    whole = [v[0].sum().asscalar() for v in loss_fn(cls, box, cls_t, box_t)]
    halves = loss_fn([cls[:1], cls[1:]], [box[:1], box[1:]], [cls_t[:1], cls_t[1:]],
                     [box_t[:1], box_t[1:]])
    split = [sum(p.sum().asscalar() for p in part) for part in halves]
    np.testing.assert_allclose(split, whole, rtol=1e-5)
    # the box term only sees positives: perturbing other anchors' offsets changes nothing
    noise = (cls_t < 0).expand_dims(-1) * mx.nd.random.normal(shape=box.shape)
    np.testing.assert_allclose(loss_fn(cls, box + noise, cls_t, box_t)[2][0].sum().asscalar(),
                               whole[2], rtol=1e-5)
    assert whole[1] > 0 and whole[2] > 0


def test_few_training_steps_reduce_loss():
    net = tiny_net()
    net.hybridize(static_alloc=True, static_shape=True)
    x, cls_t, box_t = _batch(net, n=4, seed=1)
    loss_fn = RetinaNetLoss(num_class=3)
    trainer = gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 2e-3})
    losses = []
    for _ in range(12):
        with autograd.record():
            cls, box, _ = net(x)
            (total,), _, _ = loss_fn(cls, box, cls_t, box_t)  # one list entry per device
        total.backward()
        trainer.step(1)
        losses.append(total.sum().asscalar())
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.6 * losses[0], losses


# ---------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------
def test_export_matches_in_fresh_process(tmp_path):
    net = tiny_net(post_nms=50)
    # enough detections above the score threshold to compare more than padding
    net.class_subnet[-1].bias.set_data(mx.nd.zeros_like(net.class_subnet[-1].bias.data()))
    net.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.random.uniform(-1, 1, shape=(1, 3, SIZE, SIZE))
    ids, scores, bboxes = [o.asnumpy() for o in net(x)]
    assert (ids >= 0).sum() > 10
    prefix = str(tmp_path / 'retinanet')
    net.export(prefix, epoch=0)
    np.save(str(tmp_path / 'x.npy'), x.asnumpy())
    script = textwrap.dedent('''
        import sys, numpy as np, mxnet as mx
        from mxnet import gluon
        assert 'gluon_focal' not in sys.modules
        net = gluon.SymbolBlock.imports(sys.argv[1] + '-symbol.json', ['data'],
                                        sys.argv[1] + '-0000.params')
        out = net(mx.nd.array(np.load(sys.argv[2])))
        np.savez(sys.argv[3], *[o.asnumpy() for o in out])
    ''')
    out = str(tmp_path / 'out.npz')
    env = dict(os.environ, PYTHONPATH='')
    subprocess.run([sys.executable, '-c', script, prefix, str(tmp_path / 'x.npy'), out],
                   check=True, cwd=str(tmp_path), env=env, timeout=120)
    got = np.load(out)
    np.testing.assert_array_equal(got['arr_0'], ids)
    np.testing.assert_allclose(got['arr_1'], scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got['arr_2'], bboxes, rtol=1e-5, atol=1e-4)
    with open(prefix + '-symbol.json') as f:
        ops = {node['op'] for node in json.load(f)['nodes']}
    assert '_contrib_box_nms' in ops
