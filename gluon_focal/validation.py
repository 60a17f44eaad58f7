"""The one validator: names, constants, label-mode resolution and value checks.

=========  ==========================================  =====================================
mode       label shape                                 label values
=========  ==========================================  =====================================
sparse     ``pred.shape`` without the class ``axis``   class index in ``[0, C)``
dense      ``pred.shape``                              targets in ``[0, 1]`` (one-hot,
                                                       multi-label or soft)
binary     ``pred.shape``, or ``pred.shape`` without   ``{0, 1}``
           a class ``axis`` of size 1 (N×1×H×W pred,
           N×H×W mask)
=========  ==========================================  =====================================

Shapes are resolved here before a graph is built (a hybridized loss resolves its
mode on each call's NDArrays). Values are checked by :func:`check_values` on
NDArrays (one small on-device reduction and one host sync; the detailed message
is only built when something is wrong), inside symbolic graphs by the
:class:`ValidateOp` custom operator, and by the fused kernel itself
(``validate='1'``). :class:`gluon_focal.FocalLoss`, the segmentation loss and
:class:`~gluon_focal.segmentation.SigmoidSegmentationMetric` all call this module.
"""
import atexit
import ctypes
import warnings
from collections import namedtuple

import numpy as np

import mxnet as mx

# -- names and constants (defined once, imported everywhere) ----------------------------------
LABEL_MODES = ('auto', 'sparse', 'dense', 'binary')
NORMALIZATIONS = ('mean', 'sum', 'valid', 'positive', 'none')
IMPLEMENTATIONS = ('auto', 'fused', 'composite')
#: GluonCV's segmentation datasets mark pixels to ignore with -1.
SEGMENTATION_IGNORE_LABEL = -1
#: Raw VOC PNGs mark object boundaries with 255.
VOC_BOUNDARY_LABEL = 255
#: gluoncv.loss.FocalLoss arguments that mean something else here.
GLUONCV_ARGUMENTS = {
    'from_logits': "from_sigmoid (inverted meaning: gluoncv's from_logits=False, the default, "
                   "applies a sigmoid, which is from_sigmoid=False here; from_logits=True is "
                   "from_sigmoid=True)",
    'sparse_label': "label_mode='sparse' (sparse_label=True) or label_mode='dense'/'binary' "
                    "(sparse_label=False)",
    'size_average': "normalization='mean' (size_average=True) or normalization='sum' "
                    "(size_average=False)",
}

# Softmax refusal (from_sigmoid=True, C >= 2): pred is refused as a softmax output when every
# position sums to 1 within SOFTMAX_SUM_TOLERANCE and at least SOFTMAX_MIN_POSITIONS positions
# are *informative*: not near one-hot (max < SOFTMAX_ONE_HOT) and not flat (max - min >
# SOFTMAX_FLAT). Confident sigmoid heads (near one-hot), exact one-hots, heads at their
# prior-probability initialisation (flat rows of 1/C) and small batches are accepted.
SOFTMAX_SUM_TOLERANCE = 1e-3
SOFTMAX_MIN_POSITIONS = 2
SOFTMAX_ONE_HOT = 0.99
SOFTMAX_FLAT = 0.01

ResolvedLabels = namedtuple('ResolvedLabels', ['mode', 'axis', 'expand_label', 'dtype', 'ndim',
                                               'label_dtype'])
ResolvedLabels.__new__.__defaults__ = (None, None, None)
ResolvedLabels.__doc__ = """What the loss graph needs to know about its inputs.

mode : 'sparse', 'dense' or 'binary'
axis : the class axis, non-negative when the rank is known
expand_label : True when a binary mask may lack pred's size-1 class axis
dtype, ndim, label_dtype : pred's dtype name and rank and label's dtype name, or None
    for Symbols (unknown until the graph runs)
"""

ValueRules = namedtuple('ValueRules', ['mode', 'axis', 'num_class', 'ignore_label',
                                       'background_label', 'from_sigmoid'])
ValueRules.__doc__ = """What :func:`check_values` refuses.

mode : 'sparse', 'dense' or 'binary'; axis : pred's class axis; num_class : C (sparse);
ignore_label / background_label : label values that are always accepted (background:
sparse only); from_sigmoid : also check pred as probabilities (and not softmax outputs).
"""


