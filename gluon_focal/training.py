"""The pieces every training example shares, so that they follow one convention.

* arguments (:func:`add_training_args`, defaults shown by ``--help``) and contexts;
* one gradient convention (:func:`step`): each worker's loss is a mean (over
  its samples, or over the batch's positive anchors for detection), and the
  kvstore's sum over workers is divided by their number;
* resuming that keeps the learning-rate schedule right (:func:`resume`): a
  larger ``--epochs`` extends it to the new end, a smaller one than already
  trained is refused (the detectors' schedule: :func:`warmup_cosine`);
* one training epoch (:func:`train_epoch`): batches split over the
  contexts, the update made by :func:`step`, a progress bar with the running
  loss and the learning rate of the update being made;
* one output layout in ``--out-dir``: ``checkpoint.json`` + ``epoch-NNNN.params``
  / ``.states`` (:class:`CheckpointManager`; ``NNNN`` is the epoch's number),
  ``results.json`` (per-epoch metrics, final metrics, arguments;
  :func:`write_results`), ``curves.png`` (:func:`plot_curves`) and a
  predictions PNG, then the chief's last line (:func:`finish_run`). Epochs are
  numbered from 1 everywhere: file names, ``checkpoint.json``,
  ``results.json``, logs;
* for the detection examples: datasets (generated shapes, VOC or COCO
  folders), VOC07 or COCO evaluation, and drawing detections.
"""
import contextlib
import glob
import io
import json
import os
import tempfile
import time

import numpy as np
import mxnet as mx

from .optim import keep_multi_adam


def add_training_args(parser, *, epochs, batch_size, lr, out_dir):
    """Add the arguments every example takes, with example-specific defaults."""
    parser.add_argument('--epochs', type=int, default=epochs, help='number of epochs')
    parser.add_argument('--batch-size', type=int, default=batch_size,
                        help='total batch size over all contexts')
    parser.add_argument('--lr', type=float, default=lr, help='peak learning rate')
    parser.add_argument('--gpus', type=str, default='',
                        help='comma-separated GPU ids; empty means CPU')
    parser.add_argument('--num-cpu-contexts', type=int, default=1,
                        help='CPU contexts to split each batch over (CPU only)')
    parser.add_argument('--kvstore', type=str, default='device',
                        help='local, device, dist_sync or dist_device_sync')
    parser.add_argument('--num-workers', type=int, default=0,
                        help='data-loader worker processes')
    parser.add_argument('--out-dir', type=str, default=out_dir,
                        help='checkpoints, results.json, curves.png and detections go here')
    parser.add_argument('--resume', action='store_true',
                        help='continue from the last complete checkpoint in --out-dir')
    parser.add_argument('--seed', type=int, default=0, help='random seed (data and init)')
    return parser


def add_optimizer_args(group, optimizer_help):
    """--optimizer (adam or sgd), --wd and --momentum, read by :func:`make_trainer`."""
    group.add_argument('--optimizer', choices=('adam', 'sgd'), default='adam',
                       help=optimizer_help)
    group.add_argument('--wd', type=float, default=1e-4, help='weight decay')
    group.add_argument('--momentum', type=float, default=0.9, help='sgd momentum')


def make_trainer(net, args, schedule, kv):
    """The gluon.Trainer of --optimizer/--lr/--wd/--momentum (:func:`add_optimizer_args`)
    with the learning-rate ``schedule``."""
    from mxnet import gluon
    opt_params = {'learning_rate': args.lr, 'wd': args.wd, 'lr_scheduler': schedule}
    optimizer = args.optimizer
    if optimizer == 'sgd':
        opt_params['momentum'] = args.momentum
    elif optimizer == 'adam':
        optimizer = 'multiadam'  # Adam's numbers, one operator call per step (gluon_focal.optim)
    if kv is not None and not isinstance(kv, str) and 'dist' not in kv.type:
        # by name, so that gluon.Trainer drops it for a single context, as it does for
        # every name: a KVStore object would be kept, and would update the parameters
        # one at a time (kvstore updater) after copying every gradient and weight
        kv = kv.type
    return gluon.Trainer(net.collect_params(), optimizer, opt_params, kvstore=kv)


