"""Export a segmenter trained by examples/train_segmentation.py to ONNX and run it in onnxruntime.

Rebuilds the network from the same arguments the training took (they are
passed through to ``train_segmentation.py``'s parser), loads the last
checkpoint from ``--out-dir`` (or ``--params``), writes
``<out-dir>/export/segmenter.onnx`` with ``gluon_focal.deploy.export_onnx``
(needs ``pip install .[onnx]``) and segments validation images with
onnxruntime -- neither MXNet nor gluon_focal is needed to run that file --
checking that the masks are MXNet's::

    python examples/train_segmentation.py --out-dir runs/segmentation
    python examples/export_segmenter.py --out-dir runs/segmentation

The file takes a (1, 3, crop, crop) float image normalised like the training
data (ImageNet mean/std on [0, 1] pixels) and returns the logits (and the
auxiliary head's, unless trained with ``--no-aux``). GluonCV's segmenters
upsample to a fixed size, so the file has a static shape.
"""
import argparse
import importlib.util
import os
import sys

import numpy as np
import mxnet as mx
from mxnet import autograd

HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import gluon_focal  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(HERE, os.pardir))
from gluon_focal.deploy import export_onnx, onnx_session  # noqa: E402
from gluon_focal.training import CheckpointManager  # noqa: E402


def training_script():
    """examples/train_segmentation.py as a module: the model is built by its code."""
    spec = importlib.util.spec_from_file_location(
        'train_segmentation', os.path.join(HERE, 'train_segmentation.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        epilog='Other arguments (--model, --nclass, --loss, --crop-size, --no-aux, ...) are '
               'train_segmentation.py\'s and must be the ones the model was trained with.')
    parser.add_argument('--params', default='',
                        help='a .params file to export instead of the last checkpoint')
    parser.add_argument('--num-images', type=int, default=4, help='validation images to run')
    return parser.parse_known_args(argv)


def masks(args, logits):
    """(B, H, W) integer masks the way the training script scores them."""
    if args.loss == 'softmax':
        return logits.argmax(axis=1)
    probs = 1. / (1. + np.exp(-logits))
    if logits.shape[1] == 1:
        return (probs[:, 0] > args.threshold).astype(np.int64)
    # one sigmoid per class: the most probable class above the threshold, else 0
    return np.where(probs.max(axis=1) > args.threshold, probs.argmax(axis=1) + 1, 0)


def main(argv=None):
    own, rest = parse_args(argv)
    train = training_script()
    args = train.parse_args(rest)
    ctx = [mx.cpu()]
    net = train.get_model(args, ctx)  # hybridized, like in training
    params = own.params
    if not params:
        entry = CheckpointManager(args.out_dir).latest()
        if entry is None:
            raise SystemExit('no checkpoint in %s; train first' % args.out_dir)
        params = entry['params']
    net.load_parameters(params, ctx=ctx)

    out_dir = os.path.join(args.out_dir, 'export')
    shape = (1, 3, args.crop_size, args.crop_size)
    path = export_onnx(net, os.path.join(out_dir, 'segmenter.onnx'), shape)
    print('exported %s (opset 13, checked against MXNet) from %s' % (path, params))

    session = onnx_session(path)
    _, val_set = train.get_datasets(args)
    agree = []
    for i in range(min(own.num_images, len(val_set))):
        image = val_set[i][0].expand_dims(0)
        got = session.run(None, {'data': image.asnumpy()})[0]
        with autograd.predict_mode():
            expected = net(image)[0].asnumpy()
        agree.append(float((masks(args, got) == masks(args, expected)).mean()))
        print('image %d: onnxruntime and MXNet masks agree on %.4f of the pixels, max logit '
              'difference %.2g' % (i, agree[-1], np.abs(got - expected).max()))
    return path, agree


if __name__ == '__main__':
    main()
