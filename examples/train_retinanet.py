"""Train RetinaNet (focal loss + FPN + anchors) built from GluonCV parts.

With no arguments this trains a small RetinaNet-ResNet18 from scratch on the
synthetic shapes dataset, on the CPU: 6 epochs of 1024 128x128 images took
66-89 s at 2 threads (``OMP_NUM_THREADS=2``, 80-117 images/s per epoch on a 2-core VM
whose speed varies; 1.33x torchvision's RetinaNet in the same run, see docs/detection.md;
minutes more when other jobs hold the cores) and reached a validation VOC07 mAP of
0.865-0.878 over seeds 0-2 (200 images). It writes under ``--out-dir``
(``runs/retinanet``) the layout every example shares (``gluon_focal.training``):

* ``checkpoint.json`` + ``epoch-NNNN.params/.states`` -- one atomic checkpoint per epoch,
  numbered from 1 (``--resume`` continues from the last complete one; a larger
  ``--epochs`` extends the learning-rate schedule to the new end),
* ``results.json`` -- per-epoch losses, validation mAP and images/s, final numbers, arguments,
* ``curves.png`` -- loss and validation mAP per epoch,
* ``detections.png`` -- detections drawn on validation images,
* ``model.json`` -- what ``examples/export_detector.py`` needs to rebuild the model.

Examples::

    python examples/train_retinanet.py                          # synthetic shapes, CPU
    python examples/train_retinanet.py --resume                 # continue after a crash
    python examples/train_retinanet.py --num-cpu-contexts 2     # split batches over 2 contexts
    python examples/train_retinanet.py --dataset coco --data-root ~/data/shapes_coco
    python examples/train_retinanet.py --dataset voc --data-root ~/data/VOCdevkit \\
        --data-shape 512 --backbone resnet50_v1b --backbone-width 1 --fpn-channels 256 \\
        --head-channels 256 --head-layers 4 --head-norm none --anchor-size 4 --optimizer sgd \\
        --lr 0.01 --gpus 0,1,2,3 --batch-size 16 --epochs 24

The steps, top to bottom: arguments -> data -> model -> loss and trainer ->
epochs of (train, validate, checkpoint) -> results.
"""
import argparse
import json
import os
import random
import sys
import time

import numpy as np
import mxnet as mx
from mxnet import gluon

from gluoncv.data.batchify import Pad, Stack, Tuple
from gluoncv.data.transforms.presets.ssd import SSDDefaultValTransform

try:
    import gluon_focal  # noqa: F401  (the installed package, with its compiled kernel)
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
from gluon_focal.detection.retinanet import RetinaNetLoss, get_retinanet
from gluon_focal.detection.targets import RetinaNetTrainTransform
from gluon_focal.distributed import create_kvstore, rank_and_size, shard
from gluon_focal.training import (add_detection_data_args, add_optimizer_args,
                                  add_training_args, contexts_from_args, detection_datasets,
                                  detection_metric, evaluate_detector, finish_detector_run,
                                  make_trainer, plot_curves, stack_batchify, start_or_resume,
                                  train_detector_epoch, warmup_cosine)


# ---------------------------------------------------------------------------
# 1. Arguments
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_training_args(parser, epochs=6, batch_size=8, lr=0.002, out_dir='runs/retinanet')
    add_detection_data_args(parser, num_train=1024, num_val=200, data_shape=128,
                            min_object_size=12)
    model = parser.add_argument_group('model')
    model.add_argument('--backbone', type=str, default='resnet18_v1b',
                       help='resnet18_v1b, resnet50_v1b, ... (GluonCV ResNetV1b)')
    model.add_argument('--backbone-width', type=float, default=0.5,
                       help='multiply the ResNet stage widths (1: standard ResNet)')
    model.add_argument('--pretrained-base', action='store_true',
                       help='ImageNet backbone weights (needs them in ~/.mxnet/models)')
    model.add_argument('--fpn-channels', type=int, default=64, help='paper: 256')
    model.add_argument('--head-channels', type=int, default=64, help='paper: 256')
    model.add_argument('--head-layers', type=int, default=2, help='paper: 4')
    model.add_argument('--head-norm', choices=('none', 'gn'), default='gn',
                       help='GroupNorm in the subnets (paper: none)')
    model.add_argument('--anchor-size', type=float, default=2,
                       help='anchor side in strides (paper: 4, i.e. 32 px on P3)')
    optim = parser.add_argument_group('optimisation')
    add_optimizer_args(optim, 'adam trains the from-scratch CPU demo fastest; the paper '
                              'uses sgd (momentum 0.9, lr 0.01 for batch 16)')
    optim.add_argument('--warmup-epochs', type=float, default=1.0,
                       help='linear learning-rate warm-up, then cosine decay')
    optim.add_argument('--alpha', type=float, default=0.25, help='focal loss alpha')
    optim.add_argument('--gamma', type=float, default=2.0, help='focal loss gamma')
    optim.add_argument('--box-weight', type=float, default=1.0, help='box loss weight')
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------
# 2. Data: VOCDetection-style datasets (generated, VOC or COCO; see
#    gluon_focal.training.detection_datasets), targets computed in the loader
# ---------------------------------------------------------------------------
def get_loaders(args, net, train_set, val_set, kv):
    width = height = args.data_shape
    # targets are computed per image in the loader, against the model's own anchors
    anchors = net.get_anchors(height, width)
    train_tf = RetinaNetTrainTransform(width, height, anchors, stds=net.stds)
    train_loader = gluon.data.DataLoader(
        shard(train_set, kv).transform(train_tf), args.batch_size, shuffle=True,
        batchify_fn=stack_batchify(args.num_workers), last_batch='rollover',
        num_workers=args.num_workers)
    val_loader = gluon.data.DataLoader(
        val_set.transform(SSDDefaultValTransform(width, height)), args.batch_size,
        shuffle=False, batchify_fn=Tuple(Stack(), Pad(pad_val=-1)), last_batch='keep',
        num_workers=args.num_workers)
    return train_loader, val_loader


