"""Export a trained RetinaNet to a symbol graph (or ONNX) and run the exported graph on an image.

Reads the model description (``model.json``) and last checkpoint that
``examples/train_retinanet.py`` wrote to ``--checkpoint-dir``, hybridizes the
model, exports ``<out>/retinanet-symbol.json`` + ``retinanet-0000.params``,
then loads *only those two files* with ``gluon.SymbolBlock.imports`` -- no
gluon_focal code is needed to run them -- and detects objects in an image,
printing the detections and drawing them to a PNG::

    python examples/train_retinanet.py                     # writes runs/retinanet
    python examples/export_detector.py                     # a synthetic validation image
    python examples/export_detector.py --image photo.jpg --thresh 0.3
    python examples/export_detector.py --format onnx       # + retinanet.onnx

``--format onnx`` also writes ``<out>/retinanet.onnx`` (``gluon_focal.deploy.
export_onnx``; needs ``pip install .[onnx]``) and detects with onnxruntime --
neither MXNet nor gluon_focal is needed to run that file -- checking that its
detections are MXNet's. ``--dynamic`` lets the file take any batch and size.

The exported graph takes a (1, 3, H, W) float image, normalised like the
training data (ImageNet mean/std on [0, 1] pixels), and returns
``ids (1, K, 1), scores (1, K, 1), bboxes (1, K, 4)``; rows with id -1 are padding.
"""
import argparse
import json
import os
import sys
import warnings

import numpy as np
import mxnet as mx
from mxnet import gluon

try:
    import gluon_focal  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
from gluon_focal.detection.retinanet import get_retinanet
from gluon_focal.training import CheckpointManager

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--checkpoint-dir', default='runs/retinanet',
                        help='folder with model.json and checkpoint.json from training')
    parser.add_argument('--params', default='',
                        help='a .params file to export instead of the last checkpoint')
    parser.add_argument('--out-dir', default='', help='default: <checkpoint-dir>/export')
    parser.add_argument('--image', default='',
                        help='image file; default: a synthetic validation image')
    parser.add_argument('--thresh', type=float, default=0.5, help='score threshold to print/draw')
    parser.add_argument('--format', choices=('mxnet', 'onnx'), default='mxnet',
                        help='onnx: also write retinanet.onnx and detect with onnxruntime')
    parser.add_argument('--dynamic', action='store_true',
                        help='ONNX file with variable batch, height and width')
    return parser.parse_args(argv)


def load_trained(checkpoint_dir, params=''):
    """Rebuild the model from model.json and load its trained parameters."""
    with open(os.path.join(checkpoint_dir, 'model.json')) as f:
        config = json.load(f)
    if not params:
        entry = CheckpointManager(checkpoint_dir).latest()
        if entry is None:
            raise SystemExit('no checkpoint in %s; train first' % checkpoint_dir)
        params = entry['params']
    kwargs = {k: v for k, v in config.items() if k not in ('backbone', 'data_shape')}
    net = get_retinanet(config['backbone'], **kwargs)
    net.load_parameters(params, ctx=mx.cpu())
    return net, config, params


def export(net, prefix, data_shape):
    """Hybridize, trace once in inference mode, write prefix-symbol.json/-0000.params."""
    net.hybridize(static_alloc=True, static_shape=True)
    net(mx.nd.zeros((1, 3, data_shape, data_shape)))
    net.export(prefix, epoch=0)
    return prefix + '-symbol.json', prefix + '-0000.params'


def load_image(path, size):
    """(raw HxWx3 uint8 resized to size x size, normalised (1, 3, size, size) tensor)."""
    raw = mx.image.imread(path)  # RGB
    raw = mx.image.imresize(raw, size, size)
    x = mx.nd.image.normalize(mx.nd.image.to_tensor(raw), mean=MEAN, std=STD)
    return raw.asnumpy(), x.expand_dims(0)


def main(argv=None):
    args = parse_args(argv)
    out_dir = args.out_dir or os.path.join(args.checkpoint_dir, 'export')
    os.makedirs(out_dir, exist_ok=True)

    # 1. rebuild + load the trained model, export its hybridized inference graph
    net, config, params = load_trained(args.checkpoint_dir, args.params)
    size, classes = config['data_shape'], config['classes']
    symbol_file, params_file = export(net, os.path.join(out_dir, 'retinanet'), size)
    print('exported %s\n         %s\n  (from %s)' % (symbol_file, params_file, params))

    # 2. an input image
    image = args.image
    if not image:
        import cv2
        from gluon_focal.detection import SyntheticShapesDetection
        img, _ = SyntheticShapesDetection(num_images=1, size=size, seed=12345)[0]
        image = os.path.join(out_dir, 'input.png')
        cv2.imwrite(image, cv2.cvtColor(img.asnumpy(), cv2.COLOR_RGB2BGR))
    raw, x = load_image(image, size)

    # 3. run the exported graph: plain MXNet, no gluon_focal code involved
    with warnings.catch_warnings():  # "Cannot decide type" for the input, harmless
        warnings.simplefilter('ignore', UserWarning)
        deployed = gluon.SymbolBlock.imports(symbol_file, ['data'], params_file, ctx=mx.cpu())
    ids, scores, bboxes = [o[0].asnumpy() for o in deployed(x)]
    reference = net(x)  # the hybridized model it came from
    diff = max(float(np.abs(a[0].asnumpy() - b).max()) for a, b in
               zip(reference, (ids, scores, bboxes)))
    print('exported vs. hybridized model: max abs difference %.3g' % diff)

    # 4. ONNX: the same graph in onnxruntime
    if args.format == 'onnx':
        from gluon_focal.deploy import compare_detections, export_onnx, onnx_session
        onnx_file = export_onnx(net, os.path.join(out_dir, 'retinanet.onnx'),
                                (1, 3, size, size), dynamic=args.dynamic)
        print('exported %s (opset 13, checked against MXNet)' % onnx_file)
        got = onnx_session(onnx_file).run(None, {'data': x.asnumpy()})
        why = compare_detections(got, [o.asnumpy() for o in reference])
        print('onnxruntime vs. MXNet on %s: %s' % (image, why or 'same detections'))
        if why:
            raise SystemExit('onnxruntime\'s detections differ: %s' % why)
        ids, scores, bboxes = [o[0] for o in got]

    keep = (ids[:, 0] >= 0) & (scores[:, 0] >= args.thresh)
    print('%d detections with score >= %.2f in %s (%dx%d input):' % (
        keep.sum(), args.thresh, image, size, size))
    for cid, score, box in zip(ids[keep, 0], scores[keep, 0], bboxes[keep]):
        print('  %-10s %.3f  [%6.1f %6.1f %6.1f %6.1f]' % ((classes[int(cid)], score) + tuple(box)))

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from gluoncv.utils.viz import plot_bbox
    ax = plot_bbox(raw, bboxes, scores, ids, thresh=args.thresh, class_names=classes)
    ax.set_axis_off()
    out_png = os.path.join(out_dir, 'detections.png')
    plt.savefig(out_png, dpi=120, bbox_inches='tight')
    print('drawn to %s' % out_png)
    return ids, scores, bboxes


if __name__ == '__main__':
    main()
