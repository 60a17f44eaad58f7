"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", 2017) from GluonCV parts.

GluonCV 0.10 has no RetinaNet in its model zoo, but it has every part one
needs; this module wires them together in the model zoo's style:

* backbone: ``gluoncv.model_zoo.resnet*_v1b`` (``pretrained_base=False`` by default),
* FPN: ``gluoncv.nn.feature.FPNFeatureExpander`` gives P3-P5 from C3-C5;
  P6 is a 3x3 stride-2 conv on P5 and P7 a 3x3 stride-2 conv on relu(P6)
  (the paper takes P6 from C5; torchvision and Detectron2's FCOS take it from
  P5, which is what ``FPNFeatureExpander``'s outputs allow),
* anchors: ``gluoncv.model_zoo.rcnn.rpn.anchor.RPNAnchorGenerator`` per level,
  9 per location (scales 2^0, 2^(1/3), 2^(2/3) x ratios 0.5, 1, 2) with side
  ``anchor_size * stride`` (4 in the paper),
* box coding: ``gluoncv.nn.coder.NormalizedBoxCenterDecoder``,
* class-wise NMS: ``F.contrib.box_nms`` on class-offset boxes
  (:mod:`gluon_focal.detection.postprocess`), so that the ONNX export computes it too.

The class subnet and the box subnet are each ``head_layers`` 3x3 convs of
``head_channels`` filters with ReLU, shared across pyramid levels but not
with each other. New convs are N(0, 0.01) with zero bias; the last class
conv's bias is :class:`gluon_focal.PriorProbability` (pi = 0.01), so every
anchor starts out predicting about 0.01 for every class.

Outputs
-------
training (``autograd.is_training()``): ``(cls_logits (B, N, C), box_preds (B, N, 4),
anchors (1, N, 4))`` over all levels' N anchors, logits before the sigmoid;
inference: ``(ids (B, K, 1), scores (B, K, 1), bboxes (B, K, 4))`` like GluonCV's
detectors, rows with id -1 are padding.
"""
import math
import warnings
from types import SimpleNamespace

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon
from mxnet.gluon import nn

from ..init import PriorProbability
from ..nn import Conv2D, GroupNorm
from .loss import DenseDetectionLoss
from .postprocess import GraphStage, batch_gather, nms_sorted, sort_for_nms, threshold_topk

__all__ = ['RetinaNet', 'RetinaNetLoss', 'get_retinanet', 'retinanet_resnet18_v1b',
           'retinanet_resnet50_v1b', 'scaled_resnet_v1b', 'stage_output_names']


def stage_output_names(network):
    """Names of the last ReLU of ``layers2``, ``layers3`` and ``layers4`` (C3, C4, C5)
    of a GluonCV ``ResNetV1b``, without its prefix: e.g. for resnet50_v1b
    ``['layers2_relu11_fwd', 'layers3_relu17_fwd', 'layers4_relu8_fwd']``
    (the same names ``faster_rcnn_fpn_resnet50_v1b_coco`` hard-codes)."""
    sym = network(mx.sym.var('data'))
    prefix = network.prefix
    last = {}
    for name in sym.get_internals().list_outputs():
        if not name.startswith(prefix) or not name.endswith('_fwd_output'):
            continue
        stem = name[len(prefix):-len('_output')]
        parts = stem.split('_')  # layersK, reluJ, fwd
        if len(parts) == 3 and parts[0].startswith('layers') and parts[1].startswith('relu'):
            stage, idx = int(parts[0][6:]), int(parts[1][4:])
            if idx >= last.get(stage, (-1, ''))[0]:
                last[stage] = (idx, stem)
    return [last[s][1] for s in (2, 3, 4)]


def _conv(channels, in_channels, stride=1, weight_init=None, bias_init='zeros'):
    return Conv2D(channels, 3, strides=stride, padding=1, in_channels=in_channels,
                  weight_initializer=weight_init or mx.init.Normal(0.01),
                  bias_initializer=bias_init)


def _subnet(in_channels, head_channels, head_layers, out_channels, bias_init, norm=None):
    head = nn.HybridSequential()
    with head.name_scope():
        for i in range(head_layers):
            head.add(_conv(head_channels, in_channels if i == 0 else head_channels))
            if norm == 'gn':
                head.add(GroupNorm(num_groups=max(1, min(32, head_channels // 8))))
            elif norm is not None:
                raise ValueError("head_norm must be None or 'gn', got %r" % (norm,))
            head.add(nn.Activation('relu'))
        head.add(_conv(out_channels, head_channels if head_layers else in_channels,
                       bias_init=bias_init))
    return head


class RetinaNet(gluon.HybridBlock):
    """RetinaNet over a feature network giving [P3, P4, P5].

    Parameters
    ----------
    features : HybridBlock
        Gives the list [P3, P4, P5] (strides 8, 16, 32) with ``fpn_channels`` each.
    classes : list of str
        Foreground class names (no background class: the classifier is sigmoid).
    fpn_channels : int
        Channels of the pyramid levels (256 in the paper).
    head_channels, head_layers : int
        Width and depth of both subnets (256 and 4 in the paper).
    anchor_size : float
        Anchor side at scale 2^0 in units of the level's stride (4 in the paper,
        i.e. 32 px on P3 to 512 px on P7); use 2 for small images and objects.
    anchor_scales, anchor_ratios : tuple of float
        Per-location anchor shapes, scales x ratios of them.
    anchor_alloc_size : int
        Largest image side for which anchors are precomputed; bigger inputs fail.
    stds : tuple of 4 float
        Box-coding normalisation (GluonCV's NormalizedBoxCenterEncoder default).
    score_thresh : float
        Inference: keep (anchor, class) pairs scoring above this (0.05).
    pre_nms_topk : int
        Inference: keep at most this many top-scoring (anchor, class) pairs per level (1000).
    nms_thresh : float
        Inference: class-wise NMS IoU threshold (0.5).
    post_nms : int
        Inference: at most this many detections per image (100).
    prior : float
        Initial foreground probability of the class subnet (0.01).
    head_norm : None or 'gn'
        None: the paper's plain conv + ReLU subnets. 'gn': GroupNorm after each
        subnet conv (as in Detectron's RetinaNet-GN), which makes training from
        scratch markedly faster and more stable. The norm layers are shared
        across levels like the convs (:class:`gluon_focal.nn.GroupNorm`: MXNet's
        GroupNorm, on CPU by the fused kernel).
    """

    strides = (8, 16, 32, 64, 128)

    def __init__(self, features, classes, fpn_channels=256, head_channels=256, head_layers=4,
                 anchor_size=4, anchor_scales=(1.0, 2 ** (1.0 / 3), 2 ** (2.0 / 3)),
                 anchor_ratios=(0.5, 1.0, 2.0), anchor_alloc_size=1024,
                 stds=(0.1, 0.1, 0.2, 0.2), score_thresh=0.05, pre_nms_topk=1000,
                 nms_thresh=0.5, post_nms=100, prior=0.01, head_norm=None, **kwargs):
        super(RetinaNet, self).__init__(**kwargs)
        from gluoncv.model_zoo.rcnn.rpn.anchor import RPNAnchorGenerator
        from gluoncv.nn.bbox import BBoxClipToImage
        from gluoncv.nn.coder import NormalizedBoxCenterDecoder

        self.classes = list(classes)
        self.num_class = len(self.classes)
        self.num_anchors = len(anchor_scales) * len(anchor_ratios)
        self.stds = tuple(stds)
        self.score_thresh = score_thresh
        self.pre_nms_topk = pre_nms_topk
        self.nms_thresh = nms_thresh
        self.post_nms = post_nms
        self._cached_training = None
        self._stages = None
        with self.name_scope():
            self.features = features
            self.p6 = _conv(fpn_channels, fpn_channels, stride=2, weight_init=mx.init.Xavier(
                rnd_type='uniform', factor_type='in', magnitude=1.))
            self.p7 = _conv(fpn_channels, fpn_channels, stride=2, weight_init=mx.init.Xavier(
                rnd_type='uniform', factor_type='in', magnitude=1.))
            self.class_subnet = _subnet(fpn_channels, head_channels, head_layers,
                                        self.num_anchors * self.num_class,
                                        PriorProbability(prior), head_norm)
            self.box_subnet = _subnet(fpn_channels, head_channels, head_layers,
                                      self.num_anchors * 4, 'zeros', head_norm)
            self.anchor_generators = nn.HybridSequential()
            with warnings.catch_warnings():  # np.float in GluonCV's anchor code
                warnings.simplefilter('ignore', DeprecationWarning)
                for stride in self.strides:
                    alloc = int(math.ceil(anchor_alloc_size / stride))
                    self.anchor_generators.add(RPNAnchorGenerator(
                        stride=stride, base_size=anchor_size * stride,
                        ratios=list(anchor_ratios), scales=list(anchor_scales),
                        alloc_size=(alloc, alloc)))
            self.box_decoder = NormalizedBoxCenterDecoder(
                stds=self.stds, convert_anchor=True, clip=math.log(1000. / 16))
            self.box_clip = BBoxClipToImage()

    # -- hybridized graphs bake in the training/inference branch ------------
    def forward(self, x, *args):
        # A hybridized block traces hybrid_forward once and caches the graph, and the
        # graph depends on autograd.is_training(); drop the cache when the mode flips.
        training = autograd.is_training()
        if self._active and self._cached_training is not None and self._cached_training != training:
            self._clear_cached_op()
        self._cached_training = training
        if self._active and not training and not args:
            return self._staged_inference(x)
        return super(RetinaNet, self).forward(x, *args)

    def hybridize(self, active=True, **kwargs):
        self._cached_training = None
        super(RetinaNet, self).hybridize(active, **kwargs)

    def _clear_cached_op(self):
        super(RetinaNet, self)._clear_cached_op()
        self._stages = None

    def _staged_inference(self, x):
        """Hybridized inference as two cached graphs: network and sorted candidates,
        then NMS. MXNet runs a graph with a data-dependent shape (the NMS input cut to its
        valid rows) op by op, which would slow the whole network down; split, only
        the NMS graph runs that way. The whole graph is built too, for export()."""
        if self._stages is None:  # (not a tuple: Gluon warns about tuples of blocks)
            self._stages = SimpleNamespace(candidates=GraphStage(self._candidates),
                                           detections=GraphStage(self._detections))
            for stage in vars(self._stages).values():
                stage.hybridize(True, **dict(self._flags))
        out = self._stages.detections(*self._stages.candidates(x))
        if self._cached_op is None:
            self._build_cache(x)
        return out

    def set_nms(self, nms_thresh=0.5, pre_nms_topk=1000, post_nms=100, score_thresh=0.05):
        """Change the inference post-processing (clears the hybridized graph)."""
        self._clear_cached_op()
        self.nms_thresh, self.pre_nms_topk = nms_thresh, pre_nms_topk
        self.post_nms, self.score_thresh = post_nms, score_thresh

    # -- graph ----------------------------------------------------------------
    def _pyramid(self, F, x):
        p3, p4, p5 = self.features(x)
        p6 = self.p6(p5)
        p7 = self.p7(F.relu(p6))
        return [p3, p4, p5, p6, p7]

    def level_outputs(self, F, x):
        """Per-level lists of class logits (B, N_l, C), box offsets (B, N_l, 4) and
        anchors (1, N_l, 4); call with ``F=mx.nd`` for debugging."""
        cls_preds, box_preds, anchors = [], [], []
        for feat, generator in zip(self._pyramid(F, x), self.anchor_generators):
            # (B, A*C, H, W) -> (B, H*W*A, C): anchor order (y, x, a) matches the generator's
            cls = self.class_subnet(feat).transpose((0, 2, 3, 1))
            cls_preds.append(cls.reshape((0, -1, self.num_class)))
            box = self.box_subnet(feat).transpose((0, 2, 3, 1))
            box_preds.append(box.reshape((0, -1, 4)))
            anchors.append(generator(feat))
        return cls_preds, box_preds, anchors

    def hybrid_forward(self, F, x):
        cls_preds, box_preds, anchors = self.level_outputs(F, x)
        if autograd.is_training():
            return (F.concat(*cls_preds, dim=1), F.concat(*box_preds, dim=1),
                    F.concat(*anchors, dim=1))
        return self._detections(F, *self._candidates(F, x, (cls_preds, box_preds, anchors)))

    def _candidates(self, F, x, outputs=None):
        """Per level, the top-k (anchor, class) pairs among those above the score
        threshold; all levels' k decoded at once (only those boxes are decoded),
        sorted for NMS: :func:`~gluon_focal.detection.postprocess.sort_for_nms`."""
        cls_preds, box_preds, anchors = outputs or self.level_outputs(F, x)
        k = self.pre_nms_topk
        ids, scores, anchor_idx, start = [], [], [], None
        for cls, level_anchors in zip(cls_preds, anchors):
            # index = anchor * C + class within the level
            level_scores, idx = threshold_topk(F, F.sigmoid(cls).reshape((0, -1)), k,
                                               self.score_thresh)
            level_anchor = F.floor(idx / self.num_class)
            ids.append(idx - level_anchor * self.num_class)
            scores.append(level_scores)
            # the level's anchors start after the previous levels' (empty slots point
            # past the level: at the next level's anchors, or at the padding below)
            anchor_idx.append(level_anchor if start is None else
                              F.broadcast_add(level_anchor, start))
            count = F.sum(F.ones_like(level_anchors.slice_axis(axis=2, begin=0, end=1)))
            start = count if start is None else start + count
        ids, scores, anchor_idx = [F.concat(*parts, dim=1) for parts in (ids, scores, anchor_idx)]
        box = F.concat(*box_preds, dim=1)
        pad = F.broadcast_axis(F.zeros_like(box.slice_axis(axis=1, begin=0, end=1)),
                               axis=1, size=k)
        box = batch_gather(F, F.concat(box, pad, dim=1), anchor_idx)     # (B, levels * k, 4)
        anchors = F.concat(*(anchors + [pad.slice_axis(axis=0, begin=0, end=1)]), dim=1)
        anchors = F.gather_nd(anchors, F.stack(F.zeros_like(anchor_idx), anchor_idx, axis=0))
        # box_decode takes one batch of anchors: decode the B * levels * k rows as one
        boxes = self.box_decoder(box.reshape((1, -1, 4)), anchors.reshape((1, -1, 4)))
        boxes = self.box_clip(boxes.reshape_like(box), x)
        return sort_for_nms(F, ids.expand_dims(-1), scores.expand_dims(-1), boxes,
                            self.score_thresh)

    def _detections(self, F, rows, in_cut):
        """Class-wise NMS of the sorted candidates: the inference outputs."""
        total = len(self.strides) * self.pre_nms_topk
        keep = min(self.post_nms, total) if self.post_nms > 0 else total
        return nms_sorted(F, rows, in_cut, self.nms_thresh, self.score_thresh, keep)

    # -- helpers ---------------------------------------------------------------
    def get_anchors(self, height, width):
        """All anchors (numpy (N, 4), corner format, in the order of the training
        outputs) for a ``height`` x ``width`` input, without running the network."""
        data = mx.sym.var('data')
        out = []
        for feat, generator in zip(self._pyramid(mx.sym, data), self.anchor_generators):
            _, shapes, _ = feat.infer_shape_partial(data=(1, 3, height, width))
            fh, fw = shapes[0][2], shapes[0][3]
            grid = generator.anchors.list_data()[0].asnumpy()  # (1, 1, H, W, A*4)
            if fh > grid.shape[2] or fw > grid.shape[3]:
                raise ValueError('input %dx%d exceeds anchor_alloc_size' % (height, width))
            out.append(grid[0, 0, :fh, :fw, :].reshape(-1, 4))
        return np.concatenate(out, axis=0)


class RetinaNetLoss(DenseDetectionLoss):
    """RetinaNet's loss: :class:`~gluon_focal.detection.loss.DenseDetectionLoss`
    on the targets of :class:`~gluon_focal.detection.targets.RetinaNetTargetGenerator`.

    Focal loss on all non-ignored anchors + smooth L1 on positive anchors, both
    divided by the positive anchors of the whole batch (all devices of a list
    input, so splitting a batch does not change the loss; pass ``avg_factor``
    to divide by the positives of all dist workers).
    ``forward(cls_logits, box_preds, cls_targets, box_targets, avg_factor=None)``
    takes arrays or per-device lists and returns ``(total, cls_loss, box_loss)``,
    each a list (one ``(B,)`` array of per-image losses per device).

    ``cls_targets`` are sparse labels: class index for positives,
    ``background_label`` (-1) for background, ``ignore_label`` (-2) for ignored
    anchors; ``box_targets`` are encoded offsets, read only at positive anchors.
    ``rho`` is the smooth-L1 transition point (in the units of the
    stds-normalised offsets); ``box_weight`` scales the box term; ``validate``
    checks the labels every call.
    """

    def __init__(self, num_class, alpha=0.25, gamma=2.0, rho=1.0, box_weight=1.0,
                 background_label=-1, ignore_label=-2, impl='auto', validate=True, **kwargs):
        super(RetinaNetLoss, self).__init__(
            num_class=num_class, alpha=alpha, gamma=gamma, rho=rho, box_weight=box_weight,
            background_label=background_label, ignore_label=ignore_label, impl=impl,
            validate=validate, **kwargs)


_RESNET_V1B_SPECS = {'resnet18_v1b': ('BasicBlockV1b', [2, 2, 2, 2]),
                     'resnet34_v1b': ('BasicBlockV1b', [3, 4, 6, 3]),
                     'resnet50_v1b': ('BottleneckV1b', [3, 4, 6, 3]),
                     'resnet101_v1b': ('BottleneckV1b', [3, 4, 23, 3]),
                     'resnet152_v1b': ('BottleneckV1b', [3, 8, 36, 3])}


def scaled_resnet_v1b(backbone, width, **kwargs):
    """GluonCV's ``ResNetV1b`` with every stage's width multiplied by ``width``
    (e.g. 0.5: 32-64-128-256 channels for ResNet-18; the 64-channel stem is kept).
    Layer names are the standard ones, so FPN outputs are found the same way."""
    from gluoncv.model_zoo import resnetv1b
    if backbone not in _RESNET_V1B_SPECS:
        raise ValueError('backbone_width needs one of %s' % sorted(_RESNET_V1B_SPECS))
    block, layers = _RESNET_V1B_SPECS[backbone]

    class ScaledResNetV1b(resnetv1b.ResNetV1b):
        def _make_layer(self, stage_index, block, planes, *args, **kw):
            planes = max(8, int(round(planes * width)))
            return super(ScaledResNetV1b, self)._make_layer(stage_index, block, planes,
                                                            *args, **kw)
    return ScaledResNetV1b(getattr(resnetv1b, block), layers, name_prefix='resnetv1b_',
                           **kwargs)


def get_retinanet(backbone='resnet50_v1b', classes=None, pretrained_base=False,
                  fpn_channels=256, backbone_width=1.0, norm_layer=None, norm_kwargs=None,
                  ctx=mx.cpu(), **kwargs):
    """A RetinaNet over a GluonCV ``resnet*_v1b`` backbone.

    Parameters
    ----------
    backbone : str
        ``resnet18_v1b``, ``resnet34_v1b``, ``resnet50_v1b``, ``resnet101_v1b``
        (any GluonCV ResNetV1b variant, e.g. ``resnet50_v1d``, works).
    classes : list of str
        Foreground class names.
    pretrained_base : bool
        Load ImageNet weights for the backbone (needs network access or a
        populated ``~/.mxnet/models``); False trains from scratch.
    fpn_channels : int
        Pyramid channels (256 in the paper).
    backbone_width : float
        Multiply the backbone's stage widths (1: the standard network; 0.5 is a
        ~3x cheaper ResNet for CPU demos; see :func:`scaled_resnet_v1b`).
    norm_layer, norm_kwargs :
        Backbone normalisation, passed to the ResNet. Default BatchNorm with batch
        statistics when training from scratch, frozen (``use_global_stats``) when
        ``pretrained_base`` -- as GluonCV's detectors do.
    **kwargs :
        Passed to :class:`RetinaNet` (``head_channels``, ``head_layers``,
        ``anchor_size``, ``score_thresh``, ...).
    """
    from gluoncv.model_zoo import get_model
    from gluoncv.nn.feature import FPNFeatureExpander
    if classes is None:
        raise ValueError('classes is required, e.g. gluoncv.data.VOCDetection.CLASSES')
    base_kwargs = {'pretrained': pretrained_base, 'dilated': False,
                   'use_global_stats': bool(pretrained_base)}
    if norm_layer is not None:
        base_kwargs['norm_layer'] = norm_layer
        base_kwargs['norm_kwargs'] = norm_kwargs
    if backbone_width != 1:
        if pretrained_base:
            raise ValueError('pretrained weights exist only for backbone_width=1')
        base_kwargs.pop('pretrained')
        base = scaled_resnet_v1b(backbone, backbone_width, **base_kwargs)
    else:
        base = get_model(backbone, **base_kwargs)
    with warnings.catch_warnings():  # SymbolBlock's "Cannot decide type" for 'data'
        warnings.simplefilter('ignore', UserWarning)
        features = FPNFeatureExpander(
            network=base, outputs=stage_output_names(base),
            num_filters=[fpn_channels] * 3, use_1x1=True, use_upsample=True,
            use_elewadd=True, use_p6=False, no_bias=False, pretrained=pretrained_base, ctx=ctx)
    return RetinaNet(features, classes, fpn_channels=fpn_channels, **kwargs)


def retinanet_resnet50_v1b(classes, pretrained_base=False, **kwargs):
    """The paper's RetinaNet-50 layout (FPN 256, heads 4 x 256, anchors 4 x stride)."""
    return get_retinanet('resnet50_v1b', classes, pretrained_base=pretrained_base, **kwargs)


def retinanet_resnet18_v1b(classes, pretrained_base=False, **kwargs):
    """RetinaNet over ResNet-18; pass smaller ``fpn_channels``/``head_channels`` for CPU."""
    return get_retinanet('resnet18_v1b', classes, pretrained_base=pretrained_base, **kwargs)
