"""A catalogue of bad and extreme inputs, each with its documented outcome.

Every row of CATALOGUE is one hostile input and what FocalLoss must do with
it, for both implementations: raise a clear error (type and message checked
with a regex), or return documented values (NaN in, NaN out; a +inf logit on
the right side gives loss 0, on the wrong side loss +inf, never NaN where the
math is finite; ...).

All rows run in child interpreters (one per implementation, restarted after a
crash), so that a segfault or a hang in the fused C++ kernel fails its row
instead of killing the test run: a per-row watchdog (faulthandler) ends a
child stuck for CASE_TIMEOUT seconds, and the row is reported as a hang.

Decisions recorded here (where the README says nothing):

* integer ``pred`` (int32/int64/uint8): logits are real numbers; the composite
  graph silently computes in integers (loss 0, gradient 0) and the fused kernel
  fails in type inference, so the decided outcome is a ValueError naming the
  dtype. float16/float32/float64 ``pred`` work; labels may be any numeric dtype.
* empty inputs (batch 0, a zero-size class or spatial axis): MXNet 1.x's
  legacy shape semantics cannot run operators on them (0 means "unknown"), so
  the decided outcome is a ValueError naming pred's shape, instead of an
  MXNetError from shape inference deep in the graph (or a hang).
* NaN logits: NaN loss for the samples (elements with 'none') that contain
  them, finite values elsewhere. Not an error: checking values would need a
  device-to-host copy on every call.
* +/-inf logits: by the limit. x = +inf with target 1 (or -inf with target 0)
  has loss 0 and gradient 0; x = +inf with target 0 (or -inf with target 1,
  or a soft target) has loss +inf. Only the loss is checked there: its
  gradient's limit is finite (1 - alpha) but the loss is already infinite.
* inf/NaN logits at ignored positions contribute nothing (README:
  ignore_label "contributes nothing"), so the loss stays finite.
* subnormal scalars (~1e-310): gamma and weight are valid finite numbers and
  must work like their neighbours (gamma=1e-310 is gamma=0 in every float
  format); a subnormal ignore_label/background_label may work or be refused
  with a ValueError naming it, but not fail inside MXNet.
"""
import faulthandler
import json
import os
import re
from collections import namedtuple

import numpy as np
import pytest

import reference
from hostile_helpers import IMPLS, describe_returncode, require_impl, run_python

CASE_TIMEOUT = 10      # seconds a single row may take in the child before it counts as a hang

HERE = os.path.dirname(os.path.abspath(__file__))
nan, inf = float('nan'), float('inf')


# --- expected outcomes ------------------------------------------------------------------------

class Raises(namedtuple('Raises', 'types pattern')):
    """A clear error: one of ``types`` (names), message matching ``pattern``."""

    def describe(self):
        return 'raises %s /%s/' % ('|'.join(self.types), self.pattern)

    def check(self, case, outcome):
        assert outcome['kind'] == 'error', 'expected %s, got %s' % (self.describe(),
                                                                   _show(outcome))
        assert outcome['type'] in self.types, 'expected %s, got %s' % (self.describe(),
                                                                      _show(outcome))
        assert re.search(self.pattern, outcome['message'], re.S), \
            'message does not match /%s/: %s' % (self.pattern, outcome['message'])


def value_error(pattern):
    return Raises(('ValueError',), pattern)


class Values(namedtuple('Values', 'note predicate')):
    """Runs; ``predicate(loss, grad)`` holds (grad is None for forward-only rows)."""

    def describe(self):
        return self.note

    def check(self, case, outcome):
        assert outcome['kind'] == 'ok', 'expected %s, got %s' % (self.note, _show(outcome))
        loss = np.array(outcome['loss'], dtype=np.float64)
        grad = None if outcome['grad'] is None else np.array(outcome['grad'], dtype=np.float64)
        try:
            self.predicate(loss, grad)
        except AssertionError as err:
            raise AssertionError('%s: %s\nloss=%s\ngrad=%s' % (self.note, err, loss, grad))