def check_gluoncv_arguments(kwargs, owner='FocalLoss'):
    """TypeError for gluoncv.loss.FocalLoss argument names, saying what to use instead."""
    for name in sorted(set(kwargs) & set(GLUONCV_ARGUMENTS)):
        raise TypeError('%s got gluoncv.loss.FocalLoss argument %s=%r; use %s.'
                        % (owner, name, kwargs[name], GLUONCV_ARGUMENTS[name]))


# -- shapes ---------------------------------------------------------------------------------------
def _without(shape, axis):
    return tuple(s for i, s in enumerate(shape) if i != axis)


def normalize_axis(axis, ndim, name='axis'):
    if not -ndim <= axis < ndim:
        raise ValueError('%s=%d is out of range for pred with %d dimensions; expected an '
                         'integer in [%d, %d).' % (name, axis, ndim, -ndim, ndim))
    return axis % ndim


def axes_that_fit(pred_shape, label_shape):
    """Class axes k for which ``label_shape`` is ``pred_shape`` without axis k."""
    return [k for k in range(len(pred_shape)) if _without(pred_shape, k) == tuple(label_shape)]


def _shape_error(pred_shape, label_shape, axis, label_mode, expected):
    message = ('label shape %s does not fit pred shape %s with axis=%d and label_mode=%r: '
               'expected %s.' % (tuple(label_shape), tuple(pred_shape), axis, label_mode,
                                 expected))
    class_axis = axis % len(pred_shape)
    other_axes = [k for k in axes_that_fit(pred_shape, label_shape) if k != class_axis]
    if label_mode == 'binary':  # a squeezed mask drops a class axis of size 1
        other_axes = [k for k in other_axes if pred_shape[k] == 1]
    if other_axes and label_mode in ('auto', 'sparse', 'binary'):
        message += (' The labels would fit a class axis at %s: did you mean axis=%d? '
                    '(N x C x H x W predictions need axis=1.)'
                    % (' or '.join('axis=%d' % k for k in other_axes), other_axes[0]))
    return ValueError(message)


def ambiguous_axes(pred_shape, label_shape):
    """More than one axis fits a sparse label (e.g. C == H == W): the axes, else []."""
    axes = axes_that_fit(pred_shape, label_shape)
    return axes if len(axes) > 1 else []


def resolve_label_mode(pred_shape, label_shape, *, axis, label_mode, num_class=None,
                       dtype='float32'):
    """Decide how ``label`` relates to ``pred`` from their shapes alone.

    Raises ValueError naming the shapes when they do not fit the requested
    mode, or when ``'auto'`` cannot tell.
    """
    pred_shape, label_shape = tuple(pred_shape), tuple(label_shape)
    ndim = len(pred_shape)
    if ndim < 1:
        raise ValueError('pred must have at least one dimension, got shape %s.' % (pred_shape,))
    user_axis, axis = axis, normalize_axis(axis, ndim)
    num_classes_seen = pred_shape[axis]
    same_shape = label_shape == pred_shape
    no_class_axis = label_shape == _without(pred_shape, axis)

    if label_mode == 'auto':
        if same_shape:
            label_mode = 'dense'
        elif no_class_axis:
            label_mode = 'binary' if num_classes_seen == 1 else 'sparse'
        else:
            raise _shape_error(pred_shape, label_shape, user_axis, 'auto',
                               'either %s (dense targets) or %s (sparse class indices, or a '
                               'binary mask when the class axis has size 1)'
                               % (pred_shape, _without(pred_shape, axis)))
    if label_mode == 'sparse':
        if not no_class_axis:
            raise _shape_error(pred_shape, label_shape, user_axis, 'sparse',
                               "pred's shape without the class axis, %s"
                               % (_without(pred_shape, axis),))
    elif label_mode == 'dense':
        if not same_shape:
            raise _shape_error(pred_shape, label_shape, user_axis, 'dense',
                               "pred's shape %s" % (pred_shape,))
    elif label_mode == 'binary':
        if not (same_shape or (no_class_axis and num_classes_seen == 1)):
            raise _shape_error(pred_shape, label_shape, user_axis, 'binary',
                               "pred's shape %s, or %s when the class axis has size 1"
                               % (pred_shape, _without(pred_shape, axis)))
        if not same_shape and num_class not in (None, 1):
            raise ValueError('num_class=%r but label_mode=binary has one class.' % (num_class,))
    else:
        raise ValueError('label_mode=%r is not one of %s.' % (label_mode, LABEL_MODES))

    if num_class is not None and label_mode != 'binary' and num_class != num_classes_seen:
        raise ValueError('num_class=%d but pred.shape[axis=%d] is %d (pred shape %s); they '
                         'must be equal.' % (num_class, axis, num_classes_seen, pred_shape))
    return ResolvedLabels(label_mode, axis, label_mode == 'binary' and not same_shape, dtype,
                          ndim)


