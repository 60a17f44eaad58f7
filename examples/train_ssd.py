"""Train SSD with the sigmoid focal loss (or GluonCV's SSDMultiBoxLoss).
=====================================================================

This script follows GluonCV's ``scripts/detection/ssd/train_ssd.py``; the only
change needed for focal loss is the loss object (and scoring with sigmoids at
inference).  It runs in a few minutes on a laptop CPU with the defaults: a
tiny SSD (:func:`gluon_focal.detection.tiny_ssd`) on 192x192 images of the
synthetic shapes dataset.

Quick start::

    # focal loss (default) vs. GluonCV's softmax + hard negative mining loss
    python examples/train_ssd.py --loss focal    --out-dir runs/ssd_focal
    python examples/train_ssd.py --loss multibox --out-dir runs/ssd_multibox

    # continue an interrupted run from its last complete epoch
    python examples/train_ssd.py --loss focal --out-dir runs/ssd_focal --resume

    # a VOC-format folder (e.g. written by gluon_focal.detection.write_voc_detection,
    # or a real VOCdevkit with --train-split trainval --val-split test)
    python examples/train_ssd.py --dataset voc --data-root ~/data/shapes_voc

    # two CPU contexts (the batch is split with split_and_load); --gpus 0,1 on GPUs
    python examples/train_ssd.py --num-cpu-contexts 2 --kvstore device

Outputs in ``--out-dir``: ``checkpoints/`` (one atomic checkpoint per epoch),
``curves.png`` (loss and VOC07 mAP per epoch), ``detections.png``
(detections drawn on validation images) and ``history.json``.

The pieces, in the order a reader meets them below:

1. ``get_dataset``: training/validation datasets (``VOCDetection``-like items).
2. ``get_network``: a GluonCV ``SSD``; ``SigmoidSSD`` wraps it for inference
   when it was trained with focal loss.
3. ``get_dataloader``: ``SSDDefaultTrainTransform`` computes the anchor
   targets on the CPU workers, exactly as in GluonCV.
4. ``validate``: VOC07 11-point mAP with ``VOC07MApMetric``.
5. ``train``: the loop; ``SSDFocalMultiBoxLoss`` is a drop-in for
   ``SSDMultiBoxLoss`` (same call, same per-device return lists).
"""
import argparse
import json
import logging
import os
import sys
import time

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon

import gluoncv as gcv
from gluoncv.data.batchify import Pad, Stack, Tuple
from gluoncv.data.transforms.presets.ssd import SSDDefaultTrainTransform, SSDDefaultValTransform
from gluoncv.utils.metrics.voc_detection import VOC07MApMetric

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from gluon_focal.detection import (SSDFocalMultiBoxLoss, SigmoidSSD,  # noqa: E402
                                   SyntheticShapesDetection, init_focal_bias, ssd_anchors,
                                   tiny_ssd, voc_detection, zoo_ssd)
from gluon_focal.distributed import create_kvstore, rank_and_size, shard  # noqa: E402
from gluon_focal.training import (CheckpointManager, add_training_args,  # noqa: E402
                                  contexts_from_args, plot_curves, progress, save_figure)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train SSD with sigmoid focal loss.',
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_training_args(parser, epochs=12, batch_size=16, lr=0.02, out_dir='runs/ssd')
    parser.add_argument('--loss', choices=('focal', 'multibox'), default='focal',
                        help='focal: SSDFocalMultiBoxLoss; multibox: gluoncv SSDMultiBoxLoss')
    parser.add_argument('--alpha', type=float, default=0.25, help='focal alpha')
    parser.add_argument('--gamma', type=float, default=2.0, help='focal gamma')
    parser.add_argument('--box-weight', type=float, default=1.0,
                        help="box loss weight (SSDMultiBoxLoss's lambd)")
    parser.add_argument('--focal-impl', choices=('auto', 'fused', 'composite'), default='auto',
                        help='gluon_focal.FocalLoss implementation')
    parser.add_argument('--dataset', choices=('synthetic', 'voc'), default='synthetic',
                        help='generated shapes, or a VOC-format folder (--data-root)')
    parser.add_argument('--data-root', type=str, default='',
                        help='VOC-format root folder (contains VOC2007/) for --dataset voc')
    parser.add_argument('--train-split', type=str, default='train', help='training split')
    parser.add_argument('--val-split', type=str, default='val', help='validation split')
    parser.add_argument('--num-train', type=int, default=480,
                        help='synthetic training images')
    parser.add_argument('--num-val', type=int, default=160, help='synthetic validation images')
    parser.add_argument('--network', type=str, default='tiny',
                        help="'tiny' (gluon_focal.detection.tiny_ssd) or a GluonCV model-zoo "
                             'SSD, e.g. ssd_300_vgg16_atrous_voc, ssd_512_resnet50_v1_custom, '
                             'ssd_512_mobilenet1.0_voc (its layout only: built for the '
                             "dataset's classes, pretrained_base=False unless --pretrained-base)")
    parser.add_argument('--pretrained-base', action='store_true',
                        help='zoo networks: ImageNet base weights from ~/.mxnet/models')
    parser.add_argument('--data-shape', type=int, default=None,
                        help='input image size; default 192 for tiny, else the size in the '
                             'zoo name (300 or 512)')
    parser.add_argument('--augment', choices=('ssd', 'light'), default='light',
                        help="'ssd': GluonCV's full SSDDefaultTrainTransform (colour, expand, "
                             "crop, flip); 'light': colour + flip only (converges faster "
                             'in short runs)')
    parser.add_argument('--wd', type=float, default=5e-4, help='weight decay')
    parser.add_argument('--momentum', type=float, default=0.9, help='SGD momentum')
    parser.add_argument('--warmup-epochs', type=float, default=1.0,
                        help='linear learning-rate warm-up, then cosine decay')
    parser.add_argument('--num-vis', type=int, default=8,
                        help='validation images drawn in detections.png')
    parser.add_argument('--vis-thresh', type=float, default=0.3,
                        help='score threshold of the drawn detections')
    args = parser.parse_args(argv)
    if args.data_shape is None:
        size = args.network.split('_')[1:2]
        args.data_shape = int(size[0]) if size and size[0].isdigit() else 192
    return args