class MatchesReference(namedtuple('MatchesReference', 'note rtol ref_kwargs')):
    """Runs and matches the float64 reference (optionally with other kwargs)."""

    def describe(self):
        return self.note

    def check(self, case, outcome):
        assert outcome['kind'] == 'ok', 'expected %s, got %s' % (self.note, _show(outcome))
        kwargs = dict(case.kwargs)
        kwargs.update(self.ref_kwargs)
        for key in ('num_class', 'impl', 'eps'):
            kwargs.pop(key, None)
        ref_loss, ref_grad = reference.focal_loss(case.pred.astype(case.dtype), case.label,
                                                  **kwargs)
        assert outcome['dtype'] == case.dtype, 'output dtype %s, expected %s' % (
            outcome['dtype'], case.dtype)
        loss = np.array(outcome['loss'], dtype=np.float64)
        scale = max(np.abs(ref_loss).max(initial=0), 1e-6)
        np.testing.assert_allclose(loss, ref_loss, rtol=self.rtol, atol=self.rtol * scale,
                                   err_msg=self.note)
        if outcome['grad'] is not None:
            grad = np.array(outcome['grad'], dtype=np.float64)
            scale = max(np.abs(ref_grad).max(initial=0), 1e-6)
            np.testing.assert_allclose(grad, ref_grad, rtol=self.rtol,
                                       atol=self.rtol * scale, err_msg=self.note)


class OneOf(namedtuple('OneOf', 'choices')):
    """Any one of several acceptable outcomes."""

    def describe(self):
        return ' OR '.join(c.describe() for c in self.choices)

    def check(self, case, outcome):
        failures = []
        for choice in self.choices:
            try:
                choice.check(case, outcome)
                return
            except AssertionError as err:
                failures.append(str(err))
        raise AssertionError('none of the acceptable outcomes (%s): %s'
                             % (self.describe(), ' / '.join(failures)))


def matches_reference(note='matches the float64 reference', rtol=1e-5, **ref_kwargs):
    return MatchesReference(note, rtol, ref_kwargs)


def _show(outcome):
    if outcome['kind'] == 'error':
        return '%s: %s' % (outcome['type'], outcome['message'][:1500])
    if outcome['kind'] == 'ok':
        return 'no error, loss=%s' % (outcome['loss'],)
    return '%s: %s' % (outcome['kind'], outcome.get('detail', ''))


# value checks -------------------------------------------------------------------------------

def _zero_loss_zero_grad(loss, grad):
    assert not np.isnan(loss).any(), 'NaN loss where the limit is 0'
    np.testing.assert_array_equal(loss, 0)
    assert grad is not None and not np.isnan(grad).any(), 'NaN gradient where the limit is 0'
    np.testing.assert_allclose(grad, 0, atol=1e-30)


def _infinite_loss(loss, grad):
    assert not np.isnan(loss).any(), 'NaN loss where the limit is +inf'
    assert np.all(np.isposinf(loss)), 'expected +inf'


def _nan_in_first_sample_only(loss, grad):
    assert np.isnan(loss[0]).all(), 'NaN logit must give a NaN loss for its sample'
    assert np.isfinite(loss[1:]).all(), 'other samples must stay finite'


def _nan_elementwise_only(loss, grad):
    assert np.isnan(loss[0, 0]), 'NaN logit must give a NaN loss element'
    assert np.isfinite(np.delete(loss.ravel(), 0)).all(), 'other elements must stay finite'
    assert np.isnan(grad[0, 0]) and np.isfinite(np.delete(grad.ravel(), 0)).all()


def _finite(loss, grad):
    assert np.isfinite(loss).all(), 'loss not finite'
    assert grad is None or np.isfinite(grad).all(), 'gradient not finite'


def _finite_and_tiny(loss, grad):
    _finite(loss, grad)
    assert np.all(np.abs(loss) < 1e-30)


# --- the catalogue ----------------------------------------------------------------------------

Case = namedtuple('Case', 'id kwargs pred dtype label label_dtype expect hybridize backward '
                          'sample_weight')


def case(id, kwargs, pred, label, expect, dtype='float32', label_dtype='float32',
         hybridize=False, backward=True, sample_weight=None):
    return Case(id, kwargs, np.asarray(pred, dtype=np.float64), dtype,
                np.asarray(label, dtype=np.float64), label_dtype, expect, hybridize, backward,
                sample_weight)


P23 = np.array([[0.5, -1.0, 2.0], [-0.3, 0.8, -2.0]])     # logits, batch 2 x 3 classes
SPARSE = dict(label_mode='sparse')
DENSE_NONE = dict(label_mode='dense', normalization='none')
NDARRAY_NEEDED = Raises(('TypeError', 'ValueError', 'AssertionError'), 'NDArray')


def _expected_for_empty(shape):
    return value_error(re.escape(str(shape)))


