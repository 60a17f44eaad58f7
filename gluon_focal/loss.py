"""Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection")."""
import numbers

import numpy as np
from mxnet import ndarray
from mxnet.gluon.loss import Loss

from . import kernel
from .labels import (LABEL_MODES, ResolvedLabels, check_label_values, check_probabilities,
                     resolve_label_mode)

NORMALIZATIONS = ('mean', 'sum', 'valid', 'positive', 'none')
IMPLEMENTATIONS = ('auto', 'fused', 'composite')

# (1 - p_t) is floored here before the power: d(x^gamma)/dx is infinite at 0
# for gamma < 1, and MXNet would multiply that by a zero chain-rule factor.
_MODULATOR_FLOOR = 1e-30


def softplus(F, x):
    """log(1 + exp(x)) without overflow; MXNet's softrelu loses 1e-6 absolute.

    -|x| is written minimum(x, -x) so that at x = 0 the gradient takes the
    ``x`` branch and comes out as sigmoid(0) = 0.5 (abs has gradient 0 there).
    """
    return F.relu(x) + F.log1p(F.exp(F.minimum(x, -x)))


def _weighted(F, weight, value):
    """weight * value, exactly 0 where weight is 0 (also when value is inf)."""
    return F.where(weight > 0, weight * value, F.zeros_like(value))


def sigmoid_focal_terms(F, pred, target, gamma, from_sigmoid, eps):
    """Elementwise (1 - p_t)^gamma * CE(p, t) without alpha weighting.

    From probabilities, ``eps`` must be representable next to 1 in pred's
    dtype (see :func:`clip_bounds`).
    """
    if from_sigmoid:
        p = F.clip(pred, eps, 1 - eps)
        q = 1 - p
        ce = -(target * F.log(p) + (1 - target) * F.log(q))
    else:
        p, q = F.sigmoid(pred), F.sigmoid(-pred)
        # -log(p) = softplus(-x), -log(1 - p) = softplus(x); an infinite logit on
        # the side of its target has loss 0, not 0 * inf
        ce = _weighted(F, target, softplus(F, -pred)) + \
            _weighted(F, 1 - target, softplus(F, pred))
    if gamma == 0:
        return ce
    one_minus_pt = target * q + (1 - target) * p
    return ce * F.maximum(one_minus_pt, _MODULATOR_FLOOR) ** gamma


def clip_eps(eps, dtype):
    """Probabilities are clipped to [eps, 1 - eps]; 1 - eps must not round to 1."""
    return max(eps, float(np.finfo(dtype).epsneg))


def constant_vector(F, values, dtype):
    """A small constant vector built inside the graph from Python scalars: no
    Parameter, so a loss needs no initialize() and is safe to share between threads."""
    return F.concat(*[F.ones(shape=(1,), dtype=dtype) * float(v) for v in values], dim=0)


def alpha_weights(F, target, alpha, class_index=None, dtype='float32'):
    """alpha_t = alpha t + (1 - alpha)(1 - t).

    ``alpha`` is a float, or per-class values looked up by ``class_index``
    (each element's position along the class axis). 1 - alpha is formed in
    float64 before rounding, so alpha close to 1 keeps its negative weight.
    """
    if class_index is None:
        return alpha * target + (1 - alpha) * (1 - target)
    positive = F.take(constant_vector(F, alpha, dtype), class_index)
    negative = F.take(constant_vector(F, [1 - a for a in alpha], dtype), class_index)
    return positive * target + negative * (1 - target)


def _cast(F, x, dtype, to):
    return x if dtype == to else F.cast(x, dtype=to)


def class_index_like(F, pred, axis, dtype):
    """Each element's index along ``axis``, shaped like ``pred``."""
    index = F.contrib.index_array(pred, axes=(axis,))
    return F.cast(F.squeeze(index, axis=-1), dtype=dtype)