def contexts_from_args(args):
    """``[mx.gpu(i), ...]`` for ``--gpus``, else ``num_cpu_contexts`` CPU contexts."""
    if args.gpus.strip():
        return [mx.gpu(int(i)) for i in args.gpus.split(',')]
    return [mx.cpu(i) for i in range(max(1, args.num_cpu_contexts))]


_TMP_PREFIX = '.tmp-'
_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(path, write):
    """Write via a temporary file in the same folder, then rename: a crash
    leaves either the old file or the new one, never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_TMP_PREFIX)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _holds_optimizer_states(trainer):
    """Under a dist_* kvstore the optimizer states live on the servers, and
    ``Trainer.save_states`` refuses: such checkpoints hold the weights only."""
    if trainer is None:
        return False
    # mxnet 1.9's Trainer creates its kvstore lazily: before the first step only
    # the argument it was given is known
    kvstore = trainer._kvstore if trainer._kv_initialized else \
        trainer._kvstore_params['kvstore']
    kind = kvstore if isinstance(kvstore, str) else getattr(kvstore, 'type', '')
    return 'dist' not in (kind or '')


class CheckpointManager:
    """Per-epoch checkpoints that survive being killed at any moment.

    Epoch ``N`` (numbered from 1: after it, ``N`` epochs are trained) writes
    ``epoch-NNNN.params`` and ``epoch-NNNN.states``, then ``checkpoint.json``
    naming them (relative to the folder) with ``'epoch': N``; the json is
    written last, so it only ever points at complete files. Temporary files
    that a killed run left behind are removed when the manager is created.
    """

    def __init__(self, directory):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.index_path = os.path.join(directory, 'checkpoint.json')
        for leftover in glob.glob(os.path.join(directory, _TMP_PREFIX + '*')):
            os.remove(leftover)

    def save(self, epoch, net, trainer, history):
        """Checkpoint ``net`` and ``trainer`` after epoch number ``epoch`` (from 1)."""
        if epoch < 1:
            raise ValueError('epoch: epochs are numbered from 1, got %r' % (epoch,))
        stem = 'epoch-%04d' % epoch
        _atomic_write(os.path.join(self.directory, stem + '.params'), net.save_parameters)
        trainer = trainer if _holds_optimizer_states(trainer) else None
        if trainer is not None:
            _atomic_write(os.path.join(self.directory, stem + '.states'), trainer.save_states)

        def write_index(path):
            with open(path, 'w') as f:
                json.dump({'epoch': epoch, 'epochs_numbered_from': 1,
                           'params': stem + '.params',
                           'states': stem + '.states' if trainer is not None else None,
                           'history': history}, f)
        _atomic_write(self.index_path, write_index)

    def latest(self):
        """The last complete checkpoint's index entry (with full paths), or None;
        its ``'epoch'`` is the number of epochs trained."""
        if not os.path.exists(self.index_path):
            return None
        with open(self.index_path) as f:
            entry = json.load(f)
        if 'epochs_numbered_from' not in entry:
            # written before epochs were numbered from 1: 'epoch' is the last one's 0-based index
            entry['epoch'] += 1
            entry['epochs_numbered_from'] = 1
        for key in ('params', 'states'):  # stored relative, so the folder can move
            if entry[key]:
                entry[key] = os.path.join(self.directory, entry[key])
        return entry

    def restore(self, net, trainer, ctx=None):
        """Load the last complete checkpoint; return (epochs trained, history)."""
        entry = self.latest()
        if entry is None:
            return 0, {}
        net.load_parameters(entry['params'], ctx=ctx)
        if _holds_optimizer_states(trainer) and entry['states']:
            trainer.load_states(entry['states'])
            keep_multi_adam(trainer)  # states saved by plain Adam (before MultiAdam)
        return entry['epoch'], entry['history']


def progress(iterable, total=None, desc='', disable=False):
    """A tqdm progress bar (gluoncv depends on tqdm) that also works in logs."""
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, ncols=100, mininterval=1.0, disable=disable)


def plot_curves(history, path, title=''):
    """Plot each series of ``history`` ({name: [value per epoch]}) in its own panel."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = [n for n, values in history.items() if values]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.5 * max(1, len(names)), 3.5))
    axes = axes if len(names) > 1 else [axes]
    for ax, name in zip(axes, names):
        values = history[name]
        ax.plot(range(1, len(values) + 1), values, marker='o')
        ax.set_xlabel('epoch')
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path, dpi=100):
    """Write a matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=dpi))
    plt.close(fig)


# ---------------------------------------------------------------------------
# one gradient convention, one schedule, resuming
# ---------------------------------------------------------------------------
def step(trainer, num_workers, batch_size=1):
    """``trainer.step`` with the examples' one gradient convention.

    The gradient applied is that of the loss averaged over everything the
    step saw: each worker's summed per-sample losses are divided by
    ``batch_size`` (its samples; 1 for losses already normalised per positive
    anchor, as the detection losses are) and the kvstore's sum over the
    ``num_workers`` dist workers by their number."""
    trainer.step(batch_size * num_workers)


def warmup_cosine(lr, epochs, iters_per_epoch, warmup_epochs=1.0, final_lr=0.0):
    """Per-iteration linear warm-up from ``lr / 100``, then cosine decay to
    ``final_lr`` at the end of ``epochs``.  MXNet's own scheduler: under dist_*
    kvstores the optimizer is pickled to the servers, which cannot import gluoncv."""
    total = max(1, epochs * iters_per_epoch)
    warmup = min(int(round(warmup_epochs * iters_per_epoch)), total // 2)
    return mx.lr_scheduler.CosineScheduler(max_update=total, base_lr=lr, final_lr=final_lr,
                                           warmup_steps=warmup, warmup_begin_lr=lr * 0.01)


def resume(checkpoints, net, trainer, schedule, epochs, iters_per_epoch, ctx=None):
    """Continue from the last complete checkpoint; return ``(done, history)``
    (``done``: epochs trained, so the next one is number ``done + 1``; ``(0, {})``
    without a checkpoint).

    Weights and optimizer state (momentum, update count) come from the
    checkpoint, the learning-rate schedule from this run: with a larger
    ``epochs`` the schedule runs to the new end from where training stopped.
    A checkpoint with more epochs than ``epochs`` is refused."""
    entry = checkpoints.latest()
    if entry is None:
        return 0, {}
    done = entry['epoch']
    if done > epochs:
        raise SystemExit('--resume: %s holds %d trained epochs but --epochs is %d; pass '
                         '--epochs %d or more to continue (the learning-rate schedule is '
                         'extended to the new end)' % (checkpoints.directory, done, epochs, done))
    done, history = checkpoints.restore(net, trainer, ctx=ctx)
    optimizer = trainer.optimizer
    optimizer.lr_scheduler = schedule  # the saved optimizer carries the old run's schedule
    if not entry['states']:  # dist_*: weights only; the update count restarts here
        optimizer.begin_num_update = optimizer.num_update = done * iters_per_epoch
    return done, history


def start_or_resume(args, net, trainer, schedule, iters_per_epoch, ctx, log, keys):
    """``(checkpoints, epochs done, history)``: with --resume from the last complete
    checkpoint in --out-dir (:func:`resume`), else from scratch; ``history`` holds a
    list for each of ``keys``. Every worker resumes, so that all run the same steps
    under dist_sync; only the chief saves."""
    checkpoints = CheckpointManager(args.out_dir)
    done, history = 0, {}
    if args.resume:
        done, history = resume(checkpoints, net, trainer, schedule, args.epochs,
                               iters_per_epoch, ctx)
        log('resumed after epoch %d of %d' % (done, args.epochs) if done else
            'nothing to resume, starting from scratch')
    for key in keys:
        history.setdefault(key, [])
    return checkpoints, done, history


def train_epoch(loader, losses, trainer, ctx, num_workers, schedule, first_update, desc,
                show=True, per_sample=False):
    """One training epoch with the examples' conventions.

    Each batch of ``loader`` (a tuple of arrays, samples on axis 0) is split
    over ``ctx``; ``losses(*parts)`` (called under ``autograd.record``, each
    part a list with one array per context) returns ``(totals, *components)``,
    each such a list. ``totals`` are backpropagated and the update is made by
    :func:`step`: with ``per_sample`` the losses are one per sample and the
    gradient is averaged over the batch (segmentation); without, they are
    already normalised over the batch (detection: per positive anchor).

    The bar (shown when ``show``) gives the running loss and the learning rate
    of the update that batch made, read from ``schedule`` at update
    ``first_update + batch``: under dist_* the optimizer on this worker never
    counts updates. A batch's losses are read (a host sync) only once the next
    batch is queued, so the engine computes while Python loads data.  Returns ``(means, images per second)``, ``means`` the
    per-batch means of ``totals`` and of each component (an array)."""
    from mxnet import autograd, gluon
    sums, batches, images = 0., 0, 0
    pending = None  # the previous batch's losses, read once this batch is queued

    def account(values, normaliser):
        nonlocal sums, batches
        sums = sums + np.array([sum(v.sum().asscalar() for v in part)
                                for part in values]) / normaliser
        batches += 1
        bar.set_postfix(loss='%.4f' % (sums[0] / batches),
                        lr='%.2e' % schedule(first_update + batches))

    tic = time.time()
    bar = progress(loader, total=len(loader), desc=desc, disable=not show)
    for batch in bar:
        parts = [gluon.utils.split_and_load(part, ctx_list=ctx, batch_axis=0, even_split=False)
                 for part in batch]
        with autograd.record():
            values = losses(*parts)
        autograd.backward(values[0])
        samples = batch[0].shape[0]
        normaliser = samples if per_sample else 1
        step(trainer, num_workers, normaliser)
        images += samples
        # Reading a loss waits for its batch. Read the previous batch's: this one
        # computes meanwhile, and the loader prepares the next (one batch in flight).
        if pending is not None:
            account(*pending)
        pending = values, normaliser
    if pending is not None:
        account(*pending)
    bar.close()
    if not batches:
        raise ValueError('loader: no training batch (%d batches); fewer samples than the '
                         'batch size?' % len(loader))
    return sums / batches, images / max(1e-9, time.time() - tic)


def write_results(path, history, final=None, **extra):
    """Write ``results.json`` atomically: ``epochs`` (numbered from 1), the
    per-epoch ``history`` ({metric: [value per epoch]}), ``final`` metrics and
    anything in ``extra`` (e.g. ``args=vars(args)``)."""
    length = max([len(v) for v in history.values()] + [0])
    results = dict(epochs=list(range(1, length + 1)), history=history, final=final or {})
    results.update(extra)

    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(results, f, indent=1, default=str)
    _atomic_write(path, write)
    return results


def finish_run(args, history, final, summary, picture, start, num_workers):
    """The chief's end of every example, after it drew its predictions PNG:
    ``results.json`` (with the ``final`` metrics, the seconds of this run and
    the arguments) and the last line, ``final validation <summary> after N
    epochs (...)`` (``picture`` names the PNG in it)."""
    write_results(os.path.join(args.out_dir, 'results.json'), history, final=final,
                  seconds_this_run=time.time() - start, args=vars(args))
    # every epoch trains the same images: the run's rate is the harmonic mean
    speeds = history['images_per_s']
    print('final validation %s after %d epochs (%.0f s this run, trained at %.0f img/s over '
          'the epochs); results, curves, %s and checkpoints in %s' % (
              summary, len(history['loss']), time.time() - start,
              len(speeds) / sum(1. / s for s in speeds) * num_workers, picture, args.out_dir))


# ---------------------------------------------------------------------------
# detection examples: data, one training epoch, evaluation, drawing
# ---------------------------------------------------------------------------
DETECTION_SPLITS = {'voc': ('trainval', 'test'), 'coco': ('train2017', 'val2017')}


def add_detection_data_args(parser, *, num_train, num_val, data_shape, min_object_size):
    """The data arguments of the detection examples."""
    data = parser.add_argument_group('data')
    data.add_argument('--dataset', choices=('synthetic', 'voc', 'coco'), default='synthetic',
                      help='generated shapes, or a VOC / COCO folder under --data-root')
    data.add_argument('--data-root', type=str, default='',
                      help='voc: the folder holding VOC<year>/; coco: the folder holding '
                           'annotations/instances_<split>.json and <split>/')
    data.add_argument('--train-split', type=str, default=None,
                      help='comma-separated VOC image sets or one COCO split; default: '
                           'trainval (voc), train2017 (coco)')
    data.add_argument('--val-split', type=str, default=None,
                      help='default: test (voc), val2017 (coco)')
    data.add_argument('--voc-year', type=int, default=2007, help='voc: the VOC<year> folder')
    data.add_argument('--classes', type=str, default='',
                      help='voc: class names, comma-separated; default VOC<year>/classes.txt '
                           "if present, else Pascal VOC's 20 (coco: always the json's)")
    data.add_argument('--num-train', type=int, default=num_train,
                      help='synthetic training images')
    data.add_argument('--num-val', type=int, default=num_val, help='synthetic validation images')
    data.add_argument('--min-object-size', type=int, default=min_object_size,
                      help='synthetic: smallest object side in pixels')
    data.add_argument('--data-shape', type=int, default=data_shape,
                      help='images are resized to data-shape x data-shape')
    data.add_argument('--num-vis', type=int, default=8,
                      help='validation images drawn in detections.png')
    data.add_argument('--vis-thresh', type=float, default=0.5,
                      help='score threshold of the drawn detections')
    return parser


def detection_datasets(args):
    """``(train_set, val_set, classes)`` for ``--dataset synthetic|voc|coco``:
    ``VOCDetection``-like items ``(HxWx3 uint8 image, (M, >=5) label)``."""
    from .detection.data import SyntheticShapesDetection, coco_detection, voc_detection
    if args.dataset == 'synthetic':
        # train and validation images come from different seeds; rendered before
        # training and kept in memory (like a dataset on disk), unless that would
        # take more than 1 GB: then rendered on every access
        cache = (args.num_train + args.num_val) * 3 * args.data_shape ** 2 < 2 ** 30
        common = dict(size=args.data_shape, min_size=args.min_object_size, cache=cache)
        train_set = SyntheticShapesDetection(num_images=args.num_train, seed=args.seed, **common)
        val_set = SyntheticShapesDetection(num_images=args.num_val, seed=args.seed + 10 ** 6,
                                           **common)
        if cache:
            train_set.render_all()
            val_set.render_all()
        return train_set, val_set, list(train_set.classes)
    if not args.data_root:
        raise SystemExit('--dataset %s needs --data-root' % args.dataset)
    train_split = args.train_split or DETECTION_SPLITS[args.dataset][0]
    val_split = args.val_split or DETECTION_SPLITS[args.dataset][1]
    if args.dataset == 'coco':
        # every validation image is scored, also those without objects
        train_set = coco_detection(args.data_root, train_split)
        val_set = coco_detection(args.data_root, val_split, skip_empty=False)
    else:
        classes = [c for c in args.classes.split(',') if c] or None
        train_set, val_set = [voc_detection(args.data_root, split.split(','), classes=classes,
                                            year=args.voc_year)
                              for split in (train_split, val_split)]
    return train_set, val_set, list(train_set.classes)


def stack_batchify(num_workers):
    """Batchify for samples of arrays: each field stacked on a new axis 0.
    GluonCV's ``Tuple(Stack(), ...)`` stacks into shared memory, which worker
    processes need to hand batches over; in the main process (``num_workers=0``)
    that allocation costs ~2 ms a batch on the engine, so stack plainly."""
    if num_workers > 0:
        from gluoncv.data.batchify import Stack
        return lambda samples: tuple(Stack()(list(field)) for field in zip(*samples))
    return lambda samples: tuple(mx.nd.stack(*field) for field in zip(*samples))


def train_detector_epoch(net, loader, loss_fn, trainer, ctx, num_workers, schedule,
                         first_update, desc, show=True):
    """One :func:`train_epoch` of a GluonCV-style detector (RetinaNet, SSD):
    batches of ``(images, cls_targets, box_targets)``, ``net`` in training mode
    giving ``(cls_preds, box_preds, anchors)``, a loss with GluonCV's
    ``(cls_preds, box_preds, cls_targets, box_targets)`` call and per-device
    list returns ``(totals, cls, box)``, normalised per positive anchor.
    Returns ``(mean total, cls, box loss per batch, images per second)``."""
    def losses(data, cls_targets, box_targets):
        outputs = [net(x) for x in data]
        return loss_fn([o[0] for o in outputs], [o[1] for o in outputs], cls_targets,
                       box_targets)
    means, speed = train_epoch(loader, losses, trainer, ctx, num_workers, schedule,
                               first_update, desc, show=show)
    return means[0], means[1], means[2], speed


def detection_metric(dataset, val_set, classes, data_shape, out_dir):
    """VOC07 11-point mAP at IoU 0.5 (generated and VOC data), or COCO's
    mAP@[.5:.95] through pycocotools (``--dataset coco``), both GluonCV's."""
    if dataset == 'coco':
        from gluoncv.utils.metrics.coco_detection import COCODetectionMetric
        with contextlib.redirect_stdout(io.StringIO()):
            return COCODetectionMetric(val_set, os.path.join(out_dir, 'coco_eval'),
                                       use_time=False, cleanup=True,
                                       data_shape=(data_shape, data_shape))
    from gluoncv.utils.metrics.voc_detection import VOC07MApMetric
    return VOC07MApMetric(iou_thresh=0.5, class_names=classes)


