"""Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection").

The formula is the first few functions (fvcore's focal_loss.py is the model);
:class:`FocalLoss` checks its inputs, resolves the label layout, chooses the
backend (the fused CPU kernel or the composite MXNet graph, see
:func:`gluon_focal.kernel.choose_backend`) and runs it.
"""
import numbers

import numpy as np
from mxnet import ndarray
from mxnet.gluon.loss import Loss

from . import kernel
from .validation import (IMPLEMENTATIONS, LABEL_MODES, NORMALIZATIONS, ResolvedLabels,
                         ValueRules, ambiguous_axes, check_gluoncv_arguments, check_values,
                         resolve_label_mode, validate_symbol, warn_ambiguous_axis)

# (1 - p_t) is floored here before a non-integer power: d(x^gamma)/dx is infinite at 0
# for gamma < 1, and MXNet would multiply that by a zero chain-rule factor.
_MODULATOR_FLOOR = 1e-30


# -- the formula ----------------------------------------------------------------------------------
# Logit paths compute the loss and its closed-form gradient without autograd and attach
# the gradient (attach_gradient): the backward pass is one product and keeps one tensor.
# MXNet's elementwise operators each make a pass over memory, and its `where`, `clip`
# and `log1p` are 2-20x slower than a product, so the graphs below avoid them.

def sigmoid_parts(F, z):
    """(q, 1 - q, log(1 + exp(-|z|))) with q = sigmoid(z), from logits ``z`` (two
    transcendentals: exp(-|z|) and a log). q and the log are exact to float precision
    for any z; 1 - q is exact to float precision in absolute terms, which is all its
    uses need (it multiplies terms that are small next to q where q is near 1)."""
    e = F.exp(-F.abs(z))
    w = 1 + e
    r = 1 / w
    # sigmoid(|z|) = r and sigmoid(-|z|) = e r; max(e, 1) = 1 picks r
    sigmoid = F.maximum(e, z > 0) * r
    # log1p(e) as log(w) plus the rounding error of w, which log(w) alone loses
    return sigmoid, 1 - sigmoid, F.log(w) + (e - (w - 1)) * r


def modulating_factor(F, one_minus_pt, gamma):
    """(1 - p_t)^gamma, or None for gamma = 0."""
    if gamma == 0:
        return None
    if gamma == 1:
        return one_minus_pt
    if gamma == 2:
        return F.square(one_minus_pt)
    return F.maximum(one_minus_pt, _MODULATOR_FLOOR) ** gamma


def focal_terms_hard(F, logit, positive, gamma, weight=None, carrier=None):
    """weight (1 - p_t)^gamma * CE for 0/1 targets, from logits.

    ``z`` is the logit of the wrong answer (-logit where the target is 1), so
    CE = softplus(z) and 1 - p_t = q = sigmoid(z); d/dz = q^gamma (gamma (1 - q) CE + q).
    An infinite logit on the side of its target gives z = -inf and a loss of
    exactly 0; on the other side, a loss of inf (with a finite gradient).
    ``weight`` (alpha_t, the validity mask) depends on the target only; the
    gradient goes through ``carrier`` (default: :func:`gradient_carrier` of ``logit``).
    """
    flip = 1 - 2 * positive
    z = F.BlockGrad(logit) * flip
    q, one_minus_q, tail = sigmoid_parts(F, z)
    ce = F.relu(z) + tail
    factor = modulating_factor(F, q, gamma)
    if factor is None:
        loss, d_loss = ce, q
    else:
        loss, d_loss = ce * factor, factor * (one_minus_q * capped(F, ce) * gamma + q)
    carrier = gradient_carrier(F, logit) if carrier is None else carrier
    return attach_gradient(F, loss, d_loss * flip, carrier, weight)