def dense_targets(F, label, resolved, dtype, class_index, ignore_label, background_label):
    """Return (target, valid) in ``dtype``: 0/1 or soft targets and a 0/1
    validity mask, both broadcastable to ``pred``. Sparse labels are compared
    with ``class_index`` (see :func:`class_index_like`)."""
    label = F.cast(label, dtype=dtype)
    if resolved.mode == 'sparse':
        position = F.expand_dims(label, axis=resolved.axis)
        valid = F.ones_like(position) if ignore_label is None else position != ignore_label
        if background_label is not None:
            # background positions match no class: every target is 0
            position = F.where(position == background_label, F.ones_like(position) * -1,
                               position)
        return F.broadcast_equal(class_index, position), valid
    if resolved.expand_label:
        label = F.expand_dims(label, axis=resolved.axis)
    if ignore_label is None:
        return label, F.ones_like(label)
    valid = label != ignore_label
    return label * valid, valid


def reduce_loss(F, loss, target, valid, normalization, batch_axis):
    """Reduce an elementwise loss to the per-sample values Gluon losses return."""
    if normalization == 'none':
        return loss
    if normalization == 'mean':
        return F.mean(loss, axis=batch_axis, exclude=True)
    total = F.sum(loss, axis=batch_axis, exclude=True)
    if normalization == 'sum':
        return total
    if normalization == 'valid':
        valid = F.broadcast_like(valid, loss)
        return total / F.maximum(F.sum(valid, axis=batch_axis, exclude=True), 1)
    num_positive = F.sum(F.broadcast_mul(target, valid))
    return F.broadcast_div(total, F.maximum(num_positive, 1))


