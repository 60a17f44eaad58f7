"""Train RetinaNet (focal loss + FPN + anchors) built from GluonCV parts.

With no arguments this trains a small RetinaNet-ResNet18 from scratch on the
synthetic shapes dataset, on the CPU: 6 epochs of 1024 128x128 images took
7 minutes on 2 cores shared with other jobs and reached a validation VOC07 mAP
of 0.85 (200 images). It writes under ``runs/retinanet``:

* ``checkpoint.json`` + ``epoch-XXXX.params/.states`` -- one atomic checkpoint per epoch
  (``--resume`` continues from the last complete one),
* ``curves.png`` -- training loss and validation mAP per epoch,
* ``detections.png`` -- detections drawn on validation images,
* ``results.json`` -- the final numbers.

Examples::

    python examples/train_retinanet.py                          # synthetic shapes, CPU
    python examples/train_retinanet.py --resume                 # continue after a crash
    python examples/train_retinanet.py --num-cpu-contexts 2     # split batches over 2 contexts
    python examples/train_retinanet.py --dataset voc --data-root ~/data/VOCdevkit \\
        --train-split trainval --val-split test --data-shape 512 \\
        --backbone resnet50_v1b --backbone-width 1 --fpn-channels 256 --head-channels 256 \\
        --head-layers 4 --head-norm none --anchor-size 4 --optimizer sgd --lr 0.01 \\
        --gpus 0,1,2,3 --batch-size 16 --epochs 24

The steps, top to bottom: arguments -> data -> model -> loss and trainer ->
epochs of (train, validate, checkpoint) -> plots.
"""
import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon

from gluoncv.data.batchify import Pad, Stack, Tuple
from gluoncv.utils.metrics.voc_detection import VOC07MApMetric

try:
    import gluon_focal  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
from gluon_focal.detection import SyntheticShapesDetection, voc_detection
from gluon_focal.detection.retinanet import RetinaNetLoss, get_retinanet
from gluon_focal.detection.targets import RetinaNetTrainTransform, RetinaNetValTransform
from gluon_focal.distributed import create_kvstore, rank_and_size, shard
from gluon_focal.training import (CheckpointManager, add_training_args, contexts_from_args,
                                  plot_curves, progress, save_figure)


# ---------------------------------------------------------------------------
# 1. Arguments
# ---------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_training_args(parser, epochs=6, batch_size=8, lr=0.002, out_dir='runs/retinanet')
    data = parser.add_argument_group('data')
    data.add_argument('--dataset', choices=('synthetic', 'voc'), default='synthetic')
    data.add_argument('--data-root', type=str, default='',
                      help='VOC folder holding VOC<year>/ (for --dataset voc)')
    data.add_argument('--voc-year', type=int, default=2007)
    data.add_argument('--train-split', type=str, default='trainval',
                      help='VOC image set(s) for training, comma-separated')
    data.add_argument('--val-split', type=str, default='test',
                      help='VOC image set(s) for validation, comma-separated')
    data.add_argument('--classes', type=str, default='',
                      help='VOC class names, comma-separated; default: VOC<year>/classes.txt '
                           'if present, else the 20 Pascal VOC classes')
    data.add_argument('--num-train', type=int, default=1024, help='synthetic training images')
    data.add_argument('--num-val', type=int, default=200, help='synthetic validation images')
    data.add_argument('--min-object-size', type=int, default=12,
                      help='synthetic: smallest object side in pixels')
    data.add_argument('--data-shape', type=int, default=128,
                      help='images are resized to data-shape x data-shape')
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
    optim.add_argument('--optimizer', choices=('sgd', 'adam'), default='adam',
                       help='adam trains the from-scratch CPU demo fastest; the paper '
                            'uses sgd (momentum 0.9, lr 0.01 for batch 16)')
    optim.add_argument('--wd', type=float, default=1e-4)
    optim.add_argument('--momentum', type=float, default=0.9)
    optim.add_argument('--warmup-epochs', type=float, default=1.0)
    optim.add_argument('--alpha', type=float, default=0.25, help='focal loss alpha')
    optim.add_argument('--gamma', type=float, default=2.0, help='focal loss gamma')
    optim.add_argument('--num-vis', type=int, default=8, help='validation images to draw')
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------
# 2. Data: VOCDetection-style datasets (items: HxWx3 uint8 image, (M, 6) label)
# ---------------------------------------------------------------------------
def get_datasets(args):
    if args.dataset == 'synthetic':
        # train and validation images come from different seeds
        common = dict(size=args.data_shape, min_size=args.min_object_size)
        train_set = SyntheticShapesDetection(num_images=args.num_train, seed=args.seed, **common)
        val_set = SyntheticShapesDetection(num_images=args.num_val, seed=args.seed + 10 ** 6,
                                           **common)
        return train_set, val_set, list(train_set.classes)
    if not args.data_root:
        raise SystemExit('--dataset voc needs --data-root')
    classes = [c for c in args.classes.split(',') if c] or None  # None: classes.txt or VOC's
    train_set = voc_detection(args.data_root, args.train_split.split(','), classes=classes,
                              year=args.voc_year)
    val_set = voc_detection(args.data_root, args.val_split.split(','), classes=classes,
                            year=args.voc_year)
    return train_set, val_set, list(train_set.classes)


