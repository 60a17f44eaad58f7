"""Per-image inference latency: MXNet (hybridized, static) vs onnxruntime.

    python benchmarks/bench_deploy.py [--threads 1,2] [--repeats 30] [--batch 1,8]
                                      [--retinanet-dir runs/retinanet] [--json PATH]

One table. For each model, batch size and thread count (each thread count in
its own process: MXNet reads OMP_NUM_THREADS at import):

  forward      MXNet, the network alone (RetinaNet.level_outputs /
               SigmoidSSD.network_outputs / the segmenter), inference mode
  end-to-end   MXNet, the whole inference graph (detections: top-k, decoding, NMS)
  e2e/fwd      the issue's target is <= 1.5 for the detectors
  onnxruntime  the file gluon_focal.deploy.export_onnx writes, run by onnxruntime
               with intra_op_num_threads = threads

Milliseconds per image, median of ``--repeats`` runs after 5 warm-up runs (the
JSON also has the minimum), the same input for every column; the three are timed
in turn within each repeat, so that they see the same machine load.

Models
  retinanet  examples/train_retinanet.py's default model (ResNet-18 x0.5, FPN 64,
             GroupNorm heads 2 x 64), 128 px, 5 classes. With --retinanet-dir the
             trained weights from there; otherwise random weights whose class
             scores are set so that a few hundred (anchor, class) pairs per image
             score above the 0.05 threshold, like a trained model's.
  ssd        gluon_focal.detection.tiny_ssd, 192 px, 5 classes, BatchNorm
             statistics and class scores set the same way.
  fastscnn   GluonCV FastSCNN, 256 px, 1 sigmoid output channel (the segmentation
             example's default), no post-processing (end-to-end = forward).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CLASSES = ['circle', 'triangle', 'square', 'cross', 'ring']


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', default='1,2')
    parser.add_argument('--batch', default='1,8', help='batch sizes (detectors)')
    parser.add_argument('--repeats', type=int, default=30)
    parser.add_argument('--models', default='retinanet,ssd,fastscnn')
    parser.add_argument('--retinanet-dir', default='',
                        help='trained RetinaNet (model.json + checkpoints) to use')
    parser.add_argument('--json', default='', help='also write the rows here')
    parser.add_argument('--worker', type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------
# models (in the worker)
# ---------------------------------------------------------------------------
def _set_scores(last_conv, bias, weight_scale):
    last_conv.bias.set_data(last_conv.bias.data() * 0 + bias)
    last_conv.weight.set_data(last_conv.weight.data() * weight_scale)


def _calibrate_batchnorm(net, size, steps=10):
    """Running statistics from random images (MXNet updates them in backward), so
    that an untrained network's features do not vanish in inference mode."""
    import mxnet as mx
    rng = np.random.RandomState(0)
    for _ in range(steps):
        with mx.autograd.record():
            outs = net(mx.nd.array(rng.uniform(-2, 2, (2, 3, size, size))))
            total = sum(o.sum() for o in outs)
        total.backward()


def build(name, retinanet_dir=''):
    """(inference net, network-alone net, input size)."""
    import mxnet as mx
    from mxnet import gluon
    from gluon_focal.detection import SigmoidSSD, get_retinanet, tiny_ssd

    class NetworkAlone(gluon.HybridBlock):
        def __init__(self, outputs_fn, **kwargs):
            super(NetworkAlone, self).__init__(**kwargs)
            self._outputs_fn = outputs_fn

        def hybrid_forward(self, F, x):
            cls, box, _ = self._outputs_fn(F, x)
            cls, box = (F.concat(*o, dim=1) if isinstance(o, list) else o for o in (cls, box))
            return cls, box

    mx.random.seed(0)
    if name == 'retinanet':
        if retinanet_dir:
            sys.path.insert(0, os.path.join(ROOT, 'examples'))
            from export_detector import load_trained
            net, config, _ = load_trained(retinanet_dir)
            size = config['data_shape']
        else:
            size = 128
            net = get_retinanet('resnet18_v1b', classes=CLASSES, backbone_width=0.5,
                                fpn_channels=64, head_channels=64, head_layers=2,
                                head_norm='gn', anchor_size=2, anchor_alloc_size=512)
            net.initialize()
            _set_scores(net.class_subnet[-1], -4.6, 5.)
        net.level_outputs(mx.nd, mx.nd.zeros((1, 3, size, size)))  # deferred shapes
        alone = NetworkAlone(net.level_outputs)
        alone.register_child(net)
        return net, alone, size
    if name == 'ssd':
        size = 192
        ssd = tiny_ssd(CLASSES, base_size=size)
        ssd.initialize(mx.init.Xavier(magnitude=2))
        _calibrate_batchnorm(ssd, size)
        for cp in ssd.class_predictors:
            _set_scores(cp.predictor, -4.6, 5.)
        net = SigmoidSSD(ssd)
        alone = NetworkAlone(net.network_outputs)
        alone.register_child(net)
        return net, alone, size
    if name == 'fastscnn':
        import gluoncv
        size = 256
        net = gluoncv.model_zoo.FastSCNN(1, aux=False, pretrained_base=False, crop_size=size)
        net.collect_params().initialize(mx.init.Xavier(magnitude=2), force_reinit=True)
        return net, net, size
    raise ValueError('unknown model %r' % name)