class FocalLoss(Loss):
    r"""Sigmoid focal loss for dense detection and segmentation.

    .. math::
        FL(p_t) = -\alpha_t (1 - p_t)^\gamma \log(p_t),\quad
        p = \sigma(pred),\ p_t = p t + (1 - p)(1 - t),\
        \alpha_t = \alpha t + (1 - \alpha)(1 - t)

    Every class is its own binary problem (sigmoid, never softmax).

    Parameters
    ----------
    num_class : int or None
        Number of classes; must equal ``pred.shape[axis]``. Inferred if None.
    axis : int, default -1
        The class axis of ``pred`` (1 for N×C×H×W segmentation maps).
    label_mode : {'auto', 'sparse', 'dense', 'binary'}
        'sparse': integer class indices shaped like ``pred`` without ``axis``.
        'dense': targets of ``pred``'s shape in [0, 1] (one-hot, multi-label, soft).
        'binary': {0, 1} masks of ``pred``'s shape, or without its size-1 class axis.
        'auto' decides from the shapes and raises when they fit no mode.
    alpha : float, sequence of float or None, default 0.25
        Weight of positive targets (``1 - alpha`` for negatives); a sequence
        gives one value per class; None disables the weighting.
    gamma : float, default 2.0
        Focusing parameter (>= 0); 0 gives (alpha-weighted) binary cross-entropy.
    from_sigmoid : bool, default False
        Whether ``pred`` already holds sigmoid probabilities (clipped to
        ``[eps, 1 - eps]``) instead of logits.
    ignore_label : number or None
        Label value that contributes nothing: the element (dense/binary) or
        the whole position (sparse).
    background_label : number or None
        Sparse mode only: label of positions whose every class target is 0
        (unmatched anchors in detection).
    normalization : {'mean', 'sum', 'valid', 'positive', 'none'}, default 'mean'
        Per sample: the mean over all non-batch elements, their sum, the mean
        over non-ignored elements, the sum divided by the number of positive
        targets in the whole batch (at least 1; RetinaNet's), or no reduction.
    weight : float or None
        Global scalar weight for the loss.
    batch_axis : int, default 0
        The axis that represents the mini-batch.
    eps : float, default 1e-12
        Probability clipping for ``from_sigmoid=True``.
    impl : {'auto', 'fused', 'composite'}, default 'auto'
        'fused' runs the compiled one-pass kernel, 'composite' chains MXNet
        operators (graphs any MXNet runtime can load); 'auto' picks the
        kernel when it is loaded.
    validate : bool, default True
        Check the label values (and probabilities) of every NDArray call.
        False skips that check (a device sync) for labels valid by construction.

    Inputs:
        - **pred**: logits (or probabilities), any shape with a class axis.
        - **label**: see ``label_mode``.
        - **sample_weight**: optional, broadcastable to ``pred``.

    Outputs:
        - **loss**: shape (batch_size,), or ``pred``'s shape for 'none'.
    """

    def __init__(self, num_class=None, axis=-1, label_mode='auto', alpha=0.25, gamma=2.0,
                 from_sigmoid=False, ignore_label=None, background_label=None,
                 normalization='mean', weight=None, batch_axis=0, eps=1e-12, impl='auto',
                 validate=True, **kwargs):
        super(FocalLoss, self).__init__(_check_weight(weight), batch_axis, **kwargs)
        self._num_class = _check_num_class(num_class)
        self._axis = _check_int('axis', axis)
        self._label_mode = _check_choice('label_mode', label_mode, LABEL_MODES)
        self._alpha, self._alpha_values = _check_alpha(alpha, self._num_class)
        self._gamma = _check_gamma(gamma)
        self._from_sigmoid = bool(from_sigmoid)
        self._ignore_label = _check_label_value('ignore_label', ignore_label)
        self._background_label = _check_label_value('background_label', background_label)
        if self._background_label is not None and label_mode not in ('auto', 'sparse'):
            raise ValueError('background_label applies to sparse labels only, but '
                             'label_mode=%r.' % label_mode)
        self._normalization = _check_choice('normalization', normalization, NORMALIZATIONS)
        self._eps = float(eps)
        if not 0 <= self._eps < 0.5:
            raise ValueError('eps=%r must be in [0, 0.5).' % eps)
        self._impl = _choose_impl(impl)
        self._impl_requested = impl
        self._validate = bool(validate)
        self._resolved = None
        self._run_fused = False
        self._grad_add = False

    @property
    def impl(self):
        """'fused' or 'composite': the implementation this loss prefers (with
        impl='auto', layouts the kernel cannot reduce still run composite)."""
        return self._impl

    def forward(self, pred, label, sample_weight=None):
        """Resolve the label mode from the inputs, then run the graph."""
        if isinstance(pred, ndarray.NDArray):
            _check_arrays(pred, label, sample_weight)
            resolved = resolve_label_mode(pred.shape, label.shape, axis=self._axis,
                                          label_mode=self._label_mode,
                                          num_class=self._num_class,
                                          dtype=np.dtype(pred.dtype).name)
            self._check_alpha_length(pred.shape[resolved.axis], resolved)
            self._check_batch(pred, sample_weight)
            if self._background_label is not None and resolved.mode != 'sparse':
                raise ValueError('background_label applies to sparse labels only, but label '
                                 'shape %s resolved to the %s mode for pred shape %s.'
                                 % (label.shape, resolved.mode, pred.shape))
            if self._validate and not self._active:
                self._check_values(pred, label, resolved)
            fused = self._impl == 'fused' and self._kernel_takes(resolved, pred.ndim)
            # the kernel cannot see grad_req='add' on an input that owns its gradient
            grad_add = fused and kernel.needs_grad_add(pred)
        else:
            resolved, fused, grad_add = self._resolve_symbolic(pred), self._impl == 'fused', False
        if (resolved, fused, grad_add) != (self._resolved, self._run_fused, self._grad_add):
            # a new layout needs a new graph
            self._resolved, self._run_fused, self._grad_add = resolved, fused, grad_add
            self._clear_cached_op()
        if sample_weight is None:
            return super(FocalLoss, self).forward(pred, label)
        return super(FocalLoss, self).forward(pred, label, sample_weight)

    def hybrid_forward(self, F, pred, label, sample_weight=None):
        resolved = self._resolved
        if self._run_fused and sample_weight is None:
            return self._fused(F, pred, label, self._normalization, self._weight)
        # float16 inputs are computed in float32, like the kernel does
        compute = 'float32' if resolved.dtype == 'float16' else resolved.dtype
        target = valid = None
        if self._run_fused:
            loss = _cast(F, self._fused(F, pred, label, 'none', None), resolved.dtype, compute)
            if self._normalization in ('valid', 'positive'):  # these count labels
                target, valid = dense_targets(F, label, resolved, compute,
                                              self._class_index(F, pred, compute, False),
                                              self._ignore_label, self._background_label)
        else:
            class_index = self._class_index(F, pred, compute, self._alpha_values is not None)
            target, valid = dense_targets(F, label, resolved, compute, class_index,
                                          self._ignore_label, self._background_label)
            pred = _cast(F, pred, resolved.dtype, compute)
            if self._ignore_label is not None:
                # ignored positions contribute 0 even where their logit is inf or nan
                pred = F.where(F.broadcast_like(valid, pred), pred, F.zeros_like(pred))
            loss = self._composite_elementwise(F, pred, target, valid, class_index, compute)
        if sample_weight is not None:
            loss = F.broadcast_mul(loss, _cast(F, sample_weight, resolved.dtype, compute))
        if self._weight is not None:
            loss = loss * self._weight
        loss = reduce_loss(F, loss, target, valid, self._normalization, self._batch_axis)
        return _cast(F, loss, compute, resolved.dtype)

    def _class_index(self, F, pred, dtype, per_class_alpha):
        """Element positions along the class axis, where sparse labels or a
        per-class alpha lookup need them (else None)."""
        if self._resolved.mode == 'sparse' or per_class_alpha:
            return class_index_like(F, pred, self._resolved.axis, dtype)
        return None

    def _kernel_takes(self, resolved, ndim):
        """The kernel reduces per sample only with the batch axis before the
        class axis (unless the class axis does not matter)."""
        batch_axis = self._batch_axis % ndim
        class_axis_matters = resolved.mode == 'sparse' or self._alpha_values is not None
        if self._normalization == 'none' or batch_axis < resolved.axis or \
                not class_axis_matters:
            return True
        if self._impl_requested == 'fused':
            raise ValueError("impl='fused' needs batch_axis (%d) before the class axis (%d) "
                             "for sparse labels or per-class alpha; use impl='composite'."
                             % (self._batch_axis, self._axis))
        return False

    def _composite_elementwise(self, F, pred, target, valid, class_index, dtype):
        loss = sigmoid_focal_terms(F, pred, target, self._gamma, self._from_sigmoid,
                                   clip_eps(self._eps, dtype))
        if self._alpha_values is not None:
            loss = loss * alpha_weights(F, target, self._alpha_values, class_index, dtype)
        elif self._alpha is not None:
            loss = loss * alpha_weights(F, target, self._alpha)
        return F.broadcast_mul(loss, valid)

    def _fused(self, F, pred, label, normalization, weight):
        alpha = self._alpha if self._alpha_values is None else self._alpha_values
        return kernel.fused_focal_loss(
            F, pred, label, grad_add=self._grad_add,
            mode='sparse' if self._resolved.mode == 'sparse' else 'dense',
            axis=self._resolved.axis, batch_axis=self._batch_axis, gamma=self._gamma,
            alpha=alpha, from_sigmoid=self._from_sigmoid, eps=self._eps,
            ignore_label=self._ignore_label,
            background_label=self._background_label if self._resolved.mode == 'sparse' else None,
            normalization=normalization, scale=1.0 if weight is None else weight)

    def _resolve_symbolic(self, pred):
        """Symbols carry no shapes: the mode must be explicit, binary masks
        must have pred's shape, and float32 is assumed."""
        if self._label_mode == 'auto':
            raise ValueError("label_mode='auto' needs the input shapes; on Symbol inputs pass "
                             "label_mode='sparse', 'dense' or 'binary' explicitly.")
        return ResolvedLabels(self._label_mode, self._axis, False, 'float32')

    def _check_alpha_length(self, num_classes_seen, resolved):
        if self._alpha_values is None:
            return
        length = len(self._alpha_values)
        if length != num_classes_seen:
            raise ValueError('alpha has %d per-class values but pred.shape[axis=%d] is %d.'
                             % (length, resolved.axis, num_classes_seen))

    def _check_batch(self, pred, sample_weight):
        if sample_weight is None:
            return
        try:
            shape = np.broadcast_shapes(sample_weight.shape, pred.shape)
        except ValueError:
            raise ValueError('sample_weight shape %s does not broadcast to pred shape %s.'
                             % (sample_weight.shape, pred.shape))
        if shape != pred.shape:
            raise ValueError('sample_weight shape %s would enlarge pred shape %s; expected a '
                             'shape that broadcasts to pred.' % (sample_weight.shape, pred.shape))

    def _check_values(self, pred, label, resolved):
        num_class = pred.shape[resolved.axis]
        check_label_values(label.asnumpy(), resolved, num_class, self._ignore_label,
                           self._background_label if resolved.mode == 'sparse' else None)
        if self._from_sigmoid:
            check_probabilities(pred.asnumpy(), resolved.axis,
                                softmax_check=resolved.mode != 'binary')


