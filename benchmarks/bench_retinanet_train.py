"""Where the RetinaNet demo's training time goes (examples/train_retinanet.py defaults).

Reports, per image, in one process at the thread count of the environment
(run with ``OMP_NUM_THREADS=2`` to compare with the demo's 2-thread numbers):

* ``loader``: one epoch of the training loader alone (main process, targets cached),
* ``forward`` / ``+ loss`` / ``+ backward`` / ``+ update``: the training step on one
  fixed batch, each stage waited for,
* ``GroupNorm``: the head's 4 GroupNorm layers over the 5 pyramid levels, forward +
  backward, MXNet's operator and the fused kernel (the network's), and an elementwise
  op (x * 2) in their place, the floor,
* ``epoch``: ``train_detector_epoch`` over the loader, as the demo trains (images/s).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_retinanet_train.py [--num-train 256]

On a shared machine wrap it in the same lock as other timings and give the
load average with the numbers.
"""
import argparse
import os
import sys
import time

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'examples'))
import train_retinanet as demo  # noqa: E402
from gluon_focal.nn import GroupNorm  # noqa: E402
from gluon_focal.training import detection_datasets, train_detector_epoch  # noqa: E402


def timed(fn, repeat):
    fn()
    mx.nd.waitall()
    tic = time.time()
    for _ in range(repeat):
        fn()
        mx.nd.waitall()
    return (time.time() - tic) / repeat


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--num-train', type=int, default=256)
    parser.add_argument('--repeat', type=int, default=10)
    parser.add_argument('--optimizer', default='multiadam', choices=('multiadam', 'adam'),
                        help="the demo's (gluon_focal.optim.MultiAdam) or MXNet's Adam")
    opts = parser.parse_args()
    args = demo.parse_args(['--num-train', str(opts.num_train), '--num-val', '8'])
    mx.random.seed(0)
    np.random.seed(0)
    train_set, val_set, classes = detection_datasets(args)
    ctx = [mx.cpu()]
    net = demo.get_net(demo.model_config(args, classes), ctx)
    loader, _ = demo.get_loaders(args, net, train_set, val_set, None)
    loss_fn = demo.RetinaNetLoss(num_class=len(classes))
    loss_fn.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), opts.optimizer, {'learning_rate': 1e-4, 'wd': 1e-4})
    batch = args.batch_size
    print('threads %s, batch %d, %dx%d, %s, load average %s' % (
        os.environ.get('OMP_NUM_THREADS', 'default'), batch, args.data_shape, args.data_shape,
        opts.optimizer,
        ' '.join(open('/proc/loadavg').read().split()[:3])))

    def epoch_of_loader():
        for _ in loader:
            pass
    epoch_of_loader()  # renders the images and caches the targets
    seconds = timed(epoch_of_loader, 1)
    print('loader      %6.2f ms/image' % (seconds / len(train_set) * 1e3))

    x, cls_t, box_t = [a.as_in_context(ctx[0]) for a in next(iter(loader))]

    def forward(loss=False, backward=False, update=False):
        with autograd.record():
            cls, box, _ = net(x)
            if loss:
                total = loss_fn(cls, box, cls_t, box_t)[0]
        if backward:
            autograd.backward(total)
        if update:
            trainer.step(1)
    for name, kwargs in (('forward', {}), ('+ loss', dict(loss=True)),
                         ('+ backward', dict(loss=True, backward=True)),
                         ('+ update', dict(loss=True, backward=True, update=True))):
        seconds = timed(lambda: forward(**kwargs), opts.repeat)
        print('%-11s %6.2f ms/image' % (name, seconds / batch * 1e3))

    channels, groups = args.head_channels, max(1, min(32, args.head_channels // 8))
    levels = [mx.nd.random.normal(shape=(batch, channels, side, side))  # P3-P7
              for side in (-(-args.data_shape // stride) for stride in net.strides)]
    for a in levels:
        a.attach_grad()
    for impl in ('elementwise', 'composite', 'fused'):
        if impl == 'elementwise':   # the floor: x * 2, forward + backward, same calls
            def norm(a):
                return a * 2
        else:
            norm = GroupNorm(num_groups=groups, impl=impl)
            norm.initialize(ctx=ctx)

        def group_norms():
            for _ in range(2 * args.head_layers):  # both subnets
                with autograd.record():
                    # a view, not the leaf: like a conv output, it has no gradient of its own
                    out = [norm(a.reshape(a.shape)) for a in levels]
                autograd.backward(out)
        seconds = timed(group_norms, opts.repeat)
        print('%-11s %6.2f ms/image (%s: forward + backward, all levels, both subnets)'
              % ('x * 2' if impl == 'elementwise' else 'GroupNorm', seconds / batch * 1e3,
                 {'elementwise': 'an elementwise op in its place', 'composite': 'MXNet',
                  'fused': 'fused kernel'}[impl]))

    *_, speed = train_detector_epoch(net, loader, loss_fn, trainer, ctx, 1,
                                    lambda update: 1e-4, 0, '', show=False)
    print('epoch       %6.1f images/s' % speed)


if __name__ == '__main__':
    main()
