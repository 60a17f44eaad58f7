"""Property-based tests: random layouts and options, every implementation
against the float64 numpy reference, plus the loss's order properties.

Hypothesis draws the *structure* of a case (rank, sizes, class axis, label
mode, alpha form, gamma, normalization, ignore fraction, dtype, ...) and a
seed; the values come from numpy with that seed, so each example is cheap.
Examples are derandomized (the same every run, CI-stable); set
FOCAL_HYPOTHESIS_RANDOM=1 to explore fresh examples locally, and
FOCAL_HYPOTHESIS_SCALE=10 for ten times as many. Pass
``--hypothesis-show-statistics`` to pytest to see how many examples ran.
"""
import os

import mxnet as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from mxnet import gluon

import gluon_focal
import reference
from hostile_helpers import IMPLS, not_softmax_like, require_impl
from test_focal_loss import run_loss

SETTINGS = dict(deadline=None, database=None,
                derandomize=not os.environ.get('FOCAL_HYPOTHESIS_RANDOM'),
                suppress_health_check=[HealthCheck.too_slow],
                # no 'explain' phase: it re-runs failing cases for a long time
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])


def examples(count):
    return max(1, int(count * float(os.environ.get('FOCAL_HYPOTHESIS_SCALE', '1'))))


# relative tolerance (scaled by the largest reference value) per input dtype;
# float16 inputs are rounded first, the loss itself runs in float32 and the
# outputs are rounded back to float16 (half an ulp is ~5e-4 relative)
TOLERANCE = {'float32': 1e-5, 'float16': 3e-3, 'float64': 1e-9}
# Known bug (see test_per_class_alpha_is_as_exact_as_scalar_alpha): per-class
# alphas are rounded to float32, so float64 losses with a per-class alpha are
# only float32-accurate. The random search tolerates that
# here (so that it keeps guarding everything else); the focused test fails.
FLOAT64_PER_CLASS_ALPHA_RTOL = 1e-5   # float32 accuracy: (1 - alpha) amplifies
NORMALIZATIONS = ['mean', 'sum', 'valid', 'positive', 'none']


@st.composite
def cases(draw, dtypes=('float32', 'float16', 'float64'), normalizations=NORMALIZATIONS,
          alpha_forms=('none', 'float', 'per-class'), sample_weight=True):
    """A dict describing one random, valid FocalLoss call."""
    ndim = draw(st.integers(2, 4))
    shape = draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim))
    mode = draw(st.sampled_from(['sparse', 'dense', 'binary']))
    class_axis = draw(st.integers(1, ndim - 1))           # axis 0 is the batch
    if mode == 'binary':
        shape[class_axis] = 1
    axis = class_axis if draw(st.booleans()) else class_axis - ndim   # 1 or -3 alike
    num_class = shape[class_axis]
    alpha_form = draw(st.sampled_from(alpha_forms))
    if alpha_form == 'float':
        alpha = draw(st.floats(0, 1))
    elif alpha_form == 'per-class':
        # at most 0.98: per-class alphas are rounded to float32 (a known bug,
        # test_per_class_alpha_is_as_exact_as_scalar_alpha), and 1 - alpha
        # loses ~6e-8 / (1 - alpha) relative, beyond tolerance close to 1
        alpha = draw(st.lists(st.floats(0, 0.98), min_size=num_class, max_size=num_class))
    else:
        alpha = None
    # subnormal gammas (< 2.2e-308) are a hostile input of their own
    # (test_hostile_inputs.py): MXNet refuses them as operator scalars
    gamma = draw(st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0]),
                           st.floats(0, 5, allow_subnormal=False)))
    ignore_fraction = draw(st.one_of(st.sampled_from([0.0, 0.2, 1.0]), st.floats(0, 1)))
    ignore_label = draw(st.sampled_from([-1.0, 255.0])) if ignore_fraction > 0 else None
    background = mode == 'sparse' and draw(st.booleans())
    return dict(
        shape=tuple(shape), mode=mode, axis=axis, alpha=alpha, gamma=gamma,
        normalization=draw(st.sampled_from(normalizations)),
        ignore_fraction=ignore_fraction, ignore_label=ignore_label,
        background_label=-2.0 if background else None,
        from_sigmoid=draw(st.booleans()),
        dtype=draw(st.sampled_from(dtypes)),
        # binary masks with or without pred's size-1 class axis
        binary_label_has_axis=draw(st.booleans()),
        logit_scale=draw(st.sampled_from([0.1, 3.0, 30.0])),
        sample_weight=sample_weight and draw(st.booleans()),
        hybridize=draw(st.booleans()),
        seed=draw(st.integers(0, 2 ** 31 - 1)))


