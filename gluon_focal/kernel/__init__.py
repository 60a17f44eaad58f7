"""Loader and Python front-end of the fused ``gluon_focal_loss`` operator.

The operator is a C++ MXNet extension library (``libgluon_focal_op.so``, built
from the sources next to this file by the package's setup.py or by
``python -m gluon_focal.kernel.build``).  :func:`load` registers it with MXNet
(``mx.nd.gluon_focal_loss`` / ``mx.sym.gluon_focal_loss``), and also
``gluon_focal_group_norm`` (MXNet's GroupNorm, fused; see :mod:`gluon_focal.nn`) and
``gluon_focal_multi_adam`` (MXNet's adam_update for many parameters in one call; see
:mod:`gluon_focal.optim`).

Operator contract (all attributes are strings; :func:`op_attrs` builds them):

=================  ===========================================================
``mode``           ``dense``: label has pred's shape, or pred's shape without
                   ``axis`` when that axis has size 1 (N x H x W masks for
                   N x 1 x H x W pred); targets in [0, 1].  ``binary``: the
                   same shapes, targets exactly 0 or 1.  ``sparse``: label has
                   pred's shape without ``axis``; values are class indices in
                   [0, C).  Labels may be float16/32/64, uint8, int8, int32,
                   int64.
``axis``           class axis (may be negative).
``batch_axis``     sample axis for the reductions (default 0).  Must precede
                   ``axis`` when normalization != none, except for dense
                   losses without per-class alpha (the class axis is then
                   irrelevant).
``gamma``          float >= 0 (0, 1, 2 have specialised kernels).
``alpha``          ``none`` | ``a`` | ``a0,a1,...`` (C values, per class).
                   a_t = a t + (1 - a)(1 - t).
``from_sigmoid``   ``0``: pred are logits (stable log-sigmoid form); ``1``:
                   pred are probabilities clipped to [eps, 1 - eps] (zero
                   gradient outside).
``eps``            clip epsilon, in [0, 0.5).
``ignore_label``   ``none`` | number.  dense: such elements give 0 loss/grad;
                   sparse: the whole position (all C classes) is ignored.
``background_label`` ``none`` | number (sparse only): valid position whose
                   targets are all 0.
``normalization``  ``none`` (elementwise, pred's shape), ``sum``, ``mean``
                   (sum / non-batch element count), ``valid`` (sum /
                   max(1, non-ignored elements of the sample)), ``positive``
                   (sum / max(1, sum over the whole batch of target*valid));
                   reduced outputs have shape (B,).
``scale``          multiplies the output (Gluon's ``weight``).
``validate``       ``1`` (default): every value the kernel reads is checked
                   and the first bad one, in array order, raises
                   ``MXNetError`` ("gluon_focal_loss: label value 255 at
                   position (0, 3, 4) is outside the binary label mode;
                   expected 0 or 1 (or ignore_label)"): sparse labels that
                   are not an integer in [0, C), dense targets outside
                   [0, 1], binary targets other than 0 and 1 (NaN included;
                   ignore_label and background_label excepted), and with
                   from_sigmoid=1 probabilities of counted elements outside
                   [0, 1].  ``0``: no checks (such values give unspecified
                   but finite results).
=================  ====================================================
Threads: default = MXNet's own operator thread count (see
:func:`default_num_threads`); override with ``GLUON_FOCAL_NUM_THREADS`` or
:func:`set_num_threads`.  Results are bit-identical for any thread count.

grad_req='add': MXNet's extension-library API does not pass ``req`` to
custom operators, so the raw op always *overwrites* the gradient buffer it is
given.  :func:`fused_focal_loss` therefore routes pred through MXNet's own
identity op when ``grad_add`` is true (MXNet then accumulates); by default it
does so for NDArrays with an attached gradient (:func:`needs_grad_add`).

Graphs exported with this operator need ``import gluon_focal`` (or
:func:`load`) before ``SymbolBlock.imports``.
"""
import ctypes
import os
import threading

