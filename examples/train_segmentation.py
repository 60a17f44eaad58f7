"""Train a segmentation model with the sigmoid focal loss (+ Dice) on small targets.

A tutorial-style script in the manner of GluonCV's ``scripts/segmentation/train.py``.
With no arguments (``bash run.sh seg-demo``) it trains ``SmallTargetUNet``
(output stride 1, built from GluonCV parts) from scratch with focal + Dice on
seeded synthetic images whose targets are 3-30 px, on the CPU, and ends with
``final validation IoU ...``.  Other losses and models at the same budget::

    python examples/train_segmentation.py --dice-weight 0 --out-dir runs/seg-focal
    python examples/train_segmentation.py --loss bce --out-dir runs/seg-bce+dice
    python examples/train_segmentation.py --loss bce --dice-weight 0 --out-dir runs/seg-bce
    # GluonCV's own softmax cross-entropy on a 2-class head
    python examples/train_segmentation.py --loss softmax --out-dir runs/seg-softmax
    # GluonCV's FastSCNN (output stride 8) instead
    python examples/train_segmentation.py --model fastscnn
    # a VOC-segmentation folder (root holds VOC2012/); --write-voc makes one
    python examples/train_segmentation.py --dataset voc --data-root /tmp/voc --write-voc
    # continue an interrupted run; a larger --epochs extends the schedule
    python examples/train_segmentation.py --resume --epochs 16

It writes under ``--out-dir`` (``runs/segmentation``) the layout every
example shares (``gluon_focal.training``):

* ``checkpoint.json`` + ``epoch-NNNN.params/.states`` -- one atomic checkpoint per
  epoch, numbered from 1 (``--resume`` continues from the last complete one; a
  larger ``--epochs`` extends the learning-rate schedule to the new end, a
  smaller one than already trained is refused),
* ``results.json`` -- per-epoch loss, validation IoU/F1/pixAcc and images/s,
  the final scores (IoU at ``--threshold``, the best threshold's IoU), arguments,
* ``curves.png`` -- loss, IoU and F1 per epoch,
* ``predictions.png`` -- image / ground truth / prediction on validation images,

and ends with ``final validation IoU ...`` (foreground IoU at ``--threshold``).

The steps, top to bottom: arguments -> data -> model -> loss -> evaluation and
pictures -> epochs of (train, validate, checkpoint) -> results.
"""
import argparse
import os
import random
import sys
import time

import numpy as np

import mxnet as mx
from mxnet import gluon
from mxnet.gluon.data.vision import transforms

import gluoncv
from gluoncv.loss import MixSoftmaxCrossEntropyLoss
from gluoncv.utils.metrics import SegmentationMetric

try:
    import gluon_focal  # noqa: F401  (the installed package, with its compiled kernel)
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
from gluon_focal import PriorProbability
from gluon_focal.distributed import create_kvstore, rank_and_size, shard
from gluon_focal.segmentation import (SegmentationBCELoss, SegmentationFocalLoss,
                                      SigmoidSegmentationMetric, SyntheticSmallTargets,
                                      get_small_target_unet, sigmoid_to_two_class,
                                      voc_segmentation, write_voc_segmentation)
from gluon_focal.training import (add_optimizer_args, add_training_args, contexts_from_args,
                                  finish_run, make_trainer, plot_curves, save_figure,
                                  start_or_resume, train_epoch)
