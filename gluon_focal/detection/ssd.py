"""Sigmoid focal loss for GluonCV's SSD, and sigmoid scoring at inference.

Training
--------
:class:`SSDFocalMultiBoxLoss` is a drop-in replacement for
:class:`gluoncv.loss.SSDMultiBoxLoss` in GluonCV's SSD training loop::

    # mbox_loss = gluoncv.loss.SSDMultiBoxLoss()
    mbox_loss = SSDFocalMultiBoxLoss()
    with autograd.record():
        cls_preds, box_preds = [], []
        for x in data:                          # one slice per device
            cls_pred, box_pred, _ = net(x)
            cls_preds.append(cls_pred)
            box_preds.append(box_pred)
        sum_loss, cls_loss, box_loss = mbox_loss(cls_preds, box_preds, cls_targets, box_targets)
        autograd.backward(sum_loss)
    trainer.step(1)   # the losses are already normalized by the number of positives

Same call, same return value (three lists with one ``(batch_per_device,)``
array per device), same targets (``SSDDefaultTrainTransform``'s ``cls_targets``
``{-1 ignore, 0 background, 1..C}`` and encoded ``box_targets``).  What changes:

* classification is the sigmoid focal loss (Lin et al. 2017) of
  :class:`gluon_focal.FocalLoss` on the ``C`` **foreground** columns
  ``cls_preds[:, :, 1:]``; a foreground anchor of class ``k`` has target 1 in
  column ``k`` and 0 elsewhere, a background anchor has all ``C`` targets 0;
* every non-ignored anchor counts: there is **no hard negative mining**, the
  focal term down-weights the easy negatives instead;
* anchors with a negative class target (``-1``) are ignored entirely;
* the background column 0 that GluonCV's SSD head still produces carries no
  target and gets exactly zero gradient (it is simply unused);
* the box loss is SSDMultiBoxLoss's smooth-L1 (``rho``) on positive anchors,
  weighted by ``box_weight`` (SSDMultiBoxLoss's ``lambd``);
* both terms are divided by the number of positive anchors over **all**
  devices (at least 1), like SSDMultiBoxLoss, or by the caller's
  ``avg_factor`` (e.g. the positives of all dist workers).  Unlike
  SSDMultiBoxLoss, a batch with no positive anchor is not skipped: its
  negatives still train the classifier (normalized by 1);
* the targets are checked every call (``validate=True``).

The loss is :class:`gluon_focal.detection.loss.DenseDetectionLoss`, the same
core as :class:`~gluon_focal.detection.retinanet.RetinaNetLoss`.

Use :func:`init_focal_bias` after ``net.initialize()``: RetinaNet's
initialisation of the classifier (foreground bias ``-log((1 - pi) / pi)``,
``pi = 0.01``, and initial logits that barely spread around it) keeps the
thousands of background anchors from swamping the first iterations.

Inference
---------
``gluoncv.model_zoo.ssd.SSD.hybrid_forward`` scores detections with a
**softmax** over ``[background, class_1, ..., class_C]``.  A focal-trained head
never learns column 0, so softmax scores are meaningless for it: each
foreground column is an independent sigmoid classifier.  Score with
``sigmoid(cls_preds[:, :, 1:])`` instead, which is what :class:`SigmoidSSD`
does: it wraps a (trained) GluonCV ``SSD``, shares its parameters, and returns
the usual ``(ids, scores, bboxes)`` with the same box decoding, per-class
score threshold (0.01) and NMS as GluonCV.  In training mode it returns
``[cls_preds, box_preds, anchors]`` like ``SSD``.  It hybridizes and exports
(``SigmoidSSD(net).export(...)``, and to ONNX with
:func:`gluon_focal.deploy.export_onnx`) like any HybridBlock::

    detector = SigmoidSSD(net)          # net: a focal-trained gluoncv SSD
    ids, scores, bboxes = detector(x)   # scores are per-class sigmoid probabilities

Two small SSDs for CPU training: :func:`resnet_ssd` (GluonCV's ``SSD`` over a
width-scaled ResNet, the default of ``examples/train_ssd.py``) and :func:`tiny_ssd`.
"""
import warnings