__all__ = ['load', 'available', 'unavailable_reason', 'library_path', 'op_attrs',
           'fused_focal_loss', 'set_num_threads', 'get_num_threads',
           'default_num_threads', 'simd_level', 'cpu_simd_level', 'layout_problem',
           'needs_grad_add', 'choose_backend', 'runs_on', 'OP_NAME', 'GRAPH_NODE_NAME']

OP_NAME = 'gluon_focal_loss'
LIB_NAME = 'libgluon_focal_op.so'
GRAPH_NODE_NAME = 'focal_loss_needs_import_gluon_focal'

_HERE = os.path.dirname(os.path.abspath(__file__))
_lock = threading.Lock()
_state = {'loaded': False, 'reason': None, 'cdll': None, 'tried': False}

_NORMALIZATIONS = ('none', 'sum', 'mean', 'valid', 'positive')


def library_path():
    """Absolute path of the compiled operator library inside this package."""
    return os.path.join(_HERE, LIB_NAME)


def load():
    """Load the operator library (idempotent).  Returns True when available.

    Only the library next to this file is ever loaded (absolute path; never
    the working directory or an environment variable).  On failure the reason
    is kept for :func:`unavailable_reason` and an ``OSError``/``MXNetError``
    is raised.
    """
    with _lock:
        if _state['loaded']:
            return True
        path = library_path()
        _state['tried'] = True
        if not os.path.isfile(path):
            _state['reason'] = ("compiled operator %s not found (build it with "
                                "`python -m gluon_focal.kernel.build` or reinstall "
                                "gluon-focal with a C++ compiler available)" % path)
            raise OSError(_state['reason'])
        try:
            import mxnet as mx
            if hasattr(mx.nd, OP_NAME) and _state['cdll'] is None:
                # registered by someone else (e.g. another copy of the package)
                pass
            else:
                mx.library.load(path, verbose=False)
            _state['cdll'] = ctypes.CDLL(path)
        except Exception as err:  # pragma: no cover - depends on the machine
            _state['reason'] = 'loading %s failed: %s' % (path, err)
            raise
        for name in ('gluon_focal_simd_level', 'gluon_focal_cpu_simd_level',
                     'gluon_focal_limit_simd_level'):
            getattr(_state['cdll'], name).restype = ctypes.c_char_p
        _state['loaded'] = True
        _state['reason'] = None
        return True


def available():
    """True when the fused operator is (or can be) loaded."""
    if _state['loaded']:
        return True
    try:
        return load()
    except Exception:  # noqa: BLE001 - reason recorded in load()
        return False


def unavailable_reason():
    """Why the fused operator is unavailable, or None when it is available."""
    if available():
        return None
    return _state['reason']


def _lib():
    if not _state['loaded']:
        load()
    return _state['cdll']


def set_num_threads(n):
    """Threads used by the fused op (n <= 0 or None: back to the default)."""
    return int(_lib().gluon_focal_set_num_threads(int(n or 0)))


def get_num_threads():
    """Threads the fused op currently uses."""
    return int(_lib().gluon_focal_get_num_threads())


def default_num_threads():
    """The default thread count, computed like MXNet 1.9's own CPU operators
    (mxnet::engine::OpenMP::GetRecommendedOMPThreadCount):
    ``GLUON_FOCAL_NUM_THREADS`` if set; else ``OMP_NUM_THREADS`` if set; else
    min(cores, ``MXNET_OMP_MAX_THREADS``) if set; else cores // 2 on x86
    (at least 1), where cores honours the process CPU affinity."""
    return int(_lib().gluon_focal_default_num_threads())


SIMD_LEVELS = ('scalar', 'avx2', 'avx512')


def simd_level():
    """The loops in use: 'avx512', 'avx2' or 'scalar' (chosen at run time)."""
    return _lib().gluon_focal_simd_level().decode()