def materialize(case):
    """(pred, label, sample_weight, head_grad) numpy arrays for ``case``; pred
    is already rounded to the case's dtype."""
    rng = np.random.RandomState(case['seed'])
    shape, mode = case['shape'], case['mode']
    class_axis = case['axis'] % len(shape)
    if case['from_sigmoid']:
        pred = not_softmax_like(rng.uniform(0.02, 0.98, shape), class_axis, mode == 'binary')
    else:
        pred = rng.normal(0, case['logit_scale'], shape)
    pred = pred.astype(case['dtype'])
    without_axis = tuple(s for i, s in enumerate(shape) if i != class_axis)
    if mode == 'sparse':
        label = rng.randint(0, shape[class_axis], without_axis).astype(np.float32)
        if case['background_label'] is not None:
            label[rng.rand(*without_axis) < 0.3] = case['background_label']
    elif mode == 'binary':
        label_shape = shape if case['binary_label_has_axis'] else without_axis
        label = (rng.rand(*label_shape) < 0.4).astype(np.float32)
    else:
        label = rng.rand(*shape).astype(np.float32)
        label[rng.rand(*shape) < 0.3] = 0
        label[rng.rand(*shape) < 0.2] = 1
    if case['ignore_label'] is not None:
        label[rng.rand(*label.shape) < case['ignore_fraction']] = case['ignore_label']
    sample_weight = None
    if case['sample_weight']:
        # broadcastable to pred: some axes kept, the others of size 1
        weight_shape = tuple(s if rng.rand() < 0.5 else 1 for s in shape)
        sample_weight = rng.uniform(0, 2, weight_shape).astype(case['dtype'])
    out_shape = shape if case['normalization'] == 'none' else (shape[0],)
    head_grad = rng.uniform(0.5, 1.5, out_shape).astype(case['dtype'])
    return pred, label, sample_weight, head_grad


def make_loss(case, impl, **overrides):
    kwargs = dict(axis=case['axis'], label_mode=case['mode'], alpha=case['alpha'],
                  gamma=case['gamma'], from_sigmoid=case['from_sigmoid'],
                  ignore_label=case['ignore_label'], background_label=case['background_label'],
                  normalization=case['normalization'], impl=impl)
    kwargs.update(overrides)
    loss_fn = gluon_focal.FocalLoss(**kwargs)
    if case['hybridize']:
        loss_fn.hybridize(static_alloc=True)
    return loss_fn


def reference_for(case, pred, label, sample_weight, head_grad, **overrides):
    kwargs = dict(label_mode=case['mode'], axis=case['axis'], alpha=case['alpha'],
                  gamma=case['gamma'], from_sigmoid=case['from_sigmoid'],
                  ignore_label=case['ignore_label'], background_label=case['background_label'],
                  normalization=case['normalization'], sample_weight=sample_weight,
                  head_grad=head_grad)
    kwargs.update(overrides)
    return reference.focal_loss(pred, label, **kwargs)


def close(actual, expected, rtol, what, floor=1e-6):
    """assert_close, with the absolute tolerance floored at rtol * floor:
    when every value is tiny (saturated logits, gradients ~1e-23) the float64
    reference itself rounds sigmoid(x) to 1 and reports 0 where the library
    gives the exact -1e-23; float16 outputs below 6e-5 are subnormal, spaced
    6e-8 apart."""
    scale = max(np.abs(expected).max(initial=0), floor)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


@pytest.mark.parametrize('impl', IMPLS)
@settings(max_examples=examples(500), **SETTINGS)
@given(case=cases())
def test_every_implementation_matches_the_reference(impl, case):
    require_impl(impl)
    pred, label, sample_weight, head_grad = materialize(case)
    loss, grad = run_loss(make_loss(case, impl), pred, label, head_grad, sample_weight,
                          dtype=case['dtype'])
    ref_loss, ref_grad = reference_for(case, pred, label, sample_weight, head_grad)
    assert loss.shape == ref_loss.shape
    assert grad.shape == pred.shape
    rtol = TOLERANCE[case['dtype']]
    if case['dtype'] == 'float64' and isinstance(case['alpha'], list):
        rtol = FLOAT64_PER_CLASS_ALPHA_RTOL
    floor = 1e-4 if case['dtype'] == 'float16' else 1e-6
    close(loss, ref_loss, rtol, 'loss %r' % (case,), floor)
    close(grad, ref_grad, rtol, 'grad %r' % (case,), floor)


@pytest.mark.parametrize('impl', IMPLS)
@settings(max_examples=examples(150), **SETTINGS)
@given(case=cases(dtypes=('float32', 'float64')))
def test_loss_is_never_negative(impl, case):
    require_impl(impl)
    pred, label, sample_weight, _ = materialize(case)
    loss, _ = run_loss(make_loss(case, impl), pred, label, None, sample_weight,
                       dtype=case['dtype'])
    assert np.all(np.isfinite(loss)), case
    assert np.all(loss >= 0), (loss.min(), case)