def get_loaders(args, net, train_set, val_set, kv):
    width = height = args.data_shape
    # targets are computed per image in the loader, against the model's own anchors
    anchors = net.get_anchors(height, width)
    train_tf = RetinaNetTrainTransform(width, height, anchors, stds=net.stds)
    train_loader = gluon.data.DataLoader(
        shard(train_set, kv).transform(train_tf), args.batch_size, shuffle=True,
        batchify_fn=Tuple(Stack(), Stack(), Stack()), last_batch='rollover',
        num_workers=args.num_workers)
    val_loader = gluon.data.DataLoader(
        val_set.transform(RetinaNetValTransform(width, height)), args.batch_size,
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
# 4. Validation: VOC07 11-point mAP at IoU 0.5
# ---------------------------------------------------------------------------
def validate(net, val_loader, ctx, classes):
    metric = VOC07MApMetric(iou_thresh=0.5, class_names=classes)
    for batch in val_loader:
        data = gluon.utils.split_and_load(batch[0], ctx_list=ctx, batch_axis=0, even_split=False)
        label = gluon.utils.split_and_load(batch[1], ctx_list=ctx, batch_axis=0,
                                           even_split=False)
        for x, y in zip(data, label):
            ids, scores, bboxes = net(x)  # inference mode: decoded, NMSed detections
            metric.update(bboxes, ids, scores, y.slice_axis(axis=-1, begin=0, end=4),
                          y.slice_axis(axis=-1, begin=4, end=5),
                          y.slice_axis(axis=-1, begin=5, end=6))
    names, values = metric.get()
    return dict(zip(names, values))


# ---------------------------------------------------------------------------
# 5. Drawing detections on validation images
# ---------------------------------------------------------------------------
def draw_detections(net, val_set, ctx, classes, path, num=8, thresh=0.5, size=128):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from gluoncv.utils.viz import plot_bbox
    transform = RetinaNetValTransform(size, size)
    num = min(num, len(val_set))
    cols = min(4, num)
    rows = int(math.ceil(num / float(cols)))
    fig = plt.figure(figsize=(3.2 * cols, 3.2 * rows))
    for i in range(num):
        raw, label = val_set[i]
        img, _ = transform(raw, label)
        ids, scores, bboxes = net(img.expand_dims(0).as_in_context(ctx[0]))
        shown = mx.image.imresize(raw, size, size).asnumpy()
        ax = fig.add_subplot(rows, cols, i + 1)
        plot_bbox(shown, bboxes[0].asnumpy(), scores[0].asnumpy(), ids[0].asnumpy(),
                  thresh=thresh, class_names=classes, ax=ax)
        ax.set_axis_off()
    fig.suptitle('RetinaNet detections (score > %.1f)' % thresh)
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------------------
# 6. Training
# ---------------------------------------------------------------------------
def train_one_epoch(net, train_loader, loss_fn, trainer, ctx, num_workers, desc):
    """One pass over the data; returns the mean (total, focal, box) loss per batch."""
    sums, seen = np.zeros(3), 0
    bar = progress(train_loader, total=len(train_loader), desc=desc)
    for batch in bar:
        # each of images, class targets, box targets split over the contexts
        data, cls_t, box_t = [gluon.utils.split_and_load(part, ctx_list=ctx, batch_axis=0)
                              for part in batch]
        with autograd.record():
            outputs = [net(x) for x in data]  # training mode: logits, offsets, anchors
            totals, focal, box = loss_fn([o[0] for o in outputs], [o[1] for o in outputs],
                                         cls_t, box_t)
        autograd.backward(totals)
        # the loss is already normalised (by the batch's positive anchors): no batch size
        # here, only the number of dist workers whose gradients the kvstore sums
        trainer.step(num_workers)
        sums += [sum(x.sum().asscalar() for x in part) for part in (totals, focal, box)]
        seen += 1
        bar.set_postfix(loss='%.3f' % (sums[0] / seen), lr='%.5f' % trainer.learning_rate)
    return sums / max(1, seen)


def main(argv=None):
    start = time.time()
    args = parse_args(argv)
    random.seed(args.seed)
    np.random.seed(args.seed)
    mx.random.seed(args.seed)
    ctx = contexts_from_args(args)
    kv = create_kvstore(args.kvstore)
    rank, num_workers = rank_and_size(kv)
    os.makedirs(args.out_dir, exist_ok=True)
    print('RetinaNet-%s on %s, contexts %s, kvstore %s' % (
        args.backbone, args.dataset, ctx, args.kvstore))

    train_set, val_set, classes = get_datasets(args)
    config = model_config(args, classes)
    with open(os.path.join(args.out_dir, 'model.json'), 'w') as f:
        json.dump(config, f, indent=1)
    net = get_net(config, ctx, args.pretrained_base)
    train_loader, val_loader = get_loaders(args, net, train_set, val_set, kv)
    print('%d training / %d validation images, classes %s, %d anchors per image' % (
        len(train_set), len(val_set), classes, len(net.get_anchors(args.data_shape,
                                                                   args.data_shape))))

    # Focal loss (sparse labels, normalised by the positive anchors) + smooth L1
    loss_fn = RetinaNetLoss(num_class=len(classes), alpha=args.alpha, gamma=args.gamma)

    # linear warm-up, then cosine decay, per iteration. (MXNet's own scheduler: under
    # dist_* kvstores the optimizer is pickled to the servers, which cannot import gluoncv.)
    total = args.epochs * len(train_loader)
    warmup = min(int(round(args.warmup_epochs * len(train_loader))), total // 2)
    schedule = mx.lr_scheduler.CosineScheduler(
        max_update=max(1, total), base_lr=args.lr, final_lr=args.lr * 0.01,
        warmup_steps=warmup, warmup_begin_lr=args.lr * 0.01)
    opt_params = {'learning_rate': args.lr, 'wd': args.wd, 'lr_scheduler': schedule}
    if args.optimizer == 'sgd':
        opt_params['momentum'] = args.momentum
    trainer = gluon.Trainer(net.collect_params(), args.optimizer, opt_params, kvstore=kv)

    ckpt = CheckpointManager(args.out_dir)
    start_epoch, history = 0, {}
    if args.resume:
        start_epoch, history = ckpt.restore(net, trainer, ctx=ctx)
        # (the optimizer state, learning-rate schedule included, comes from the checkpoint:
        # resume with the arguments the run started with)
        print('resumed after epoch %d' % (start_epoch - 1) if start_epoch else
              'nothing to resume, starting from scratch')
    for key in ('loss', 'focal_loss', 'box_loss', 'val_mAP'):
        history.setdefault(key, [])

    tic = time.time()
    for epoch in range(start_epoch, args.epochs):
        # -- train one epoch --
        epoch_loss = train_one_epoch(net, train_loader, loss_fn, trainer, ctx, num_workers,
                                     'epoch %d/%d' % (epoch + 1, args.epochs))
        # -- validate --
        stats = validate(net, val_loader, ctx, classes)
        history['loss'].append(float(epoch_loss[0]))
        history['focal_loss'].append(float(epoch_loss[1]))
        history['box_loss'].append(float(epoch_loss[2]))
        history['val_mAP'].append(float(stats['mAP']))
        print('[epoch %d] loss %.4f (focal %.4f, box %.4f)  val mAP %.4f  (%s)  %.0fs' % (
            epoch + 1, epoch_loss[0], epoch_loss[1], epoch_loss[2], stats['mAP'],
            ', '.join('%s %.2f' % (c, stats[c]) for c in classes if c in stats),
            time.time() - tic))
        # -- checkpoint (atomic: a crash leaves the previous epoch's) --
        if rank == 0:
            # dist_* kvstores keep the optimizer state on the servers: save the weights only
            ckpt.save(epoch, net, trainer, history)
            plot_curves(history, os.path.join(args.out_dir, 'curves.png'),
                        'RetinaNet-%s on %s' % (args.backbone, args.dataset))

    if rank == 0 and history['val_mAP']:
        draw_detections(net, val_set, ctx, classes, os.path.join(args.out_dir, 'detections.png'),
                        num=args.num_vis, size=args.data_shape)
        results = {'val_mAP': history['val_mAP'][-1], 'epochs': len(history['val_mAP']),
                   'seconds_this_run': time.time() - start, 'args': vars(args)}
        with open(os.path.join(args.out_dir, 'results.json'), 'w') as f:
            json.dump(results, f, indent=1)
        print('final validation mAP %.4f after %d epochs (%.0f s this run); curves, '
              'detections and checkpoints in %s' % (history['val_mAP'][-1], results['epochs'],
                                                    results['seconds_this_run'], args.out_dir))
    return history


if __name__ == '__main__':
    main()
