"""Deployment: the detectors' inference post-processing (unchanged detections,
exportable class-wise NMS) and ONNX export run by onnxruntime.

Tiny inputs (64 px) and narrow networks keep the file at a few seconds per test.
"""
import numpy as np
import pytest

mx = pytest.importorskip('mxnet')
pytest.importorskip('gluoncv')
# onnx and onnxruntime are in the test extra: a missing one fails, it is not skipped
import onnx  # noqa: E402
import onnxruntime  # noqa: E402,F401
from mxnet import gluon  # noqa: E402

from gluon_focal.deploy import OPSET, compare_detections, export_onnx, onnx_session  # noqa: E402
from gluon_focal.detection import SigmoidSSD, get_retinanet, init_focal_bias, tiny_ssd  # noqa: E402

SIZE = 64
CLASSES = ['circle', 'triangle', 'square', 'cross', 'ring']


def demo_retinanet(**kwargs):
    """examples/train_retinanet.py's default model (GroupNorm heads), at 64 px, with
    weights set so that hundreds of (anchor, class) pairs score above 0.05 with
    distinct scores and boxes of all sizes."""
    cfg = dict(classes=CLASSES, backbone_width=0.5, fpn_channels=64, head_channels=64,
               head_layers=2, head_norm='gn', anchor_size=2, anchor_alloc_size=128)
    cfg.update(kwargs)
    mx.random.seed(0)
    net = get_retinanet('resnet18_v1b', **cfg)
    net.initialize()
    last_cls, last_box = net.class_subnet[-1], net.box_subnet[-1]
    last_cls.bias.set_data(mx.nd.zeros_like(last_cls.bias.data()) - 1.5)
    last_cls.weight.set_data(last_cls.weight.data() * 10)
    last_box.weight.set_data(last_box.weight.data() * 30)
    return net


def demo_ssd():
    mx.random.seed(0)
    net = tiny_ssd(CLASSES, base_size=SIZE, channels=(8, 16, 16, 16, 16, 16))
    net.initialize(mx.init.Xavier(magnitude=2))
    calibrate_batchnorm(net)
    init_focal_bias(net, prior=0.05)
    for cp in net.class_predictors:  # spread-out scores
        cp.predictor.weight.set_data(cp.predictor.weight.data() * 10)
    for bp in net.box_predictors:
        bp.predictor.weight.set_data(bp.predictor.weight.data() * 3)
    return SigmoidSSD(net)


def calibrate_batchnorm(net, steps=20):
    """BatchNorm running statistics of the test images, so that the features of an
    untrained network do not vanish in inference mode (MXNet updates them in the
    backward pass)."""
    for seed in range(steps):
        with mx.autograd.record():
            outputs = net(images(4, 100 + seed))
            total = sum(o.sum() for o in outputs)
        total.backward()


def images(n, seed, size=SIZE):
    return mx.nd.array(np.random.RandomState(seed).uniform(-2, 2, (n, 3, size, size)))


# ---------------------------------------------------------------------------
# the post-processing as it was before export support (gluon-focal 0.1.0):
# kept here, verbatim in what it computes, as the reference the new graph must match
# ---------------------------------------------------------------------------
def _old_retinanet(net, x):
    F = mx.nd
    cls_preds, box_preds, anchors = net.level_outputs(F, x)
    dets = []
    for cls, box, anc in zip(cls_preds, box_preds, anchors):
        k = net.pre_nms_topk
        scores = F.sigmoid(cls).reshape((0, -1))
        pad = F.broadcast_axis(F.ones_like(scores.slice_axis(axis=1, begin=0, end=1)),
                               axis=1, size=k) * -1.
        scores, idx = F.topk(F.concat(scores, pad, dim=1), axis=1, k=k, ret_typ='both',
                             dtype='float32')
        anchor_idx = F.floor(idx / net.num_class)
        cls_id = idx - anchor_idx * net.num_class
        cls_id = F.where(scores > net.score_thresh, cls_id, F.ones_like(cls_id) * -1.)
        boxes = net.box_clip(net.box_decoder(box, anc), x)
        boxes = F.concat(boxes, F.broadcast_axis(
            F.zeros_like(boxes.slice_axis(axis=1, begin=0, end=1)), axis=1, size=k), dim=1)
        batch_idx = F.broadcast_like(F.contrib.arange_like(scores, axis=0).reshape((-1, 1)),
                                     scores)
        picked = F.gather_nd(boxes, F.stack(batch_idx, anchor_idx, axis=0))
        dets.append(F.concat(cls_id.expand_dims(-1), scores.expand_dims(-1), picked, dim=-1))
    dets = F.contrib.box_nms(F.concat(*dets, dim=1), overlap_thresh=net.nms_thresh,
                             valid_thresh=net.score_thresh, topk=-1, coord_start=2,
                             score_index=1, id_index=0, background_id=-1,
                             force_suppress=False, in_format='corner', out_format='corner')
    keep = min(net.post_nms, len(net.strides) * net.pre_nms_topk)
    if keep > 0:
        dets = dets.slice_axis(axis=1, begin=0, end=keep)
    return [dets.slice_axis(axis=2, begin=b, end=e).asnumpy()
            for b, e in ((0, 1), (1, 2), (2, 6))]