def focal_terms_soft(F, logit, target, gamma, weight=None, carrier=None):
    """weight (1 - p_t)^gamma * CE for targets in [0, 1], from logits.

    With u = min(t, 1 - t), the distance to the nearer hard target, and ``z``
    the logit of the farther side (-logit where t > 0.5): CE = softplus(z) - u z
    and m = 1 - p_t = u + (1 - 2u) q with q = sigmoid(z), so
    d/dz = m^(gamma - 1) ((q - u) m + gamma (1 - 2u) q (1 - q) CE). For 0/1
    targets (u = 0) this is :func:`focal_terms_hard`, and no term cancels
    another for any target.
    """
    distance = F.minimum(target, 1 - target)
    flip = 1 - 2 * (target > 0.5)
    z = F.BlockGrad(logit) * flip
    q, one_minus_q, tail = sigmoid_parts(F, z)
    # u z is capped, so that an infinite logit gives 0 (u = 0) or stays +inf
    ce = F.relu(z) + tail - distance * capped(F, z)
    if gamma == 0:
        loss, d_loss = ce, q - distance
    else:
        # grouped so that few tensors are alive at once
        slope = 1 - 2 * distance
        one_minus_pt = distance + slope * q
        d_loss = (q - distance) * one_minus_pt + \
            q * one_minus_q * slope * capped(F, ce) * gamma
        loss = ce * one_minus_pt
        lower = modulating_factor(F, one_minus_pt, gamma - 1)
        if lower is not None:
            loss, d_loss = loss * lower, d_loss * lower
    carrier = gradient_carrier(F, logit) if carrier is None else carrier
    return attach_gradient(F, loss, d_loss * flip, carrier, weight)


def capped(F, x):
    """x within +-1e38, so that a zero times an infinite loss or logit stays 0 (two
    scalar operators: twice as fast as MXNet's clip)."""
    return F.maximum(F.minimum(x, 1e38), -1e38)


def gradient_carrier(F, logit, bound=1e38):
    """A zero of ``logit``'s shape whose gradient with respect to ``logit`` is 1:
    logit - logit, clipped to +-bound so that +-inf logits give 0, not NaN (logits
    beyond the bound get no gradient). Clip keeps only its input for the backward
    pass: applied to the loss's input, no tensor of its own."""
    anchor = F.clip(logit, -bound, bound)
    return anchor - F.BlockGrad(anchor)


def attach_gradient(F, value, gradient, carrier, weight=None):
    """weight * ``value``, with gradient weight * ``gradient`` (finite) with respect to
    the logits of ``carrier`` (:func:`gradient_carrier`)."""
    if weight is not None:
        value, gradient = F.broadcast_mul(value, weight), F.broadcast_mul(gradient, weight)
    return F.BlockGrad(value) + F.BlockGrad(gradient) * carrier


def focal_terms_probabilities(F, prob, target, gamma, eps):
    """(1 - p_t)^gamma * CE for targets in [0, 1], from probabilities (clipped to
    [eps, 1 - eps]; see :func:`clip_eps`)."""
    p = F.clip(prob, eps, 1 - eps)
    q = 1 - p
    ce = -(target * F.log(p) + (1 - target) * F.log(q))
    factor = modulating_factor(F, target * q + (1 - target) * p, gamma)
    return ce if factor is None else ce * factor


def alpha_weights(F, target, alpha, per_class=None):
    """alpha_t = alpha t + (1 - alpha)(1 - t) = (1 - alpha) + (2 alpha - 1) t.

    ``alpha`` is a float, or ``per_class`` is a pair (1 - alpha_c, 2 alpha_c - 1) of
    tensors broadcastable along the class axis. 1 - alpha is formed in float64
    before rounding, so alpha close to 1 keeps its negative weight.
    """
    if per_class is None:
        return target * (2 * alpha - 1) + (1 - alpha)
    negative, slope = per_class
    return F.broadcast_add(F.broadcast_mul(target, slope), negative)


def clip_eps(eps, dtype):
    """Probabilities are clipped to [eps, 1 - eps]; 1 - eps must not round to 1."""
    return max(eps, float(np.finfo(dtype).epsneg))


# -- graph plumbing -------------------------------------------------------------------------------
def constant_vector(F, values, dtype):
    """A small constant vector built inside the graph from Python scalars: no
    Parameter, so a loss needs no initialize() and is safe to share between threads."""
    return F.concat(*[F.ones(shape=(1,), dtype=dtype) * float(v) for v in values], dim=0)