def warn_ambiguous_axis(pred_shape, label_shape, axis):
    """Warn that a sparse label fits several class axes and the default axis was used."""
    warnings.warn('label shape %s fits pred shape %s with more than one class axis (%s); using '
                  'the default axis=%d. Pass axis= explicitly (axis=1 for N x C x H x W) to '
                  'silence this warning.' % (tuple(label_shape), tuple(pred_shape),
                                             ', '.join('axis=%d' % k for k in
                                                       axes_that_fit(pred_shape, label_shape)),
                                             axis), UserWarning, stacklevel=4)


# -- values ---------------------------------------------------------------------------------------
def _expected(rules):
    if rules.mode == 'sparse':
        expected = 'integer class indices in [0, %d)' % rules.num_class
    elif rules.mode == 'binary':
        expected = 'binary mask values 0 or 1 (divide 0/255 masks by 255)'
    else:
        expected = 'targets in [0, 1]'
    extra = ['%s=%r' % (name, value) for name, value in
             (('ignore_label', rules.ignore_label), ('background_label', rules.background_label))
             if value is not None]
    return expected + ((' or ' + ', '.join(extra)) if extra else '')


def bad_label_mask(F, label, rules):
    """1 where a label value is refused, else 0 (``F`` is mx.nd or numpy-like mx.nd ops).

    Written as "not (inside the allowed set)" so that NaN, which fails every
    comparison, counts as bad."""
    if rules.mode == 'sparse':
        inside = (label >= 0) * (label < rules.num_class) * (label == F.floor(label))
    elif rules.mode == 'binary':
        inside = (label == 0) + (label == 1)
    else:
        inside = (label >= 0) * (label <= 1)
    for special in (rules.ignore_label, rules.background_label):
        if special is not None:
            inside = inside + (label == special)
    return inside == 0


def bad_probability_mask(F, pred):
    """1 where ``pred`` is not a probability (NaN included)."""
    return ((pred >= 0) * (pred <= 1)) == 0


def softmax_statistics(F, pred, axis):
    """(positions whose values do not sum to 1, informative positions summing to 1); see
    SOFTMAX_* above."""
    total = F.sum(pred, axis=axis)
    sums_to_one = F.abs(total - 1) <= SOFTMAX_SUM_TOLERANCE
    largest = F.max(pred, axis=axis)
    informative = sums_to_one * (largest < SOFTMAX_ONE_HOT) * \
        ((largest - F.min(pred, axis=axis)) > SOFTMAX_FLAT)
    return F.sum(sums_to_one == 0), F.sum(informative)


def looks_like_softmax(not_summing, informative, num_class):
    """The softmax rule on the two statistics of :func:`softmax_statistics`."""
    return num_class >= 2 and not_summing == 0 and informative >= SOFTMAX_MIN_POSITIONS


def _first_bad(values, bad):
    position = tuple(int(i) for i in np.argwhere(bad)[0])
    return values[position], position


def label_error(label, rules):
    """The ValueError for the refused values of numpy ``label`` (None when all are fine)."""
    label = np.asarray(label)
    if label.dtype.kind != 'f':
        label = label.astype(np.float64)
    bad = np.asarray(bad_label_mask(np, label, rules)).astype(bool)
    if not bad.any():
        return None
    value, position = _first_bad(label, bad)
    return ValueError('label has %d value(s) outside the %s label mode, e.g. %s; expected %s '
                      '(first: label value %s at position %s).'
                      % (int(bad.sum()), rules.mode, np.unique(label[bad])[:5].tolist(),
                         _expected(rules), _fmt(value), position))