import mxnet as mx
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

from ..init import prior_bias
from .loss import DenseDetectionLoss, _as_list
from .postprocess import batch_gather, classwise_nms, threshold_topk

__all__ = ['SSDFocalMultiBoxLoss', 'SigmoidSSD', 'init_focal_bias', 'tiny_ssd',
           'TinySSDBackbone', 'resnet_ssd', 'ssd_anchors', 'zoo_ssd']


class SSDFocalMultiBoxLoss(DenseDetectionLoss):
    r"""Sigmoid focal classification + smooth-L1 box loss for GluonCV SSD.

    A drop-in for :class:`gluoncv.loss.SSDMultiBoxLoss` (see the module
    docstring for the exact differences): GluonCV's SSD targets and outputs
    mapped onto :class:`~gluon_focal.detection.loss.DenseDetectionLoss`, the
    core RetinaNet's loss shares.

    Parameters
    ----------
    alpha : float or None, default 0.25
        Focal loss class-balance weight of the positive targets.
    gamma : float, default 2.0
        Focusing parameter.
    rho : float, default 1.0
        Smooth-L1 transition point of the box loss (as in SSDMultiBoxLoss).
    box_weight : float, default 1.0
        Weight of the box loss: ``L = L_cls + box_weight * L_box`` (SSDMultiBoxLoss's
        ``lambd``).
    impl : str, default 'auto'
        Passed to :class:`gluon_focal.FocalLoss`.
    validate : bool, default True
        Passed to :class:`gluon_focal.FocalLoss` (check the targets every call).

    ``forward(cls_pred, box_pred, cls_target, box_target, avg_factor=None)``
    takes ``(B, A, C + 1)`` logits (background at column 0), ``(B, A, 4)``
    boxes, ``(B, A)`` class targets ``{-1 ignore, 0 background, 1..C}`` and
    ``(B, A, 4)`` box targets, each an array or a list of one per device, and
    returns ``(sum_losses, cls_losses, box_losses)``: three lists of ``(B,)``
    arrays, divided by ``avg_factor`` (default: the positive anchors of all devices).
    """

    def __init__(self, alpha=0.25, gamma=2.0, rho=1.0, box_weight=1.0, impl='auto',
                 validate=True, **kwargs):
        super(SSDFocalMultiBoxLoss, self).__init__(
            alpha=alpha, gamma=gamma, rho=rho, box_weight=box_weight, background_label=-1,
            ignore_label=-2, impl=impl, validate=validate, **kwargs)

    @staticmethod
    def focal_labels(cls_target):
        """Map SSD class targets ``{<0 ignore, 0 background, k >= 1}`` to the
        sparse labels of the foreground columns ``{-2, -1, k - 1}``."""
        return nd.where(cls_target < 0, nd.ones_like(cls_target) * -2, cls_target - 1)

    def forward(self, cls_pred, box_pred, cls_target, box_target, avg_factor=None):
        cls_pred, cls_target = _as_list(cls_pred), _as_list(cls_target)
        # the C foreground columns; GluonCV's background column 0 stays unused
        fg_preds = [cp.slice_axis(axis=-1, begin=1, end=None) for cp in cls_pred]
        labels = [self.focal_labels(ct.astype(cp.dtype, copy=False))
                  for cp, ct in zip(cls_pred, cls_target)]
        return super(SSDFocalMultiBoxLoss, self).forward(fg_preds, box_pred, labels,
                                                         box_target, avg_factor)


# ---------------------------------------------------------------------------
# inference with sigmoid scores
# ---------------------------------------------------------------------------
# GluonCV's SSD score threshold (MultiPerClassDecoder and box_nms's valid_thresh)
_SCORE_THRESH = 0.01