# ---------------------------------------------------------------------------
# 1. data
# ---------------------------------------------------------------------------
def get_dataset(args):
    """Return (train_dataset, val_dataset, classes)."""
    if args.dataset == 'synthetic':
        size = args.data_shape
        train = SyntheticShapesDetection(args.num_train, size=size, seed=args.seed)
        val = SyntheticShapesDetection(args.num_val, size=size, seed=args.seed + 10007)
        return train, val, train.classes
    if not args.data_root:
        raise SystemExit('--dataset voc needs --data-root')
    root = os.path.expanduser(args.data_root)
    # classes from VOC2007/classes.txt when present, else Pascal VOC's 20
    train = voc_detection(root, args.train_split)
    val = voc_detection(root, args.val_split)
    return train, val, train.classes


class LightSSDTrainTransform(SSDDefaultTrainTransform):
    """``SSDDefaultTrainTransform`` without random expansion and cropping.

    Colour distortion, resize and horizontal flip only; targets are produced
    by the same ``SSDTargetGenerator`` as the default transform.
    """

    def __call__(self, src, label):
        from gluoncv.data.transforms import bbox as tbbox, experimental, image as timage
        img = experimental.image.random_color_distort(src)
        h, w, _ = img.shape
        img = timage.imresize(img, self._width, self._height, interp=1)
        bbox = tbbox.resize(label, (w, h), (self._width, self._height))
        img, flips = timage.random_flip(img, px=0.5)
        bbox = tbbox.flip(bbox, (self._width, self._height), flip_x=flips[0])
        img = mx.nd.image.to_tensor(img)
        img = mx.nd.image.normalize(img, mean=self._mean, std=self._std)
        gt_bboxes = mx.nd.array(bbox[np.newaxis, :, :4])
        gt_ids = mx.nd.array(bbox[np.newaxis, :, 4:5])
        cls_targets, box_targets, _ = self._target_generator(
            self._anchors, None, gt_bboxes, gt_ids)
        return img, cls_targets[0], box_targets[0]


def get_dataloader(train_dataset, val_dataset, anchors, args, kv):
    """GluonCV-style loaders: training items are (image, cls_targets, box_targets)."""
    width = height = args.data_shape
    transform_cls = SSDDefaultTrainTransform if args.augment == 'ssd' else LightSSDTrainTransform
    train_dataset = shard(train_dataset, kv)  # this worker's part when distributed
    batchify_fn = Tuple(Stack(), Stack(), Stack())  # image, cls_targets, box_targets
    train_loader = gluon.data.DataLoader(
        train_dataset.transform(transform_cls(width, height, anchors)),
        args.batch_size, shuffle=True, batchify_fn=batchify_fn, last_batch='rollover',
        num_workers=args.num_workers)
    val_batchify_fn = Tuple(Stack(), Pad(pad_val=-1))
    val_loader = gluon.data.DataLoader(
        val_dataset.transform(SSDDefaultValTransform(width, height)),
        args.batch_size, shuffle=False, batchify_fn=val_batchify_fn, last_batch='keep',
        num_workers=args.num_workers)
    return train_loader, val_loader