def probability_error(pred, rules):
    """The ValueError for numpy ``pred`` with from_sigmoid=True (None when it is fine)."""
    pred = np.asarray(pred)
    bad = np.asarray(bad_probability_mask(np, pred)).astype(bool)
    if bad.any():
        nan = np.isnan(pred)
        value, position = _first_bad(pred, bad)
        outside = bad & ~nan
        if outside.any():
            summary = '%d value(s) outside it (min %g, max %g)' % (
                int(outside.sum()), pred[outside].min(), pred[outside].max())
            if nan.any():
                summary += ' and %d NaN value(s)' % int(nan.sum())
        else:
            summary = '%d NaN value(s)' % int(nan.sum())
        return ValueError('from_sigmoid=True expects probabilities in [0, 1], but pred has %s '
                          '(first: pred value %s at position %s). Pass logits with '
                          'from_sigmoid=False.' % (summary, _fmt(value), position))
    if rules.mode != 'binary' and looks_like_softmax(
            *[float(s) for s in softmax_statistics(np, pred.astype(np.float64), rules.axis)],
            num_class=pred.shape[rules.axis]):
        return softmax_error(rules.axis)
    return None


def softmax_error(axis):
    return ValueError(
        'pred sums to 1 along the class axis (axis=%d) at every position, with at least %d '
        'positions that are neither near one-hot nor flat: it looks like a softmax output. '
        'FocalLoss is the per-class sigmoid focal loss (each class is its own binary problem); '
        'pass the raw logits with from_sigmoid=False, or sigmoid probabilities with '
        'from_sigmoid=True.' % (axis, SOFTMAX_MIN_POSITIONS))


def _fmt(value):
    value = float(value)
    return repr(int(value)) if value.is_integer() and abs(value) < 2 ** 63 else repr(value)


def check_label_values(label, rules):
    """Raise the ValueError of :func:`label_error` (numpy labels; used by the metric)."""
    error = label_error(label, rules)
    if error is not None:
        raise error


def check_values(pred, label, rules):
    """Check NDArray ``label`` (and ``pred`` with from_sigmoid) on their device.

    One small reduction and one host sync when everything is fine; the numpy
    message is built only for refused inputs. Raises ValueError. Returns whether
    every target is exactly 0 or 1 (always true for sparse and binary labels),
    which lets dense one-hot targets take the cheaper hard-target graph.
    """
    nd = mx.nd
    if np.dtype(label.dtype).kind != 'f':   # integer labels: compare as float64
        label = label.astype('float64')
    counts = [nd.sum(bad_label_mask(nd, label, rules)).astype('float64')]
    if rules.mode == 'dense':
        counts.append(nd.sum(bad_label_mask(nd, label, rules._replace(mode='binary')))
                      .astype('float64'))
    if rules.from_sigmoid:
        counts.append(nd.sum(bad_probability_mask(nd, pred)).astype('float64'))
        if rules.mode != 'binary':
            counts.extend(s.astype('float64') for s in softmax_statistics(nd, pred, rules.axis))
    summary = nd.concat(*[c.reshape((1,)) for c in counts], dim=0).asnumpy()   # the host sync
    if summary[0]:
        raise label_error(label.asnumpy(), rules)
    hard_targets = True
    if rules.mode == 'dense':
        hard_targets, summary = not summary[1], np.delete(summary, 1)
    if rules.from_sigmoid and summary[1]:
        raise probability_error(pred.asnumpy(), rules)
    if len(summary) > 2 and looks_like_softmax(summary[2], summary[3], pred.shape[rules.axis]):
        raise softmax_error(rules.axis)
    return hard_targets


# -- inside symbolic graphs -----------------------------------------------------------------------
VALIDATE_OP = 'gluon_focal_validate'
_CHECK_CHUNK = 1 << 18   # label elements checked at a time


def validate_symbol(F, pred, label, rules):
    """A zero of shape (1,) computed by :class:`ValidateOp` after checking the inputs: adding
    it to a label-derived tensor keeps the check in the graph (no gradient flows into it)."""
    attrs = {'mode': rules.mode, 'axis': str(rules.axis), 'ignore_label': repr(rules.ignore_label),
             'background_label': repr(rules.background_label),
             'from_sigmoid': str(int(rules.from_sigmoid))}
    # pred itself only when its values are checked; else a length-C vector gives C
    checked = pred if rules.from_sigmoid else F.contrib.arange_like(pred, axis=rules.axis)
    return F.BlockGrad(F.Custom(checked, label, op_type=VALIDATE_OP, **attrs))