def _old_sigmoid_ssd(det, x):
    F, net = mx.nd, det.ssd
    feats = net.features(x)
    cls_preds = F.concat(*[F.flatten(F.transpose(cp(f), (0, 2, 3, 1)))
                           for f, cp in zip(feats, net.class_predictors)], dim=1)
    box_preds = F.concat(*[F.flatten(F.transpose(bp(f), (0, 2, 3, 1)))
                           for f, bp in zip(feats, net.box_predictors)], dim=1)
    anchors = F.concat(*[F.reshape(ag(f), shape=(1, -1))
                         for f, ag in zip(feats, net.anchor_generators)], dim=1)
    cls_preds = cls_preds.reshape((0, -1, net.num_classes + 1))
    bboxes = net.bbox_decoder(box_preds.reshape((0, -1, 4)), anchors.reshape((1, -1, 4)))
    probs = F.concat(F.zeros_like(cls_preds.slice_axis(axis=-1, begin=0, end=1)),
                     F.sigmoid(cls_preds.slice_axis(axis=-1, begin=1, end=None)), dim=-1)
    cls_ids, scores = net.cls_decoder(probs)
    result = F.concat(*[F.concat(cls_ids.slice_axis(axis=-1, begin=i, end=i + 1),
                                 scores.slice_axis(axis=-1, begin=i, end=i + 1), bboxes, dim=-1)
                        for i in range(net.num_classes)], dim=1)
    result = F.contrib.box_nms(result, overlap_thresh=net.nms_thresh, topk=net.nms_topk,
                               valid_thresh=0.01, id_index=0, score_index=1, coord_start=2,
                               force_suppress=False)
    result = result.slice_axis(axis=1, begin=0, end=net.post_nms)
    return [result.slice_axis(axis=2, begin=b, end=e).asnumpy()
            for b, e in ((0, 1), (1, 2), (2, 6))]


def _overlaps_across_classes(ids, boxes, thresh):
    """Whether two detections of different classes overlap by IoU > thresh (which
    class-agnostic NMS would have suppressed): the class-wise NMS is exercised."""
    keep = ids[:, 0] >= 0
    ids, b = ids[keep, 0], boxes[keep]
    lt, rb = np.maximum(b[:, None, :2], b[None, :, :2]), np.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = np.prod(b[:, 2:] - b[:, :2], axis=1)
    iou = inter / (area[:, None] + area[None] - inter)
    return bool(((iou > thresh) & (ids[:, None] != ids[None])).any())


def _assert_same(got, expected):
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g.asnumpy() if hasattr(g, 'asnumpy') else g, e)


@pytest.mark.parametrize('hybridize, pre_nms_topk, post_nms',
                         [(False, 200, 60), (True, 200, 60), (True, 1000, 100)])
def test_retinanet_detections_unchanged(hybridize, pre_nms_topk, post_nms):
    net = demo_retinanet(pre_nms_topk=pre_nms_topk, post_nms=post_nms)
    if hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    for seed in range(3):
        x = images(2, seed)
        expected = _old_retinanet(net, x)
        # many candidates and detections: the NMS and the top-k cap both act
        assert (expected[0] >= 0).sum(axis=1).min() >= 30
        assert _overlaps_across_classes(expected[0][0], expected[2][0], net.nms_thresh)
        _assert_same(net(x), expected)


def test_retinanet_detections_unchanged_without_any_detection():
    net = demo_retinanet()
    net.class_subnet[-1].bias.set_data(mx.nd.zeros_like(net.class_subnet[-1].bias.data()) - 50)
    net.hybridize(static_alloc=True, static_shape=True)
    x = images(2, 0)
    ids, scores, bboxes = net(x)
    assert ids.shape == (2, 100, 1) and (ids == -1).asnumpy().all()
    _assert_same((ids, scores, bboxes), _old_retinanet(net, x))


@pytest.mark.parametrize('hybridize, nms_topk', [(False, 150), (True, 150), (True, -1)])
def test_sigmoid_ssd_detections_unchanged(hybridize, nms_topk):
    det = demo_ssd()
    det.set_nms(nms_thresh=0.45, nms_topk=nms_topk, post_nms=50)
    if hybridize:
        det.hybridize(static_alloc=True, static_shape=True)
    for seed in range(3):
        x = images(2, seed)
        expected = _old_sigmoid_ssd(det, x)
        assert (expected[0] >= 0).sum(axis=1).min() >= 20
        assert _overlaps_across_classes(expected[0][0], expected[2][0], 0.45)
        _assert_same(det(x), expected)