def evaluate_detector(detector, val_loader, ctx, metric):
    """Run ``detector`` (inference mode: ``ids, scores, bboxes``) over
    ``val_loader`` (``(images, padded labels)`` in the images' coordinates) and
    return ``{'mAP': ..., class name: AP, ...}`` (COCO adds ``AP50``)."""
    from mxnet import gluon
    metric.reset()
    for batch in val_loader:
        data, labels = [gluon.utils.split_and_load(part, ctx_list=ctx, batch_axis=0,
                                                   even_split=False) for part in batch]
        for x, y in zip(data, labels):
            ids, scores, bboxes = detector(x)
            metric.update(bboxes.clip(0, max(x.shape[2:])), ids, scores,
                          y.slice_axis(axis=-1, begin=0, end=4),
                          y.slice_axis(axis=-1, begin=4, end=5),
                          y.slice_axis(axis=-1, begin=5, end=6) if y.shape[-1] > 5 else None)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        names, values = metric.get()
    coco_eval = getattr(metric, '_coco_eval', None)
    if coco_eval is None:
        return {name: float(value) for name, value in zip(names, values)}
    # COCODetectionMetric gives percent strings: a summary, the classes, then mAP
    result = {name: float(value) / 100 for name, value in zip(names[1:-1], values[1:-1])}
    result.update(mAP=float(coco_eval.stats[0]), AP50=float(coco_eval.stats[1]))
    return result