@pytest.mark.parametrize('impl', IMPLS)
@settings(max_examples=examples(150), **SETTINGS)
@given(case=cases(dtypes=('float32', 'float64'), normalizations=('none',),
                  sample_weight=False))
def test_focal_loss_is_at_most_the_matching_bce(impl, case):
    """(1 - p_t)^gamma <= 1, so FL(gamma) <= FL(0) with the same alpha,
    elementwise; FL(0) with alpha=None is binary cross-entropy."""
    require_impl(impl)
    pred, label, _, _ = materialize(case)
    focal, _ = run_loss(make_loss(case, impl), pred, label, dtype=case['dtype'])
    bce, _ = run_loss(make_loss(case, impl, gamma=0.0), pred, label, dtype=case['dtype'])
    slack = 1e-5 * np.abs(bce) + 1e-30
    assert np.all(focal <= bce + slack), (np.max(focal - bce), case)
    if case['alpha'] is None and case['mode'] != 'sparse' and case['ignore_label'] is None \
            and not case['from_sigmoid']:
        # and gamma=0, alpha=None is exactly Gluon's SigmoidBCELoss (which
        # averages over the non-batch axes; its softrelu loses ~1e-6 absolute)
        gluon_bce = gluon.loss.SigmoidBCELoss()(
            mx.nd.array(pred, dtype=case['dtype']),
            mx.nd.array(label.reshape(pred.shape), dtype=case['dtype'])).asnumpy()
        own = bce.reshape(pred.shape[0], -1).mean(axis=1)
        np.testing.assert_allclose(own, gluon_bce, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('impl', IMPLS)
@settings(max_examples=examples(150), **SETTINGS)
@given(case=cases(dtypes=('float32', 'float64'), normalizations=('none',),
                  sample_weight=False),
       gammas=st.lists(st.floats(0, 6, allow_subnormal=False), min_size=2, max_size=4))
def test_loss_does_not_increase_with_gamma(impl, case, gammas):
    require_impl(impl)
    pred, label, _, _ = materialize(case)
    losses = [run_loss(make_loss(case, impl, gamma=g), pred, label, dtype=case['dtype'])[0]
              for g in sorted(gammas)]
    for low_gamma, high_gamma, lower, higher in zip(sorted(gammas), sorted(gammas)[1:],
                                                   losses, losses[1:]):
        slack = 1e-5 * np.abs(lower) + 1e-30
        assert np.all(higher <= lower + slack), (low_gamma, high_gamma,
                                                 np.max(higher - lower), case)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('dtype,alpha', [('float32', 0.9999999), ('float32', 0.999),
                                         ('float64', 0.1), ('float64', 0.7)])
def test_per_class_alpha_is_as_exact_as_scalar_alpha(impl, dtype, alpha):
    """BUG: FocalLoss rounds a per-class alpha to float32 (``_check_alpha``
    returns ``values.astype(np.float32)``; the composite graph gets a float32
    constant, the kernel the attribute string of those float32 values), and
    then computes 1 - alpha from the rounded value. A scalar alpha is kept
    as a Python float. So per-class alpha=[0.9999999] weighs negatives by
    float32(1 - float32(0.9999999)) = 1.19e-7 instead of 1e-7 (19 % off, in
    float32), 0.999 is 6e-5 off, and in float64 alpha=[0.1] becomes
    0.10000000149. A per-class alpha must give what the same scalar gives
    (up to the dtype's own rounding)."""
    require_impl(impl)
    rng = np.random.RandomState(11)
    pred = rng.normal(0, 2, (3, 4))
    label = (rng.rand(3, 4) < 0.5).astype(np.float32)
    rtol = 1e-12 if dtype == 'float64' else 2e-6
    ref = reference.focal_loss(pred.astype(dtype), label, label_mode='dense', alpha=alpha)
    scalar = run_loss(gluon_focal.FocalLoss(label_mode='dense', alpha=alpha, impl=impl),
                      pred, label, dtype=dtype)
    per_class = run_loss(gluon_focal.FocalLoss(label_mode='dense', alpha=[alpha] * 4,
                                               impl=impl), pred, label, dtype=dtype)
    np.testing.assert_allclose(scalar[0], ref[0], rtol=rtol, err_msg='scalar alpha')
    np.testing.assert_allclose(per_class[0], ref[0], rtol=rtol,
                               err_msg='per-class alpha=[%r] * 4 in %s' % (alpha, dtype))
    np.testing.assert_allclose(per_class[1], ref[1], rtol=rtol, atol=rtol * 1e-3,
                               err_msg='per-class alpha=[%r] * 4 in %s' % (alpha, dtype))
