"""Segmentation metrics for sigmoid outputs.

GluonCV's ``SegmentationMetric`` argmaxes over the class axis, so a
one-channel (``nclass=1``) sigmoid model always scores as class 0 there.
:class:`SigmoidSegmentationMetric` thresholds the probability instead and
reports pixel accuracy, IoU and F1 of the foreground, per class for
multi-label / one-vs-all outputs.  :func:`sigmoid_to_two_class` turns a
sigmoid output into the two-channel map ``SegmentationMetric`` expects.
"""
import threading

import numpy as np

import mxnet as mx

from ..validation import SEGMENTATION_IGNORE_LABEL, ValueRules, check_label_values
try:
    from mxnet.metric import EvalMetric
except ImportError:  # pragma: no cover - MXNet 2
    from mxnet.gluon.metric import EvalMetric

__all__ = ['SigmoidSegmentationMetric', 'sigmoid_to_two_class', 'confusion_counts']

# thresholds the metric also scores by default: 0.05, 0.10, ..., 0.95
DEFAULT_SWEEP = tuple(round(0.05 * k, 2) for k in range(1, 20))


def _logit(threshold):
    threshold = float(threshold)
    if not 0.0 < threshold < 1.0:
        raise ValueError('threshold must be in (0, 1), got %r' % threshold)
    return np.log(threshold) - np.log1p(-threshold)


def _to_numpy(x):
    return x.asnumpy() if isinstance(x, mx.nd.NDArray) else np.asarray(x)


def confusion_counts(label, pred, threshold=0.5, from_sigmoid=False,
                     ignore_label=SEGMENTATION_IGNORE_LABEL, binary_values=(0, 1)):
    """Per-class ``(tp, fp, fn, tn)`` int64 arrays of length C for one batch.

    ``pred``: ``N x C x H x W`` (``C = 1`` for binary; also ``N x H x W``),
    logits, or probabilities with ``from_sigmoid=True``; a pixel is predicted
    positive for class c when ``p > threshold`` (the same tie rule as an argmax
    over ``[1 - p, p]``).  ``label``, one of:

    * ``N x H x W`` or ``N x 1 x H x W`` mask with ``binary_values`` =
      ``(background, foreground)`` when ``C = 1``;
    * ``N x H x W`` class indices when ``C > 1`` (one-vs-all: class c's
      target is ``label == c``);
    * ``N x C x H x W`` multi-label targets in ``binary_values`` when ``C > 1``.

    Pixels (or, for multi-label, elements) equal to ``ignore_label`` are not
    counted.  Any other value raises ``ValueError`` (from
    :mod:`gluon_focal.validation`, like the loss): nothing is guessed.
    """
    pred = _to_numpy(pred)
    label = _to_numpy(label)
    if pred.ndim == label.ndim:
        if pred.shape != label.shape:
            raise ValueError('shape mismatch: pred %s, label %s' % (pred.shape, label.shape))
        if pred.ndim < 4:       # N x H x W binary output without the class axis
            pred, label = pred[:, None], label[:, None]
    elif pred.ndim != label.ndim + 1:
        raise ValueError('shape mismatch: pred %s, label %s' % (pred.shape, label.shape))
    num_class = pred.shape[1]
    positive = pred > (threshold if from_sigmoid else _logit(threshold))
    bg, fg = binary_values
    if label.ndim == pred.ndim:                 # dense: binary or multi-label
        if label.shape != pred.shape:
            raise ValueError('shape mismatch: pred %s, label %s' % (pred.shape, label.shape))
        valid = label != ignore_label if ignore_label is not None \
            else np.ones(label.shape, bool)
        target = label == fg
        _check_mask(label, bg, fg, ignore_label)
    else:
        if label.shape != pred.shape[:1] + pred.shape[2:]:
            raise ValueError('shape mismatch: pred %s, label %s' % (pred.shape, label.shape))
        valid_pos = label != ignore_label if ignore_label is not None \
            else np.ones(label.shape, bool)
        if num_class == 1:
            _check_mask(label, bg, fg, ignore_label)
            target = (label == fg)[:, None]
        else:
            check_label_values(label, ValueRules('sparse', 0, num_class, ignore_label, None,
                                                 False))
            classes = np.arange(num_class).reshape((1, num_class) + (1,) * (label.ndim - 1))
            target = label[:, None] == classes
        valid = np.broadcast_to(valid_pos[:, None], pred.shape)
        target = np.broadcast_to(target, pred.shape)
    axes = (0,) + tuple(range(2, pred.ndim))
    count = lambda m: np.sum(m & valid, axis=axes, dtype=np.int64)  # noqa: E731
    return (count(positive & target), count(positive & ~target),
            count(~positive & target), count(~positive & ~target))


