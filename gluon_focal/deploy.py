"""Export hybridized detectors and segmenters to ONNX, run by onnxruntime.

:func:`export_onnx` wraps MXNet 1.9.1's exporter (``mxnet.onnx``) and fixes
what stops it on our models:

* it pins ONNX opset 13, the opset MXNet's converters were written for (the
  exporter otherwise writes the newest opset the installed onnx knows, whose
  operators some of those converters no longer fit);
* it registers the converters our graphs need and MXNet lacks, through MXNet's
  own converter registry: ``GroupNorm`` and ``gluon_focal_group_norm``
  (RetinaNet's GN heads),
  ``AdaptiveAvgPooling2D`` with output sizes > 1 (FastSCNN's pyramid pooling;
  static input shapes), ``boolean_mask`` and ``amp_multicast`` (detection
  post-processing);
* it stores the weights as initializers only (MXNet also lists each weight as
  a graph input, which keeps onnxruntime from constant-folding them);
* with ``check=True`` it runs the file in onnxruntime on a sample input and
  raises if the outputs differ from MXNet's.

Class-wise NMS survives the export because the detectors express it as
class-agnostic NMS over class-offset boxes
(:mod:`gluon_focal.detection.postprocess`).

MXNet 1.9.1's exporter imports ``onnx.mapping``, which onnx 1.19 removed: use
onnx <= 1.18 (``pip install gluon-focal[onnx]``).
"""
import json
import os
import re
import tempfile

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon

from .nn import GROUP_NORM_OP

__all__ = ['export_onnx', 'check_onnx', 'compare_detections', 'onnx_session', 'supported_ops',
           'OPSET']

#: The ONNX opset of MXNet 1.9.1's converters (its newest converter table).
OPSET = 13
# ONNX IR version that goes with opset 13
_IR_VERSION = 7

# what converters need to know about the export under way (set by export_onnx
# around the conversion): node name -> output shapes, and whether it is dynamic
_EXPORT = {'shapes': {}, 'dynamic': False}


def _require_onnx():
    try:
        import onnx  # noqa: F401
        from onnx import mapping  # noqa: F401  (what MXNet's exporter needs)
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ImportError('ONNX export needs onnx <= 1.18 (MXNet 1.9.1 uses onnx.mapping, '
                          'removed in 1.19) and onnxruntime: pip install '
                          '"gluon-focal[onnx]" (%s)' % err) from err


def supported_ops(opset=OPSET):
    """The MXNet operators the exporter can convert at ``opset`` (ours included)."""
    _require_onnx()
    _register_converters()
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
    ops = set()
    for version in range(12, opset + 1):
        ops.update(MXNetGraph.registry_.get(version, {}))
    return ops


# ---------------------------------------------------------------------------
# converters MXNet 1.9.1 lacks, registered in its own registry
# ---------------------------------------------------------------------------
_REGISTERED = [False]