class SigmoidSSD(gluon.HybridBlock):
    """Wrap a GluonCV ``SSD`` so that detections are scored with sigmoids.

    The wrapper owns ``ssd`` as its only child (parameters are shared, not
    copied).  Inference output is GluonCV's ``(ids, scores, bboxes)``, each
    ``(B, post_nms, 1|1|4)``, with ``scores = sigmoid(cls_preds[..., 1:])``
    instead of ``softmax(cls_preds)[..., 1:]``; box decoding, the 0.01 score
    threshold and per-class NMS are GluonCV's (``set_nms`` is forwarded), the
    pre-NMS top-k (``nms_topk``) taken explicitly and the class-wise NMS written
    so that they export to ONNX (:func:`gluon_focal.deploy.export_onnx`) with the
    same detections. One difference: with ``post_nms <= 0`` GluonCV returns all
    C*N rows, this returns ``nms_topk`` rows (or, with ``nms_topk <= 0``, as many
    as there are rows above the threshold). In ``autograd`` training mode it
    returns ``[cls_preds, box_preds, anchors]`` exactly like ``SSD``.
    """

    def __init__(self, ssd, **kwargs):
        super(SigmoidSSD, self).__init__(**kwargs)
        with self.name_scope():
            self.ssd = ssd

    @property
    def classes(self):
        return self.ssd.classes

    @property
    def num_classes(self):
        return self.ssd.num_classes

    def infer_shape(self, *args):
        """Deferred parameter shapes, from the wrapped SSD: with ``nms_topk <= 0`` the
        inference graph cuts the NMS input to its valid rows, a shape MXNet's shape
        inference cannot follow."""
        self.ssd(*args)

    def set_nms(self, nms_thresh=0.45, nms_topk=400, post_nms=100):
        """Forwarded to ``SSD.set_nms``."""
        self._clear_cached_op()
        self.ssd.set_nms(nms_thresh=nms_thresh, nms_topk=nms_topk, post_nms=post_nms)

    def network_outputs(self, F, x):
        """``(cls_preds (B, N, C + 1), box_preds (B, N, 4), anchors (1, N, 4))``, the
        network before any post-processing (call with ``F=mx.nd`` to debug)."""
        net = self.ssd
        features = net.features(x)
        cls_preds = [F.flatten(F.transpose(cp(feat), (0, 2, 3, 1)))
                     for feat, cp in zip(features, net.class_predictors)]
        box_preds = [F.flatten(F.transpose(bp(feat), (0, 2, 3, 1)))
                     for feat, bp in zip(features, net.box_predictors)]
        anchors = [F.reshape(ag(feat), shape=(1, -1))
                   for feat, ag in zip(features, net.anchor_generators)]
        cls_preds = F.concat(*cls_preds, dim=1).reshape((0, -1, net.num_classes + 1))
        box_preds = F.concat(*box_preds, dim=1).reshape((0, -1, 4))
        anchors = F.concat(*anchors, dim=1).reshape((1, -1, 4))
        return cls_preds, box_preds, anchors

    def hybrid_forward(self, F, x):  # pylint: disable=arguments-differ
        # gluoncv.model_zoo.ssd.SSD.hybrid_forward (gluoncv 0.10.5.post0) with sigmoid
        # scores, and with the pre-NMS top-k and class-wise NMS written so that they
        # export to ONNX (gluon_focal.detection.postprocess); same detections.
        net = self.ssd
        cls_preds, box_preds, anchors = self.network_outputs(F, x)
        if autograd.is_training():
            return [cls_preds, box_preds, anchors]
        bboxes = net.bbox_decoder(box_preds, anchors)
        # column 0 is unused by a focal-trained head: score each foreground column
        # with its own sigmoid
        fg_prob = F.sigmoid(cls_preds.slice_axis(axis=-1, begin=1, end=None))  # (B, N, C)
        if 0 < net.nms_thresh < 1 and net.nms_topk > 0:
            return self._topk_nms(F, fg_prob, bboxes, anchors)
        # GluonCV's rows: for each class, (id or -1, score or 0, box) of every anchor
        probs = F.concat(F.zeros_like(cls_preds.slice_axis(axis=-1, begin=0, end=1)),
                         fg_prob, dim=-1)
        cls_ids, scores = net.cls_decoder(probs)
        results = []
        for i in range(net.num_classes):
            cls_id = cls_ids.slice_axis(axis=-1, begin=i, end=i + 1)
            score = scores.slice_axis(axis=-1, begin=i, end=i + 1)
            results.append(F.concat(*[cls_id, score, bboxes], dim=-1))
        result = F.concat(*results, dim=1)
        ids = F.slice_axis(result, axis=2, begin=0, end=1)
        scores = F.slice_axis(result, axis=2, begin=1, end=2)
        bboxes = F.slice_axis(result, axis=2, begin=2, end=6)
        if 0 < net.nms_thresh < 1:  # every row into NMS (nms_topk <= 0)
            keep = net.post_nms if net.post_nms > 0 else None
            return classwise_nms(F, ids, scores, bboxes, net.nms_thresh, _SCORE_THRESH, keep)
        return ids, scores, bboxes

    def _topk_nms(self, F, fg_prob, bboxes, anchors):
        """GluonCV's ``box_nms(rows, topk=nms_topk, valid_thresh=0.01, id_index=0,
        force_suppress=False)`` and ``post_nms`` slice, with the top-k taken first
        over the class-major (class, anchor) scores, so that only those rows are built;
        a few hundred rows: no cut (see classwise_nms)."""
        net = self.ssd
        scores = fg_prob.transpose((0, 2, 1)).reshape((0, -1))   # (B, C*N), class-major
        scores, idx = threshold_topk(F, scores, net.nms_topk, _SCORE_THRESH)
        num_anchors = F.sum(F.ones_like(anchors.slice_axis(axis=2, begin=0, end=1)))
        cls_id = F.floor(F.broadcast_div(idx, num_anchors))
        boxes = batch_gather(F, bboxes, idx - F.broadcast_mul(cls_id, num_anchors))
        keep = net.post_nms if net.post_nms > 0 else net.nms_topk
        return classwise_nms(F, cls_id.expand_dims(-1), scores.expand_dims(-1), boxes,
                             net.nms_thresh, _SCORE_THRESH, keep, cut=False)