def _check_arrays(pred, label, sample_weight):
    """NDArrays of a float pred dtype with at least one element."""
    for name, value in (('pred', pred), ('label', label), ('sample_weight', sample_weight)):
        if value is not None and not isinstance(value, ndarray.NDArray):
            raise TypeError('%s is a %s; FocalLoss takes mx.nd.NDArray inputs (or Symbols), '
                            'e.g. mx.nd.array(%s).' % (name, type(value).__name__, name))
    if np.dtype(pred.dtype).kind != 'f':
        raise ValueError('pred has dtype %s; FocalLoss needs float16, float32 or float64 '
                         "logits or probabilities (cast with pred.astype('float32'))."
                         % np.dtype(pred.dtype).name)
    if 0 in pred.shape:
        raise ValueError('pred shape %s has no elements; FocalLoss needs a non-empty batch '
                         'and class axis.' % (pred.shape,))


def _check_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError('%s=%r must be an integer.' % (name, value))
    return int(value)


def _check_num_class(num_class):
    if num_class is None:
        return None
    if isinstance(num_class, bool) or not isinstance(num_class, numbers.Integral) \
            or num_class < 1:
        raise ValueError('num_class=%r must be a positive integer or None (inferred from '
                         'pred.shape[axis]).' % (num_class,))
    return int(num_class)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError('%s=%r is not one of %s.' % (name, value, ', '.join(map(repr, choices))))
    return value