def _register_converters():
    if _REGISTERED[0]:
        return
    from onnx.helper import make_node
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
    from mxnet.onnx.mx2onnx._op_translations._op_translations_opset12 import (
        convert_string_to_list, create_tensor, get_input_dtypes, get_inputs)

    def convert_group_norm(node, **kwargs):
        """MXNet's GroupNorm (gamma/beta per group) is InstanceNormalization over
        the (N, groups, rest) view of the input. The fused op's first output is the
        same; its statistics outputs are for backward only."""
        name, inputs, attrs = get_inputs(node, kwargs)
        groups = int(attrs.get('num_groups', 1))
        eps = float(attrs.get('eps', 1e-5))
        create_tensor([0, groups, -1], name + '_group_shape', kwargs['initializer'])
        return [
            make_node('Shape', [inputs[0]], [name + '_shape']),
            make_node('Reshape', [inputs[0], name + '_group_shape'], [name + '_grouped']),
            make_node('InstanceNormalization', [name + '_grouped', inputs[1], inputs[2]],
                      [name + '_normed'], epsilon=eps),
            make_node('Reshape', [name + '_normed', name + '_shape'], [name], name=name),
        ]

    for op in ('GroupNorm', GROUP_NORM_OP):
        MXNetGraph.register(op, OPSET)(convert_group_norm)

    @MXNetGraph.register('_contrib_AdaptiveAvgPooling2D', OPSET)
    def convert_adaptive_avg_pooling(node, **kwargs):
        """Output size 1: GlobalAveragePool. Larger: MXNet's bins (start
        floor(i * H / out), end ceil((i + 1) * H / out)) as slices averaged along
        H, then along W -- which needs the input's static H and W."""
        name, inputs, attrs = get_inputs(node, kwargs)
        size = convert_string_to_list(attrs.get('output_size', '1'))
        out_h, out_w = (size[0], size[-1]) if size else (1, 1)
        if out_h == out_w == 1:
            return [make_node('GlobalAveragePool', [inputs[0]], [name], name=name)]
        source, index = node['inputs'][0][:2]
        shapes = _EXPORT['shapes'].get(kwargs['mx_graph'][source]['name'], [])
        shape = shapes[index] if index < len(shapes) else None
        if _EXPORT['dynamic'] or shape is None:
            raise ValueError('AdaptiveAvgPooling2D %r with output_size (%d, %d) exports only '
                             'for a static input shape: call export_onnx with dynamic=False'
                             % (node['name'], out_h, out_w))
        nodes, current = [], inputs[0]
        for axis, (length, out) in ((2, (shape[2], out_h)), (3, (shape[3], out_w))):
            parts = []
            for i in range(out):
                start, end = (i * length) // out, -(-((i + 1) * length) // out)
                prefix = '%s_ax%d_%d' % (name, axis, i)
                for suffix, value in (('_start', start), ('_end', end), ('_axis', axis)):
                    create_tensor([value], prefix + suffix, kwargs['initializer'])
                nodes += [make_node('Slice', [current, prefix + '_start', prefix + '_end',
                                              prefix + '_axis'], [prefix + '_slice']),
                          make_node('ReduceMean', [prefix + '_slice'], [prefix + '_mean'],
                                    axes=[axis], keepdims=1)]
                parts.append(prefix + '_mean')
            current = name if axis == 3 else name + '_rows'
            nodes.append(make_node('Concat', parts, [current], axis=axis))
        nodes[-1].name = name
        return nodes

    resize_sized = MXNetGraph.registry_[12]['_contrib_BilinearResize2D']

    @MXNetGraph.register('_contrib_BilinearResize2D', OPSET)
    def convert_bilinear_resize(node, **kwargs):
        """mode='like' (decoders resizing onto a skip connection): ONNX Resize to
        the second input's H and W; every other mode is MXNet's own converter."""
        name, inputs, attrs = get_inputs(node, kwargs)
        if attrs.get('mode', 'size') != 'like':
            return resize_sized(node, **kwargs)
        if attrs.get('align_corners', 'True') in ('False', '0'):
            raise ValueError('BilinearResize2D %r with align_corners=False has no ONNX '
                             'converter here; use the default align_corners=True' % name)
        for suffix, value in (('_0', 0), ('_2', 2), ('_4', 4)):
            create_tensor([value], name + suffix, kwargs['initializer'])
        create_tensor([], name + '_roi', kwargs['initializer'], dtype='float32')
        create_tensor([], name + '_scales', kwargs['initializer'], dtype='float32')
        return [
            make_node('Shape', [inputs[0]], [name + '_data_shape']),
            make_node('Shape', [inputs[1]], [name + '_like_shape']),
            make_node('Slice', [name + '_data_shape', name + '_0', name + '_2'], [name + '_nc']),
            make_node('Slice', [name + '_like_shape', name + '_2', name + '_4'], [name + '_hw']),
            make_node('Concat', [name + '_nc', name + '_hw'], [name + '_sizes'], axis=0),
            make_node('Resize', [inputs[0], name + '_roi', name + '_scales', name + '_sizes'],
                      [name], mode='linear', coordinate_transformation_mode='align_corners',
                      name=name),
        ]

    @MXNetGraph.register('_contrib_boolean_mask', OPSET)
    def convert_boolean_mask(node, **kwargs):
        """boolean_mask(data, index, axis) is ONNX Compress."""
        from onnx import TensorProto
        name, inputs, attrs = get_inputs(node, kwargs)
        return [
            make_node('Cast', [inputs[1]], [name + '_cond'], to=int(TensorProto.BOOL)),
            make_node('Compress', [inputs[0], name + '_cond'], [name],
                      axis=int(attrs.get('axis', 0)), name=name),
        ]

    @MXNetGraph.register('amp_multicast', OPSET)
    def convert_amp_multicast(node, **kwargs):
        """A no-op when its inputs share one dtype (GluonCV's box decoder)."""
        name, inputs, _ = get_inputs(node, kwargs)
        if len(set(np.dtype(d) for d in get_input_dtypes(node, kwargs))) > 1:
            raise ValueError('amp_multicast %r over mixed dtypes has no ONNX converter: '
                             'export a float32 model' % name)
        return [make_node('Identity', [src], [name + str(i)]) for i, src in enumerate(inputs)]

    _REGISTERED[0] = True


