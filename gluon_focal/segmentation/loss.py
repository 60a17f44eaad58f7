"""Sigmoid focal loss for semantic segmentation, a drop-in for GluonCV's
``MixSoftmaxCrossEntropyLoss``.

It is called the same way -- ``criterion(*outputs, label)``, with the main
output first and any auxiliary outputs after it -- so it works in GluonCV's
training loop and through ``gluoncv.utils.parallel.DataParallelCriterion``.
The focal math is :class:`gluon_focal.FocalLoss` (one child block, hybridizable);
this class only maps segmentation label layouts onto it and weights the
auxiliary outputs.

Label layouts (class axis 1; ``ignore_label`` excluded everywhere):

============  =====================  ==========================  ==================================
mode          pred (logits)          label                       label values
============  =====================  ==========================  ==================================
binary        N x 1 x H x W          N x H x W or N x 1 x H x W  ``binary_values`` = (bg, fg):
                                                                 (0, 1) default, (0, 255) for
                                                                 0/255 masks
multiclass    N x C x H x W, C > 1   N x H x W                   class index 0..C-1 (int or float)
multilabel    N x C x H x W, C > 1   N x C x H x W               ``binary_values`` per element
============  =====================  ==========================  ==================================

``mode='auto'`` (default) picks binary when C == 1, multilabel when the label
has pred's shape, multiclass otherwise.
"""
import numbers

import mxnet as mx
from mxnet.gluon.loss import Loss

from ..loss import FocalLoss
from ..validation import SEGMENTATION_IGNORE_LABEL, ValueRules, check_values, resolve_label_mode
from .dice import DiceLoss

__all__ = ['SegmentationFocalLoss', 'MixSigmoidFocalLoss', 'SegmentationBCELoss']

MODES = ('auto', 'binary', 'multiclass', 'multilabel')
# the segmentation names of FocalLoss's label modes
_FOCAL_LABEL_MODES = {'auto': 'auto', 'binary': 'binary', 'multiclass': 'sparse',
                      'multilabel': 'dense'}


