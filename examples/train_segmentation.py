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

Each epoch writes an atomic checkpoint to ``--out-dir`` (``--resume`` picks the
last one up) and prints the loss and the validation IoU/F1; at the end it
writes ``predictions.png`` (image / ground truth / prediction),
``curves.png`` (loss and IoU per epoch) and ``results.json``, and prints
the summary as one JSON line, then ``final validation IoU ...`` (foreground
IoU at ``--threshold``).
"""
import argparse
import json
import logging
import os
import random
import sys
import time

import numpy as np

import mxnet as mx
from mxnet import autograd, gluon
from mxnet.gluon.data.vision import transforms

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import gluoncv  # noqa: E402
from gluoncv.loss import MixSoftmaxCrossEntropyLoss  # noqa: E402
from gluoncv.utils.metrics import SegmentationMetric  # noqa: E402

import gluon_focal  # noqa: E402
from gluon_focal.distributed import create_kvstore, rank_and_size, shard  # noqa: E402
from gluon_focal.segmentation import (SegmentationBCELoss, SegmentationFocalLoss,  # noqa: E402
                                      SigmoidSegmentationMetric, SyntheticSmallTargets,
                                      get_small_target_unet, sigmoid_to_two_class,
                                      voc_segmentation, write_voc_segmentation)
from gluon_focal.validation import SEGMENTATION_IGNORE_LABEL as IGNORE_LABEL  # noqa: E402
from gluon_focal.training import (CheckpointManager, add_training_args,  # noqa: E402
                                  contexts_from_args, plot_curves, progress, save_figure)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------
# 1. Arguments
# ----------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Segmentation with the sigmoid focal loss')
    add_training_args(parser, epochs=12, batch_size=16, lr=0.01, out_dir='runs/segmentation')
    parser.add_argument('--loss', choices=('focal', 'bce', 'softmax'), default='focal')
    parser.add_argument('--dice-weight', type=float, default=1.0,
                        help='add this times a soft Dice loss to focal/bce (0: none)')
    parser.add_argument('--dice-batch', action='store_true',
                        help='one Dice over the whole batch instead of per image')
    parser.add_argument('--alpha', type=float, default=0.75,
                        help='focal alpha (weight of the foreground; 0.75 measured best for '
                             'small targets, see docs/segmentation.md)')
    parser.add_argument('--gamma', type=float, default=2.0, help='focal gamma')
    parser.add_argument('--normalization', default='positive',
                        choices=('valid', 'mean', 'positive', 'sum'),
                        help='per-sample reduction of the sigmoid losses; positive '
                             '(sum / foreground pixels, RetinaNet) keeps the focal '
                             'gradients well above the weight-decay term')
    parser.add_argument('--aux-weight', type=float, default=0.2)
    parser.add_argument('--no-aux', action='store_true', help='no auxiliary head')
    parser.add_argument('--prior-pi', type=float, default=0.01,
                        help='prior-probability bias init of the final sigmoid conv '
                             '(0 disables)')
    parser.add_argument('--model', choices=('unet', 'fastscnn', 'fcn'), default='unet',
                        help='unet: SmallTargetUNet (output stride 1); fastscnn, fcn: '
                             "GluonCV's (output stride 8)")
    parser.add_argument('--width', type=int, default=16, help='unet: channels at stride 1')
    parser.add_argument('--backbone', default='resnet18', help='FCN backbone')
    parser.add_argument('--optimizer', choices=('adam', 'sgd'), default='adam')
    parser.add_argument('--wd', type=float, default=1e-4)
    parser.add_argument('--dataset', choices=('synthetic', 'voc'), default='synthetic')
    parser.add_argument('--data-root', default='',
                        help='VOCdevkit-like folder holding VOC2012/ (--dataset voc)')
    parser.add_argument('--write-voc', action='store_true',
                        help='first write the synthetic data as a VOC folder to --data-root')
    parser.add_argument('--nclass', type=int, default=1,
                        help='sigmoid output channels: 1 for binary masks, C for C '
                             'one-vs-all classes (21 for real Pascal VOC)')
    parser.add_argument('--crop-size', type=int, default=64)
    parser.add_argument('--train-size', type=int, default=512, help='synthetic train images')
    parser.add_argument('--val-size', type=int, default=128, help='synthetic val images')
    parser.add_argument('--data-seed', type=int, default=0, help='synthetic data seed')
    parser.add_argument('--threshold', type=float, default=0.5,
                        help='sigmoid probability above which a pixel is foreground')
    parser.add_argument('--num-panels', type=int, default=4,
                        help='validation images in predictions.png')
    parser.add_argument('--log-interval', type=int, default=0,
                        help='also log the loss every N batches (0: per epoch only)')
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
            conv.bias.initialize(gluon_focal.PriorProbability(args.prior_pi), ctx=ctx,
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
# 6. Training
# ----------------------------------------------------------------------------------
def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    random.seed(args.seed)
    np.random.seed(args.seed)
    mx.random.seed(args.seed)
    ctx = contexts_from_args(args)
    kv = create_kvstore(args.kvstore)

    train_set, val_set = get_datasets(args)
    train_set = shard(train_set, kv)       # this worker's part under dist_* kvstores
    train_loader = gluon.data.DataLoader(train_set, args.batch_size, shuffle=True,
                                         last_batch='rollover', num_workers=args.num_workers)
    val_loader = gluon.data.DataLoader(val_set, args.batch_size, last_batch='keep',
                                       num_workers=args.num_workers)
    iters_per_epoch = len(train_loader)

    net = get_model(args, ctx)
    criterion = get_criterion(args)
    if args.loss != 'softmax':     # GluonCV's softmax loss does not hybridize on 1.9
        criterion.hybridize()
    # MXNet's own scheduler: under dist_* kvstores the optimizer is pickled to the
    # servers, which cannot import gluoncv
    scheduler = mx.lr_scheduler.PolyScheduler(max_update=max(1, args.epochs * iters_per_epoch),
                                              base_lr=args.lr, pwr=0.9)
    opt_params = {'learning_rate': args.lr, 'lr_scheduler': scheduler, 'wd': args.wd}
    if args.optimizer == 'sgd':
        opt_params['momentum'] = 0.9
    trainer = gluon.Trainer(net.collect_params(), args.optimizer, opt_params,
                            kvstore=kv)

    # every worker resumes (so all run the same steps under dist_sync); the chief saves
    rank, num_workers = rank_and_size(kv)
    is_chief = rank == 0
    checkpoints = CheckpointManager(args.out_dir)
    start_epoch, history = 0, {}
    if args.resume:
        start_epoch, history = checkpoints.restore(net, trainer, ctx=ctx)
        logging.info('resumed after epoch %d' % (start_epoch - 1) if start_epoch else
                     'nothing to resume, starting from scratch')
    for key in ('train_loss', 'val_IoU', 'val_F1', 'val_pixAcc'):
        history.setdefault(key, [])

    logging.info('%s | %s | %s loss | %d train / %d val images of %d px | ctx %s',
                 args.model, args.dataset, loss_name(args), len(train_set), len(val_set),
                 args.crop_size, ctx)
    start = time.time()
    for epoch in range(start_epoch, args.epochs):
        total, batches = 0.0, 0
        bar = progress(train_loader, total=iters_per_epoch, desc='epoch %d' % epoch)
        for i, (data, label) in enumerate(bar):
            data = gluon.utils.split_and_load(data, ctx, even_split=False)
            label = gluon.utils.split_and_load(label, ctx, even_split=False)
            with autograd.record(True):
                # GluonCV's calling convention: criterion(*outputs, target)
                losses = [criterion(*net(x), y) for x, y in zip(data, label)]
            autograd.backward(losses)
            # dist_sync sums the workers' gradients: normalise by the global batch
            trainer.step(num_workers * sum(x.shape[0] for x in data))
            total += sum(l.sum().asscalar() for l in losses) / sum(x.shape[0] for x in data)
            batches += 1
            bar.set_postfix(loss='%.4f' % (total / batches))
            if args.log_interval and (i + 1) % args.log_interval == 0:
                logging.info('epoch %d batch %d loss %.5f', epoch, i + 1, total / batches)
        scores = evaluate(args, net, val_loader, ctx)
        history['train_loss'].append(total / max(batches, 1))
        history['val_IoU'].append(scores['IoU'])
        history['val_F1'].append(scores['F1'])
        history['val_pixAcc'].append(scores['pixAcc'])
        logging.info('epoch %d: loss %.5f  val IoU %.4f  F1 %.4f  pixAcc %.5f  best '
                     'threshold %.2f: IoU %.4f%s  %.0f s', epoch, history['train_loss'][-1],
                     scores['IoU'], scores['F1'], scores['pixAcc'], scores['best_threshold'],
                     scores['best_IoU'], '  (GluonCV mIoU over bg+fg %.4f)'
                     % scores['gluoncv_mIoU'] if 'gluoncv_mIoU' in scores else '',
                     time.time() - start)
        if is_chief:
            checkpoints.save(epoch, net, trainer, history)

    if is_chief:
        os.makedirs(args.out_dir, exist_ok=True)
        save_panel(args, net, val_set, ctx, os.path.join(args.out_dir, 'predictions.png'))
        plot_curves({'train loss': history['train_loss'], 'val IoU': history['val_IoU'],
                     'val F1': history['val_F1']},
                    os.path.join(args.out_dir, 'curves.png'),
                    '%s on %s (%s loss)' % (args.model, args.dataset, loss_name(args)))
    final = evaluate(args, net, val_loader, ctx)
    summary = {'loss': args.loss, 'dice_weight': args.dice_weight if args.loss != 'softmax'
               else 0.0, 'alpha': args.alpha if args.loss == 'focal' else None,
               'model': args.model, 'dataset': args.dataset, 'seed': args.seed,
               'epochs': len(history['val_IoU']), 'seconds': round(time.time() - start, 1),
               'final_IoU': final['IoU'], 'final_F1': final['F1'],
               'best_epoch_IoU': max(history['val_IoU']) if history['val_IoU'] else None,
               'best_threshold': final['best_threshold'],
               'best_threshold_IoU': final['best_IoU'],
               'IoU_by_threshold': {'%.2f' % t: round(v, 4)
                                    for t, v in final['IoU_by_threshold'].items()}}
    if is_chief:
        with open(os.path.join(args.out_dir, 'results.json'), 'w') as f:
            json.dump(summary, f, indent=1)
    print(json.dumps(summary))       # one machine-readable line, then the human one
    print('final validation IoU %.3f at threshold %.2f (F1 %.3f; best threshold %.2f: '
          'IoU %.3f) after %d epochs, %.0f s this run; curves, predictions and checkpoints '
          'in %s' % (final['IoU'], args.threshold, final['F1'], final['best_threshold'],
                     final['best_IoU'], summary['epochs'], summary['seconds'], args.out_dir))
    return summary


if __name__ == '__main__':
    main()