def cpu_simd_level():
    """The best loops this CPU runs: 'avx512', 'avx2' or 'scalar'."""
    return _lib().gluon_focal_cpu_simd_level().decode()


def _limit_simd(level):
    """Testing hook: use loops of at most ``level`` (one of SIMD_LEVELS);
    'avx512' lifts the limit.  Returns the level now in use."""
    return _lib().gluon_focal_limit_simd_level(SIMD_LEVELS.index(level)).decode()


def layout_problem(ndim, axis, batch_axis, label_mode, per_class_alpha, normalization):
    """None when the kernel takes this layout, else why not (a sentence).

    The kernel reduces per sample only when the batch axis comes before the
    class axis, unless the class axis does not matter (dense or binary labels
    with one alpha); normalization='none' takes any layout.  The library
    decides; this asks it."""
    why = ctypes.create_string_buffer(512)
    class_axis_matters = label_mode == 'sparse' or bool(per_class_alpha)
    if _lib().gluon_focal_layout_problem(int(ndim), int(axis), int(batch_axis),
                                         int(class_axis_matters), int(normalization != 'none'),
                                         why, len(why)):
        return why.value.decode()
    return None


def _fmt_num(v):
    v = float(v)
    if v != v or v in (float('inf'), float('-inf')):
        raise ValueError('expected a finite number, got %r' % v)
    return repr(v)


def op_attrs(mode=None, axis=-1, batch_axis=0, gamma=2.0, alpha=0.25,
             from_sigmoid=False, eps=1e-12, ignore_label=None, background_label=None,
             normalization='mean', scale=1.0, label_mode=None, validate=True):
    """Build the operator's string attributes from Python values
    (``mode`` and ``label_mode`` are aliases; default 'dense')."""
    if mode is not None and label_mode is not None and mode != label_mode:
        raise ValueError('mode=%r and label_mode=%r disagree' % (mode, label_mode))
    label_mode = mode or label_mode or 'dense'
    if label_mode not in ('dense', 'sparse', 'binary'):
        raise ValueError("label_mode must be 'dense', 'sparse' or 'binary', got %r"
                         % (label_mode,))
    if normalization not in _NORMALIZATIONS:
        raise ValueError('normalization must be one of %s, got %r'
                         % (_NORMALIZATIONS, normalization))
    if alpha is None:
        alpha_s = 'none'
    elif isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        alpha_s = _fmt_num(alpha)
    else:
        vals = [_fmt_num(a) for a in list(getattr(alpha, 'tolist', lambda: alpha)())]
        if not vals:
            raise ValueError('alpha sequence is empty')
        alpha_s = ','.join(vals) + (',' if len(vals) == 1 else '')
    return {
        'mode': label_mode,
        'axis': str(int(axis)),
        'batch_axis': str(int(batch_axis)),
        'gamma': _fmt_num(gamma),
        'alpha': alpha_s,
        'from_sigmoid': '1' if from_sigmoid else '0',
        'eps': _fmt_num(eps),
        'ignore_label': 'none' if ignore_label is None else _fmt_num(ignore_label),
        'background_label': 'none' if background_label is None else _fmt_num(background_label),
        'normalization': normalization,
        'scale': _fmt_num(scale),
        'validate': '1' if validate else '0',
    }


def runs_on(context):
    """True when the fused operator can run on arrays of ``context`` (CPU memory)."""
    return context.device_type in ('cpu', 'cpu_pinned', 'cpu_shared')