def _flush_subnormal(value):
    """MXNet's scalar attributes reject subnormal doubles; they are 0 to any precision."""
    return 0.0 if abs(value) < np.finfo(np.float64).tiny else float(value)


def _check_gamma(gamma):
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) \
            or not np.isfinite(gamma) or gamma < 0:
        raise ValueError('gamma=%r must be a finite number >= 0.' % (gamma,))
    return _flush_subnormal(gamma)


def _check_weight(weight):
    if weight is None:
        return None
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) \
            or not np.isfinite(weight):
        raise ValueError('weight=%r must be a finite number or None.' % (weight,))
    return _flush_subnormal(weight)


def _check_alpha(alpha, num_class):
    """Return (scalar alpha or None, per-class tuple of floats or None)."""
    if alpha is None:
        return None, None
    if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool):
        if not 0 <= alpha <= 1:
            raise ValueError('alpha=%r must be in [0, 1].' % (alpha,))
        return _flush_subnormal(alpha), None
    values = np.asarray(alpha, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError('alpha must be a float in [0, 1], a 1-D sequence with one value per '
                         'class, or None; got %r.' % (alpha,))
    if not np.all((values >= 0) & (values <= 1)):
        raise ValueError('alpha values must be in [0, 1]; got %s.' % values.tolist())
    if num_class is not None and values.size != num_class:
        raise ValueError('alpha has %d per-class values but num_class=%d.'
                         % (values.size, num_class))
    return None, tuple(_flush_subnormal(v) for v in values.tolist())


def _check_label_value(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) \
            or 0 < abs(value) < np.finfo(np.float64).tiny:
        raise ValueError('%s=%r must be a finite number or None (and not subnormal).'
                         % (name, value))
    return float(value)


def _choose_impl(impl):
    _check_choice('impl', impl, IMPLEMENTATIONS)
    if impl == 'auto':
        return 'fused' if kernel.available() else 'composite'
    if impl == 'fused' and not kernel.available():
        raise RuntimeError("impl='fused' but the fused focal-loss kernel is not loaded: %s"
                           % kernel.unavailable_reason())
    return impl