# ---------------------------------------------------------------------------
# 3. Model: ResNet -> FPN (P3-P7) -> class/box subnets -> anchors
# ---------------------------------------------------------------------------
def model_config(args, classes):
    """Everything get_retinanet needs to rebuild this model (saved as model.json,
    read by examples/export_detector.py)."""
    return {'backbone': args.backbone, 'backbone_width': args.backbone_width,
            'classes': list(classes),
            'fpn_channels': args.fpn_channels, 'head_channels': args.head_channels,
            'head_layers': args.head_layers, 'anchor_size': args.anchor_size,
            'head_norm': None if args.head_norm == 'none' else args.head_norm,
            'anchor_alloc_size': max(512, args.data_shape), 'data_shape': args.data_shape}


def get_net(config, ctx, pretrained_base=False):
    kwargs = {k: v for k, v in config.items() if k not in ('backbone', 'data_shape')}
    net = get_retinanet(config['backbone'], pretrained_base=pretrained_base, **kwargs)
    # initialize everything not loaded (the whole net without --pretrained-base)
    net.initialize(ctx=ctx)
    net.hybridize(static_alloc=True, static_shape=True)
    return net


# ---------------------------------------------------------------------------
# 4. Training: epochs of (train, validate, checkpoint), then the results
# ---------------------------------------------------------------------------
def main(argv=None):
    start = time.time()
    args = parse_args(argv)
    random.seed(args.seed)
    np.random.seed(args.seed)
    mx.random.seed(args.seed)
    ctx = contexts_from_args(args)
    kv = create_kvstore(args.kvstore)
    rank, num_workers = rank_and_size(kv)
    is_chief = rank == 0
    os.makedirs(args.out_dir, exist_ok=True)
    log = print if is_chief else (lambda *a, **k: None)
    log('RetinaNet-%s on %s, contexts %s, kvstore %s' % (
        args.backbone, args.dataset, ctx, args.kvstore))

    train_set, val_set, classes = detection_datasets(args)
    config = model_config(args, classes)
    if is_chief:
        with open(os.path.join(args.out_dir, 'model.json'), 'w') as f:
            json.dump(config, f, indent=1)
    net = get_net(config, ctx, args.pretrained_base)
    train_loader, val_loader = get_loaders(args, net, train_set, val_set, kv)
    log('%d training / %d validation images, classes %s, %d anchors per image' % (
        len(train_set), len(val_set), classes, len(net.get_anchors(args.data_shape,
                                                                   args.data_shape))))

    # focal loss (sparse labels) + smooth L1, both per positive anchor of the batch
    loss_fn = RetinaNetLoss(num_class=len(classes), alpha=args.alpha, gamma=args.gamma,
                            box_weight=args.box_weight)
    # hybridized, the focal loss checks its labels in the graph (the fused kernel
    # checks every value it reads) instead of with a host sync per batch
    loss_fn.hybridize(static_alloc=True, static_shape=True)
    iters = len(train_loader)
    schedule = warmup_cosine(args.lr, args.epochs, iters, args.warmup_epochs,
                             final_lr=args.lr * 0.01)
    trainer = make_trainer(net, args, schedule, kv)
    metric = detection_metric(args.dataset, val_set, classes, args.data_shape, args.out_dir)

    checkpoints, start_epoch, history = start_or_resume(
        args, net, trainer, schedule, iters, ctx, log,
        ('loss', 'focal_loss', 'box_loss', 'val_mAP', 'images_per_s'))

    for epoch in range(start_epoch, args.epochs):  # epoch + 1 is its number
        loss, focal, box, speed = train_detector_epoch(
            net, train_loader, loss_fn, trainer, ctx, num_workers, schedule, epoch * iters,
            'epoch %d/%d' % (epoch + 1, args.epochs), show=is_chief)
        stats = evaluate_detector(net, val_loader, ctx, metric)
        for key, value in zip(('loss', 'focal_loss', 'box_loss', 'val_mAP', 'images_per_s'),
                              (loss, focal, box, stats['mAP'], speed)):
            history[key].append(float(value))
        log('[epoch %d] loss %.4f (focal %.4f, box %.4f)  val mAP %.4f  (%s)  %.0f img/s  '
            '%.0fs' % (epoch + 1, loss, focal, box, stats['mAP'],
                       ', '.join('%s %.2f' % (c, stats[c]) for c in classes if c in stats),
                       speed * num_workers, time.time() - start))
        if is_chief:  # atomic: a crash leaves the previous epoch's
            checkpoints.save(epoch + 1, net, trainer, history)
            plot_curves({k: history[k] for k in ('loss', 'focal_loss', 'box_loss', 'val_mAP')},
                        os.path.join(args.out_dir, 'curves.png'),
                        'RetinaNet-%s on %s' % (args.backbone, args.dataset))

    if is_chief and history['val_mAP']:
        finish_detector_run(net, val_set, classes, history, args, ctx, start, num_workers,
                            'RetinaNet')
    return history


if __name__ == '__main__':
    main()