def choose_backend(impl, kernel_available, context, layout_supported=True, num_gpus=None):
    """'fused' or 'composite': the one dispatch rule, a pure function of its arguments.

    Parameters
    ----------
    impl : {'auto', 'fused', 'composite'}
        What the user asked for.
    kernel_available : bool
        Whether the operator library is loaded (:func:`available`).
    context : mx.Context or None
        ``pred.context``; None for Symbols, whose context is only known when
        the graph runs.
    layout_supported : bool
        Whether the kernel can reduce this layout (see ``FocalLoss``).
    num_gpus : int or None
        GPUs visible to MXNet (``mx.context.num_gpus()`` when None); only used
        for Symbols.

    ``'auto'`` picks the kernel for CPU contexts only; for Symbols it picks it
    only when no GPU is visible (then the graph can only run on CPU), else the
    composite graph, which runs anywhere. ``impl='fused'`` with a non-CPU
    context raises ValueError (the operator is registered for CPU only).
    """
    if impl == 'composite':
        return 'composite'
    if impl == 'fused':
        if not kernel_available:
            raise RuntimeError("impl='fused' but the fused focal-loss kernel is not loaded: %s"
                               % unavailable_reason())
        if context is not None and not runs_on(context):
            raise ValueError("impl='fused' runs on CPU only, but pred is on %s; use "
                             "impl='auto' (picks the composite graph there) or "
                             "impl='composite'." % (context,))
        return 'fused'
    if impl != 'auto':
        raise ValueError("impl=%r is not one of 'auto', 'fused', 'composite'." % (impl,))
    if not kernel_available or not layout_supported:
        return 'composite'
    if context is None:
        if num_gpus is None:
            import mxnet as mx
            num_gpus = mx.context.num_gpus()
        return 'fused' if num_gpus == 0 else 'composite'
    return 'fused' if runs_on(context) else 'composite'


def needs_grad_add(pred):
    """True when ``pred`` is an NDArray whose own gradient buffer is attached
    (``attach_grad``) while autograd records: its grad_req may be 'add', which
    the extension op cannot see (MXNet does not expose the req of an
    NDArray), so the caller should pass ``grad_add=True``.  Network outputs
    (the usual loss input) have no attached gradient and return False."""
    try:
        import mxnet as mx
        return (isinstance(pred, mx.nd.NDArray) and mx.autograd.is_recording()
                and pred.grad is not None)
    except Exception:  # noqa: BLE001
        return False


def fused_focal_loss(F, pred, label, grad_add='auto', **attrs):
    """Call the fused operator: ``F`` is ``mx.nd`` or ``mx.sym``.

    ``attrs`` are Python values accepted by :func:`op_attrs` (mode, axis,
    batch_axis, gamma, alpha, from_sigmoid, eps, ignore_label,
    background_label, normalization, scale, validate).

    ``grad_add``: extension-library ops never see MXNet's ``req`` and always
    *overwrite* the gradient buffer they are given, so with
    ``attach_grad(grad_req='add')`` on pred (imperative, or as the input of
    a hybridized block) the raw op would replace instead of accumulate.  When
    ``grad_add`` is true the op is applied to ``F.identity(pred)``; MXNet's
    identity backward honours ``req`` and accumulates (one pred-sized copy,
    so it is only used when needed).  ``'auto'`` (default) means
    :func:`needs_grad_add(pred) <needs_grad_add>` for NDArrays and False for
    Symbols: a hybridized caller should decide in its NDArray ``forward``
    (e.g. with :func:`needs_grad_add`) and pass True/False explicitly.
    Gradients from several consumers of pred are summed by MXNet itself and
    need nothing.
    """
    import mxnet as mx
    if not _state['loaded']:
        load()
    op = getattr(F, OP_NAME)
    if grad_add == 'auto':
        grad_add = needs_grad_add(pred)
    if grad_add:
        pred = F.identity(pred)
    if isinstance(pred, mx.sym.Symbol):
        # the node name is what MXNet prints when a saved graph is loaded without
        # this library ("Failed loading Op <name> of type gluon_focal_loss"): make it say
        # what to import
        return op(pred, label, name=GRAPH_NODE_NAME, **op_attrs(**attrs))
    return op(pred, label, **op_attrs(**attrs))