from gluon_focal.validation import SEGMENTATION_IGNORE_LABEL as IGNORE_LABEL

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------
# 1. Arguments
# ----------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_training_args(parser, epochs=12, batch_size=16, lr=0.01, out_dir='runs/segmentation')
    data = parser.add_argument_group('data')
    data.add_argument('--dataset', choices=('synthetic', 'voc'), default='synthetic',
                      help='generated small targets, or a VOC-segmentation folder')
    data.add_argument('--data-root', default='',
                      help='VOCdevkit-like folder holding VOC2012/ (--dataset voc)')
    data.add_argument('--write-voc', action='store_true',
                      help='first write the synthetic data as a VOC folder to --data-root')
    data.add_argument('--crop-size', type=int, default=64, help='image side in pixels')
    data.add_argument('--train-size', type=int, default=512, help='synthetic train images')
    data.add_argument('--val-size', type=int, default=128, help='synthetic val images')
    data.add_argument('--data-seed', type=int, default=0, help='synthetic data seed')
    model = parser.add_argument_group('model')
    model.add_argument('--model', choices=('unet', 'fastscnn', 'fcn'), default='unet',
                       help='unet: SmallTargetUNet (output stride 1); fastscnn, fcn: '
                            "GluonCV's (output stride 8)")
    model.add_argument('--width', type=int, default=16, help='unet: channels at stride 1')
    model.add_argument('--backbone', default='resnet18', help='fcn: backbone')
    model.add_argument('--nclass', type=int, default=1,
                       help='sigmoid output channels: 1 for binary masks, C for C '
                            'one-vs-all classes (21 for real Pascal VOC)')
    model.add_argument('--no-aux', action='store_true', help='no auxiliary head')
    model.add_argument('--prior-pi', type=float, default=0.01,
                       help='prior-probability bias init of the final sigmoid conv '
                            '(0 disables)')
    optim = parser.add_argument_group('loss and optimisation')
    optim.add_argument('--loss', choices=('focal', 'bce', 'softmax'), default='focal',
                       help="sigmoid focal, sigmoid BCE, or GluonCV's softmax "
                            'cross-entropy on a 2-class head')
    optim.add_argument('--dice-weight', type=float, default=1.0,
                       help='add this times a soft Dice loss to focal/bce (0: none)')
    optim.add_argument('--dice-batch', action='store_true',
                       help='one Dice over the whole batch instead of per image')
    optim.add_argument('--alpha', type=float, default=0.75,
                       help='focal alpha (weight of the foreground; 0.75 measured best for '
                            'small targets, see docs/segmentation.md)')
    optim.add_argument('--gamma', type=float, default=2.0, help='focal gamma')
    optim.add_argument('--normalization', default='positive',
                       choices=('valid', 'mean', 'positive', 'sum'),
                       help='per-sample reduction of the sigmoid losses; positive '
                            '(sum / foreground pixels, RetinaNet) keeps the focal '
                            'gradients well above the weight-decay term')
    optim.add_argument('--aux-weight', type=float, default=0.2,
                       help="weight of the auxiliary head's loss")
    add_optimizer_args(optim, 'the learning rate decays from --lr to 0 by poly (power 0.9)')
    evaluation = parser.add_argument_group('evaluation')
    evaluation.add_argument('--threshold', type=float, default=0.5,
                            help='sigmoid probability above which a pixel is foreground')
    evaluation.add_argument('--num-panels', type=int, default=4,
                            help='validation images in predictions.png')
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------
# 2. Data: (image, mask) pairs the way GluonCV segmentation datasets give them
# ----------------------------------------------------------------------------------
def get_datasets(args):
    input_transform = transforms.Compose([transforms.ToTensor(),
                                          transforms.Normalize(MEAN, STD)])
    if args.dataset == 'synthetic':
        train = SyntheticSmallTargets('train', args.train_size, args.crop_size,
                                      seed=args.data_seed, transform=input_transform)
        val = SyntheticSmallTargets('val', args.val_size, args.crop_size,
                                    seed=args.data_seed, transform=input_transform)
        return train, val
    if not args.data_root:
        raise SystemExit('--dataset voc needs --data-root')
    if args.write_voc and not os.path.isdir(os.path.join(args.data_root, 'VOC2012')):
        write_voc_segmentation(args.data_root, args.train_size, args.val_size,
                               args.crop_size, seed=args.data_seed)
    # GluonCV's 'train' mode: random mirror, scale (0.5-2x of base_size) and crop;
    # 'val' mode: resize the short side to crop_size and centre-crop.
    kwargs = dict(transform=input_transform, base_size=args.crop_size,
                  crop_size=args.crop_size)
    train = voc_segmentation(args.data_root, 'train', mode='train', **kwargs)
    val = voc_segmentation(args.data_root, 'val', mode='val', **kwargs)
    return train, val