def class_positions(F, pred, axis, dtype, to):
    """0..C-1 along the (negative) class ``axis`` as ``to``, shaped to broadcast against
    ``pred`` (of ``dtype``; None when unknown)."""
    positions = _cast(F, F.contrib.arange_like(pred, axis=axis), dtype, to)
    return F.reshape(positions, (-1,) + (1,) * (-axis - 1))


def per_sample_sum(F, x, batch_axis, dtype, mean=False):
    """Sum (or mean) over every axis but ``batch_axis`` of ``x`` (of ``dtype``). For
    batch_axis 0 it is a matrix-vector product with ones, several times faster than
    MXNet's reduce."""
    if batch_axis != 0:
        return (F.mean if mean else F.sum)(x, axis=batch_axis, exclude=True)
    rows = F.reshape(x, (0, -1))
    ones = F.ones_like(F.slice_axis(rows, axis=0, begin=0, end=1))
    total = F.reshape(F.dot(rows, ones, transpose_b=True), (-1,))
    # the count divides the (N,) result: no second row-sized vector
    return F.broadcast_div(total, F.cast(F.size_array(ones), dtype=dtype)) if mean else total


def reduce_loss(F, loss, normalization, batch_axis, dtype, valid=None, num_positive=None):
    """Reduce an elementwise loss (of ``dtype``) to the per-sample values Gluon losses return.

    ``valid``: 0/1 of loss's shape ('valid'; None when every element counts);
    ``num_positive``: positive targets in the whole batch ('positive')."""
    if normalization == 'none':
        return loss
    if normalization == 'mean' or (normalization == 'valid' and valid is None):
        return per_sample_sum(F, loss, batch_axis, dtype, mean=True)
    total = per_sample_sum(F, loss, batch_axis, dtype)
    if normalization == 'sum':
        return total
    if normalization == 'valid':
        return total / F.maximum(per_sample_sum(F, valid, batch_axis, dtype), 1)
    return F.broadcast_div(total, F.maximum(num_positive, 1))