# ---------------------------------------------------------------------------
# ONNX export, run by onnxruntime
# ---------------------------------------------------------------------------


def _run_both(net, path, x):
    got = onnx_session(path).run(None, {'data': x.asnumpy()})
    expected = [o.asnumpy() for o in net(x)]
    return got, expected


def _assert_detections_match(got, expected):
    """Same count and ids per image, scores within 1e-4, boxes within 1e-3 relative."""
    assert compare_detections(got, expected) is None, compare_detections(got, expected)
    # ... and in the order of the scores
    assert np.all(np.diff(got[1][:, :, 0], axis=1)[got[0][:, 1:, 0] >= 0] <= 1e-4)


def _exported(tmp_path_factory, name, net, shape, dynamic):
    path = str(tmp_path_factory.mktemp('onnx') / (name + '.onnx'))
    net.hybridize(static_alloc=True, static_shape=True)
    return export_onnx(net, path, shape, dynamic=dynamic, check=True)


@pytest.fixture(scope='module')
def retinanet():
    return demo_retinanet()


@pytest.fixture(scope='module')
def ssd():
    return demo_ssd()


@pytest.mark.parametrize('model', ['retinanet', 'ssd'])
def test_detector_export_matches_mxnet(request, tmp_path_factory, model):
    net = request.getfixturevalue(model)
    path = _exported(tmp_path_factory, model, net, (1, 3, SIZE, SIZE), dynamic=False)
    proto = onnx.load(path)
    assert [o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')] == [OPSET]
    # weights are initializers only: the image is the one graph input
    assert [i.name for i in proto.graph.input] == ['data']
    assert len(proto.graph.initializer) > 10
    for seed in range(3):
        got, expected = _run_both(net, path, images(1, seed))
        # class-wise NMS, many detections: classes overlap heavily here
        assert (expected[0] >= 0).sum() >= 40
        _assert_detections_match(got, expected)


@pytest.mark.parametrize('model', ['retinanet', 'ssd'])
def test_detector_dynamic_export_batch_and_size(request, tmp_path_factory, model):
    net = request.getfixturevalue(model)
    path = _exported(tmp_path_factory, model + '_dyn', net, (1, 3, SIZE, SIZE), dynamic=True)
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ['batch', 3, 'height', 'width']
    for shape_seed, size in ((0, SIZE), (1, 96)):
        x = images(2, 10 + shape_seed, size=size)
        got, expected = _run_both(net, path, x)
        assert expected[0].shape[0] == 2 and (expected[0] >= 0).sum() >= 40
        _assert_detections_match(got, expected)


def test_fastscnn_export_same_masks(tmp_path):
    import gluoncv
    mx.random.seed(0)
    net = gluoncv.model_zoo.FastSCNN(3, aux=False, pretrained_base=False, crop_size=SIZE)
    net.collect_params().initialize(mx.init.Xavier(magnitude=2), force_reinit=True)
    calibrate_batchnorm(net, steps=10)
    net.hybridize(static_alloc=True, static_shape=True)
    # pyramid pooling to 1, 2, 3 and 6 bins: AdaptiveAvgPooling2D with output > 1
    path = export_onnx(net, str(tmp_path / 'fastscnn.onnx'), (1, 3, SIZE, SIZE))
    session = onnx_session(path)
    for seed in range(3):
        x = images(1, seed)
        (got,), (expected,) = session.run(None, {'data': x.asnumpy()}), [net(x)[0].asnumpy()]
        assert got.shape == expected.shape == (1, 3, SIZE, SIZE)
        assert expected.std() > 1e-2  # logits that are not all alike
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))