class SegmentationFocalLoss(Loss):
    """Sigmoid focal loss over N x C x H x W logits with auxiliary outputs.

    Parameters
    ----------
    aux : bool, default True
        Whether the outputs after the first are auxiliary outputs to be added
        with ``aux_weight`` (GluonCV's FCN/PSP/DeepLab with ``aux=True`` return
        ``(main, aux)``).  With ``aux=False`` exactly one output is accepted.
    aux_weight : float or sequence of float, default 0.2
        Weight of each auxiliary output's loss (one float for all, or one each).
    ignore_label : number or None, default -1
        Label value whose pixels (binary/multiclass) or elements (multilabel)
        contribute nothing.  GluonCV datasets use -1; raw VOC PNGs use 255.
    mode : {'auto', 'binary', 'multiclass', 'multilabel'}
        See the module docstring's table.
    binary_values : (background, foreground), default (0, 1)
        The two values binary and multilabel masks hold.  ``(0, 255)`` for
        masks saved as 0/255 images: they are mapped to 0/1 targets.  Nothing
        is guessed: with ``validate=True`` any other value (other than
        ``ignore_label``) raises ``ValueError``.
    validate : bool, default True
        Check the label values (and probabilities with ``from_sigmoid=True``)
        on every call, hybridized or not, with :mod:`gluon_focal.validation`
        (one small reduction and one host sync per call; the inner FocalLoss
        then does not check again).  With ``validate=False`` binary/multilabel
        masks may be *soft*: a value v maps to the target
        ``(v - bg) / (fg - bg)``, which must be in [0, 1].
    alpha, gamma, from_sigmoid, weight, impl :
        As in :class:`gluon_focal.FocalLoss` (``alpha=None, gamma=0`` is
        plain binary cross-entropy, see :class:`SegmentationBCELoss`).
    normalization : {'valid', 'mean', 'sum', 'positive'}, default 'valid'
        Per-sample reduction of each output's loss (see ``FocalLoss``):
        'valid' averages over the non-ignored elements (pixels x classes), the
        analogue of ``MixSoftmaxCrossEntropyLoss``'s average; 'positive'
        divides the sum by the number of foreground elements in the batch
        (RetinaNet's normalisation; a per-device batch under
        ``DataParallelCriterion``).
    batch_axis : int, default 0
    dice_weight : float, default 0
        Add ``dice_weight`` times a soft Dice loss (:class:`DiceLoss`, same
        probabilities, same targets, same ignored pixels; per class for
        multilabel and, one-vs-all, for multiclass) to every output's loss:
        the focal + Dice combination of Mask2Former / Segment Anything /
        MONAI's ``DiceFocalLoss``.  0 disables it.
    dice_batch, dice_smooth_nr, dice_smooth_dr :
        :class:`DiceLoss`'s ``batch``, ``smooth_nr``, ``smooth_dr`` (per-sample
        Dice with +1 smoothing by default).  ``weight`` scales both terms.

    Inputs: ``loss(pred1, [pred2, ...], label, sample_weight=None)`` (``sample_weight``
    is keyword-only, broadcastable to each pred); with
    ``aux=True`` every pred must have the same shape.  Output: shape (N,),
    ``loss(pred1) + sum_k aux_weight_k * loss(pred_{k+1})`` where each
    ``loss(pred) = focal(pred) + dice_weight * dice(pred)``.
    """

    def __init__(self, aux=True, aux_weight=0.2, ignore_label=SEGMENTATION_IGNORE_LABEL,
                 mode='auto', binary_values=(0, 1), validate=True, alpha=0.25, gamma=2.0,
                 from_sigmoid=False, normalization='valid', weight=None, batch_axis=0,
                 impl='auto', dice_weight=0.0, dice_batch=False, dice_smooth_nr=1.0,
                 dice_smooth_dr=1.0, **kwargs):
        super().__init__(None, batch_axis, **kwargs)
        if mode not in MODES:
            raise ValueError('mode=%r is not one of %s' % (mode, MODES))
        if normalization == 'none':
            raise ValueError("normalization='none' is not supported here: aux outputs "
                             "are summed per sample; use FocalLoss directly")
        self.aux = bool(aux)
        self.aux_weight = aux_weight
        self._check_aux_weight(aux_weight)
        self._ignore_label = ignore_label
        self._mode = mode
        bg, fg = binary_values
        if bg == fg:
            raise ValueError('binary_values=%r: background and foreground must differ'
                             % (binary_values,))
        if ignore_label is not None and ignore_label in (bg, fg):
            raise ValueError('ignore_label=%r collides with binary_values=%r'
                             % (ignore_label, binary_values))
        self._binary_values = (float(bg), float(fg))
        self._validate = bool(validate)
        self._from_sigmoid = bool(from_sigmoid)
        with self.name_scope():
            # values are checked once per call in forward (they are mapped from
            # binary_values first), so the child does not check them again
            self.focal = FocalLoss(axis=1, label_mode='auto', alpha=alpha, gamma=gamma,
                                   from_sigmoid=from_sigmoid, ignore_label=ignore_label,
                                   normalization=normalization, weight=weight,
                                   batch_axis=batch_axis, impl=impl, validate=False)
            self.dice_weight = self._check_dice_weight(dice_weight)
            self.dice = DiceLoss(from_sigmoid=from_sigmoid, batch=dice_batch,
                                 smooth_nr=dice_smooth_nr, smooth_dr=dice_smooth_dr,
                                 ignore_label=ignore_label, weight=weight) \
                if self.dice_weight else None

    # -- helpers -----------------------------------------------------------------
    @staticmethod
    def _check_aux_weight(aux_weight):
        weights = aux_weight if isinstance(aux_weight, (list, tuple)) else [aux_weight]
        for w in weights:
            if isinstance(w, bool) or not isinstance(w, numbers.Real):
                raise ValueError('aux_weight must be a number or a sequence of numbers, '
                                 'got %r' % (aux_weight,))

    @staticmethod
    def _check_dice_weight(dice_weight):
        if isinstance(dice_weight, bool) or not isinstance(dice_weight, numbers.Real) \
                or not dice_weight >= 0:
            raise ValueError('dice_weight must be a number >= 0, got %r' % (dice_weight,))
        return float(dice_weight)

    def _aux_weights(self, num_aux):
        if isinstance(self.aux_weight, (list, tuple)):
            if len(self.aux_weight) != num_aux:
                raise ValueError('%d aux_weight values for %d auxiliary outputs'
                                 % (len(self.aux_weight), num_aux))
            return [float(w) for w in self.aux_weight]
        return [float(self.aux_weight)] * num_aux

    def resolve_mode(self, pred_shape, label_shape):
        """The layout ('binary', 'multiclass' or 'multilabel') for these shapes."""
        resolved = resolve_label_mode(pred_shape, label_shape, axis=1,
                                      label_mode=_FOCAL_LABEL_MODES[self._mode])
        if resolved.mode == 'sparse':
            return 'multiclass'
        return 'binary' if pred_shape[1] == 1 else 'multilabel'

    def _check_values(self, preds, target, mode):
        """Masks must hold ``binary_values``; class maps must hold class indices; with
        from_sigmoid every output must hold sigmoid probabilities."""
        rules = ValueRules('sparse' if mode == 'multiclass' else 'binary', 1,
                           preds[0].shape[1], self._ignore_label, None, False)
        try:
            check_values(preds[0], target, rules)
        except ValueError as err:
            if mode == 'multiclass':
                raise
            raise ValueError('%s (after mapping binary_values=%r to 0/1; set '
                             'binary_values=(0, 255) for 0/255 masks)'
                             % (err, self._binary_values)) from None
        if self._from_sigmoid:
            for pred in preds:
                check_values(pred, target, rules._replace(from_sigmoid=True))

    def _targets(self, label, pred_shape, mode):
        """Label in the layout FocalLoss(axis=1, label_mode='auto') reads:
        class indices as they are, masks mapped to 0/1 with pred's shape."""
        if mode == 'multiclass':
            return label
        if label.ndim == len(pred_shape) - 1:
            label = label.expand_dims(axis=1)
        label = label.astype('float32', copy=False)
        bg, fg = self._binary_values
        if (bg, fg) != (0.0, 1.0):
            mapped = (label - bg) / (fg - bg)
            if self._ignore_label is not None:
                mapped = mx.nd.where(label == self._ignore_label, label, mapped)
            label = mapped
        return label

    def _dice_targets(self, target, mode, num_class):
        """Dense N x C x H x W targets for the Dice term: masks as they are,
        class indices one-hot (one-vs-all), ignored pixels ``ignore_label``
        in every class."""
        if mode != 'multiclass':
            return target
        target = target.astype('float32', copy=False)
        one_hot = mx.nd.one_hot(target, num_class).transpose((0, 3, 1, 2))
        if self._ignore_label is None:
            return one_hot
        ignored = (target == self._ignore_label).expand_dims(axis=1)
        return mx.nd.where(mx.nd.broadcast_like(ignored, one_hot),
                           mx.nd.full(one_hot.shape, self._ignore_label), one_hot)

    def _output_loss(self, pred, target, dice_target, sample_weight):
        loss = self.focal(pred, target, sample_weight)
        if self.dice is not None:
            loss = loss + self.dice_weight * self.dice(pred, dice_target)
        return loss

    # -- forward -------------------------------------------------------------------
    def __call__(self, *inputs, sample_weight=None):
        """Block.__call__ of MXNet 1.9 passes positional arguments only: this one also
        takes ``sample_weight=`` (hooks run as in Block.__call__)."""
        for hook in self._forward_pre_hooks.values():
            hook(self, inputs)
        out = self.forward(*inputs, sample_weight=sample_weight)
        for hook in self._forward_hooks.values():
            hook(self, inputs, out)
        return out

    def forward(self, *inputs, sample_weight=None):
        if len(inputs) < 2:
            raise ValueError('expected loss(pred, [aux_pred, ...], label), got %d input(s)'
                             % len(inputs))
        preds, label = inputs[:-1], inputs[-1]
        if not self.aux and len(preds) != 1:
            raise ValueError('aux=False but %d predictions were passed; construct with '
                             'aux=True to weight auxiliary outputs' % len(preds))
        if not isinstance(label, mx.nd.NDArray):
            raise TypeError('SegmentationFocalLoss runs on NDArrays; hybridize() makes its '
                            'FocalLoss child a cached graph')
        mode = self.resolve_mode(preds[0].shape, label.shape)
        for p in preds[1:]:
            if p.shape != preds[0].shape:
                raise ValueError('auxiliary output shape %s differs from the main output '
                                 'shape %s' % (p.shape, preds[0].shape))
        target = self._targets(label, preds[0].shape, mode)
        if self._validate:
            self._check_values(preds, target, mode)
        dice_target = None
        if self.dice is not None:
            if sample_weight is not None:
                raise ValueError('sample_weight with dice_weight > 0: the Dice term is a '
                                 'ratio over pixels, not a sum of per-pixel losses; mark '
                                 'pixels to leave out with ignore_label instead')
            dice_target = self._dice_targets(target, mode, preds[0].shape[1])
        loss = self._output_loss(preds[0], target, dice_target, sample_weight)
        for w, p in zip(self._aux_weights(len(preds) - 1), preds[1:]):
            loss = loss + w * self._output_loss(p, target, dice_target, sample_weight)
        return loss

    def hybrid_forward(self, F, *args, **kwargs):  # pragma: no cover - forward overrides
        raise NotImplementedError


# GluonCV-style name: MixSoftmaxCrossEntropyLoss -> MixSigmoidFocalLoss
MixSigmoidFocalLoss = SegmentationFocalLoss


class SegmentationBCELoss(SegmentationFocalLoss):
    """Binary cross-entropy with the same layouts/aux handling (``gamma=0``,
    ``alpha=None``): the baseline the focal loss is compared against."""

    def __init__(self, **kwargs):
        for key in ('alpha', 'gamma'):
            if key in kwargs:
                raise ValueError('SegmentationBCELoss fixes %s; use '
                                 'SegmentationFocalLoss to set it' % key)
        super().__init__(alpha=None, gamma=0.0, **kwargs)