# ---------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------
def _check_input_shape(input_shape):
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if not shape or len(shape) != 4 or not all(
            isinstance(d, (int, np.integer)) and d > 0 for d in shape):
        raise ValueError('input_shape must be 4 positive ints (batch, channels, height, '
                         'width), got %r' % (input_shape,))
    return tuple(int(d) for d in shape)


def _trace(net, input_shape):
    """Run ``net`` once in inference mode on zeros of ``input_shape`` (this also
    builds the cached graph the export writes); returns its outputs."""
    try:
        with autograd.predict_mode():
            outputs = net(mx.nd.zeros(input_shape))
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for out in outputs:
            out.wait_to_read()
        return outputs
    except (mx.base.MXNetError, ValueError, AssertionError) as err:
        first = str(err).strip().splitlines()
        raise ValueError('input_shape %s does not fit %s: %s' % (
            input_shape, type(net).__name__, first[-1] if first else err)) from err


def _graph_ops(sym):
    return [(n['op'], n['name']) for n in json.loads(sym.tojson())['nodes'] if n['op'] != 'null']


def _static_shapes(sym, input_shape):
    internals = sym.get_internals()
    _, shapes, _ = internals.infer_shape_partial(data=input_shape)
    found = {}
    for name, shape in zip(internals.list_outputs(), shapes):
        match = re.match(r'(.*)_output(\d*)$', name)
        if match:
            node, index = match.group(1), int(match.group(2) or 0)
            found.setdefault(node, [])
            found[node] += [None] * (index + 1 - len(found[node]))
            found[node][index] = shape if shape and all(shape) else None
    return found


def _traced_outputs(traced):
    """A stand-in for ``MXNetGraph.get_outputs``: (input shapes, {output name:
    shape and ONNX type}) from the outputs of the traced network."""
    from onnx import helper

    def get_outputs(sym, params, in_shapes, output_label, in_types, dynamic=False,
                    dynamic_input_shapes=None):
        names = [re.sub(r'_output(\d*)$', r'\1', n) for n in sym.list_outputs()]
        outputs = {}
        for name, out in zip(names, traced):
            shape = tuple(None for _ in out.shape) if dynamic else out.shape
            outputs[name] = {'shape': shape, 'dtype': helper.np_dtype_to_tensor_dtype(
                np.dtype(out.dtype))}
        return (dynamic_input_shapes if dynamic else in_shapes), outputs
    return get_outputs