def test_groupnorm_converter_matches(tmp_path):
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(8, 3, padding=1), gluon.nn.GroupNorm(num_groups=4))
    net.initialize()
    # MXNet 1.9's GroupNorm has one gamma and beta per group
    net[1].gamma.set_data(mx.nd.array([0.5, 1, 2, 3]))
    net[1].beta.set_data(mx.nd.array([0, 1, -1, 2]))
    net.hybridize()
    path = export_onnx(net, str(tmp_path / 'gn.onnx'), (2, 3, 8, 8), dynamic=True)
    x = images(1, 1, size=12)
    got = onnx_session(path).run(None, {'data': x.asnumpy()})[0]
    np.testing.assert_allclose(got, net(x).asnumpy(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------
def test_export_refuses_a_net_that_is_not_hybridized(tmp_path):
    net = demo_retinanet()
    with pytest.raises(ValueError, match='not hybridized.*hybridize'):
        export_onnx(net, str(tmp_path / 'x.onnx'), (1, 3, SIZE, SIZE))


@pytest.mark.parametrize('shape, match', [
    ((1, 3, 256, 256), 'input_shape \\(1, 3, 256, 256\\) does not fit RetinaNet'),
    ((1, 1, SIZE, SIZE), 'input_shape \\(1, 1, 64, 64\\) does not fit RetinaNet'),
    ((3, SIZE, SIZE), 'input_shape must be 4 positive ints'),
    ((1, 3, 0, SIZE), 'input_shape must be 4 positive ints'),
])
def test_export_refuses_an_input_shape_that_does_not_fit(retinanet, tmp_path, shape, match):
    retinanet.hybridize(static_alloc=True, static_shape=True)
    with pytest.raises(ValueError, match=match):
        export_onnx(retinanet, str(tmp_path / 'x.onnx'), shape)
    assert not (tmp_path / 'x.onnx').exists()


def test_export_names_an_op_without_converter(tmp_path):
    class Erf(gluon.HybridBlock):
        def hybrid_forward(self, F, x):
            return F.erf(x)
    net = Erf()
    net.hybridize()
    with pytest.raises(NotImplementedError, match="no converter for operator 'erf'.*register"):
        export_onnx(net, str(tmp_path / 'x.onnx'), (1, 3, 4, 4))


def test_fastscnn_dynamic_export_says_to_use_static_shapes(tmp_path):
    import gluoncv
    net = gluoncv.model_zoo.FastSCNN(2, aux=False, pretrained_base=False, crop_size=SIZE)
    net.hybridize()
    with pytest.raises(ValueError, match='AdaptiveAvgPooling2D.*dynamic=False'):
        export_onnx(net, str(tmp_path / 'x.onnx'), (1, 3, SIZE, SIZE), dynamic=True)


def test_compare_detections_finds_each_kind_of_difference():
    ids = np.array([[[0.], [1.], [-1.]]])
    scores = np.array([[[0.9], [0.8], [-1.]]])
    boxes = np.array([[[0., 0., 10., 10.], [5., 5., 20., 20.], [-1.] * 4]])
    same = (ids, scores, boxes)
    assert compare_detections(same, same) is None
    swapped = (ids[:, [1, 0, 2]], scores[:, [1, 0, 2]], boxes[:, [1, 0, 2]])
    assert compare_detections(swapped, same) is None  # near-tied rows may swap
    assert 'no match' in compare_detections((ids[:, [1, 1, 2]], scores, boxes), same)
    assert 'no match' in compare_detections((ids, scores + 2e-4, boxes), same)
    assert 'no match' in compare_detections((ids, scores, boxes * 1.01), same)
    fewer = ids.copy()
    fewer[0, 1] = -1
    assert '1 detections vs 2' in compare_detections((fewer, scores, boxes), same)


# ---------------------------------------------------------------------------
# the examples
# ---------------------------------------------------------------------------
def _load_example(name):
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(__file__), '..', 'examples', name + '.py')
    spec = importlib.util.spec_from_file_location(name + '_example', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_detector_example_onnx(tmp_path):
    import json
    config = dict(backbone='resnet18_v1b', classes=CLASSES, backbone_width=0.5,
                  fpn_channels=64, head_channels=64, head_layers=2, head_norm='gn',
                  anchor_size=2, anchor_alloc_size=128, data_shape=SIZE)
    (tmp_path / 'model.json').write_text(json.dumps(config))
    params = str(tmp_path / 'trained.params')
    net = demo_retinanet()
    net(images(1, 0))  # deferred shapes
    net.save_parameters(params)
    example = _load_example('export_detector')
    ids, scores, bboxes = example.main(['--checkpoint-dir', str(tmp_path), '--params', params,
                                        '--format', 'onnx', '--dynamic', '--thresh', '0.3'])
    assert (tmp_path / 'export' / 'retinanet.onnx').exists()
    assert (tmp_path / 'export' / 'retinanet-symbol.json').exists()
    assert ids.shape == (100, 1) and (ids >= 0).sum() > 10   # onnxruntime's detections


def test_export_segmenter_example(tmp_path):
    example = _load_example('export_segmenter')
    train = example.training_script()
    train_args = ['--out-dir', str(tmp_path), '--crop-size', str(SIZE), '--val-size', '2',
                  '--train-size', '2']
    args = train.parse_args(train_args)
    mx.random.seed(0)
    net = train.get_model(args, [mx.cpu()])
    calibrate_batchnorm(net, steps=5)
    params = str(tmp_path / 'trained.params')
    net.save_parameters(params)
    path, agree = example.main(['--params', params, '--num-images', '2'] + train_args)
    assert path == str(tmp_path / 'export' / 'segmenter.onnx')
    assert agree == [1.0, 1.0]