CATALOGUE = [
    # --- arguments --------------------------------------------------------------------------
    case('gamma=-1', dict(gamma=-1), P23, [0, 1], value_error(r'gamma=-1 must be a finite '
                                                              r'number >= 0')),
    case('gamma=nan', dict(gamma=nan), P23, [0, 1], value_error(r'gamma=nan must be')),
    case('gamma=inf', dict(gamma=inf), P23, [0, 1], value_error(r'gamma=inf must be')),
    case('gamma=-inf', dict(gamma=-inf), P23, [0, 1], value_error(r'gamma=-inf must be')),
    case('gamma-is-string', dict(gamma='2'), P23, [0, 1], value_error(r"gamma='2' must be")),
    case('gamma-is-bool', dict(gamma=True), P23, [0, 1], value_error(r'gamma=True must be')),
    case('gamma=1e-310-subnormal', dict(SPARSE, gamma=1e-310), P23, [0, 1],
         matches_reference('a subnormal gamma works like gamma=0')),
    case('alpha=1.5', dict(alpha=1.5), P23, [0, 1], value_error(r'alpha=1.5 must be in \[0, 1\]')),
    case('alpha=-0.1', dict(alpha=-0.1), P23, [0, 1], value_error(r'alpha=-0.1 must be in')),
    case('alpha=nan', dict(alpha=nan), P23, [0, 1], value_error(r'alpha=nan must be in')),
    case('alpha=inf', dict(alpha=inf), P23, [0, 1], value_error(r'alpha=inf must be in')),
    case('alpha-per-class-with-nan', dict(alpha=[0.2, nan, 0.3]), P23, [0, 1],
         value_error(r'alpha values must be in \[0, 1\]')),
    case('alpha-per-class-above-1', dict(alpha=[0.2, 1.01, 0.3]), P23, [0, 1],
         value_error(r'alpha values must be in \[0, 1\]; got \[0.2, 1.01, 0.3\]')),
    case('alpha-empty-list', dict(alpha=[]), P23, [0, 1],
         value_error(r'alpha must be a float in \[0, 1\], a 1-D sequence')),
    case('alpha-2d-list', dict(alpha=[[0.1, 0.2, 0.3]]), P23, [0, 1],
         value_error(r'1-D sequence with one value per class')),
    case('alpha-is-string', dict(alpha='0.25'), P23, [0, 1], value_error(r'1-D sequence')),
    case('alpha-2-values-num_class=3', dict(alpha=[0.1, 0.2], num_class=3), P23, [0, 1],
         value_error(r'alpha has 2 per-class values but num_class=3')),
    case('alpha-2-values-pred-3-classes', dict(alpha=[0.1, 0.2]), P23, [0, 1],
         value_error(r'alpha has 2 per-class values but pred.shape\[axis=1\] is 3')),
    case('num_class=0', dict(num_class=0), P23, [0, 1], value_error(r'num_class=0 must be a '
                                                                    r'positive integer')),
    case('num_class=-3', dict(num_class=-3), P23, [0, 1], value_error(r'num_class=-3 must be')),
    case('num_class=2.5', dict(num_class=2.5), P23, [0, 1], value_error(r'num_class=2.5 must')),
    case('num_class=True', dict(num_class=True), P23, [0, 1], value_error(r'num_class=True')),
    case('num_class=4-pred-3-classes', dict(num_class=4), P23, [0, 1],
         value_error(r'num_class=4 but pred.shape\[axis=1\] is 3 \(pred shape \(2, 3\)\)')),
    case('axis=1.5', dict(axis=1.5), P23, [0, 1], value_error(r'axis=1.5 must be an integer')),
    case('axis=2-pred-2d', dict(axis=2), P23, [0, 1],
         value_error(r'axis=2 is out of range for pred with 2 dimensions')),
    case('axis=-3-pred-2d', dict(axis=-3), P23, [0, 1], value_error(r'axis=-3 is out of range')),
    case('eps=0.5', dict(eps=0.5), P23, [0, 1], value_error(r'eps=0.5 must be in \[0, 0.5\)')),
    case('eps=-1e-3', dict(eps=-1e-3), P23, [0, 1], value_error(r'eps=-0.001 must be in')),
    case('eps=nan', dict(eps=nan), P23, [0, 1], value_error(r'eps=nan must be in')),
    case('ignore_label=nan', dict(ignore_label=nan), P23, [0, 1],
         value_error(r'ignore_label=nan must be a finite number or None')),
    case('ignore_label=inf', dict(ignore_label=inf), P23, [0, 1],
         value_error(r'ignore_label=inf must be a finite number')),
    case('ignore_label-is-string', dict(ignore_label='void'), P23, [0, 1],
         value_error(r"ignore_label='void' must be a finite number")),
    case('ignore_label=1e-310-subnormal', dict(SPARSE, ignore_label=1e-310), P23, [0, 1],
         OneOf((matches_reference('a subnormal ignore_label works (matches no label here)'),
                value_error(r'ignore_label=1e-310')))),
    case('background_label-with-dense-labels', dict(label_mode='dense', background_label=0),
         P23, np.zeros((2, 3)), value_error(r'background_label applies to sparse labels only')),
    case('background_label=1e-310-subnormal', dict(SPARSE, background_label=1e-310), P23,
         [0, 1], OneOf((matches_reference('a subnormal background_label works'),
                        value_error(r'background_label=1e-310')))),
    case('weight=1e-310-subnormal', dict(SPARSE, weight=1e-310), P23, [0, 1],
         Values('a subnormal weight gives a (nearly) zero loss', _finite_and_tiny)),
    case('label_mode=onehot', dict(label_mode='onehot'), P23, [0, 1],
         value_error(r"label_mode='onehot' is not one of")),
    case('normalization=batch', dict(normalization='batch'), P23, [0, 1],
         value_error(r"normalization='batch' is not one of")),

    # --- shapes -----------------------------------------------------------------------------
    case('NCHW-pred-NHW-label-default-axis', dict(), np.zeros((2, 3, 4, 4)), np.zeros((2, 4, 4)),
         value_error(r'label shape \(2, 4, 4\) does not fit pred shape \(2, 3, 4, 4\) with '
                     r'axis=-1.*did you mean axis=1\?')),
    case('label-with-extra-axis', dict(), P23, np.zeros((2, 3, 1)),
         value_error(r'label shape \(2, 3, 1\) does not fit pred shape \(2, 3\)')),
    case('label-batch-3-pred-batch-2', dict(SPARSE), P23, [0, 1, 2],
         value_error(r'label shape \(3,\) does not fit pred shape \(2, 3\)')),
    case('dense-label-transposed', dict(label_mode='dense'), P23, np.zeros((3, 2)),
         value_error(r"expected pred's shape \(2, 3\)")),
    case('sparse-label-with-class-axis', dict(SPARSE), P23, np.zeros((2, 3)),
         value_error(r"expected pred's shape without the class axis, \(2,\)")),
    case('binary-mask-for-3-classes', dict(label_mode='binary'), P23, [0, 1],
         value_error(r'when the class axis has size 1')),
    case('pred-0-dimensional', dict(label_mode='dense'), np.array(0.5), np.array(1.0),
         value_error(r'pred must have at least one dimension, got shape \(\)'), backward=False),
    case('sample_weight-not-broadcastable', dict(SPARSE), P23, [0, 1],
         value_error(r'sample_weight shape \(2, 4\) does not broadcast to pred shape \(2, 3\)'),
         sample_weight=np.ones((2, 4))),
    case('sample_weight-larger-than-pred', dict(SPARSE), P23, [0, 1],
         value_error(r'sample_weight shape \(2, 2, 3\) would enlarge pred shape \(2, 3\)'),
         sample_weight=np.ones((2, 2, 3))),

    # --- label values -----------------------------------------------------------------------
    case('sparse-label=C', dict(SPARSE), P23, [0, 3],
         value_error(r'label has 1 value\(s\) outside the sparse label mode, e.g. \[3.0\]; '
                     r'expected integer class indices in \[0, 3\)')),
    case('sparse-label=-1-without-ignore_label', dict(SPARSE), P23, [-1, 0],
         value_error(r'e.g. \[-1.0\]; expected integer class indices')),
    case('sparse-label=1.5', dict(SPARSE), P23, [1.5, 0], value_error(r'e.g. \[1.5\]')),
    case('sparse-label=nan', dict(SPARSE), P23, [nan, 0], value_error(r'e.g. \[nan\]')),
    case('sparse-label=inf', dict(SPARSE), P23, [inf, 0], value_error(r'e.g. \[inf\]')),
    case('sparse-label=3e9', dict(SPARSE), P23, [3e9, 0], value_error(r'e.g. \[3000000000.0\]')),
    case('sparse-label=-2-ignore_label=-1', dict(SPARSE, ignore_label=-1), P23, [-2, 0],
         value_error(r'e.g. \[-2.0\].*or ignore_label=-1')),
    case('dense-label=2', dict(label_mode='dense'), P23, [[0, 2, 0], [0, 0, 1]],
         value_error(r'outside the dense label mode, e.g. \[2.0\]; expected targets in '
                     r'\[0, 1\]')),
    case('dense-label=-0.5', dict(label_mode='dense'), P23, [[0, -0.5, 0], [0, 0, 1]],
         value_error(r'e.g. \[-0.5\]')),
    case('dense-label=nan', dict(label_mode='dense'), P23, [[0, nan, 0], [0, 0, 1]],
         value_error(r'e.g. \[nan\]')),
    case('binary-mask=255', dict(label_mode='binary'), P23[:, :1], [0, 255],
         value_error(r'expected binary mask values 0 or 1 \(divide 0/255 masks by 255\)')),
    case('binary-mask=nan', dict(label_mode='binary'), P23[:, :1], [0, nan],
         value_error(r'e.g. \[nan\]')),
    # hybridized graphs check values too: the composite path on the host (ValueError), the
    # fused kernel itself (MXNetError at the next sync)
    case('hybridized-sparse-label=7', dict(SPARSE), P23, [0, 7], {
        'fused': Raises(('MXNetError',),
                        r'gluon_focal_loss: .*label value 7 at (label )?position \(1,\)'),
        'composite': value_error(r'label value 7 at position \(1,\)')}, hybridize=True),
    case('hybridized-sparse-label=-5', dict(SPARSE), P23, [0, -5], {
        'fused': Raises(('MXNetError',),
                        r'gluon_focal_loss: .*label value -5 at (label )?position \(1,\)'),
        'composite': value_error(r'label value -5 at position \(1,\)')}, hybridize=True),
    case('hybridized-sparse-label=nan', dict(SPARSE), P23, [0, nan], {
        'fused': Raises(('MXNetError',),
                        r'gluon_focal_loss: .*label value nan at (label )?position \(1,\)'),
        'composite': value_error(r'label value nan at position \(1,\)')}, hybridize=True),
    case('hybridized-sparse-label=3e9', dict(SPARSE), P23, [0, 3e9], {
        'fused': Raises(('MXNetError',),
                        r'gluon_focal_loss: .*label value 3000000000 at (label )?position \(1,\)'),
        'composite': value_error(r'label value 3000000000 at position \(1,\)')}, hybridize=True),
    case('numpy-label', dict(SPARSE), P23, [0, 1], NDARRAY_NEEDED, label_dtype='numpy'),

    # --- dtypes -----------------------------------------------------------------------------
    case('float64-pred', dict(SPARSE), P23, [0, 1], matches_reference(rtol=1e-10),
         dtype='float64'),
    case('float16-pred', dict(SPARSE), P23, [0, 1], matches_reference(rtol=3e-3),
         dtype='float16'),
    case('int32-pred', dict(SPARSE), [[1, -2, 0], [3, 0, -1]], [0, 1],
         value_error(r'pred.*int32.*float'), dtype='int32'),
    case('int64-pred', dict(SPARSE), [[1, -2, 0], [3, 0, -1]], [0, 1],
         value_error(r'pred.*int64.*float'), dtype='int64'),
    case('uint8-pred', dict(SPARSE), [[1, 2, 0], [3, 0, 1]], [0, 1],
         value_error(r'pred.*uint8.*float'), dtype='uint8'),
    case('int32-sparse-labels', dict(SPARSE), P23, [2, 0], matches_reference(),
         label_dtype='int32'),
    case('int64-sparse-labels', dict(SPARSE), P23, [2, 0], matches_reference(),
         label_dtype='int64'),
    case('uint8-binary-mask', dict(label_mode='binary'), P23[:, :1], [1, 0],
         matches_reference(), label_dtype='uint8'),
    case('float64-dense-labels', dict(label_mode='dense'), P23, [[0, 0.25, 1], [1, 0, 0]],
         matches_reference(), label_dtype='float64'),
    case('float16-labels-float32-pred', dict(SPARSE), P23, [2, 0], matches_reference(),
         label_dtype='float16'),

    # --- empty inputs -----------------------------------------------------------------------
    case('batch-0-sparse', dict(SPARSE), np.zeros((0, 5)), np.zeros((0,)),
         _expected_for_empty((0, 5)), backward=False),
    case('batch-0-dense-none', dict(DENSE_NONE), np.zeros((0, 5)), np.zeros((0, 5)),
         _expected_for_empty((0, 5)), backward=False),
    case('batch-0-hybridized', dict(SPARSE), np.zeros((0, 5)), np.zeros((0,)),
         _expected_for_empty((0, 5)), backward=False, hybridize=True),
    case('class-axis-0-dense', dict(label_mode='dense'), np.zeros((2, 0)), np.zeros((2, 0)),
         _expected_for_empty((2, 0)), backward=False),
    case('class-axis-0-sparse', dict(SPARSE), np.zeros((2, 0)), np.zeros((2,)),
         value_error(r'\(2, 0\)|\[0, 0\)'), backward=False),
    case('class-axis-0-sparse-hybridized', dict(SPARSE), np.zeros((2, 0)), np.zeros((2,)),
         value_error(r'\(2, 0\)|\[0, 0\)'), backward=False, hybridize=True),
    case('spatial-axis-0-NCHW', dict(SPARSE, axis=1), np.zeros((2, 3, 0, 4)),
         np.zeros((2, 0, 4)), _expected_for_empty((2, 3, 0, 4)), backward=False),

    # --- NaN / Inf logits -------------------------------------------------------------------
    case('nan-logit-elementwise', dict(DENSE_NONE), [[nan, 1.0], [0.5, -1]], [[1, 0], [0, 1]],
         Values('NaN loss and gradient at that element only', _nan_elementwise_only)),
    case('nan-logit-mean', dict(label_mode='dense'), [[nan, 1.0], [0.5, -1]], [[1, 0], [0, 1]],
         Values("NaN loss for that sample only", _nan_in_first_sample_only)),
    case('nan-logit-sparse-positive', dict(SPARSE, normalization='positive'),
         [[nan, 1.0, 0], [0.5, -1, 2]], [1, 0],
         Values("NaN loss for that sample only", _nan_in_first_sample_only)),
    case('+inf-logit-target-1', dict(DENSE_NONE), [[inf]], [[1]],
         Values('loss 0, gradient 0 (the limit)', _zero_loss_zero_grad)),
    case('-inf-logit-target-0', dict(DENSE_NONE), [[-inf]], [[0]],
         Values('loss 0, gradient 0 (the limit)', _zero_loss_zero_grad)),
    case('+inf-logit-target-1-gamma=0', dict(DENSE_NONE, gamma=0), [[inf]], [[1]],
         Values('loss 0, gradient 0 (the limit)', _zero_loss_zero_grad)),
    case('+inf-logit-target-1-gamma=0.5', dict(DENSE_NONE, gamma=0.5), [[inf]], [[1]],
         Values('loss 0, gradient 0 (the limit)', _zero_loss_zero_grad)),
    case('+-inf-logits-sparse-right-class', dict(SPARSE, normalization='none'),
         [[inf, -inf, -inf]], [0], Values('loss 0, gradient 0', _zero_loss_zero_grad)),
    case('+inf-logit-target-0', dict(DENSE_NONE), [[inf]], [[0]],
         Values('loss +inf, not NaN', _infinite_loss)),
    case('-inf-logit-target-1', dict(DENSE_NONE), [[-inf]], [[1]],
         Values('loss +inf, not NaN', _infinite_loss)),
    case('+inf-logit-soft-target-0.5', dict(DENSE_NONE), [[inf]], [[0.5]],
         Values('loss +inf, not NaN', _infinite_loss)),
    case('float16-overflowed-logits-right-class', dict(SPARSE, normalization='none'),
         [[inf, -inf]], [0], Values('loss 0, gradient 0', _zero_loss_zero_grad),
         dtype='float16'),
    case('inf-logit-at-ignored-element', dict(label_mode='dense', ignore_label=-1),
         [[inf, 1.0]], [[-1, 0]], matches_reference(
             'ignored elements contribute nothing: same as a 0 logit there',
             pred_override=[[0.0, 1.0]])),
    case('nan-logit-at-ignored-element', dict(label_mode='dense', ignore_label=-1),
         [[nan, 1.0]], [[-1, 0]], matches_reference(
             'ignored elements contribute nothing', pred_override=[[0.0, 1.0]])),
    case('inf-logits-at-ignored-position-sparse', dict(SPARSE, ignore_label=255),
         [[inf, -inf, nan], [0.5, -1, 2]], [255, 1], matches_reference(
             'ignored positions contribute nothing',
             pred_override=[[0.0, 0.0, 0.0], [0.5, -1, 2]])),
    case('probabilities-exactly-0-and-1', dict(DENSE_NONE, from_sigmoid=True),
         [[0.0, 1.0, 0.0, 1.0]], [[0, 1, 1, 0]],
         Values('clipped to [eps, 1 - eps]: finite loss and gradient', _finite)),
    case('probabilities-with-nan', dict(label_mode='dense', from_sigmoid=True),
         [[nan, 0.5]], [[0, 1]],
         value_error(r'probabilities in \[0, 1\].*(?i:nan)')),
    case('probabilities-above-1', dict(label_mode='dense', from_sigmoid=True),
         [[1.5, 0.5]], [[0, 1]], value_error(r'probabilities in \[0, 1\].*max 1.5')),
    case('softmax-probabilities', dict(SPARSE, from_sigmoid=True),
         [[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]], [0, 1],
         value_error(r'looks like a softmax output')),
    case('binary-probabilities-summing-to-1-over-batch',
         dict(label_mode='binary', from_sigmoid=True), [[0.3], [0.7]], [0, 1],
         matches_reference('a batch of 2 binary probabilities is no softmax output')),
    case('nan-sample_weight', dict(SPARSE), P23, [0, 1],
         Values('NaN loss for that sample only', _nan_in_first_sample_only),
         sample_weight=np.array([[nan], [1.0]])),
]

