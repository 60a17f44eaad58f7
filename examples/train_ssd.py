"""Train SSD with the sigmoid focal loss (or GluonCV's SSDMultiBoxLoss).

This script follows GluonCV's ``scripts/detection/ssd/train_ssd.py``; what
focal loss changes is the loss object, the classifier's initialisation
(``init_focal_bias``) and scoring with sigmoids at inference (``SigmoidSSD``).
With the defaults it trains, from scratch, GluonCV's ``SSD`` over a ResNet-18
at half width (:func:`gluon_focal.detection.resnet_ssd`: C3-C5 + one extra
layer, anchors of 12-124 px) on 1024 128x128 images of the synthetic shapes
(objects of 12-64 px), Adam with warm-up and cosine decay, 6 epochs: a few
minutes on 2 CPU cores (docs/detection.md has the focal vs SSDMultiBoxLoss
table). ``--network tiny`` is :func:`gluon_focal.detection.tiny_ssd`;
``--network`` also takes GluonCV's model-zoo SSDs, built offline for the
dataset's classes (``pretrained_base=False`` unless ``--pretrained-base``).

Examples::

    # focal loss (default) vs. GluonCV's softmax + hard negative mining loss
    python examples/train_ssd.py --loss focal    --out-dir runs/ssd_focal
    python examples/train_ssd.py --loss multibox --out-dir runs/ssd_multibox

    # a GluonCV model-zoo SSD (VGG16-atrous 300, ResNet-50 512, MobileNet 512, ...)
    python examples/train_ssd.py --network ssd_300_vgg16_atrous_voc --optimizer sgd --lr 0.001 \
        --wd 5e-4

    # continue an interrupted run; a larger --epochs extends the schedule
    python examples/train_ssd.py --out-dir runs/ssd_focal --resume

    # VOC or COCO folders (e.g. written by gluon_focal.detection.write_voc_detection /
    # write_coco_detection, or the real datasets)
    python examples/train_ssd.py --dataset voc --data-root ~/data/VOCdevkit
    python examples/train_ssd.py --dataset coco --data-root ~/data/coco

    # two CPU contexts (the batch is split with split_and_load); --gpus 0,1 on GPUs
    python examples/train_ssd.py --num-cpu-contexts 2

Outputs in ``--out-dir``, the layout every example shares
(``gluon_focal.training``): ``checkpoint.json`` + ``epoch-XXXX.params/.states``
(one atomic checkpoint per epoch), ``results.json`` (per-epoch losses,
validation mAP and images/s, final numbers, arguments), ``curves.png`` and
``detections.png``.

The steps, top to bottom: arguments -> data -> network -> loss and trainer ->
epochs of (train, validate, checkpoint) -> results.
"""
import argparse
import os
import random
import sys
import time

import numpy as np
import mxnet as mx
from mxnet import gluon

import gluoncv as gcv
from gluoncv.data.batchify import Pad, Stack, Tuple
from gluoncv.data.transforms.presets.ssd import SSDDefaultTrainTransform, SSDDefaultValTransform

try:
    import gluon_focal  # noqa: F401  (the installed package, with its compiled kernel)
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
from gluon_focal.detection import (SSDFocalMultiBoxLoss, SigmoidSSD, init_focal_bias,
                                   resnet_ssd, ssd_anchors, tiny_ssd, zoo_ssd)
from gluon_focal.distributed import create_kvstore, rank_and_size, shard
from gluon_focal.training import (add_detection_data_args, add_optimizer_args,
                                  add_training_args, contexts_from_args, detection_datasets,
                                  detection_metric, evaluate_detector, finish_detector_run,
                                  make_trainer, plot_curves, start_or_resume,
                                  train_detector_epoch, warmup_cosine)