# ----------------------------------------------------------------------------------
# 3. Model: a GluonCV segmentation network, no pretrained weights
# ----------------------------------------------------------------------------------
def output_channels(args):
    # a softmax head needs a background channel; sigmoid heads do not
    return max(2, args.nclass + 1) if args.loss == 'softmax' and args.nclass == 1 \
        else args.nclass


def get_model(args, ctx):
    nclass, aux = output_channels(args), not args.no_aux
    if args.model == 'unet':
        prior_pi = args.prior_pi if args.loss != 'softmax' and args.prior_pi > 0 else None
        net = get_small_target_unet(nclass, aux=aux, width=args.width, prior_pi=prior_pi,
                                    ctx=ctx)
        net.hybridize(static_alloc=True)
        return net
    if args.model == 'fastscnn':
        net = gluoncv.model_zoo.FastSCNN(nclass, aux=aux, pretrained_base=False,
                                         crop_size=args.crop_size, ctx=ctx[0])
        final_convs = [net.classifier.conv]
        if aux:
            final_convs.append(net.auxlayer.block[-1])
    else:
        from gluoncv.model_zoo.fcn import _FCNHead
        net = gluoncv.model_zoo.FCN(nclass, backbone=args.backbone, aux=aux,
                                    pretrained_base=False, crop_size=args.crop_size,
                                    ctx=ctx[0])
        # GluonCV's FCN heads assume resnet50's 2048/1024 channels: size them
        # for the chosen backbone (resnet18/34: 512/256).
        c4 = {'resnet18': 512, 'resnet34': 512}.get(args.backbone, 2048)
        with net.name_scope():
            net.head = _FCNHead(c4, nclass)
            net.head.collect_params().setattr('lr_mult', 10)
            if aux:
                net.auxlayer = _FCNHead(c4 // 2, nclass)
                net.auxlayer.collect_params().setattr('lr_mult', 10)
        final_convs = [net.head.block[-1]] + ([net.auxlayer.block[-1]] if aux else [])
    net.collect_params().initialize(mx.init.Xavier(magnitude=2), ctx=ctx, force_reinit=True)
    if args.loss != 'softmax' and args.prior_pi > 0:
        # RetinaNet's prior-probability init: every pixel starts at p = pi, so
        # the flood of easy background pixels does not dominate the first steps.
        for conv in final_convs:
            conv.bias.initialize(PriorProbability(args.prior_pi), ctx=ctx,
                                 force_reinit=True)
    net.hybridize(static_alloc=True)
    return net


def get_criterion(args):
    common = dict(aux=not args.no_aux, aux_weight=args.aux_weight,
                  ignore_label=IGNORE_LABEL)
    sigmoid = dict(normalization=args.normalization, dice_weight=args.dice_weight,
                   dice_batch=args.dice_batch, **common)
    if args.loss == 'focal':
        return SegmentationFocalLoss(alpha=args.alpha, gamma=args.gamma, **sigmoid)
    if args.loss == 'bce':
        return SegmentationBCELoss(**sigmoid)
    if args.dice_weight:
        raise SystemExit('--loss softmax has no Dice term: add --dice-weight 0')
    return MixSoftmaxCrossEntropyLoss(**common)


def loss_name(args):
    """E.g. 'focal (alpha 0.25) + 1 x Dice', for titles and logs."""
    name = 'focal (alpha %g)' % args.alpha if args.loss == 'focal' else args.loss
    if args.loss != 'softmax' and args.dice_weight:
        name += ' + %g x Dice' % args.dice_weight
    return name


def foreground_logits(args, output):
    """The main output as sigmoid logits: a softmax background/foreground head
    becomes x_fg - x_bg (sigmoid of it is the softmax foreground probability)."""
    if args.loss == 'softmax' and args.nclass == 1:
        return output[:, 1:2] - output[:, 0:1]
    return output


# ----------------------------------------------------------------------------------
# 4. Evaluation
# ----------------------------------------------------------------------------------
def evaluate(args, net, val_loader, ctx):
    """IoU/F1/pixAcc at ``--threshold``, and the best threshold's IoU."""
    metric = SigmoidSegmentationMetric(threshold=args.threshold, ignore_label=IGNORE_LABEL)
    # GluonCV's metric, fed the right way from a one-channel sigmoid output
    gcv_metric = SegmentationMetric(nclass=2) if args.nclass == 1 else None
    for data, label in val_loader:
        data = gluon.utils.split_and_load(data, ctx, even_split=False)
        label = gluon.utils.split_and_load(label, ctx, even_split=False)
        logits = [foreground_logits(args, net(x)[0]) for x in data]
        metric.update(label, logits)
        if gcv_metric is not None:
            gcv_metric.update(label, [sigmoid_to_two_class(l, args.threshold) for l in logits])
    names, values = metric.get()
    scores = dict(zip(names, values))
    if gcv_metric is not None:
        scores['gluoncv_mIoU'] = float(gcv_metric.get()[1])
    # a focal-trained model is often under-confident at 0.5: the best threshold
    # (chosen on the validation set itself, so optimistic) separates calibration
    # from ranking
    scores['best_threshold'], scores['best_IoU'] = metric.get_best_threshold()
    scores['IoU_by_threshold'] = metric.get_by_threshold()
    return scores


# ----------------------------------------------------------------------------------
# 5. Pictures
# ----------------------------------------------------------------------------------
def save_panel(args, net, val_set, ctx, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    count = min(args.num_panels, len(val_set))
    fig, axes = plt.subplots(count, 3, figsize=(7.5, 2.5 * count), squeeze=False)
    for row in range(count):
        image, mask = val_set[row]
        logits = foreground_logits(args, net(image.expand_dims(0).as_in_context(ctx[0]))[0])
        prob = mx.nd.sigmoid(logits)[0].asnumpy().max(axis=0)
        shown = image.asnumpy().transpose(1, 2, 0) * np.array(STD) + np.array(MEAN)
        mask = mask.asnumpy().astype(np.float32)
        mask = mask if mask.ndim == 2 else mask.max(axis=0)
        panels = [(np.clip(shown, 0, 1), 'image', {}),
                  (np.ma.masked_equal(mask, -1), 'ground truth (ignore blank)',
                   dict(cmap='gray', vmin=0, vmax=max(1, mask.max()))),
                  (prob, 'prediction p (contour: p > %.2f)' % args.threshold,
                   dict(cmap='magma', vmin=0, vmax=1))]
        for col, (img, title, kw) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(img, interpolation='nearest', **kw)
            if col == 2:
                ax.contour(prob > args.threshold, levels=[0.5], colors='cyan',
                           linewidths=0.8)
            ax.set_title(title, fontsize=8)
            ax.axis('off')
    fig.suptitle('%s loss, validation images' % loss_name(args))
    fig.tight_layout()
    save_figure(fig, path)


# ----------------------------------------------------------------------------------
# 6. Training: epochs of (train, validate, checkpoint), then the results
# ----------------------------------------------------------------------------------
HISTORY = ('loss', 'val_IoU', 'val_F1', 'val_pixAcc', 'images_per_s')


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
    log = print if is_chief else (lambda *a, **k: None)

    train_set, val_set = get_datasets(args)
    train_set = shard(train_set, kv)       # this worker's part under dist_* kvstores
    train_loader = gluon.data.DataLoader(train_set, args.batch_size, shuffle=True,
                                         last_batch='rollover', num_workers=args.num_workers)
    val_loader = gluon.data.DataLoader(val_set, args.batch_size, last_batch='keep',
                                       num_workers=args.num_workers)
    log('%s on %s, %s loss, %d train / %d val images of %d px, contexts %s, kvstore %s' % (
        args.model, args.dataset, loss_name(args), len(train_set), len(val_set),
        args.crop_size, ctx, args.kvstore))

    net = get_model(args, ctx)
    criterion = get_criterion(args)
    if args.loss != 'softmax':     # GluonCV's softmax loss does not hybridize on 1.9
        criterion.hybridize()
    iters = len(train_loader)
    # MXNet's own scheduler: under dist_* kvstores the optimizer is pickled to the
    # servers, which cannot import gluoncv
    schedule = mx.lr_scheduler.PolyScheduler(max_update=max(1, args.epochs * iters),
                                             base_lr=args.lr, pwr=0.9)
    trainer = make_trainer(net, args, schedule, kv)
    checkpoints, start_epoch, history = start_or_resume(args, net, trainer, schedule, iters,
                                                        ctx, log, HISTORY)

    def losses(data, label):  # GluonCV's calling convention: criterion(*outputs, target)
        return ([criterion(*net(x), y) for x, y in zip(data, label)],)

    scores = None
    for epoch in range(start_epoch, args.epochs):  # epoch + 1 is its number
        (loss,), speed = train_epoch(train_loader, losses, trainer, ctx, num_workers, schedule,
                                     epoch * iters, 'epoch %d/%d' % (epoch + 1, args.epochs),
                                     show=is_chief, per_sample=True)
        scores = evaluate(args, net, val_loader, ctx)
        for key, value in zip(HISTORY, (loss, scores['IoU'], scores['F1'], scores['pixAcc'],
                                        speed)):
            history[key].append(float(value))
        log('[epoch %d] loss %.5f  val IoU %.4f  F1 %.4f  pixAcc %.5f  best threshold %.2f: '
            'IoU %.4f%s  %.0f img/s  %.0fs' % (
                epoch + 1, loss, scores['IoU'], scores['F1'], scores['pixAcc'],
                scores['best_threshold'], scores['best_IoU'],
                '  (GluonCV mIoU over bg+fg %.4f)' % scores['gluoncv_mIoU']
                if 'gluoncv_mIoU' in scores else '', speed * num_workers, time.time() - start))
        if is_chief:  # atomic: a crash leaves the previous epoch's
            checkpoints.save(epoch + 1, net, trainer, history)
            plot_curves({k: history[k] for k in ('loss', 'val_IoU', 'val_F1')},
                        os.path.join(args.out_dir, 'curves.png'),
                        '%s on %s (%s loss)' % (args.model, args.dataset, loss_name(args)))

    if is_chief and history['val_IoU']:
        if scores is None:  # resumed after the last epoch: score the checkpoint
            scores = evaluate(args, net, val_loader, ctx)
        save_panel(args, net, val_set, ctx, os.path.join(args.out_dir, 'predictions.png'))
        final = {'val_IoU': scores['IoU'], 'val_F1': scores['F1'],
                 'val_pixAcc': scores['pixAcc'], 'threshold': args.threshold,
                 'best_threshold': scores['best_threshold'],
                 'best_threshold_IoU': scores['best_IoU'],
                 'IoU_by_threshold': {'%.2f' % t: round(v, 4)
                                      for t, v in scores['IoU_by_threshold'].items()}}
        finish_run(args, history, final,
                   'IoU %.3f at threshold %.2f (F1 %.3f; best threshold %.2f: IoU %.3f)' % (
                       scores['IoU'], args.threshold, scores['F1'], scores['best_threshold'],
                       scores['best_IoU']), 'predictions', start, num_workers)
    return history


if __name__ == '__main__':
    main()