assert len({c.id for c in CATALOGUE}) == len(CATALOGUE), 'duplicate catalogue ids'


def expectation(case, impl):
    return case.expect[impl] if isinstance(case.expect, dict) else case.expect


# --- running rows in a child interpreter ---------------------------------------------------

def execute(case, impl):
    """Run one row in this process; return a JSON-able outcome."""
    import mxnet as mx
    from mxnet import autograd

    import gluon_focal
    try:
        loss_fn = gluon_focal.FocalLoss(impl=impl, **case.kwargs)
        if case.hybridize:
            loss_fn.hybridize(static_alloc=True)
        pred = mx.nd.array(case.pred, dtype=case.dtype)
        label = (case.label if case.label_dtype == 'numpy'
                 else mx.nd.array(case.label, dtype=case.label_dtype))
        args = [pred, label]
        if case.sample_weight is not None:
            args.append(mx.nd.array(case.sample_weight, dtype=case.dtype))
        if case.backward:
            pred.attach_grad()
            with autograd.record():
                out = loss_fn(*args)
            out.backward()
            grad = pred.grad.asnumpy().astype(np.float64).tolist()
        else:
            out, grad = loss_fn(*args), None
        loss = out.asnumpy()
        outcome = {'kind': 'ok', 'loss': loss.astype(np.float64).tolist(), 'grad': grad,
                   'dtype': np.dtype(loss.dtype).name}
    except Exception as err:  # noqa: BLE001 - the outcome is the error
        outcome = {'kind': 'error', 'type': type(err).__name__, 'message': str(err)}
    try:
        # whatever this row left queued in MXNet's engine finishes here, so
        # that a hang is blamed on this row and not on the next one
        mx.nd.waitall()
    except Exception:  # noqa: BLE001 - an asynchronous error already reported
        pass
    return outcome


