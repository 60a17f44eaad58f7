"""RetinaNet training targets and data transforms.

Anchor assignment (paper sec. 4, "Training"): an anchor is

* **positive** for the ground-truth box it overlaps most when that IoU is >= 0.5,
* **background** when its best IoU with every box is < 0.4,
* **ignored** (no loss at all) in between.

In addition -- as Detectron, Detectron2, mmdetection and torchvision do with
``allow_low_quality_matches`` -- every ground-truth box's best anchors (all
anchors tied at that box's highest IoU, when it is > 0) are made positive even
below 0.5, so no object goes unmatched; such an anchor is assigned its own
best-overlapping box. Pass ``allow_low_quality_matches=False`` for the strict
paper rule.

Class targets are *sparse labels* for :class:`gluon_focal.FocalLoss`
(``label_mode='sparse'``): the class index for positives,
``background_label`` (-1) and ``ignore_label`` (-2) otherwise. Box targets are
the offsets of ``gluoncv.nn.coder.NormalizedBoxCenterEncoder`` (computed in
numpy; zero except at positives), which ``NormalizedBoxCenterDecoder`` inverts.

Validation needs no transform of ours: GluonCV's
``gluoncv.data.transforms.presets.ssd.SSDDefaultValTransform(width, height)``
resizes, normalises and keeps the labels, which is all RetinaNet needs.
"""
import numpy as np
import mxnet as mx

__all__ = ['RetinaNetTargetGenerator', 'RetinaNetTrainTransform', 'BACKGROUND_LABEL',
           'IGNORE_LABEL']

BACKGROUND_LABEL = -1
IGNORE_LABEL = -2