# ---------------------------------------------------------------------------
# 2. network
# ---------------------------------------------------------------------------
def get_network(args, classes, ctx):
    """Return (net, detector): ``net`` is trained, ``detector`` is used for inference."""
    if args.network == 'tiny':
        net = tiny_ssd(classes, base_size=args.data_shape)
        net.initialize(mx.init.Xavier(), ctx=ctx)
    else:  # initialized as GluonCV's train_ssd.py does
        net = zoo_ssd(args.network, classes, ctx=ctx, pretrained_base=args.pretrained_base)
    # A focal-trained head only learns the foreground columns: score them with
    # sigmoids at inference (GluonCV's SSD would apply a softmax).
    detector = SigmoidSSD(net) if args.loss == 'focal' else net
    return net, detector


# ---------------------------------------------------------------------------
# 3. validation
# ---------------------------------------------------------------------------
def validate(detector, val_loader, ctx, classes):
    """VOC07 11-point mAP at IoU 0.5 (difficult objects ignored)."""
    metric = VOC07MApMetric(iou_thresh=0.5, class_names=classes)
    detector.set_nms(nms_thresh=0.45, nms_topk=400)
    mx.nd.waitall()
    for batch in val_loader:
        data = gluon.utils.split_and_load(batch[0], ctx_list=ctx, batch_axis=0, even_split=False)
        label = gluon.utils.split_and_load(batch[1], ctx_list=ctx, batch_axis=0,
                                           even_split=False)
        det_bboxes, det_ids, det_scores = [], [], []
        gt_bboxes, gt_ids, gt_difficults = [], [], []
        for x, y in zip(data, label):
            ids, scores, bboxes = detector(x)
            det_ids.append(ids)
            det_scores.append(scores)
            det_bboxes.append(bboxes.clip(0, batch[0].shape[2]))
            gt_ids.append(y.slice_axis(axis=-1, begin=4, end=5))
            gt_bboxes.append(y.slice_axis(axis=-1, begin=0, end=4))
            gt_difficults.append(y.slice_axis(axis=-1, begin=5, end=6)
                                 if y.shape[-1] > 5 else None)
        metric.update(det_bboxes, det_ids, det_scores, gt_bboxes, gt_ids, gt_difficults)
    names, values = metric.get()
    return dict(zip(names, values))