def interleaved_ms(fns, repeats):
    """{name: (median, min) ms} of the callables ``fns``, timed in turn within each
    repeat so that they share the machine's state (a shared machine's load varies)."""
    for fn in fns.values():
        for _ in range(5):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (float(np.median(t)) * 1e3, float(np.min(t)) * 1e3)
            for name, t in times.items()}


def _runner(block, x):
    def run():
        outs = block(x)
        for o in outs if isinstance(outs, (list, tuple)) else [outs]:
            o.wait_to_read()
    return run


def worker(args):
    import tempfile
    import warnings
    import mxnet as mx
    from mxnet import autograd
    from gluon_focal.deploy import export_onnx, onnx_session
    warnings.simplefilter('ignore')  # the forward-only blocks leave the anchors unused
    threads = args.worker
    for name in args.models.split(','):
        net, alone, size = build(name, args.retinanet_dir)
        batches = [1] if name == 'fastscnn' else [int(b) for b in args.batch.split(',')]
        for batch in batches:
            x = mx.nd.array(np.random.RandomState(1).uniform(-2, 2, (batch, 3, size, size)))
            row = {'model': name, 'size': size, 'batch': batch, 'threads': threads}
            with autograd.predict_mode(), tempfile.TemporaryDirectory() as tmp:
                for block in (alone, net):
                    block.hybridize(static_alloc=True, static_shape=True)
                if name != 'fastscnn':
                    row['valid_per_image'] = float((net(x)[0] >= 0).sum().asscalar()) / batch
                path = export_onnx(net, os.path.join(tmp, name + '.onnx'), x.shape, check=True)
                session = onnx_session(path, threads=threads)
                feed = {'data': x.asnumpy()}
                timed = interleaved_ms({'forward': _runner(alone, x),
                                        'end_to_end': _runner(net, x),
                                        'onnxruntime': lambda: session.run(None, feed)},
                                       args.repeats)
            for key, (median, best) in timed.items():
                row[key], row[key + '_min'] = median / batch, best / batch
            print(json.dumps(row), flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    rows = []
    load = os.getloadavg()
    for threads in [int(t) for t in args.threads.split(',')]:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MXNET_CPU_WORKER_NTHREADS='1',
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
        cmd = [sys.executable, os.path.abspath(__file__), '--worker', str(threads),
               '--repeats', str(args.repeats), '--batch', args.batch, '--models', args.models]
        if args.retinanet_dir:
            cmd += ['--retinanet-dir', args.retinanet_dir]
        out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE,
                             universal_newlines=True).stdout
        rows += [json.loads(line) for line in out.splitlines() if line.startswith('{')]
    print('load average before/after: %.2f / %.2f (%d CPUs)'
          % (load[0], os.getloadavg()[0], os.cpu_count()))
    header = ('model', 'input', 'batch', 'threads', 'fwd ms/img', 'e2e ms/img', 'e2e/fwd',
              'ORT ms/img', 'e2e/ORT', 'dets/img')
    print('| ' + ' | '.join(header) + ' |')
    print('|' + '---|' * len(header))
    for r in rows:
        print('| %s | %d px | %d | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %s |' % (
            r['model'], r['size'], r['batch'], r['threads'], r['forward'], r['end_to_end'],
            r['end_to_end'] / r['forward'], r['onnxruntime'],
            r['end_to_end'] / r['onnxruntime'],
            '%.0f' % r['valid_per_image'] if 'valid_per_image' in r else '-'))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == '__main__':
    main()