def export_onnx(net, path, input_shape, dynamic=False, check=True):
    """Write a hybridized network to an ONNX file that onnxruntime runs.

    Parameters
    ----------
    net : HybridBlock
        A hybridized :class:`~gluon_focal.detection.RetinaNet`,
        :class:`~gluon_focal.detection.SigmoidSSD` or GluonCV segmentation model
        (FCN, FastSCNN, DeepLab, ...), with its parameters initialized or loaded.
    path : str
        The ``.onnx`` file to write.
    input_shape : tuple of 4 int
        (batch, channels, height, width) of the input the file is traced with;
        with ``dynamic=False`` the only shape the file accepts.
    dynamic : bool
        Let batch, height and width vary (ONNX dims ``batch``, ``height``,
        ``width``). Models with size-specific layers (FastSCNN's pyramid pooling
        and GluonCV's fixed-size upsampling) need ``dynamic=False``.
    check : bool
        Run the file in onnxruntime on a random input of ``input_shape`` and
        raise ``RuntimeError`` if any output differs from MXNet's beyond
        rtol=1e-3, atol=1e-4 (detections: see :func:`compare_detections`).

    Returns
    -------
    str : ``path``.
    """
    _require_onnx()
    import onnx
    from onnx import TensorProto, helper
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph

    if not isinstance(net, gluon.HybridBlock):
        raise TypeError('export_onnx needs a gluon.HybridBlock, got %s' % type(net).__name__)
    if not net._active:  # pylint: disable=protected-access
        raise ValueError('export_onnx: %s is not hybridized; call net.hybridize() (e.g. '
                         'net.hybridize(static_alloc=True, static_shape=True)) before '
                         'exporting' % type(net).__name__)
    input_shape = _check_input_shape(input_shape)
    _register_converters()
    traced = _trace(net, input_shape)

    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, 'model')
        net.export(prefix, epoch=0)
        sym, arg_params, aux_params = mx.model.load_checkpoint(prefix, 0)
    params = dict(arg_params, **aux_params)
    inputs = [n for n in sym.list_inputs() if n not in params]
    if inputs != ['data']:
        raise ValueError('export_onnx supports networks with one input, got inputs %s' % inputs)
    supported = supported_ops()
    missing = sorted({(op, name) for op, name in _graph_ops(sym) if op not in supported})
    if missing:
        raise NotImplementedError(
            'MXNet %s\'s ONNX exporter (opset %d) has no converter for operator %s (node %s). '
            'Replace the layer that makes it with one whose operators are listed by '
            'gluon_focal.deploy.supported_ops(), or register a converter with '
            '@mxnet.onnx.mx2onnx._export_onnx.MXNetGraph.register(%r, %d) as '
            'gluon_focal/deploy.py does for GroupNorm.'
            % (mx.__version__, OPSET, ', '.join(repr(op) for op in sorted({m[0] for m in missing})),
               ', '.join(repr(n) for _, n in missing[:5]), missing[0][0], OPSET))

    _EXPORT.update(shapes=_static_shapes(sym, input_shape), dynamic=bool(dynamic))
    # MXNet's exporter takes the output shapes from sym.infer_shape, which cannot
    # see through the detectors' boolean_mask: give it the traced outputs' shapes
    get_outputs = MXNetGraph.get_outputs
    MXNetGraph.get_outputs = staticmethod(_traced_outputs(traced))
    # ... and validates the graph against the newest opset onnx knows, where opset-13
    # nodes such as ReduceMean(axes=...) are invalid: the model is checked at OPSET below
    check_graph = onnx.checker.check_graph
    onnx.checker.check_graph = lambda graph, *args, **kwargs: None
    try:
        graph = MXNetGraph().create_onnx_graph_proto(
            sym, params, [input_shape], [TensorProto.FLOAT], opset_version=OPSET,
            dynamic=bool(dynamic),
            dynamic_input_shapes=[('batch', input_shape[1], 'height', 'width')]
            if dynamic else None)
    finally:
        MXNetGraph.get_outputs = get_outputs
        onnx.checker.check_graph = check_graph
        _EXPORT.update(shapes={}, dynamic=False)

    # weights are initializers only, not graph inputs; drop constants no node reads
    used = {name for n in graph.node for name in n.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    weights = {init.name for init in graph.initializer}
    graph_inputs = [i for i in graph.input if i.name not in weights]
    del graph.input[:]
    graph.input.extend(graph_inputs)
    # outputs in the network's order
    order = [re.sub(r'_output(\d*)$', r'\1', n) for n in sym.list_outputs()]
    outputs = sorted(graph.output, key=lambda o: order.index(o.name)
                     if o.name in order else len(order))
    del graph.output[:]
    graph.output.extend(outputs)

    model = helper.make_model(graph, producer_name='gluon-focal',
                              opset_imports=[helper.make_opsetid('', OPSET)])
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, 'wb') as f:
        f.write(model.SerializeToString())
    if check:
        check_onnx(net, path, input_shape)
    return path


