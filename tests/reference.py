"""Independent float64 numpy reference for the sigmoid focal loss.

Written from the paper's formula (Lin et al. 2017, eq. 5) generalised to soft
targets the way torchvision/fvcore do:

    p    = sigmoid(x)                       (or x itself when from_sigmoid)
    ce   = -(t log p + (1 - t) log(1 - p))
    p_t  = p t + (1 - p)(1 - t)
    a_t  = a t + (1 - a)(1 - t)             (1 when alpha is None)
    FL   = a_t (1 - p_t)^gamma ce

The gradient is written out by hand (not by autograd) so that the tests can
compare MXNet's backward against it; a finite-difference test checks this
derivation itself.
"""
import numpy as np


def _move_class_axis_last(arr, axis):
    return np.moveaxis(arr, axis, -1)


def dense_targets(pred_shape, label, *, axis, label_mode, ignore_label=None,
                  background_label=None):
    """Return (target, valid) of pred's shape for any label mode."""
    label = np.asarray(label, dtype=np.float64)
    ndim = len(pred_shape)
    axis = axis % ndim
    if label_mode == 'sparse':
        num_class = pred_shape[axis]
        valid_pos = np.ones(label.shape, dtype=bool)
        if ignore_label is not None:
            valid_pos &= label != ignore_label
        foreground = valid_pos.copy()
        if background_label is not None:
            foreground &= label != background_label
        classes = np.arange(num_class).reshape(
            [num_class if d == axis else 1 for d in range(ndim)])
        lab = np.expand_dims(np.where(foreground, label, -1), axis)
        target = (lab == classes).astype(np.float64)
        valid = np.broadcast_to(np.expand_dims(valid_pos, axis), pred_shape)
        return target, valid.astype(np.float64)
    if label.ndim == ndim - 1:  # binary mask without the size-1 class axis
        label = np.expand_dims(label, axis)
    label = np.broadcast_to(label, pred_shape)
    valid = np.ones(pred_shape, dtype=bool)
    if ignore_label is not None:
        valid &= label != ignore_label
    target = np.where(valid, label, 0.0)
    return target, valid.astype(np.float64)


def _expit(x):
    """sigmoid(x) without overflow and without rounding tiny values to 0."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _alpha_t(alpha, target, axis):
    if alpha is None:
        return np.ones_like(target)
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.ndim == 1:
        shape = [1] * target.ndim
        shape[axis % target.ndim] = alpha.size
        alpha = alpha.reshape(shape)
    return alpha * target + (1 - alpha) * (1 - target)


def elementwise(x, target, *, alpha, gamma, from_sigmoid, eps, axis):
    """Elementwise focal loss and its derivative w.r.t. x (float64)."""
    x = np.asarray(x, dtype=np.float64)
    t = target
    a_t = _alpha_t(alpha, t, axis)
    if from_sigmoid:
        inside = (x >= eps) & (x <= 1 - eps)
        p = np.clip(x, eps, 1 - eps)
        q = 1 - p
        ce = -(t * np.log(p) + (1 - t) * np.log(q))
        dce = -t / p + (1 - t) / q              # d ce / d p
        clip_grad = inside.astype(np.float64)
    else:
        p, q = _expit(x), _expit(-x)
        ce = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
        dp = p * q
    one_minus_pt = t * q + (1 - t) * p
    mod = one_minus_pt ** gamma
    if gamma == 0:
        dmod = np.zeros_like(x)
    else:
        with np.errstate(divide='ignore', invalid='ignore'):
            powm1 = np.where(one_minus_pt > 0, one_minus_pt ** (gamma - 1), 0.0)
        # d(1 - p_t)/dp = 1 - 2t
        dmod = gamma * powm1 * (1 - 2 * t)
    if from_sigmoid:
        grad = a_t * (dce * mod + ce * dmod) * clip_grad
    else:
        # (p - t) m + ce * dm/dp * p q, written without dividing by p q
        grad = a_t * ((p - t) * mod + ce * dmod * dp)
    return a_t * ce * mod, grad


def focal_loss(pred, label, *, label_mode, axis=-1, alpha=0.25, gamma=2.0,
               from_sigmoid=False, ignore_label=None, background_label=None,
               normalization='mean', sample_weight=None, weight=None,
               batch_axis=0, eps=1e-12, head_grad=None):
    """Return (loss, d(sum(loss * head_grad))/d pred) as float64 arrays."""
    pred = np.asarray(pred, dtype=np.float64)
    target, valid = dense_targets(pred.shape, label, axis=axis,
                                  label_mode=label_mode,
                                  ignore_label=ignore_label,
                                  background_label=background_label)
    elem, dx = elementwise(pred, target, alpha=alpha, gamma=gamma,
                           from_sigmoid=from_sigmoid, eps=eps, axis=axis)
    scale = valid
    if sample_weight is not None:
        scale = scale * np.asarray(sample_weight, dtype=np.float64)
    if weight is not None:
        scale = scale * weight
    scale = np.broadcast_to(scale, pred.shape)
    elem = elem * scale
    dx = dx * scale

    batch_axis = batch_axis % pred.ndim
    other = tuple(d for d in range(pred.ndim) if d != batch_axis)
    if normalization == 'none':
        loss, denom = elem, np.ones(pred.shape)
    else:
        loss = elem.sum(axis=other)
        shape = [1] * pred.ndim
        shape[batch_axis] = pred.shape[batch_axis]
        if normalization == 'sum':
            denom = np.ones(pred.shape[batch_axis])
        elif normalization == 'mean':
            denom = np.full(pred.shape[batch_axis],
                            float(np.prod([pred.shape[d] for d in other])))
        elif normalization == 'valid':
            denom = np.maximum(valid.sum(axis=other), 1.0)
        elif normalization == 'positive':
            denom = np.full(pred.shape[batch_axis],
                            max(float((target * valid).sum()), 1.0))
        else:
            raise ValueError(normalization)
        loss = loss / denom
        denom = np.broadcast_to(denom.reshape(shape), pred.shape)
    if head_grad is None:
        head_grad = np.ones(loss.shape)
    hg = np.asarray(head_grad, dtype=np.float64)
    if normalization != 'none':
        shape = [1] * pred.ndim
        shape[batch_axis] = pred.shape[batch_axis]
        hg = hg.reshape(shape)
    grad = dx / denom * hg
    return loss, grad
