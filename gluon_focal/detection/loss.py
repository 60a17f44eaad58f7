"""The dense-detection loss both detectors train with (RetinaNet, SSD).

For every anchor: the sigmoid focal loss of its class logits
(:class:`gluon_focal.FocalLoss`, sparse labels) unless it is ignored, and the
smooth-L1 loss of its encoded box offsets if it is positive; both summed per
image and divided by one normaliser, the number of positive anchors in the
whole batch -- over every device, and over every worker if the caller passes
it (mmdetection's ``avg_factor``)::

    L = (sum_anchors FL(cls) + box_weight * sum_positives smoothL1(box)) / avg_factor

Inputs follow GluonCV's ``SSDMultiBoxLoss``: an array or a list of arrays (one
per device, as ``split_and_load`` gives), and the return value is always three
lists with one ``(batch_per_device,)`` array per device: ``(total, cls, box)``.
"""
import math

from mxnet import gluon, nd

from ..loss import FocalLoss

__all__ = ['DenseDetectionLoss', 'count_positives']


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def count_positives(cls_targets):
    """The positive anchors (class index >= 0) of all ``cls_targets`` (an array
    or one per device), as a float on the host; at least 1.

    Under ``dist_sync`` sum this over the workers (e.g. with a kvstore push/pull)
    and pass the result as ``avg_factor``, so that every worker divides by the
    same number."""
    counts = [(ct >= 0).sum().asscalar() for ct in _as_list(cls_targets)]
    return max(1., float(sum(counts)))


def _positives_on_devices(cls_targets):
    """:func:`count_positives` as one ``(1,)`` array per device, computed there:
    no host sync, so the training loop's Python runs ahead of the engine."""
    counts = [(ct >= 0).sum() for ct in cls_targets]
    per_device = []
    for ct in cls_targets:
        total = sum(c.as_in_context(ct.context) for c in counts)
        per_device.append(nd.maximum(total, 1.).astype('float32'))
    return per_device


class DenseDetectionLoss(gluon.Block):
    """Focal classification on every non-ignored anchor + smooth-L1 box
    regression on positive anchors, normalised by the positives.

    Parameters
    ----------
    num_class : int or None
        Foreground classes (the size of the logits' last axis); checked when given.
    alpha, gamma : float
        Focal loss parameters (0.25 and 2 in the paper).
    rho : float
        Smooth-L1 transition point: ``0.5 d^2 / rho`` below ``rho``, ``|d| - 0.5 rho``
        above (GluonCV's ``SSDMultiBoxLoss`` convention).
    box_weight : float
        Weight of the box term.
    background_label, ignore_label : int
        Negative class-target values of background anchors (all class targets 0)
        and of ignored anchors (no loss at all).
    impl : str
        :class:`gluon_focal.FocalLoss` implementation.
    validate : bool
        Passed to :class:`gluon_focal.FocalLoss`: check every batch's labels.
        False skips the check (one device sync) for targets valid by construction.

    ``forward(cls_preds, box_preds, cls_targets, box_targets, avg_factor=None)``:
    ``cls_preds (B, A, C)`` logits, ``box_preds``/``box_targets (B, A, 4)``,
    ``cls_targets (B, A)`` sparse labels, each an array or a list (one per
    device); ``avg_factor`` defaults to :func:`count_positives` of ``cls_targets``,
    computed on the devices (no host sync).
    Returns ``(total, cls, box)``, three lists of ``(B,)`` per-image losses with
    ``total = cls + box_weight * box`` (GluonCV's ``SSDMultiBoxLoss`` convention).
    """

    def __init__(self, num_class=None, alpha=0.25, gamma=2.0, rho=1.0, box_weight=1.0,
                 background_label=-1, ignore_label=-2, impl='auto', validate=True, **kwargs):
        super(DenseDetectionLoss, self).__init__(**kwargs)
        if not (background_label < 0 and ignore_label < 0):
            # positives are the anchors with a class index >= 0
            raise ValueError('background_label=%r and ignore_label=%r must be negative.'
                             % (background_label, ignore_label))
        if not rho > 0:
            raise ValueError('rho=%r must be > 0.' % (rho,))
        self.rho = float(rho)
        self.box_weight = float(box_weight)
        with self.name_scope():
            # per-image sums, divided below by the positives of all devices together
            self.focal = FocalLoss(num_class=num_class, label_mode='sparse', alpha=alpha,
                                   gamma=gamma, ignore_label=ignore_label,
                                   background_label=background_label, normalization='sum',
                                   impl=impl, validate=validate)

    def __call__(self, cls_preds, box_preds, cls_targets, box_targets, avg_factor=None):
        # Block.__call__ takes positional arguments only: let avg_factor be a keyword
        return super(DenseDetectionLoss, self).__call__(cls_preds, box_preds, cls_targets,
                                                        box_targets, avg_factor)

    def forward(self, cls_preds, box_preds, cls_targets, box_targets, avg_factor=None):
        inputs = [_as_list(x) for x in (cls_preds, box_preds, cls_targets, box_targets)]
        if len(set(len(x) for x in inputs)) != 1:
            raise ValueError('cls_preds, box_preds, cls_targets and box_targets must have one '
                             'entry per device each; got %s entries.'
                             % ', '.join(str(len(x)) for x in inputs))
        if avg_factor is None:
            avg_factors = _positives_on_devices(inputs[2])
        elif not avg_factor > 0:
            raise ValueError('avg_factor=%r must be > 0 (the number of positive anchors, '
                             'at least 1).' % (avg_factor,))
        else:
            avg_factors = [avg_factor] * len(inputs[2])
        totals, cls_losses, box_losses = [], [], []
        for cls_pred, box_pred, cls_target, box_target, avg_factor in zip(*inputs, avg_factors):
            cls_loss = self.focal(cls_pred, cls_target) / avg_factor
            pos_mask = (cls_target >= 0).astype(box_pred.dtype).expand_dims(-1)
            diff = (box_pred.reshape_like(box_target) - box_target) * pos_mask
            box_loss = nd.smooth_l1(diff, scalar=1. / math.sqrt(self.rho))
            box_loss = box_loss.sum(axis=0, exclude=True) / avg_factor
            cls_losses.append(cls_loss)
            box_losses.append(box_loss)
            totals.append(cls_loss + self.box_weight * box_loss)
        return totals, cls_losses, box_losses