def child_main(impl, ids, results_path):
    """Entry point of the child interpreter: one JSON line before and after each row."""
    import warnings
    warnings.simplefilter('ignore')
    by_id = {c.id: c for c in CATALOGUE}
    with open(results_path, 'a') as out:
        for case_id in ids:
            out.write(json.dumps({'id': case_id, 'start': True}) + '\n')
            out.flush()
            faulthandler.dump_traceback_later(CASE_TIMEOUT, exit=True)
            outcome = execute(by_id[case_id], impl)
            faulthandler.cancel_dump_traceback_later()
            out.write(json.dumps({'id': case_id, 'outcome': outcome}) + '\n')
            out.flush()


CHILD = '''
import sys
sys.path.insert(0, sys.argv[1])
import test_hostile_inputs
test_hostile_inputs.child_main(sys.argv[2], sys.argv[3].split(','), sys.argv[4])
'''


def run_catalogue(impl, tmp_dir):
    """Outcome of every row for ``impl``; a crash or a hang ends the child, is
    recorded for the row it happened in, and a new child runs the rest."""
    outcomes = {}
    remaining = [c.id for c in CATALOGUE]
    for attempt in range(len(CATALOGUE)):
        if not remaining:
            break
        results_path = os.path.join(tmp_dir, '%s-%d.jsonl' % (impl, attempt))
        result = run_python(CHILD, HERE, impl, ','.join(remaining), results_path,
                            timeout=60 + CASE_TIMEOUT * 2 + 2 * len(remaining))
        started = None
        if os.path.exists(results_path):
            with open(results_path) as f:
                for line in f:
                    record = json.loads(line)
                    if 'outcome' in record:
                        outcomes[record['id']] = record['outcome']
                        started = None
                    else:
                        started = record['id']
        if started is None:
            if result.returncode != 0:   # died before its first row
                for case_id in remaining:
                    outcomes.setdefault(case_id, {
                        'kind': 'child failed', 'detail': '%s\n%s' % (
                            describe_returncode(result.returncode), result.stderr[-3000:])})
            break
        hang = 'Timeout (' in result.stderr
        outcomes[started] = {
            'kind': 'hang' if hang else 'crash',
            'detail': '%s after %s; stderr:\n%s' % (
                'no result within %d s' % CASE_TIMEOUT if hang else 'the child was '
                + describe_returncode(result.returncode), started, result.stderr[-3000:])}
        remaining = remaining[remaining.index(started) + 1:]
    return outcomes