# ---------------------------------------------------------------------------
# 1. Arguments
# ---------------------------------------------------------------------------
# The default box-loss weight of each loss: with adam it only sets how much the box
# gradient shapes the shared backbone (each predictor's updates are scale-free), and
# the focal classification gradient on the backbone is 5-8x smaller than that of
# SSDMultiBoxLoss's softmax + hard negatives; each value is the best of one sweep over
# powers of 2 on the synthetic shapes (focal: a plateau from 1/32 to 1/256; docs/detection.md).
BOX_WEIGHT = {'focal': 1 / 64., 'multibox': 0.25}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_training_args(parser, epochs=6, batch_size=8, lr=0.002, out_dir='runs/ssd')
    add_detection_data_args(parser, num_train=1024, num_val=200, data_shape=None,
                            min_object_size=12)
    model = parser.add_argument_group('model')
    model.add_argument('--network', type=str, default='resnet18_v1b',
                       help='a GluonCV ResNetV1b name (resnet18_v1b, resnet50_v1b, ...: '
                            'gluon_focal.detection.resnet_ssd, anchors sized to the input), '
                            "'tiny' (gluon_focal.detection.tiny_ssd) or a GluonCV model-zoo "
                            'SSD, e.g. ssd_300_vgg16_atrous_voc, ssd_512_resnet50_v1_custom, '
                            'ssd_512_mobilenet1.0_voc (its layout only: built for the '
                            "dataset's classes)")
    model.add_argument('--backbone-width', type=float, default=0.5,
                       help='ResNetV1b networks: multiply the stage widths (1: standard)')
    model.add_argument('--pretrained-base', action='store_true',
                       help='zoo networks: ImageNet base weights from ~/.mxnet/models')
    optim = parser.add_argument_group('loss and optimisation')
    optim.add_argument('--loss', choices=('focal', 'multibox'), default='focal',
                       help='focal: SSDFocalMultiBoxLoss; multibox: gluoncv SSDMultiBoxLoss')
    optim.add_argument('--alpha', type=float, default=0.25, help='focal alpha')
    optim.add_argument('--gamma', type=float, default=2.0, help='focal gamma')
    optim.add_argument('--box-weight', type=float, default=None,
                       help="box loss weight (SSDMultiBoxLoss's lambd, GluonCV's default 1); "
                            'None: %s for focal, %s for multibox, each loss\'s best on the '
                            'synthetic shapes with adam (docs/detection.md)'
                            % (BOX_WEIGHT['focal'], BOX_WEIGHT['multibox']))
    optim.add_argument('--logit-std', type=float, default=0.01,
                       help='focal: initial spread of the class logits (init_focal_bias); '
                            '0 sets the prior bias only')
    optim.add_argument('--focal-impl', choices=('auto', 'fused', 'composite'), default='auto',
                       help='gluon_focal.FocalLoss implementation')
    optim.add_argument('--augment', choices=('ssd', 'light'), default='light',
                       help="'ssd': GluonCV's full SSDDefaultTrainTransform (colour, expand, "
                            "crop, flip); 'light': colour + flip only (converges faster "
                            'in short runs)')
    add_optimizer_args(optim, 'adam trains the from-scratch CPU demo fastest; GluonCV trains '
                              'its SSDs with sgd (lr 0.001, momentum 0.9, wd 5e-4)')
    optim.add_argument('--warmup-epochs', type=float, default=1.0,
                       help='linear learning-rate warm-up, then cosine decay')
    args = parser.parse_args(argv)
    if args.box_weight is None:
        args.box_weight = BOX_WEIGHT[args.loss]
    if args.data_shape is None:  # the zoo name's size (ssd_300_...), else 128
        size = args.network.split('_')[1:2]
        args.data_shape = int(size[0]) if size and size[0].isdigit() else 128
    return args


# ---------------------------------------------------------------------------
# 2. Data: VOCDetection-style datasets (generated, VOC or COCO; see
#    gluon_focal.training.detection_datasets), SSD targets computed in the loader
# ---------------------------------------------------------------------------
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


def get_loaders(args, anchors, train_set, val_set, kv):
    """GluonCV-style loaders: training items are (image, cls_targets, box_targets)."""
    width = height = args.data_shape
    transform = SSDDefaultTrainTransform if args.augment == 'ssd' else LightSSDTrainTransform
    train_loader = gluon.data.DataLoader(
        shard(train_set, kv).transform(transform(width, height, anchors)), args.batch_size,
        shuffle=True, batchify_fn=Tuple(Stack(), Stack(), Stack()), last_batch='rollover',
        num_workers=args.num_workers)
    val_loader = gluon.data.DataLoader(
        val_set.transform(SSDDefaultValTransform(width, height)), args.batch_size,
        shuffle=False, batchify_fn=Tuple(Stack(), Pad(pad_val=-1)), last_batch='keep',
        num_workers=args.num_workers)
    return train_loader, val_loader