def _parse(value):
    return None if value == 'None' else float(value)


def check_numpy_values(pred, label, rules):
    """:func:`check_values` on numpy arrays (``pred`` may be None without from_sigmoid)."""
    error = label_error(label, rules)
    if error is None and rules.from_sigmoid:
        error = probability_error(pred, rules)
    if error is not None:
        raise error


def host_values(array):
    """A read-only numpy view of an NDArray in host memory (no copy, and no engine
    call: a custom operator's inputs are ready when it runs); a copy for other devices."""
    if array.size == 0 or array.context.device_type not in ('cpu', 'cpu_pinned', 'cpu_shared'):
        return array.asnumpy()
    pointer = ctypes.c_void_p()
    mx.base.check_call(mx.base._LIB.MXNDArrayGetData(array.handle, ctypes.byref(pointer)))
    dtype = np.dtype(array.dtype)
    buffer = (ctypes.c_char * (array.size * dtype.itemsize)).from_address(pointer.value)
    values = np.frombuffer(buffer, dtype=dtype).reshape(array.shape)
    values.flags.writeable = False
    return values


def _inside_unit_interval(rules, values):
    """Dense targets all in [0, 1]: two quick reductions accept them (NaN fails both
    comparisons, and the full check then finds it)."""
    return rules.mode == 'dense' and values.size > 0 and \
        values.min() >= 0 and values.max() <= 1


class ValidateOp(mx.operator.CustomOp):
    """Runs :func:`check_numpy_values` on (pred, label); outputs a float32 zero. MXNet
    prints the ValueError and fails the graph with an MXNetError at the next sync. Without
    from_sigmoid, ``pred`` is the vector 0..C-1 (only C is needed)."""

    def __init__(self, rules):
        super(ValidateOp, self).__init__()
        self.rules = rules

    def forward(self, is_train, req, in_data, out_data, aux):
        # numpy on the host: engine operators pushed from inside a custom operator can
        # wait on the graph that runs it
        pred, label = [host_values(array) for array in in_data]
        if self.rules.from_sigmoid:
            axis = self.rules.axis % pred.ndim
            check_numpy_values(pred, label, self.rules._replace(
                axis=axis, num_class=pred.shape[axis]))
        else:   # pred is the class positions 0..C-1
            rules = self.rules._replace(num_class=pred.shape[0])
            # in slices: the temporaries of the check stay small
            flat = label.reshape(-1)
            for start in range(0, flat.size, _CHECK_CHUNK):
                part = flat[start:start + _CHECK_CHUNK]
                if not _inside_unit_interval(rules, part) and \
                        np.any(bad_label_mask(np, part, rules)):
                    raise label_error(label, rules)
        self.assign(out_data[0], req[0], mx.nd.zeros((1,), ctx=out_data[0].context))

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        for i, grad in enumerate(in_grad):
            self.assign(grad, req[i], 0)


@atexit.register
def _finish_queued_work():
    """MXNet's exit handler (registered earlier, so it runs after this one) can hang
    when a validator node is still queued (a script that ends right after its last
    backward pass): run the queued work first."""
    try:
        mx.nd.waitall()
    except mx.base.MXNetError:   # a failure nobody waited for; the process is ending
        pass


@mx.operator.register(VALIDATE_OP)
class ValidateProp(mx.operator.CustomOpProp):
    def __init__(self, mode, axis, ignore_label, background_label, from_sigmoid):
        super(ValidateProp, self).__init__(need_top_grad=False)
        self.rules = ValueRules(mode, int(axis), None, _parse(ignore_label),
                                _parse(background_label), from_sigmoid == '1')

    def list_arguments(self):
        return ['pred', 'label']

    def declare_backward_dependency(self, out_grad, in_data, out_data):
        return []   # nothing flows back: keep no tensor alive for a backward pass

    def infer_shape(self, in_shape):
        return in_shape, [(1,)], []

    def infer_type(self, in_type):
        return in_type, [np.float32], []

    def create_operator(self, ctx, shapes, dtypes):
        return ValidateOp(self.rules)
