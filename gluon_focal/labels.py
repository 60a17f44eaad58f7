"""Label-mode resolution: how a label array relates to the predictions.

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

Everything here works on shapes and numpy values, so it runs before a graph is
built: a hybridized loss resolves its mode on the first call's NDArrays.
"""
from collections import namedtuple

import numpy as np

LABEL_MODES = ('auto', 'sparse', 'dense', 'binary')

ResolvedLabels = namedtuple('ResolvedLabels', ['mode', 'axis', 'expand_label', 'dtype'])
ResolvedLabels.__doc__ = """What the loss graph needs to know about its labels.

mode : 'sparse', 'dense' or 'binary'
axis : the class axis, non-negative when the rank is known
expand_label : True when a binary mask lacks pred's size-1 class axis
dtype : pred's dtype name (the targets are built in it)
"""


def _without(shape, axis):
    return tuple(s for i, s in enumerate(shape) if i != axis)


def normalize_axis(axis, ndim, name='axis'):
    if not -ndim <= axis < ndim:
        raise ValueError('%s=%d is out of range for pred with %d dimensions; expected an '
                         'integer in [%d, %d).' % (name, axis, ndim, -ndim, ndim))
    return axis % ndim


def _axes_that_fit(pred_shape, label_shape):
    return [k for k in range(len(pred_shape)) if _without(pred_shape, k) == tuple(label_shape)]


def _shape_error(pred_shape, label_shape, axis, label_mode, expected):
    message = ('label shape %s does not fit pred shape %s with axis=%d and label_mode=%r: '
               'expected %s.' % (tuple(label_shape), tuple(pred_shape), axis, label_mode,
                                 expected))
    class_axis = axis % len(pred_shape)
    other_axes = [k for k in _axes_that_fit(pred_shape, label_shape) if k != class_axis]
    if other_axes and label_mode in ('auto', 'sparse'):
        message += (' The labels would fit a class axis at %s: did you mean axis=%d? '
                    '(N x C x H x W predictions need axis=1.)'
                    % (' or '.join('axis=%d' % k for k in other_axes), other_axes[0]))
    return ValueError(message)


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
    return ResolvedLabels(label_mode, axis, label_mode == 'binary' and not same_shape, dtype)


def check_label_values(label, resolved, num_class, ignore_label=None, background_label=None):
    """Raise ValueError when label values do not fit the resolved mode."""
    label = np.asarray(label, dtype=np.float64)
    special = np.zeros(label.shape, dtype=bool)
    for value in (ignore_label, background_label):
        if value is not None:
            special |= label == value
    values = label[~special]
    if resolved.mode == 'sparse':
        bad = (values != np.round(values)) | (values < 0) | (values >= num_class) | np.isnan(values)
        expected = 'integer class indices in [0, %d)' % num_class
    elif resolved.mode == 'binary':
        bad = (values != 0) & (values != 1)
        expected = 'binary mask values 0 or 1 (divide 0/255 masks by 255)'
    else:
        bad = ~((values >= 0) & (values <= 1))
        expected = 'targets in [0, 1]'
    if bad.any():
        shown = np.unique(values[bad])[:5]
        extra = []
        if ignore_label is not None:
            extra.append('ignore_label=%r' % ignore_label)
        if background_label is not None:
            extra.append('background_label=%r' % background_label)
        raise ValueError('label has %d value(s) outside the %s label mode, e.g. %s; expected %s%s.'
                         % (int(bad.sum()), resolved.mode, shown.tolist(), expected,
                            (' or ' + ', '.join(extra)) if extra else ''))


def check_probabilities(pred, axis, softmax_check=True, tolerance=1e-3):
    """With from_sigmoid=True, pred must hold per-class sigmoid probabilities
    (``softmax_check``: refuse inputs that sum to 1 along the class ``axis``)."""
    pred = np.asarray(pred, dtype=np.float64)
    if pred.size == 0:
        return
    nan = np.isnan(pred)
    outside = ~nan & ((pred < 0) | (pred > 1))
    if outside.any():
        raise ValueError('from_sigmoid=True expects probabilities in [0, 1], but pred has %d '
                         'value(s) outside it (min %g, max %g). Pass logits with '
                         'from_sigmoid=False.' % (int(outside.sum()), pred[outside].min(),
                                                  pred[outside].max()))
    if nan.any():
        raise ValueError('from_sigmoid=True expects probabilities in [0, 1], but pred has %d '
                         'NaN value(s).' % int(nan.sum()))
    if softmax_check and pred.shape[axis] >= 2 and \
            np.all(np.abs(pred.sum(axis=axis) - 1) < tolerance):
        raise ValueError('pred sums to 1 along the class axis (axis=%d) at every position: it '
                         'looks like a softmax output. FocalLoss is the per-class sigmoid focal '
                         'loss (each class is its own binary problem); pass the raw logits with '
                         'from_sigmoid=False, or sigmoid probabilities with from_sigmoid=True.'
                         % axis)