def draw_detections(detector, dataset, classes, path, num, thresh, data_shape, ctx):
    """Draw the detections of the first ``num`` validation images into one PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from gluoncv.utils.viz import plot_bbox
    num = min(num, len(dataset))
    cols = min(4, num)
    rows = (num + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows))
    axes = np.array(axes).reshape(-1)
    transform = SSDDefaultValTransform(data_shape, data_shape)
    for i, ax in enumerate(axes):
        ax.axis('off')
        if i >= num:
            continue
        img, label = dataset[i]
        x, _ = transform(img, label)
        ids, scores, bboxes = detector(x.expand_dims(0).as_in_context(ctx[0]))
        h, w = img.shape[:2]
        scale = np.array([w / data_shape, h / data_shape] * 2)
        plot_bbox(img.asnumpy(), bboxes[0].clip(0, data_shape).asnumpy() * scale, scores[0].asnumpy(),
                  ids[0].asnumpy(), thresh=thresh, class_names=classes, ax=ax, linewidth=1.5,
                  fontsize=7)
        ax.set_title('%d objects' % len(label), fontsize=8)
        ax.axis('off')
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------------------
# 4. training
# ---------------------------------------------------------------------------
def train(args):
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
    mx.random.seed(args.seed)
    np.random.seed(args.seed)
    ctx = contexts_from_args(args)
    kv = create_kvstore(args.kvstore)
    rank, num_workers = rank_and_size(kv)
    is_main = rank == 0
    os.makedirs(args.out_dir, exist_ok=True)

    train_dataset, val_dataset, classes = get_dataset(args)
    net, detector = get_network(args, classes, ctx)
    anchors = ssd_anchors(net, (args.data_shape, args.data_shape))
    if args.loss == 'focal':
        init_focal_bias(net, prior=0.01)  # RetinaNet's prior-probability init
    train_loader, val_loader = get_dataloader(train_dataset, val_dataset, anchors, args, kv)
    net.hybridize(static_alloc=True, static_shape=True)
    detector.hybridize(static_alloc=True, static_shape=True)

    if args.loss == 'focal':
        mbox_loss = SSDFocalMultiBoxLoss(alpha=args.alpha, gamma=args.gamma,
                                         box_weight=args.box_weight, impl=args.focal_impl)
    else:
        mbox_loss = gcv.loss.SSDMultiBoxLoss(lambd=args.box_weight)

    # linear warm-up, then cosine decay, per iteration (MXNet's own scheduler: under
    # dist_* kvstores the optimizer is pickled to the servers, which cannot import gluoncv)
    iters_per_epoch = len(train_loader)
    total = max(1, args.epochs * iters_per_epoch)
    lr_scheduler = mx.lr_scheduler.CosineScheduler(
        max_update=total, base_lr=args.lr, final_lr=0,
        warmup_steps=min(int(args.warmup_epochs * iters_per_epoch), total - 1),
        warmup_begin_lr=args.lr * 0.01)
    trainer = gluon.Trainer(
        net.collect_params(), 'sgd',
        {'wd': args.wd, 'momentum': args.momentum,
         'lr_scheduler': lr_scheduler, 'rescale_grad': 1.0 / num_workers},
        kvstore=kv)

    ckpt = CheckpointManager(os.path.join(args.out_dir, 'checkpoints'))
    start_epoch, history = 0, {}
    if args.resume:
        start_epoch, history = ckpt.restore(net, trainer, ctx=ctx)
        logging.info('resumed at epoch %d', start_epoch)
    for key in ('loss', 'cls_loss', 'box_loss', 'val_mAP', 'epoch_time_s'):
        history.setdefault(key, [])
    logging.info('%s SSD on %s: %d train / %d val images, %d anchors, contexts %s',
                 args.loss, args.dataset, len(train_dataset), len(val_dataset),
                 anchors.shape[1], ctx)

    for epoch in range(start_epoch, args.epochs):
        tic = time.time()
        sums = np.zeros(3)
        # hybridize() drops the cached graph: validation built an inference-mode
        # one (SSD returns detections there), training needs the training-mode one
        net.hybridize(static_alloc=True, static_shape=True)
        bar = progress(train_loader, total=iters_per_epoch,
                       desc='epoch %d/%d' % (epoch + 1, args.epochs))
        for i, batch in enumerate(bar):
            # Stack() gives cpu_shared arrays: split_and_load copies them to each context
            data = gluon.utils.split_and_load(batch[0], ctx_list=ctx, batch_axis=0)
            cls_targets = gluon.utils.split_and_load(batch[1], ctx_list=ctx, batch_axis=0)
            box_targets = gluon.utils.split_and_load(batch[2], ctx_list=ctx, batch_axis=0)
            with autograd.record():
                cls_preds, box_preds = [], []
                for x in data:
                    cls_pred, box_pred, _ = net(x)
                    cls_preds.append(cls_pred)
                    box_preds.append(box_pred)
                sum_loss, cls_loss, box_loss = mbox_loss(
                    cls_preds, box_preds, cls_targets, box_targets)
                autograd.backward(sum_loss)
            # the losses are already normalized by the number of positive anchors
            trainer.step(1)
            batch_losses = np.array([sum(l.sum().asscalar() for l in ls)
                                     for ls in (sum_loss, cls_loss, box_loss)])
            sums += batch_losses
            bar.set_postfix(loss='%.3f' % (sums[0] / (i + 1)), lr='%.4f' % trainer.learning_rate)
        bar.close()
        means = sums / max(1, iters_per_epoch)
        val = validate(detector, val_loader, ctx, classes)
        elapsed = time.time() - tic
        for key, value in zip(('loss', 'cls_loss', 'box_loss'), means):
            history[key].append(float(value))
        history['val_mAP'].append(float(val['mAP']))
        history['epoch_time_s'].append(round(elapsed, 1))
        logging.info('[epoch %d] loss %.4f (cls %.4f box %.4f)  val mAP %.4f  %.1fs', epoch + 1,
                     means[0], means[1], means[2], val['mAP'], elapsed)
        if is_main:
            ckpt.save(epoch, net, trainer, history)
            plot_curves({k: history[k] for k in ('loss', 'cls_loss', 'box_loss', 'val_mAP')},
                        os.path.join(args.out_dir, 'curves.png'),
                        title='SSD %s loss on %s' % (args.loss, args.dataset))

    if is_main and history['val_mAP']:
        final = validate(detector, val_loader, ctx, classes)
        summary = {'args': vars(args), 'final_val': final, 'history': history}
        with open(os.path.join(args.out_dir, 'history.json'), 'w') as f:
            json.dump(summary, f, indent=1)
        if args.num_vis > 0:
            draw_detections(detector, val_dataset, classes,
                            os.path.join(args.out_dir, 'detections.png'), args.num_vis,
                            args.vis_thresh, args.data_shape, ctx)
        logging.info('final val mAP %.4f; per class: %s', final['mAP'],
                     ', '.join('%s %.3f' % (k, v) for k, v in final.items() if k != 'mAP'))
    return history


if __name__ == '__main__':
    train(parse_args())