def _check_mask(label, bg, fg, ignore_label):
    """Mask values must be ``bg``, ``fg`` or ``ignore_label`` (checked as 0/1 masks)."""
    mapped = np.where(label == ignore_label, label, (label - bg) / float(fg - bg)) \
        if ignore_label is not None else (label - bg) / float(fg - bg)
    try:
        check_label_values(mapped, ValueRules('binary', 0, None, ignore_label, None, False))
    except ValueError as err:
        raise ValueError('%s (after mapping binary_values=%r to 0/1)' % (err, (bg, fg))) \
            from None


class SigmoidSegmentationMetric(EvalMetric):
    """Pixel accuracy, IoU and F1 of thresholded sigmoid outputs.

    Accumulates per-class true/false positives/negatives over all updates
    (dataset-level IoU, like GluonCV's ``SegmentationMetric``, not a mean of
    per-image scores).

    Parameters
    ----------
    threshold : a pixel is foreground for a class when ``sigmoid(x) > threshold``.
    from_sigmoid : ``preds`` are probabilities (True) or logits (False, the
        default: the raw network output), as in ``FocalLoss``.
    ignore_label : label value excluded from every count (default -1, what
        GluonCV datasets use; 255 for raw VOC PNG values).
    binary_values : ``(background, foreground)`` values of binary / multi-label
        masks, ``(0, 1)`` by default, ``(0, 255)`` for 0/255 masks.
    class_names : optional names for the per-class scores.

    ``update(labels, preds)`` takes NDArrays or lists of them (one per device),
    see :func:`confusion_counts` for the layouts.  ``get()`` returns
    ``(['pixAcc', 'IoU', 'F1'], [pixAcc, IoU, F1])`` where pixAcc is over all
    counted elements and IoU/F1 are the means over classes (for binary: the
    foreground IoU/F1).  ``get_per_class()`` gives the per-class arrays.
    A class that never occurs and is never predicted has IoU/F1 ``nan`` and is
    left out of the means.

    ``sweep`` (default 0.05, 0.10, ..., 0.95) are further thresholds counted
    on every update: ``get_best_threshold()`` reports the one with the best
    mean IoU (a focal-trained model is often under-confident at 0.5; the best
    threshold is chosen on the data scored, so it is an optimistic number
    unless fixed on held-out data).  Each sweep threshold costs one more
    counting pass per update; ``sweep=()`` turns it off.
    """

    def __init__(self, threshold=0.5, from_sigmoid=False, ignore_label=SEGMENTATION_IGNORE_LABEL,
                 binary_values=(0, 1), class_names=None, name='sigmoid_seg',
                 sweep=DEFAULT_SWEEP):
        self.threshold = threshold
        _logit(threshold)
        self.sweep = tuple(float(t) for t in sweep)
        for t in self.sweep:
            _logit(t)
        self.from_sigmoid = bool(from_sigmoid)
        self.ignore_label = ignore_label
        self.binary_values = tuple(binary_values)
        self.class_names = class_names
        self.lock = threading.Lock()
        super().__init__(name, output_names=None, label_names=None)
        self.reset()

    def reset(self):
        self.tp = self.fp = self.fn = self.tn = None
        self.swept = {}        # threshold -> accumulated (tp, fp, fn)
        self.num_inst = self.global_num_inst = 0
        self.sum_metric = self.global_sum_metric = 0.0

    def update(self, labels, preds):
        if isinstance(preds, (mx.nd.NDArray, np.ndarray)):
            labels, preds = [labels], [preds]
        if len(labels) != len(preds):
            raise ValueError('%d labels for %d preds' % (len(labels), len(preds)))
        for label, pred in zip(labels, preds):
            counts = confusion_counts(label, pred, self.threshold, self.from_sigmoid,
                                      self.ignore_label, self.binary_values)
            with self.lock:
                if self.tp is None:
                    self.tp, self.fp, self.fn, self.tn = (c.copy() for c in counts)
                else:
                    if counts[0].shape != self.tp.shape:
                        raise ValueError('number of classes changed between updates')
                    for acc, c in zip((self.tp, self.fp, self.fn, self.tn), counts):
                        acc += c
                self.num_inst += 1
            self._update_sweep(label, pred)

    def _update_sweep(self, label, pred):
        for t in self.sweep:
            tp, fp, fn, _ = confusion_counts(label, pred, t, self.from_sigmoid,
                                             self.ignore_label, self.binary_values)
            with self.lock:
                acc = self.swept.get(t)
                self.swept[t] = (tp, fp, fn) if acc is None else \
                    (acc[0] + tp, acc[1] + fp, acc[2] + fn)

    def get_by_threshold(self):
        """``{threshold: mean IoU over classes}`` for every threshold in ``sweep``."""
        out = {}
        for t, (tp, fp, fn) in sorted(self.swept.items()):
            with np.errstate(divide='ignore', invalid='ignore'):
                iou = tp / (tp + fp + fn).astype(np.float64)
            out[t] = float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float('nan')
        return out

    def get_best_threshold(self):
        """``(threshold, IoU)``: the ``sweep`` threshold with the best mean IoU
        (the lowest such threshold on ties; ``(nan, nan)`` before any update)."""
        by_t = {t: v for t, v in self.get_by_threshold().items() if not np.isnan(v)}
        if not by_t:
            return float('nan'), float('nan')
        best = max(by_t, key=lambda t: (by_t[t], -t))
        return best, by_t[best]

    def get_per_class(self):
        """Dict of per-class numpy arrays: pixAcc, IoU, F1, precision, recall."""
        if self.tp is None:
            return {}
        tp, fp, fn, tn = (x.astype(np.float64) for x in (self.tp, self.fp, self.fn, self.tn))
        with np.errstate(divide='ignore', invalid='ignore'):
            return {'pixAcc': (tp + tn) / (tp + fp + fn + tn),
                    'IoU': tp / (tp + fp + fn),
                    'F1': 2 * tp / (2 * tp + fp + fn),
                    'precision': tp / (tp + fp),
                    'recall': tp / (tp + fn)}

    def get(self):
        names = ['pixAcc', 'IoU', 'F1']
        if self.tp is None:
            return names, [float('nan')] * 3
        per = self.get_per_class()
        total = float(np.sum(self.tp + self.fp + self.fn + self.tn))
        pix_acc = float(np.sum(self.tp + self.tn)) / total if total else float('nan')
        mean = lambda a: float(np.nanmean(a)) if np.any(~np.isnan(a)) else float('nan')  # noqa
        return names, [pix_acc, mean(per['IoU']), mean(per['F1'])]