def onnx_session(path, threads=None):
    """An onnxruntime CPU session for ``path`` (``threads``: intra-op threads)."""
    _require_onnx()
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def _is_detection(outputs):
    return len(outputs) == 3 and [o.ndim for o in outputs] == [3, 3, 3] and \
        [o.shape[-1] for o in outputs] == [1, 1, 4]


def compare_detections(got, expected, score_atol=1e-4, box_rtol=1e-3, box_atol=1e-4):
    """Why two ``(ids, scores, bboxes)`` results differ, or None if they agree:
    per image the same number of detections, and each expected detection has one
    in ``got`` with the same class id, a score within ``score_atol`` and a box
    within ``box_rtol`` (relative, plus ``box_atol``). Detections are matched
    rather than compared row by row because scores that differ by float rounding
    may swap neighbouring rows."""
    (g_ids, g_scores, g_boxes), (e_ids, e_scores, e_boxes) = got, expected
    if g_ids.shape != e_ids.shape or g_boxes.shape != e_boxes.shape:
        return 'shapes %s vs %s' % (g_ids.shape, e_ids.shape)
    for b in range(e_ids.shape[0]):
        g_valid = np.flatnonzero(g_ids[b, :, 0] >= 0)
        e_valid = np.flatnonzero(e_ids[b, :, 0] >= 0)
        if len(g_valid) != len(e_valid):
            return 'image %d: %d detections vs %d' % (b, len(g_valid), len(e_valid))
        unused = set(g_valid.tolist())
        for i in e_valid:
            close = [j for j in sorted(unused) if g_ids[b, j, 0] == e_ids[b, i, 0]
                     and abs(g_scores[b, j, 0] - e_scores[b, i, 0]) <= score_atol
                     and np.allclose(g_boxes[b, j], e_boxes[b, i], rtol=box_rtol, atol=box_atol)]
            if not close:
                return 'image %d: no match for detection %d (class %d, score %.6f, box %s)' % (
                    b, i, e_ids[b, i, 0], e_scores[b, i, 0], e_boxes[b, i])
            unused.remove(close[0])
    return None


def check_onnx(net, path, input_shape, seed=0, rtol=1e-3, atol=1e-4):
    """Compare onnxruntime's outputs for ``path`` with ``net``'s on a random input
    of ``input_shape``; raise ``RuntimeError`` naming the first output that differs.
    Detections (ids, scores, bboxes) are compared by :func:`compare_detections`."""
    x = np.random.RandomState(seed).uniform(-1, 1, input_shape).astype(np.float32)
    with autograd.predict_mode():
        expected = net(mx.nd.array(x))
    expected = [o.asnumpy() for o in (expected if isinstance(expected, (list, tuple))
                                      else [expected])]
    got = onnx_session(path).run(None, {'data': x})
    if len(got) != len(expected):
        raise RuntimeError('%s: onnxruntime gives %d outputs, MXNet %d'
                           % (path, len(got), len(expected)))
    if _is_detection(expected):
        why = compare_detections(got, expected)
        if why:
            raise RuntimeError('%s: onnxruntime\'s detections differ from MXNet\'s: %s'
                               % (path, why))
        return
    for i, (g, e) in enumerate(zip(got, expected)):
        if g.shape != e.shape or not np.allclose(g, e, rtol=rtol, atol=atol):
            where = 'shape %s vs %s' % (g.shape, e.shape) if g.shape != e.shape else \
                'max abs difference %.3g' % np.abs(g - e).max()
            raise RuntimeError('%s: onnxruntime output %d differs from MXNet\'s (%s, '
                               'rtol=%g, atol=%g)' % (path, i, where, rtol, atol))