@pytest.fixture(scope='module')
def catalogue_outcomes(tmp_path_factory):
    cache = {}

    def get(impl):
        if impl not in cache:
            cache[impl] = run_catalogue(impl, str(tmp_path_factory.mktemp('hostile-' + impl)))
        return cache[impl]
    return get


def _ref_pred_override(check):
    return check.ref_kwargs.get('pred_override') if isinstance(check, MatchesReference) \
        else None


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('row', CATALOGUE, ids=[c.id for c in CATALOGUE])
def test_hostile_input_has_its_documented_outcome(row, impl, catalogue_outcomes):
    require_impl(impl)
    outcome = catalogue_outcomes(impl).get(row.id, {'kind': 'missing', 'detail': ''})
    assert outcome['kind'] in ('ok', 'error'), \
        'the %s implementation did not survive %r: %s' % (impl, row.id, _show(outcome))
    check = expectation(row, impl)
    override = _ref_pred_override(check)
    if override is not None:
        # the reference is evaluated on finite stand-ins at the ignored places
        ref_kwargs = {k: v for k, v in check.ref_kwargs.items() if k != 'pred_override'}
        row = row._replace(pred=np.asarray(override, dtype=np.float64))
        check = check._replace(ref_kwargs=ref_kwargs)
    check.check(row, outcome)