def _cast(F, x, dtype, to):
    """x (of ``dtype``, None when unknown) as ``to``."""
    return x if dtype == to else F.cast(x, dtype=to)


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
    axis : int or None, default None (-1)
        The class axis of ``pred`` (1 for N×C×H×W segmentation maps). Left at
        its default, a label that fits several class axes (C == H == W) warns once.
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
        float16 ``pred`` is computed in float32 and the result cast back to
        float16: a 'sum' above 65504 is inf there (use another normalization
        or float32 ``pred``).
    weight : float or None
        Global scalar weight for the loss.
    batch_axis : int, default 0
        The axis that represents the mini-batch.
    eps : float, default 1e-12
        Probability clipping for ``from_sigmoid=True``.
    impl : {'auto', 'fused', 'composite'}, default 'auto'
        'fused' runs the compiled one-pass kernel (CPU only), 'composite'
        chains MXNet operators (any device; graphs any MXNet runtime can load
        with ``validate=False``); 'auto' picks the kernel for CPU arrays when it
        is loaded (see :func:`gluon_focal.kernel.choose_backend`).
    validate : bool, default True
        Refuse bad values on every call, hybridized or not: sparse labels
        outside [0, C) (or not integers) that are not ignore/background labels,
        dense targets outside [0, 1], binary masks other than 0/1, NaN labels,
        and with ``from_sigmoid=True`` probabilities outside [0, 1] and softmax
        outputs. ``False`` reads the values as they are (out-of-range labels
        then give undefined losses).

    Inputs:
        - **pred**: logits (or probabilities), any shape with a class axis.
        - **label**: see ``label_mode``.
        - **sample_weight**: optional, broadcastable to ``pred``.

    Outputs:
        - **loss**: shape (batch_size,), or ``pred``'s shape for 'none'; in
          pred's dtype for NDArray inputs, float32 inside a symbolic graph.
    """

    def __init__(self, num_class=None, axis=None, label_mode='auto', alpha=0.25, gamma=2.0,
                 from_sigmoid=False, ignore_label=None, background_label=None,
                 normalization='mean', weight=None, batch_axis=0, eps=1e-12, impl='auto',
                 validate=True, **kwargs):
        check_gluoncv_arguments(kwargs)
        super(FocalLoss, self).__init__(_check_weight(weight), batch_axis, **kwargs)
        self._num_class = _check_num_class(num_class)
        self._axis_is_default = axis is None
        self._axis = -1 if axis is None else _check_int('axis', axis)
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
        _check_choice('impl', impl, IMPLEMENTATIONS)
        self._impl_requested = impl
        if impl == 'fused':  # fail at construction, not at the first call
            kernel.choose_backend('fused', kernel.available(), None)
        self._validate = bool(validate)
        self._warned_ambiguous = False
        # what the current graph was built for (see _use_graph)
        self._resolved, self._runs, self._grad_add, self._check_in_graph = \
            None, None, False, False

    @property
    def impl(self):
        """'fused' or 'composite': the implementation this loss prefers on CPU
        (with impl='auto', layouts the kernel cannot reduce and non-CPU arrays
        still run composite)."""
        return 'fused' if self._impl_requested == 'fused' or \
            (self._impl_requested == 'auto' and kernel.available()) else 'composite'

    def forward(self, pred, label, sample_weight=None):
        """Check the inputs, resolve the label layout, choose the backend, run it."""
        if isinstance(pred, ndarray.NDArray):
            _check_arrays(pred, label, sample_weight)
            resolved = self._resolve(pred, label, sample_weight)._replace(
                label_dtype=np.dtype(label.dtype).name)
            backend = self._choose_backend(resolved, pred.context, pred.ndim)
            # the kernel checks every value it reads; a hybridized graph leaves it to it
            if self._validate and not (backend == 'fused' and self._active):
                hard_targets = check_values(pred, label, self._value_rules(resolved, pred.shape))
                if hard_targets and backend == 'composite' and resolved.mode == 'dense':
                    # checked one-hot/multi-label targets: the binary graph is the same
                    # math with fewer tensors kept for backward (soft targets switch back)
                    resolved = resolved._replace(mode='binary')
            # grad_req='add' on an input that owns its gradient: the kernel cannot see it
            # and MXNet's clip (which ends the composite graph) ignores it; both then
            # read an identity copy, whose gradient MXNet accumulates
            grad_add = kernel.needs_grad_add(pred)
            check_in_graph = False
        else:
            resolved = self._resolve_symbolic()
            backend = self._choose_backend(resolved, None, None)
            grad_add, check_in_graph = False, self._validate and backend == 'composite'
        self._use_graph(resolved, backend, grad_add, check_in_graph)
        if sample_weight is None:
            return super(FocalLoss, self).forward(pred, label)
        return super(FocalLoss, self).forward(pred, label, sample_weight)

    # -- check and resolve ----------------------------------------------------------------------
    def _resolve(self, pred, label, sample_weight):
        resolved = resolve_label_mode(pred.shape, label.shape, axis=self._axis,
                                      label_mode=self._label_mode, num_class=self._num_class,
                                      dtype=np.dtype(pred.dtype).name)
        if self._axis_is_default and not self._warned_ambiguous and \
                resolved.mode in ('sparse', 'binary') and ambiguous_axes(pred.shape, label.shape):
            self._warned_ambiguous = True
            warn_ambiguous_axis(pred.shape, label.shape, self._axis)
        self._check_alpha_length(pred.shape[resolved.axis], resolved)
        self._check_batch(pred, sample_weight)
        if self._background_label is not None and resolved.mode != 'sparse':
            raise ValueError('background_label applies to sparse labels only, but label '
                             'shape %s resolved to the %s mode for pred shape %s.'
                             % (label.shape, resolved.mode, pred.shape))
        return resolved

    def _resolve_symbolic(self):
        """Symbols carry no shapes or dtypes: the mode must be explicit (binary masks
        may lack pred's size-1 class axis), and the graph computes in float32."""
        if self._label_mode == 'auto':
            raise ValueError("label_mode='auto' needs the input shapes; on Symbol inputs pass "
                             "label_mode='sparse', 'dense' or 'binary' explicitly.")
        return ResolvedLabels(self._label_mode, self._axis, self._label_mode == 'binary')

    def _value_rules(self, resolved, pred_shape=None):
        return ValueRules(resolved.mode, resolved.axis,
                          None if pred_shape is None else pred_shape[resolved.axis],
                          self._ignore_label,
                          self._background_label if resolved.mode == 'sparse' else None,
                          self._from_sigmoid)

    # -- choose the backend ---------------------------------------------------------------------
    def _choose_backend(self, resolved, context, ndim):
        return kernel.choose_backend(self._impl_requested, kernel.available(), context,
                                     self._kernel_takes(resolved, ndim))

    def _kernel_takes(self, resolved, ndim):
        """Whether the kernel takes this axis layout: the kernel library decides
        (:func:`gluon_focal.kernel.layout_problem`)."""
        if ndim is None or not kernel.available():
            return True  # ranks unknown (Symbols): the op says so if it cannot
        problem = kernel.layout_problem(ndim, resolved.axis, self._batch_axis, resolved.mode,
                                        self._alpha_values is not None, self._normalization)
        if problem is not None and self._impl_requested == 'fused':
            raise ValueError("impl='fused' cannot run this layout: %s; use impl='composite'."
                             % problem)
        return problem is None

    def _use_graph(self, resolved, backend, grad_add, check_in_graph):
        """Remember what the next graph is for; clear the cached one if that changed."""
        key = (resolved, backend, grad_add, check_in_graph)
        if key != (self._resolved, self._runs, self._grad_add, self._check_in_graph):
            # a new layout or backend needs a new graph
            self._resolved, self._runs, self._grad_add, self._check_in_graph = key
            self._clear_cached_op()

    # -- run --------------------------------------------------------------------------------------
    def hybrid_forward(self, F, pred, label, sample_weight=None):
        resolved = self._resolved
        fused = self._runs == 'fused'
        if fused and sample_weight is None:
            return self._fused(F, pred, label, self._normalization, self._weight)
        # float16 is computed in float32, like the kernel does; Symbols have no known
        # dtype, so a symbolic graph computes in float32 (and returns float32)
        symbolic = resolved.dtype is None
        reshaped = symbolic and resolved.axis >= 0   # see _views
        compute = 'float64' if resolved.dtype == 'float64' else 'float32'
        pred_view, label_view, axis = self._views(F, pred, label, resolved)
        label_view = _cast(F, label_view, resolved.label_dtype, compute)
        # the validator's zero joins the smallest tensor that the output depends on
        check = validate_symbol(F, pred, label, self._value_rules(resolved)) \
            if self._check_in_graph else None
        if check is not None and self._normalization == 'none':
            label_view, check = F.broadcast_add(label_view, check), None
        positions = class_positions(F, pred_view, axis, resolved.dtype, compute) \
            if resolved.mode == 'sparse' or self._alpha_values is not None else None
        target, valid = self._targets(F, positions, label_view, resolved.mode)
        if fused:
            loss = _cast(F, self._fused(F, pred, label, 'none', None), resolved.dtype, compute)
        else:
            # the formula reads the logits' values (a copy that dies early in a symbolic
            # graph); the gradient goes through a carrier made in pred's own dtype
            values = F.BlockGrad(pred_view) if symbolic else pred_view
            source = F.identity(pred_view) if self._grad_add else pred_view
            loss = self._composite_elementwise(
                F, _cast(F, values, resolved.dtype, compute), target, valid, positions, compute,
                source, resolved.dtype)
            loss = F.reshape_like(loss, pred) if reshaped else loss
        if sample_weight is not None:
            loss = F.broadcast_mul(loss, _cast(F, sample_weight, resolved.dtype, compute))
        if self._weight is not None:
            loss = loss * self._weight
        valid_count = num_positive = None
        if self._normalization == 'valid' and valid is not None:
            valid_count = F.broadcast_like(valid, pred_view)
            valid_count = F.reshape_like(valid_count, pred) if reshaped else valid_count
        if self._normalization == 'positive':
            positive = target if valid is None else F.broadcast_mul(target, valid)
            num_positive = F.sum(per_sample_sum(F, positive, 0, compute))
        batch_axis = self._batch_axis if symbolic else self._batch_axis % resolved.ndim
        loss = reduce_loss(F, loss, self._normalization, batch_axis, compute, valid_count,
                           num_positive)
        if check is not None:
            loss = F.broadcast_add(loss, check)
        return loss if symbolic else _cast(F, loss, compute, resolved.dtype)

    def _views(self, F, pred, label, resolved):
        """(pred, label, axis) with a negative class axis and the label given a class
        axis (of size 1 for sparse labels and squeezed masks). Symbols have no rank:
        a non-negative class axis is made the second-to-last one by a reshape."""
        axis = resolved.axis
        if resolved.ndim is not None:
            axis -= resolved.ndim
        elif axis >= 0:
            pred = F.reshape(pred, (0,) * (axis + 1) + (-1,))
            if resolved.mode == 'sparse':
                label = F.reshape(label, (0,) * axis + (1, -1))
            axis = -2
        if resolved.mode == 'sparse':
            if resolved.ndim is not None or resolved.axis < 0:
                label = F.expand_dims(label, axis=axis)
        elif resolved.expand_label:
            label = F.reshape_like(label, pred)
        return pred, label, axis

    def _targets(self, F, positions, label, mode):
        """(target, valid): 0/1 or soft targets broadcastable to ``pred`` and a 0/1
        validity mask (None without ignore_label)."""
        valid = None if self._ignore_label is None else label != self._ignore_label
        if mode == 'sparse':
            if self._background_label is not None and self._background_label >= 0:
                # background positions match no class: every target is 0
                label = F.where(label == self._background_label, F.ones_like(label) * -1, label)
            return F.broadcast_equal(positions, label), valid
        if valid is None:
            return label, None
        return label * valid, valid

    def _composite_elementwise(self, F, pred, target, valid, positions, dtype, source,
                               source_dtype):
        """The elementwise loss of ``pred`` (logits or probabilities of ``dtype``); its
        gradient goes to ``source`` (the same values, of ``source_dtype``: None when
        unknown)."""
        if valid is not None:
            # ignored positions contribute 0 even where their logit is inf or nan
            mask = F.broadcast_like(valid, pred)
            masked = F.where(mask, pred, F.zeros_like(pred))
            # with NDArrays of a compute dtype, pred is the source itself: mask it once
            source = masked if source is pred else F.where(mask, source, F.zeros_like(source))
            pred = masked
        per_class = None
        if self._alpha_values is not None:
            per_class = tuple(F.reshape_like(constant_vector(F, values, dtype), positions)
                              for values in ([1 - a for a in self._alpha_values],
                                             [2 * a - 1 for a in self._alpha_values]))
        weight = None if self._alpha is None and per_class is None else \
            alpha_weights(F, target, self._alpha, per_class)
        if valid is not None:
            weight = valid if weight is None else F.broadcast_mul(weight, valid)
        if self._from_sigmoid:
            loss = focal_terms_probabilities(F, _cast(F, source, source_dtype, dtype), target,
                                             self._gamma, clip_eps(self._eps, dtype))
            return loss if weight is None else F.broadcast_mul(loss, weight)
        # in float16 (or a symbolic graph's unknown dtype) the bound is float16's largest
        bound = 1e38 if source_dtype in ('float32', 'float64') else 65504.0
        carrier = _cast(F, gradient_carrier(F, source, bound), source_dtype, dtype)
        # sparse and binary targets are exactly 0 or 1
        terms = focal_terms_soft if self._resolved.mode == 'dense' else focal_terms_hard
        return terms(F, pred, target, self._gamma, weight, carrier)

    def _fused(self, F, pred, label, normalization, weight):
        alpha = self._alpha if self._alpha_values is None else self._alpha_values
        return kernel.fused_focal_loss(
            F, pred, label, grad_add=self._grad_add, mode=self._resolved.mode,
            axis=self._resolved.axis, batch_axis=self._batch_axis, gamma=self._gamma,
            alpha=alpha, from_sigmoid=self._from_sigmoid, eps=self._eps,
            ignore_label=self._ignore_label,
            background_label=self._background_label if self._resolved.mode == 'sparse' else None,
            normalization=normalization, scale=1.0 if weight is None else weight,
            validate=self._validate)

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