def init_focal_bias(net, prior=0.01, logit_std=0.01, data=None):
    """Initialise the SSD class predictors as RetinaNet initialises its classifier.

    Call after ``net.initialize()``.  Two parts:

    * **bias**: the foreground biases are ``-log((1 - prior) / prior)``, so every
      anchor starts predicting foreground probability ``prior`` (the background
      column, unused by the focal loss, gets bias 0);
    * **spread**: the predictor weights are rescaled so that the foreground
      logits have standard deviation ``logit_std`` around that bias at the
      start.  The paper gets this by drawing its last layer from N(0, 0.01):
      its head convs are themselves N(0, 0.01), so the logits barely spread.
      A GluonCV SSD's predictors read backbone features whose scale depends on
      the network -- VGG16-atrous has no BatchNorm, and its logits spread with
      std ~2.7 even with N(0, 0.01) weights, which puts the mean foreground
      probability at 0.05 instead of 0.01 and made focal training diverge at
      GluonCV's default learning rate (docs/detection.md has the numbers).  So
      the spread is measured, per predictor, on ``data`` (default: two
      N(0, 1) images of the network's base size, i.e. normalised noise) and
      the weights are scaled to give ``logit_std``.

    Parameters
    ----------
    net : gluoncv SSD or SigmoidSSD
        Initialized (shapes may be deferred; one forward pass is run here).
    prior : float
        Initial foreground probability (0.01 in the paper).
    logit_std : float or None
        Target spread of the initial foreground logits; None keeps the weights
        and sets the bias only.
    data : NDArray, optional
        ``(B, 3, H, W)`` normalised images to measure the spread on.

    BatchNorm running statistics are left as they were.
    """
    ssd = net.ssd if isinstance(net, SigmoidSSD) else net
    num = ssd.num_classes + 1
    if logit_std is not None:
        if not logit_std > 0:
            raise ValueError('logit_std=%r must be > 0 or None.' % (logit_std,))
        _rescale_class_predictors(ssd, logit_std, data)
    value = prior_bias(prior)
    for cp in ssd.class_predictors:
        bias = cp.predictor.bias
        values = bias.data().copy().reshape((-1, num))  # channel = anchor * (C + 1) + class
        values[:, 0] = 0
        values[:, 1:] = value
        bias.set_data(values.reshape((-1,)))