def sigmoid_to_two_class(pred, threshold=0.5, from_sigmoid=False):
    """Make a one-channel sigmoid output scoreable by GluonCV's ``SegmentationMetric``.

    ``pred``: ``N x 1 x H x W`` (or ``N x H x W``) logits (or probabilities
    with ``from_sigmoid=True``).  Returns an ``N x 2 x H x W`` NDArray
    ``[1 - m, m]`` with ``m = (sigmoid(pred) > threshold)``, so that the argmax
    over axis 1 is the thresholded foreground.  Use it with
    ``SegmentationMetric(nclass=2)`` and labels 0/1 (ignore -1)::

        metric = gluoncv.utils.metrics.SegmentationMetric(nclass=2)
        metric.update(label, sigmoid_to_two_class(net(x)[0]))
        pix_acc, miou = metric.get()      # mIoU averages background and target

    Note that ``SegmentationMetric`` reports the *mean over both classes*
    (background IoU is close to 1 for small targets); the foreground IoU is
    what :class:`SigmoidSegmentationMetric` reports.  Multi-class sigmoid
    outputs (C > 1, one-vs-all) need no conversion: sigmoid is monotonic, so
    ``SegmentationMetric`` can take the logits as they are.
    """
    if not isinstance(pred, mx.nd.NDArray):
        pred = mx.nd.array(pred)
    if pred.ndim == 3:
        pred = pred.expand_dims(1)
    if pred.shape[1] != 1:
        raise ValueError('expected one channel, got shape %s' % (pred.shape,))
    cut = float(threshold) if from_sigmoid else _logit(threshold)
    fg = (pred > cut).astype('float32')
    return mx.nd.concat(1 - fg, fg, dim=1)
