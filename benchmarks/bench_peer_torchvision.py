"""The RetinaNet demo against torchvision's RetinaNet at equal resources, in one run.

The peer is torchvision's ``RetinaNet`` configured as close to our demo
(``examples/train_retinanet.py`` defaults) as torchvision allows: ResNet-18 at width
0.5 (64-channel stem, stages 32-64-128-256), FPN on C3-C5 with 64 channels + P6/P7
from P5 (``LastLevelP6P7``), class and box subnets of 2 convs x 64 channels with
GroupNorm (8 groups, shared across levels), 9 anchors per location (side 2 x stride x
2^(0, 1/3, 2/3), ratios 0.5, 1, 2), box coding stds (0.1, 0.1, 0.2, 0.2) and smooth L1,
matching at IoU 0.5 / 0.4, focal loss alpha 0.25 gamma 2, Adam (L2 weight decay 1e-4)
at lr 0.002 with 1 epoch of linear warm-up from lr/100 then cosine to lr/100, batch 8,
random horizontal flip, 2 threads, the training loop in the main process -- on the same
images: the demo's synthetic training set (1024 128x128 images, seed 0) and validation
set (200 images, seed 10**6), rendered once by our generator and saved to an ``.npz``.

Three entry modes; the torch side never imports mxnet (separate virtualenvs)::

    # 1. render the demo's data (python with mxnet + gluon_focal; counts our parameters)
    python benchmarks/bench_peer_torchvision.py --render /tmp/shapes.npz
    # 2. train torchvision's RetinaNet on it (python with torch + torchvision)
    OMP_NUM_THREADS=2 python benchmarks/bench_peer_torchvision.py --train /tmp/shapes.npz
    # 3. both, alternated, each timing run under `flock /tmp/cpu.lock` (any python)
    python benchmarks/bench_peer_torchvision.py --alternate --rounds 3 --epochs 3 \\
        --torch-python /tmp/tv/bin/python   # the repo's .venv runs the demo

What is not the same, by design of each library: torchvision divides each image's loss
by that image's positives (ours: by the batch's); it matches anchors in every step's
forward (ours: once per (image, flip) in the loader, cached; both are timed); its
anchor centres sit at k x stride (GluonCV's at k x stride + (size - 1) / 2); its
GroupNorm has per-channel affine parameters and its head convs no bias (ours: per group,
with bias; 3,223,185 against 3,222,993 parameters); initialisation; it normalises the
input in the model; it runs eagerly (ours: a hybridized static graph).

images/s has the demo's definition: images trained / wall time of the epoch's training
loop (data preparation included, validation excluded). Validation (VOC07 11-point mAP
at IoU 0.5, numpy, below) runs after every epoch unless ``--no-val``.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------
# 1. --render: the demo's datasets to an .npz (mxnet side)
# ---------------------------------------------------------------------------
def _demo_module(repo):
    import importlib.util
    sys.path.insert(0, repo)
    spec = importlib.util.spec_from_file_location(
        'train_retinanet', os.path.join(repo, 'examples', 'train_retinanet.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pack(dataset):
    images, labels = zip(*(dataset.render(i) for i in range(len(dataset))))
    counts = np.array([len(label) for label in labels], np.int64)
    labels = np.concatenate([np.asarray(label, np.float32)[:, :5] for label in labels])
    return np.stack(images), labels, counts


def count_our_parameters(demo, args, classes):
    """Trainable parameters of the demo's RetinaNet (BatchNorm statistics and anchors,
    grad_req 'null', are not parameters; torch keeps them as buffers)."""
    import mxnet as mx
    from mxnet import autograd
    net = demo.get_net(demo.model_config(args, classes), [mx.cpu()])
    with autograd.train_mode():
        net(mx.nd.zeros((1, 3, args.data_shape, args.data_shape)))
    return sum(int(np.prod(p.shape)) for p in net.collect_params().values()
               if p.grad_req != 'null')


def render(out, repo):
    demo = _demo_module(repo)
    from gluon_focal.training import detection_datasets
    args = demo.parse_args([])
    train_set, val_set, classes = detection_datasets(args)
    train_images, train_labels, train_counts = _pack(train_set)
    val_images, val_labels, val_counts = _pack(val_set)
    params = count_our_parameters(demo, args, classes)
    np.savez(out, train_images=train_images, train_labels=train_labels,
             train_counts=train_counts, val_images=val_images, val_labels=val_labels,
             val_counts=val_counts, classes=np.array(classes), our_parameters=params,
             demo_args=json.dumps(vars(args)))
    print('%s: %d training + %d validation %dx%d images, classes %s; our RetinaNet: '
          '%d parameters' % (out, len(train_images), len(val_images), args.data_shape,
                             args.data_shape, classes, params))


# ---------------------------------------------------------------------------
# 2. --train: torchvision's RetinaNet (torch side)
# ---------------------------------------------------------------------------
def build_peer(num_classes, width=0.5, channels=64, head_layers=2, anchor_size=2.0,
               size=128):
    from functools import partial
    import torch.nn as nn
    from torchvision.models import resnet
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.retinanet import RetinaNetHead
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    class ScaledResNet(resnet.ResNet):  # our scaled_resnet_v1b: stages x width, stem 64
        def _make_layer(self, block, planes, *args, **kwargs):
            return super()._make_layer(block, max(8, int(round(planes * width))),
                                       *args, **kwargs)

    body = ScaledResNet(resnet.BasicBlock, [2, 2, 2, 2])
    stages = [max(8, int(round(c * width))) for c in (128, 256, 512)]
    backbone = BackboneWithFPN(body, {'layer2': '0', 'layer3': '1', 'layer4': '2'}, stages,
                               channels, extra_blocks=LastLevelP6P7(channels, channels))
    strides = (8, 16, 32, 64, 128)
    scales = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    anchors = AnchorGenerator(tuple(tuple(anchor_size * s * k for k in scales) for s in strides),
                              ((0.5, 1.0, 2.0),) * len(strides))
    head = RetinaNetHead(channels, 9, num_classes, norm_layer=partial(nn.GroupNorm, 8))
    for subnet in (head.classification_head, head.regression_head):
        subnet.conv = subnet.conv[:head_layers]  # torchvision builds 4
    model = RetinaNet(backbone, num_classes, min_size=size, max_size=size,
                      anchor_generator=anchors, head=head, score_thresh=0.05,
                      nms_thresh=0.5, detections_per_img=100, topk_candidates=1000,
                      fg_iou_thresh=0.5, bg_iou_thresh=0.4)
    # our box coding (GluonCV stds 0.1, 0.1, 0.2, 0.2) and smooth L1 (transition at 1)
    model.box_coder = head.regression_head.box_coder = det_utils.BoxCoder((10., 10., 5., 5.))
    head.regression_head._loss_type = 'smooth_l1'
    # the images are size x size already: skip the resize (an interpolation at scale 1)
    model.transform.resize = lambda image, target=None: (image, target)
    return model


def warmup_cosine(lr, total, warmup, final_lr):
    """MXNet's CosineScheduler (the demo's) as a function of the update number (from 1)."""
    def rate(num_update):
        if num_update < warmup:
            return lr * 0.01 + (lr - lr * 0.01) * num_update / warmup
        t = min(num_update, total) - warmup
        return final_lr + (lr - final_lr) * (1 + math.cos(math.pi * t / (total - warmup))) / 2
    return rate


def _targets(data, split):
    images, labels, counts = (data[split + k] for k in ('_images', '_labels', '_counts'))
    ends = np.cumsum(counts)
    return images, [labels[e - c:e] for e, c in zip(ends, counts)]


def _batch(torch, images, labels, idx, rng, flip):
    batch_images, batch_targets = [], []
    width = images.shape[2]
    for i in idx:
        img, label = images[i], labels[i]
        boxes = label[:, :4].copy()
        if flip and rng.random() < 0.5:  # GluonCV's random_flip + bbox.flip
            img = img[:, ::-1]
            boxes[:, 0], boxes[:, 2] = width - label[:, 2], width - label[:, 0]
        batch_images.append(torch.from_numpy(np.ascontiguousarray(img))
                            .permute(2, 0, 1).float().div_(255))
        batch_targets.append({'boxes': torch.from_numpy(boxes),
                              'labels': torch.from_numpy(label[:, 4].astype(np.int64))})
    return batch_images, batch_targets


def voc07_map(detections, labels, num_classes, iou_thresh=0.5):
    """VOC07 11-point mAP at ``iou_thresh`` (GluonCV's VOC07MApMetric without difficult
    boxes): ``detections`` per image (boxes (K, 4), scores (K,), classes (K,)),
    ``labels`` per image ((M, >=5) rows xmin, ymin, xmax, ymax, class)."""
    aps = []
    for c in range(num_classes):
        scored, num_gt = [], 0
        for (boxes, scores, classes), label in zip(detections, labels):
            gt = label[label[:, 4] == c, :4]
            num_gt += len(gt)
            mine = classes == c
            order = np.argsort(-scores[mine], kind='stable')
            taken = np.zeros(len(gt), bool)
            for box, score in zip(boxes[mine][order], scores[mine][order]):
                hit = False
                if len(gt):
                    lt = np.maximum(box[:2], gt[:, :2])
                    rb = np.minimum(box[2:], gt[:, 2:])
                    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
                    union = (np.prod(box[2:] - box[:2]) + np.prod(gt[:, 2:] - gt[:, :2], axis=1)
                             - inter)
                    iou = inter / np.maximum(union, 1e-12)
                    j = int(np.argmax(iou))
                    if iou[j] >= iou_thresh and not taken[j]:
                        taken[j] = hit = True
                scored.append((score, hit))
        if num_gt == 0:
            continue
        scored.sort(key=lambda s: -s[0])
        hits = np.array([h for _, h in scored], bool)
        tp, fp = np.cumsum(hits), np.cumsum(~hits)
        recall = tp / num_gt
        precision = tp / np.maximum(tp + fp, 1e-12)
        aps.append(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.
                            for t in np.arange(0., 1.1, 0.1)]))
    return float(np.mean(aps)) if aps else 0.


def evaluate(torch, model, images, labels, batch_size):
    model.eval()
    detections = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            idx = range(start, min(start + batch_size, len(images)))
            batch, _ = _batch(torch, images, labels, idx, None, flip=False)
            for out in model(batch):
                detections.append((out['boxes'].clamp(0, images.shape[1]).numpy(),
                                   out['scores'].numpy(), out['labels'].numpy()))
    model.train()
    return voc07_map(detections, labels, int(max(l[:, 4].max() for l in labels if len(l))) + 1)


def train(path, epochs, threads, batch_size=8, lr=0.002, wd=1e-4, warmup_epochs=1.0,
          seed=0, validate=True, out=None):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = np.load(path)
    classes = list(data['classes'])
    train_images, train_labels = _targets(data, 'train')
    val_images, val_labels = _targets(data, 'val')
    model = build_peer(len(classes), size=train_images.shape[1])
    model.train()
    params = sum(p.numel() for p in model.parameters())
    ours = int(data['our_parameters'])
    print('torch %s, %d threads; torchvision RetinaNet %d parameters (ours %d, %+.1f%%); '
          '%d training images' % (torch.__version__, torch.get_num_threads(), params, ours,
                                  100. * (params - ours) / ours, len(train_images)),
          flush=True)
    iters = len(train_images) // batch_size  # the demo's 'rollover' drops no batch here
    total = epochs * iters
    warmup = min(int(round(warmup_epochs * iters)), total // 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(lr, total, warmup, lr * 0.01)(step + 1) / lr)
    history = {'loss': [], 'cls_loss': [], 'box_loss': [], 'images_per_s': [], 'val_mAP': []}
    for epoch in range(epochs):
        sums, images = np.zeros(2), 0
        tic = time.time()
        order = rng.permutation(len(train_images))
        for b in range(iters):
            idx = order[b * batch_size:(b + 1) * batch_size]
            batch, targets = _batch(torch, train_images, train_labels, idx, rng, flip=True)
            losses = model(batch, targets)
            loss = losses['classification'] + losses['bbox_regression']
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            sums += [losses['classification'].item(), losses['bbox_regression'].item()]
            images += len(idx)
        speed = images / (time.time() - tic)
        mean = sums / iters
        history['loss'].append(float(mean.sum()))
        history['cls_loss'].append(float(mean[0]))
        history['box_loss'].append(float(mean[1]))
        history['images_per_s'].append(speed)
        tic = time.time()
        if validate:
            history['val_mAP'].append(evaluate(torch, model, val_images, val_labels,
                                               batch_size))
        print('[epoch %d] loss %.4f (focal %.4f, box %.4f)  %.1f img/s  val mAP %s  (val %.0fs)'
              % (epoch + 1, mean.sum(), mean[0], mean[1], speed,
                 '%.4f' % history['val_mAP'][-1] if validate else '-', time.time() - tic),
              flush=True)
    if out:
        with open(out, 'w') as f:
            json.dump({'history': history, 'parameters': params, 'our_parameters': ours,
                       'torch': torch.__version__, 'threads': threads}, f, indent=1)
    return history


# ---------------------------------------------------------------------------
# 3. --alternate: ours and the peer in turns, each timing run under the lock
# ---------------------------------------------------------------------------
def _timed(cmd, cwd, env, log):
    """Run ``cmd`` under the lock; return the 1-minute load average when the lock was
    taken and when the run ended."""
    full = ['flock', '/tmp/cpu.lock', 'sh', '-c',
            'cut -d" " -f1 /proc/loadavg > "$0.load" && exec "$@"', log] + cmd
    print('$ flock /tmp/cpu.lock ' + ' '.join(cmd), flush=True)
    with open(log, 'w') as f:
        proc = subprocess.run(full, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit('failed (%d), see %s' % (proc.returncode, log))
    with open(log + '.load') as f:
        return float(f.read()), os.getloadavg()[0]


def alternate(args):
    data = args.data or os.path.join(tempfile.gettempdir(), 'peer_shapes.npz')
    work = tempfile.mkdtemp(prefix='bench_peer_')
    if not os.path.exists(data):  # rendering is not timed: nice, no lock
        subprocess.run(['nice', '-n', '10', args.mx_python, os.path.abspath(__file__),
                        '--render', data, '--repo', args.repo],
                       env=dict(os.environ, PYTHONPATH=args.repo), check=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=args.repo)
    rows = []
    for r in range(args.rounds):
        runs = {}
        # ABBA order, so that neither side always runs first after the other's load
        for side in (('ours', 'peer') if r % 2 == 0 else ('peer', 'ours')):
            out = os.path.join(work, '%s-%d' % (side, r))
            if side == 'ours':  # the checkout may change between rounds: say which ran
                commit = subprocess.run(['git', '-C', args.repo, 'rev-parse', '--short', 'HEAD'],
                                        capture_output=True, text=True).stdout.strip()
                print('%s at %s' % (args.repo, commit or '?'), flush=True)
                load = _timed([args.mx_python, 'examples/train_retinanet.py', '--epochs',
                               str(args.epochs), '--out-dir', out], args.repo, env, out + '.log')
                with open(os.path.join(out, 'results.json')) as f:
                    speeds = json.load(f)['history']['images_per_s']
            else:
                load = _timed([args.torch_python, os.path.abspath(__file__), '--train', data,
                               '--epochs', str(args.epochs), '--threads', str(args.threads),
                               '--json', out + '.json'] + ([] if args.val else ['--no-val']),
                              args.repo, env, out + '.log')
                with open(out + '.json') as f:
                    speeds = json.load(f)['history']['images_per_s']
            runs[side] = (speeds, load)
            print('round %d %s: %s img/s (load %.2f-%.2f)' % (
                r + 1, side, ' '.join('%.1f' % s for s in speeds), load[0], load[1]),
                flush=True)
        rows.append(runs)
    head = ' '.join('ep%d' % (e + 1) for e in range(args.epochs))
    print('\nimages/s per epoch, %d threads, logs in %s' % (args.threads, work))
    print('%-5s %-6s %-22s %-10s %s' % ('round', 'side', head, 'load1', 'ours/peer per epoch'))
    for r, runs in enumerate(rows):
        for side in ('ours', 'peer'):
            speeds, load = runs[side]
            ratio = ' '.join('%.2f' % (a / b) for a, b in zip(runs['ours'][0], runs['peer'][0]))
            print('%-5d %-6s %-22s %-10s %s' % (
                r + 1, side, ' '.join('%6.1f' % s for s in speeds), '%.2f-%.2f' % load,
                ratio if side == 'ours' else ''))
    ours = np.array([runs['ours'][0] for runs in rows])
    peer = np.array([runs['peer'][0] for runs in rows])
    # epoch 1 includes each side's warm-up (graph building, allocator): compare the rest too
    later = slice(1, None) if args.epochs > 1 else slice(None)
    print('mean ours/peer: all epochs %.2f, epochs 2+ %.2f (ours %.1f, peer %.1f img/s)' % (
        np.mean(ours / peer), np.mean(ours[:, later] / peer[:, later]),
        ours[:, later].mean(), peer[:, later].mean()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument('--render', metavar='OUT.npz', help='render the demo data (mxnet side)')
    mode.add_argument('--train', metavar='DATA.npz', help='train the peer (torch side)')
    mode.add_argument('--alternate', action='store_true', help='both, in turns, under the lock')
    parser.add_argument('--repo', default=os.path.abspath(os.path.join(HERE, os.pardir)),
                        help='the checkout whose demo is measured')
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--json', default=None, help='--train: write the history here')
    parser.add_argument('--no-val', dest='val', action='store_false',
                        help='--train: skip the per-epoch validation mAP')
    parser.add_argument('--rounds', type=int, default=3, help='--alternate: pairs of runs')
    parser.add_argument('--data', default=None, help='--alternate: the .npz (rendered if absent)')
    parser.add_argument('--mx-python', default=None,
                        help="python with mxnet and gluon_focal; None: the repo's .venv")
    parser.add_argument('--torch-python', default=sys.executable,
                        help='python with torch and torchvision (a separate virtualenv: '
                             'mxnet needs numpy<1.24)')
    args = parser.parse_args()
    args.mx_python = args.mx_python or os.path.join(args.repo, '.venv', 'bin', 'python')
    if args.render:
        render(args.render, args.repo)
    elif args.train:
        train(args.train, args.epochs, args.threads, validate=args.val, out=args.json)
    else:
        alternate(args)


if __name__ == '__main__':
    main()