# ---------------------------------------------------------------------------
# 3. Network: a GluonCV SSD; SigmoidSSD scores it with sigmoids after focal training
# ---------------------------------------------------------------------------
def get_network(args, classes, ctx):
    """Return (net, detector): ``net`` is trained, ``detector`` is used for inference."""
    if args.network == 'tiny':
        net = tiny_ssd(classes, base_size=args.data_shape)
        net.initialize(mx.init.Xavier(), ctx=ctx)
    elif not args.network.startswith('ssd_'):
        net = resnet_ssd(classes, args.network, args.backbone_width, base_size=args.data_shape)
        net.initialize(ctx=ctx)  # as GluonCV's train_ssd.py does
    else:  # initialized as GluonCV's train_ssd.py does
        net = zoo_ssd(args.network, classes, ctx=ctx, pretrained_base=args.pretrained_base)
    # A focal-trained head only learns the foreground columns: score them with
    # sigmoids at inference (GluonCV's SSD would apply a softmax).
    detector = SigmoidSSD(net) if args.loss == 'focal' else net
    detector.set_nms(nms_thresh=0.45, nms_topk=400)
    return net, detector


# ---------------------------------------------------------------------------
# 4. Training: epochs of (train, validate, checkpoint), then the results
# ---------------------------------------------------------------------------
def train(args):
    start = time.time()
    random.seed(args.seed)
    np.random.seed(args.seed)
    mx.random.seed(args.seed)
    ctx = contexts_from_args(args)
    kv = create_kvstore(args.kvstore)
    rank, num_workers = rank_and_size(kv)
    is_chief = rank == 0
    os.makedirs(args.out_dir, exist_ok=True)
    log = print if is_chief else (lambda *a, **k: None)

    train_set, val_set, classes = detection_datasets(args)
    net, detector = get_network(args, classes, ctx)
    anchors = ssd_anchors(net, (args.data_shape, args.data_shape))
    if args.loss == 'focal':  # RetinaNet's classifier initialisation: prior bias, small spread
        init_focal_bias(net, prior=0.01, logit_std=args.logit_std or None)
    train_loader, val_loader = get_loaders(args, anchors, train_set, val_set, kv)
    log('%s SSD (%s) on %s: %d train / %d val images, %d anchors, contexts %s' % (
        args.loss, args.network, args.dataset, len(train_set), len(val_set), anchors.shape[1],
        ctx))

    if args.loss == 'focal':
        loss_fn = SSDFocalMultiBoxLoss(alpha=args.alpha, gamma=args.gamma,
                                       box_weight=args.box_weight, impl=args.focal_impl)
    else:
        loss_fn = gcv.loss.SSDMultiBoxLoss(lambd=args.box_weight)
    iters = len(train_loader)
    schedule = warmup_cosine(args.lr, args.epochs, iters, args.warmup_epochs,
                             final_lr=args.lr * 0.01)
    trainer = make_trainer(net, args, schedule, kv)
    metric = detection_metric(args.dataset, val_set, classes, args.data_shape, args.out_dir)

    checkpoints, start_epoch, history = start_or_resume(
        args, net, trainer, schedule, iters, ctx, log,
        ('loss', 'cls_loss', 'box_loss', 'val_mAP', 'images_per_s'))

    for epoch in range(start_epoch, args.epochs):  # epoch + 1 is its number
        # a hybridized SSD caches one graph, training or inference: drop the one
        # validation traced
        net.hybridize(static_alloc=True, static_shape=True)
        loss, cls_loss, box_loss, speed = train_detector_epoch(
            net, train_loader, loss_fn, trainer, ctx, num_workers, schedule, epoch * iters,
            'epoch %d/%d' % (epoch + 1, args.epochs), show=is_chief)
        # ... and the training graph just traced (for --loss multibox the detector is net)
        detector.hybridize(static_alloc=True, static_shape=True)
        stats = evaluate_detector(detector, val_loader, ctx, metric)
        for key, value in zip(('loss', 'cls_loss', 'box_loss', 'val_mAP', 'images_per_s'),
                              (loss, cls_loss, box_loss, stats['mAP'], speed)):
            history[key].append(float(value))
        log('[epoch %d] loss %.4f (cls %.4f, box %.4f)  val mAP %.4f  (%s)  %.0f img/s  %.0fs'
            % (epoch + 1, loss, cls_loss, box_loss, stats['mAP'],
               ', '.join('%s %.2f' % (c, stats[c]) for c in classes if c in stats),
               speed * num_workers, time.time() - start))
        if is_chief:  # atomic: a crash leaves the previous epoch's
            checkpoints.save(epoch + 1, net, trainer, history)
            plot_curves({k: history[k] for k in ('loss', 'cls_loss', 'box_loss', 'val_mAP')},
                        os.path.join(args.out_dir, 'curves.png'),
                        title='SSD %s loss on %s' % (args.loss, args.dataset))

    if is_chief and history['val_mAP']:
        finish_detector_run(detector, val_set, classes, history, args, ctx, start, num_workers,
                            'SSD (%s loss)' % args.loss)
    return history


if __name__ == '__main__':
    train(parse_args())