def box_iou(a, b):
    """IoU of corner boxes ``a`` (N, 4) and ``b`` (M, 4), (N, M): the numbers of
    ``gluoncv.utils.bbox.bbox_iou(a, b, offset=0)`` in about a fifth of its time
    (per coordinate instead of on (N, M, 2) blocks), since the loader matches
    every new (image, flip) on the training step's cores."""
    ax0, ay0, ax1, ay1 = (a[:, i:i + 1] for i in range(4))
    bx0, by0, bx1, by1 = b.T
    inter = (np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None) *
             np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None))
    return inter / ((ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter)


class RetinaNetTargetGenerator(object):
    """Assign anchors to ground truth and encode targets (numpy, per image).

    Parameters
    ----------
    pos_iou_thresh : float
        IoU at or above which an anchor is positive (0.5).
    neg_iou_thresh : float
        IoU below which an anchor is background (0.4); in between it is ignored.
    allow_low_quality_matches : bool
        Also make each box's highest-IoU anchor(s) positive (see module doc).
    stds : tuple of 4 float
        Box-coding normalisation; must equal the model's ``stds``.
    background_label, ignore_label : int
        Class-target values for background and ignored anchors.

    ``__call__(anchors (N, 4), gt_boxes (M, 4), gt_ids (M,))`` returns
    ``cls_targets (N,) float32`` and ``box_targets (N, 4) float32``.
    """

    def __init__(self, pos_iou_thresh=0.5, neg_iou_thresh=0.4, allow_low_quality_matches=True,
                 stds=(0.1, 0.1, 0.2, 0.2), background_label=BACKGROUND_LABEL,
                 ignore_label=IGNORE_LABEL):
        if not neg_iou_thresh <= pos_iou_thresh:
            raise ValueError('need neg_iou_thresh <= pos_iou_thresh')
        if background_label >= 0 or ignore_label >= 0 or background_label == ignore_label:
            raise ValueError('background_label and ignore_label must be distinct negatives')
        self.pos_iou_thresh = pos_iou_thresh
        self.neg_iou_thresh = neg_iou_thresh
        self.allow_low_quality_matches = allow_low_quality_matches
        self.background_label = background_label
        self.ignore_label = ignore_label
        self.stds = tuple(float(s) for s in stds)

    def match(self, anchors, gt_boxes):
        """Return ``(labels, matches)``: labels 1 positive, 0 background, -1 ignored;
        matches the index of each anchor's assigned (best-IoU) box."""
        num = anchors.shape[0]
        if gt_boxes.shape[0] == 0:
            return np.zeros(num, np.int8), np.zeros(num, np.int64)
        iou = box_iou(anchors, gt_boxes)  # (N, M)
        matches = iou.argmax(axis=1)
        best = iou[np.arange(num), matches]
        labels = np.full(num, -1, np.int8)
        labels[best < self.neg_iou_thresh] = 0
        positive = best >= self.pos_iou_thresh
        if self.allow_low_quality_matches:
            per_gt = iou.max(axis=0)  # (M,)
            ties = (iou == per_gt[None, :]) & (per_gt[None, :] > 0)
            positive |= ties.any(axis=1)
        labels[positive] = 1
        return labels, matches

    def __call__(self, anchors, gt_boxes, gt_ids):
        anchors = np.asarray(anchors, dtype=np.float32).reshape(-1, 4)
        gt_boxes = np.asarray(gt_boxes, dtype=np.float32).reshape(-1, 4)
        gt_ids = np.asarray(gt_ids, dtype=np.float32).reshape(-1)
        keep = gt_ids >= 0  # drop padding rows
        gt_boxes, gt_ids = gt_boxes[keep], gt_ids[keep]
        labels, matches = self.match(anchors, gt_boxes)
        cls_targets = np.where(labels == 1, gt_ids[matches] if len(gt_ids) else 0,
                               np.where(labels == 0, self.background_label, self.ignore_label))
        cls_targets = cls_targets.astype(np.float32)
        box_targets = np.zeros_like(anchors)
        positive = labels == 1
        box_targets[positive] = self.encode(anchors[positive], gt_boxes[matches[positive]])
        return cls_targets, box_targets

    def encode(self, anchors, boxes):
        """The offsets of ``boxes`` from ``anchors`` (both ``(P, 4)`` corners):
        ``gluoncv.nn.coder.NormalizedBoxCenterEncoder``'s formula, in numpy --
        per image in the data loader, MXNet's per-operator overhead cost more
        than the arithmetic on the few positive anchors."""
        aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        gw, gh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        dx = (boxes[:, 0] + 0.5 * gw - anchors[:, 0] - 0.5 * aw) / aw
        dy = (boxes[:, 1] + 0.5 * gh - anchors[:, 1] - 0.5 * ah) / ah
        return np.stack([dx, dy, np.log(gw / aw), np.log(gh / ah)], axis=1) / self.stds



class RetinaNetTrainTransform(object):
    """Train transform for ``dataset.transform(...)`` on VOCDetection-style items:
    resize to ``width`` x ``height``, random horizontal flip, optional colour
    jitter, to_tensor + normalize, then targets for ``anchors`` (from
    ``net.get_anchors(height, width)``).

    Returns ``(img (3, H, W), cls_targets (N,), box_targets (N, 4))``.
    Difficult boxes are trained on like any other (as GluonCV's SSD does).

    The targets depend only on the (resized, flipped) boxes, so they are
    memoised per boxes -- each (image, flip) is matched once, not every epoch --
    up to ``target_cache_mb`` megabytes (class targets + the positives' box
    targets); 0 turns the cache off. Other keyword arguments go to
    :class:`RetinaNetTargetGenerator`.
    """

    def __init__(self, width, height, anchors, mean=(0.485, 0.456, 0.406),
                 std=(0.229, 0.224, 0.225), flip=True, color_jitter=False,
                 target_cache_mb=256, **kwargs):
        self._width, self._height = width, height
        self._anchors = np.asarray(anchors, dtype=np.float32)
        self._mean, self._std = mean, std
        self._flip = flip
        self._color_jitter = color_jitter
        self._target_generator = RetinaNetTargetGenerator(**kwargs)
        self._cache, self._cache_bytes = {}, 0
        self._cache_limit = float(target_cache_mb) * 2 ** 20

    def targets(self, gt_boxes, gt_ids):
        """``(cls_targets, box_targets)`` of the generator for these boxes, memoised."""
        gt_boxes = np.ascontiguousarray(gt_boxes, dtype=np.float32)
        gt_ids = np.ascontiguousarray(gt_ids, dtype=np.float32)
        key = (gt_boxes.shape, gt_boxes.tobytes(), gt_ids.tobytes())
        entry = self._cache.get(key)
        if entry is None:
            cls_targets, box_targets = self._target_generator(self._anchors, gt_boxes, gt_ids)
            positive = np.flatnonzero(cls_targets >= 0)  # box targets are zero elsewhere
            entry = cls_targets, positive, box_targets[positive]
            size = sum(a.nbytes for a in entry) + len(key[1]) + len(key[2])
            if self._cache_bytes + size <= self._cache_limit:
                self._cache[key] = entry
                self._cache_bytes += size
        cls_targets, positive, positive_boxes = entry
        box_targets = np.zeros((len(cls_targets), 4), np.float32)
        box_targets[positive] = positive_boxes
        return cls_targets.copy(), box_targets

    def __call__(self, src, label):
        from gluoncv.data.transforms import bbox as tbbox, experimental, image as timage
        label = np.asarray(label, dtype=np.float32)
        if label.ndim != 2:  # VOCDetection gives shape (0,) for an image without objects
            label = label.reshape(-1, 6)
        h, w, _ = src.shape
        img = src
        if self._color_jitter:
            img = experimental.image.random_color_distort(img)
        if (h, w) != (self._height, self._width):  # resizing to its own size copies it
            img = timage.imresize(img, self._width, self._height, interp=1)
        bbox = tbbox.resize(label, (w, h), (self._width, self._height))
        if self._flip:
            img, flips = timage.random_flip(img, px=0.5)
            bbox = tbbox.flip(bbox, (self._width, self._height), flip_x=flips[0])
        img = mx.nd.image.normalize(mx.nd.image.to_tensor(img), mean=self._mean, std=self._std)
        cls_targets, box_targets = self.targets(bbox[:, :4], bbox[:, 4])
        # zero-copy: mx.nd.array would wait for the engine's queue (the training
        # step this loader overlaps with)
        return img, mx.nd.from_numpy(cls_targets), mx.nd.from_numpy(box_targets)