def _rescale_class_predictors(ssd, logit_std, data):
    """Scale each class predictor's weights so its foreground logits (bias
    excluded) have std ``logit_std`` on ``data`` (training-mode features)."""
    num = ssd.num_classes + 1
    ctx = next(iter(ssd.collect_params().values())).list_ctx()[0]
    if data is None:
        size = getattr(ssd.anchor_generators[0], '_im_size', (300, 300))
        data = mx.nd.random.normal(shape=(2, 3) + tuple(size), ctx=ctx)
    data = data.as_in_context(ctx)
    for feat, cp in zip(ssd.features(data), ssd.class_predictors):
        cp(feat)  # an inference-mode pass finishes deferred initialization
    with _running_stats_kept(ssd), autograd.train_mode():
        features = ssd.features(data)
        for feat, cp in zip(features, ssd.class_predictors):
            logits = cp(feat) - cp.predictor.bias.data(ctx).reshape((1, -1, 1, 1))
            fg = logits.reshape((0, -4, -1, num, -2)).slice_axis(axis=2, begin=1, end=None)
            spread = float(fg.asnumpy().std())
            if spread > 0:
                weight = cp.predictor.weight
                weight.set_data(weight.data(ctx) * (logit_std / spread))


class _running_stats_kept(object):
    """Restore the aux states (BatchNorm running mean/var) a training-mode pass touches."""

    def __init__(self, net):
        self._params = net.collect_params()

    def __enter__(self):
        self._saved = {name: [d.copy() for d in p.list_data()]
                       for name, p in self._params.items()
                       if p.grad_req == 'null' and p._data is not None}
        return self

    def __exit__(self, *exc):
        for name, data in self._saved.items():
            for dst, src in zip(self._params[name].list_data(), data):
                src.copyto(dst)


# ---------------------------------------------------------------------------
# a tiny SSD for CPU experiments
# ---------------------------------------------------------------------------
class TinySSDBackbone(gluon.HybridBlock):
    """A small VGG-style conv net with multi-scale outputs for SSD.

    Stages of (3x3 stride-2 conv, 3x3 conv), each with BatchNorm + ReLU.  The
    last ``num_outputs`` stages are returned (strides ``2 ** (len(channels) -
    num_outputs + 1)`` ... ``2 ** len(channels)``).  Accepts and ignores the
    ``pretrained``/``ctx``/``root`` arguments GluonCV's ``SSD`` passes to a
    features factory.
    """

    def __init__(self, channels=(16, 32, 64, 96, 128, 128), num_outputs=4,
                 norm_layer=nn.BatchNorm, norm_kwargs=None,
                 pretrained=False, ctx=None, root=None, **kwargs):
        super(TinySSDBackbone, self).__init__(**kwargs)
        del pretrained, ctx, root
        if not 1 <= num_outputs <= len(channels):
            raise ValueError('num_outputs must be in [1, len(channels)]')
        norm_kwargs = norm_kwargs or {}
        self._num_outputs = num_outputs
        with self.name_scope():
            self.stages = nn.HybridSequential()
            for c in channels:
                stage = nn.HybridSequential()
                for stride in (2, 1):
                    stage.add(nn.Conv2D(c, 3, strides=stride, padding=1, use_bias=False),
                              norm_layer(**norm_kwargs), nn.Activation('relu'))
                self.stages.add(stage)

    def hybrid_forward(self, F, x):  # pylint: disable=arguments-differ
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs[-self._num_outputs:]


