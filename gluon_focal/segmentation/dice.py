"""Soft Dice loss on sigmoid probabilities (binary and multi-label masks).

For each sample n and class c, over the pixels that are not ignored::

    p = sigmoid(x)
    I = sum(p * t)                    S = sum(p) + sum(t)
    dice = (2 * I + smooth_nr) / (S + smooth_dr)
    loss = 1 - dice

averaged over the classes.  ``batch=True`` sums I and S over the batch too
(one Dice per class for the whole batch, each sample's entry of the output
is that same value), as in V-Net / nnU-Net's "batch Dice".

Relation to other libraries (all use this ratio):

* MONAI ``DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=False)``
  is exactly this with the same names (``reduction='mean'`` averages over
  samples and classes; here the output has one entry per sample, averaged
  over classes, and a mean over it gives MONAI's number).
* segmentation_models_pytorch ``DiceLoss(mode, smooth=s, eps=e)`` is this with
  ``smooth_nr = smooth_dr = s`` and ``batch=True`` (it reduces over the batch
  and the pixels), except that SMP clamps the denominator at ``eps`` and sets
  the loss of a class with no foreground pixel in the batch to 0 (so it does
  not penalise false positives on empty images).  Here such a class keeps a
  finite loss ``1 - smooth_nr / (sum(p) + smooth_dr)``, which pushes its
  probabilities down.
* DETR / Mask2Former / Segment Anything's ``dice_loss`` is this with
  ``smooth_nr = smooth_dr = 1`` per mask: the default here.

``smooth_dr`` must be positive, so an image (or class) whose pixels are all
ignored, or that has no foreground and p -> 0, gives a finite loss, never NaN.
"""
import numpy as np

import mxnet as mx
from mxnet.gluon.loss import Loss

__all__ = ['DiceLoss']


def soft_dice_loss(F, prob, target, valid, smooth_nr, smooth_dr, batch):
    """``1 - dice`` per sample (N,) from N x C x ... probabilities and targets."""
    prob = F.reshape(prob * valid, shape=(0, 0, -1))        # N x C x pixels
    target = F.reshape(target * valid, shape=(0, 0, -1))
    intersection = F.sum(prob * target, axis=2)              # N x C
    total = F.sum(prob, axis=2) + F.sum(target, axis=2)
    if batch:
        intersection = F.sum(intersection, axis=0, keepdims=True)   # 1 x C
        total = F.sum(total, axis=0, keepdims=True)
    dice = (2 * intersection + smooth_nr) / (total + smooth_dr)
    return F.mean(1 - dice, axis=1)


class DiceLoss(Loss):
    """Soft Dice loss of sigmoid outputs (see the module docstring for the formula).

    Parameters
    ----------
    from_sigmoid : bool, default False
        ``pred`` holds probabilities rather than logits.
    batch : bool, default False
        One Dice per class over the whole batch (True) or per sample (False).
        Under ``DataParallelCriterion`` the "batch" is each device's part.
    smooth_nr, smooth_dr : float, default 1.0
        Added to the numerator and the denominator (``smooth_dr > 0``).
    ignore_label : number or None, default None
        Target value of elements that count nowhere (neither in I nor in S).
    weight : float or None
        Global scalar weight, as in every ``gluon.loss.Loss``.

    Inputs: ``pred`` N x C x ... logits (class axis 1, batch axis 0),
    ``label`` of the same shape with targets in [0, 1] (soft targets allowed)
    or ``ignore_label``, optional ``sample_weight`` of shape (N,) or (N, 1).
    Output: shape (N,), pred's dtype.  Called on NDArrays, the label is cast
    to pred's dtype and float16 is reduced in float32 (an image's sums
    overflow float16); inside a larger symbolic graph both are the caller's
    job.
    """

    def __init__(self, from_sigmoid=False, batch=False, smooth_nr=1.0, smooth_dr=1.0,
                 ignore_label=None, weight=None, **kwargs):
        super().__init__(weight, 0, **kwargs)
        smooth_nr, smooth_dr = float(smooth_nr), float(smooth_dr)
        if not smooth_dr > 0:
            raise ValueError('smooth_dr=%r must be > 0 (it keeps the ratio finite when a '
                             'class has no foreground and no prediction)' % (smooth_dr,))
        if not smooth_nr >= 0:
            raise ValueError('smooth_nr=%r must be >= 0' % (smooth_nr,))
        self._from_sigmoid = bool(from_sigmoid)
        self._batch = bool(batch)
        self._smooth = (smooth_nr, smooth_dr)
        self._ignore_label = ignore_label

    def forward(self, pred, label, sample_weight=None):
        if isinstance(pred, mx.nd.NDArray):
            if pred.ndim < 2 or label.shape != pred.shape:
                raise ValueError('DiceLoss needs pred N x C x ... and a label of the same '
                                 'shape, got pred %s, label %s' % (pred.shape, label.shape))
            if sample_weight is not None and sample_weight.size != pred.shape[0]:
                raise ValueError('sample_weight must hold one weight per sample (%d), got '
                                 'shape %s' % (pred.shape[0], sample_weight.shape))
            if np.dtype(pred.dtype) == np.float16:
                # sums over an image overflow float16 (max 65504): reduce in float32
                loss = self.forward(pred.astype('float32'), label, sample_weight)
                return loss.astype('float16')
            if label.dtype != pred.dtype:     # e.g. int32 masks for float32 logits
                label = label.astype(pred.dtype)
        return super().forward(pred, label, sample_weight)

    def hybrid_forward(self, F, pred, label, sample_weight=None):
        prob = pred if self._from_sigmoid else F.sigmoid(pred)
        if self._ignore_label is None:
            valid = F.ones_like(label)
        else:
            valid = label != self._ignore_label
        target = label * valid
        loss = soft_dice_loss(F, prob, target, valid, *self._smooth, self._batch)
        if self._batch:
            loss = F.broadcast_like(loss, pred, lhs_axes=(0,), rhs_axes=(0,))
        if sample_weight is not None:
            loss = loss * F.reshape(sample_weight, shape=(-1,))
        if self._weight is not None:
            loss = loss * self._weight
        return loss