ERROR_TWICE = '''
import sys, warnings
warnings.simplefilter('ignore')
import mxnet as mx, gluon_focal
assert gluon_focal.kernel.available(), gluon_focal.kernel.unavailable_reason()
loss_fn = gluon_focal.FocalLoss(label_mode='sparse', impl='fused')
loss_fn.hybridize()
for bad in (7, 9):
    try:
        loss_fn(mx.nd.zeros((2, 3)), mx.nd.array([0, bad])).asnumpy()
    except mx.base.MXNetError as err:
        print('ERROR %d: %s' % (bad, str(err).replace('\\n', ' | ')))
'''


def test_fused_label_error_names_only_the_current_error():
    """BUG (fused kernel): the extension-library error messages are never
    cleared, so every later error repeats all the earlier ones ("sparse label
    value 7 ..." shows up again in the error about value 9, first in the
    list), which misleads and grows without bound."""
    require_impl('fused')
    result = run_python(ERROR_TWICE, timeout=120)
    assert result.returncode == 0, describe_returncode(result.returncode) + result.stderr[-3000:]
    first, second = [line for line in result.stdout.splitlines() if line.startswith('ERROR')]
    assert 'sparse label value 7 ' in first
    assert 'sparse label value 9 ' in second
    assert 'value 7 ' not in second, 'the second error repeats the first: ' + second


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('hybridize', [False, True], ids=['imperative', 'hybridized'])
def test_grad_req_add_on_pred_accumulates(impl, hybridize):
    """pred with ``attach_grad(grad_req='add')`` (gradient accumulation over
    micro-batches) gets the sum of the gradients of two backward passes,
    imperative and hybridized. The fused operator itself always overwrites
    its input gradient (extension ops never see MXNet's req), so FocalLoss
    must route such inputs through ``grad_add`` (kernel.needs_grad_add)."""
    require_impl(impl)
    import mxnet as mx
    from mxnet import autograd

    import gluon_focal
    loss_fn = gluon_focal.FocalLoss(label_mode='sparse', impl=impl)
    if hybridize:
        loss_fn.hybridize()
    x = mx.nd.array(P23)
    x.attach_grad(grad_req='add')
    label = mx.nd.array([0, 2])
    grads = []
    for _ in range(2):
        with autograd.record():
            out = loss_fn(x, label)
        out.backward()
        grads.append(x.grad.asnumpy().copy())
    np.testing.assert_allclose(grads[1], 2 * grads[0], rtol=1e-6,
                               err_msg='second backward did not accumulate')


def describe_catalogue():
    """The catalogue as a text table: id, then the documented outcome."""
    lines = []
    for row in CATALOGUE:
        if isinstance(row.expect, dict):
            outcome = '; '.join('%s: %s' % (k, v.describe()) for k, v in row.expect.items())
        else:
            outcome = row.expect.describe()
        lines.append('%-42s %s' % (row.id, outcome))
    return '\n'.join(lines)


if __name__ == '__main__':      # python tests/test_hostile_inputs.py prints the table
    print(describe_catalogue())