def tiny_ssd(classes, base_size=192, channels=(16, 32, 64, 96, 128, 128), num_outputs=4,
             sizes=None, ratios=((1, 2, 0.5),), **kwargs):
    """A small GluonCV ``SSD`` on :class:`TinySSDBackbone` that trains in minutes on CPU.

    Defaults: 192x192 input, feature strides 8/16/32/64, anchors of sizes
    ``(0.06, 0.12, 0.24, 0.48, 0.96) * base_size`` with ratios 1, 2, 1/2
    (about 3k anchors).  ``kwargs`` go to ``gluoncv.model_zoo.ssd.SSD``
    (``nms_thresh``, ``post_nms``, ...).  Parameters are not initialized.
    """
    from gluoncv.model_zoo.ssd import SSD
    num_stages = len(channels)
    steps = [2 ** (num_stages - num_outputs + 1 + i) for i in range(num_outputs)]
    if sizes is None:
        sizes = [base_size * 0.06 * 2 ** i for i in range(num_outputs)] + [base_size * 0.96]
    ratios = [list(r) for r in ratios]
    if len(ratios) == 1:
        ratios = ratios * num_outputs

    def features(**fkw):
        return TinySSDBackbone(channels=channels, num_outputs=num_outputs, **fkw)

    return SSD(None, base_size, features=features, num_filters=None, sizes=sizes,
               ratios=ratios, steps=steps, classes=tuple(classes), pretrained=False,
               anchor_alloc_size=max(32, base_size // steps[0] * 2), **kwargs)


def resnet_ssd(classes, backbone='resnet18_v1b', width=0.5, base_size=128,
               extra_filters=(256,), sizes=None, ratios=((1, 2, 0.5),), **kwargs):
    """A GluonCV ``SSD`` over a (width-scaled) GluonCV ``ResNetV1b``, for small images.

    The SSD detects on C3, C4 and C5 of the ResNet (strides 8, 16, 32) plus one
    GluonCV extra layer per ``extra_filters`` entry (1x1 transition + 3x3
    stride-2 conv, BatchNorm; strides 64, 128, ...), the way
    ``ssd_512_resnet50_v1`` appends layers to its base network; anchors are
    GluonCV's ``SSDAnchorGenerator``. The defaults (ResNet-18 at half width,
    128x128 input, anchor squares of 12, 17, 24, 34, 48, 68, 96 and 124 px)
    suit objects of 12-64 px in 128x128 images, the synthetic shapes of the
    demos; ``examples/train_ssd.py`` trains it by default.

    Parameters
    ----------
    classes : sequence of str
        Foreground class names.
    backbone : str
        A GluonCV ResNetV1b name (``resnet18_v1b``, ``resnet50_v1b``, ...).
    width : float
        Multiply the stage widths (:func:`~gluon_focal.detection.retinanet.scaled_resnet_v1b`;
        1 is the standard network).
    base_size : int
        Input side the anchors are laid out for.
    extra_filters : sequence of int
        Channels of the extra layers after C5.
    sizes : sequence of float, optional
        ``len(extra_filters) + 4`` anchor sizes in pixels: output layer ``i`` has
        squares of side ``sizes[i]`` and ``sqrt(sizes[i] * sizes[i + 1])`` and
        ``sizes[i]`` at the other ``ratios``. Default ``(3/32, 3/16, 3/8, ...,
        5/4) * base_size`` (doubling per layer, the last ``5/4 * base_size``).
    ratios : sequence of sequences of float
        Anchor aspect ratios, one list per output layer or one for all.
    **kwargs
        Passed to ``gluoncv.model_zoo.ssd.SSD`` (``nms_thresh``, ``post_nms``, ...).

    The backbone uses batch statistics (trained from scratch, no pretrained
    weights). Parameters are not initialized.
    """
    from gluoncv.model_zoo.ssd import SSD
    from .retinanet import _RESNET_V1B_SPECS, scaled_resnet_v1b, stage_output_names
    if backbone not in _RESNET_V1B_SPECS:
        raise ValueError('backbone=%r is not a GluonCV ResNetV1b; expected one of %s'
                         % (backbone, ', '.join(sorted(_RESNET_V1B_SPECS))))
    base = scaled_resnet_v1b(backbone, width, dilated=False, use_global_stats=False)
    num_layers = 3 + len(extra_filters)
    if sizes is None:
        sizes = [base_size * 3 / 32 * 2 ** i for i in range(num_layers)] + [base_size * 1.25]
    if len(sizes) != num_layers + 1:
        raise ValueError('sizes needs %d entries (one per output layer + 1), got %d'
                         % (num_layers + 1, len(sizes)))
    ratios = [list(r) for r in ratios]
    if len(ratios) == 1:
        ratios = ratios * num_layers
    steps = [8 * 2 ** i for i in range(num_layers)]
    # a fixed prefix: the extra layers' parameter names (inside GluonCV's FeatureExpander,
    # a SymbolBlock) would otherwise carry a per-process counter (ssd0_, ssd1_, ...), and a
    # checkpoint would not load into a second network built in the same process
    kwargs.setdefault('prefix', 'ssd_')
    with warnings.catch_warnings():  # SymbolBlock's "Cannot decide type" for 'data'
        warnings.simplefilter('ignore', UserWarning)
        return SSD(base, base_size, features=stage_output_names(base),
                   num_filters=list(extra_filters), sizes=list(sizes), ratios=ratios,
                   steps=steps, classes=tuple(classes), pretrained=False,
                   anchor_alloc_size=max(32, base_size // steps[0] * 2), **kwargs)


def zoo_ssd(name, classes, ctx=None, pretrained_base=False):
    """A GluonCV model-zoo SSD for ``classes``, initialized, trainable offline.

    ``name`` is any SSD of ``gluoncv.model_zoo`` (``ssd_300_vgg16_atrous_voc``,
    ``ssd_512_resnet50_v1_custom``, ``ssd_512_mobilenet1.0_coco``, ...): its
    layout (base network, feature layers, anchor sizes) is kept, never its
    pretrained detector weights.  ``*_custom`` names are built for ``classes``
    directly; for the others the class predictors are replaced with
    ``reset_class`` (which needs initialized parameters, hence the
    initialization here).  Parameters are initialized as GluonCV's
    ``train_ssd.py`` does (``net.initialize()``: the layers' own initializers,
    ``Uniform(0.07)`` elsewhere); ``pretrained_base=True`` loads the ImageNet
    base network from ``~/.mxnet/models`` (or downloads it).
    """
    from gluoncv import model_zoo
    if not name.startswith('ssd_') or name not in model_zoo.get_model_list():
        raise ValueError('network %r is not a GluonCV model-zoo SSD; expected one of %s'
                         % (name, ', '.join(n for n in model_zoo.get_model_list()
                                            if n.startswith('ssd_') and 'int8' not in n)))
    ctx = ctx or [mx.cpu()]
    kwargs = {'classes': tuple(classes), 'transfer': None} if name.endswith('_custom') else {}
    net = model_zoo.get_model(name, pretrained=False, pretrained_base=pretrained_base, **kwargs)
    with warnings.catch_warnings():  # SymbolBlock's "Cannot decide type" for 'data'
        warnings.simplefilter('ignore', UserWarning)
        net.initialize(ctx=ctx)
    if tuple(net.classes) != tuple(classes):
        net.reset_class(tuple(classes))
    return net


def ssd_anchors(net, size):
    """The ``(1, A, 4)`` anchors of ``net`` for ``size=(H, W)`` input (for
    ``SSDDefaultTrainTransform``), returned on CPU.

    Runs one forward pass in training mode on the first context of ``net``'s
    parameters (as GluonCV's ``train_ssd.py`` does) and restores the BatchNorm
    running statistics that pass touched."""
    h, w = size
    ctx = next(iter(net.collect_params().values())).list_ctx()[0]
    with _running_stats_kept(net), autograd.train_mode():
        _, _, anchors = net(mx.nd.zeros((1, 3, h, w), ctx=ctx))
    return anchors.as_in_context(mx.cpu())