def draw_detections(detector, dataset, classes, path, ctx, data_shape, num=8, thresh=0.3,
                    title=''):
    """Draw the detections on the first ``num`` images of ``dataset`` (raw
    ``(img, label)`` items) into one PNG, boxes scaled back to each image."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from gluoncv.data.transforms.presets.ssd import SSDDefaultValTransform
    from gluoncv.utils.viz import plot_bbox
    num = min(num, len(dataset))
    cols = max(1, min(4, num))
    rows = max(1, (num + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    transform = SSDDefaultValTransform(data_shape, data_shape)
    for i, ax in enumerate(axes.reshape(-1)):
        ax.axis('off')
        if i >= num:
            continue
        img, label = dataset[i]
        x, _ = transform(img, label)
        ids, scores, bboxes = detector(x.expand_dims(0).as_in_context(ctx[0]))
        h, w = img.shape[:2]
        scale = np.array([w / data_shape, h / data_shape] * 2)
        plot_bbox(img.asnumpy(), bboxes[0].clip(0, data_shape).asnumpy() * scale,
                  scores[0].asnumpy(), ids[0].asnumpy(), thresh=thresh, class_names=classes,
                  ax=ax, linewidth=1.5, fontsize=7)
        ax.axis('off')
    fig.suptitle(title or 'detections (score > %.2f)' % thresh)
    fig.tight_layout()
    save_figure(fig, path)


def finish_detector_run(detector, val_set, classes, history, args, ctx, start, num_workers,
                        title):
    """The chief's end of a detection example: ``detections.png`` (``title``
    names the detector), then :func:`finish_run`."""
    if args.num_vis > 0:
        draw_detections(detector, val_set, classes, os.path.join(args.out_dir, 'detections.png'),
                        ctx, args.data_shape, num=args.num_vis, thresh=args.vis_thresh,
                        title='%s detections (score > %.2f)' % (title, args.vis_thresh))
    finish_run(args, history, {'val_mAP': history['val_mAP'][-1]},
               'mAP %.4f' % history['val_mAP'][-1], 'detections', start, num_workers)

