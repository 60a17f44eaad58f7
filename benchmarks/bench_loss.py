"""Forward+backward benchmark of sigmoid focal loss implementations on MXNet.

    python benchmarks/bench_loss.py [--quick] [--json PATH] [--repeats N]
                                    [--workloads W1,W2s,...] [--no-rss]
                                    [--rss-workloads W1,W3,...]

One process, one table.  Every implementation is a hybridized Gluon block run
under autograd.record(), as the last layer of an outer hybridized block (see
AsLastLayer: pred is then a network-like intermediate without a gradient
buffer of its own, so no grad_req='add' identity copy is inserted); a step is
forward + backward + wait_to_read on the gradient; the median of the repeats after warm-up is reported, in ms and in
ns per logit element, with ratios against gluon.loss.SigmoidBCELoss and
gluoncv.loss.FocalLoss on the same workload.

Implementations
  fused-1t / fused-2t  gluon_focal.FocalLoss(impl='fused') with 1 / 2 threads
  composite            gluon_focal.FocalLoss(impl='composite')
  gluoncv              gluoncv.loss.FocalLoss (from_logits=False, i.e. logits)
  bce                  gluon.loss.SigmoidBCELoss (no focal term; speed floor)
Baselines run with MXNet's own default thread count.

Workloads (full size; --quick shrinks them)
  W1   SSD 32x24564x21, axis -1, sparse labels (class 0 = background)
  W2s  RetinaNet-COCO 8x120000x80, axis -1, ~0.1% positives, sparse labels
  W2d  same, dense one-hot labels
  W3   binary segmentation 16x1x512x512 logits, 0/1 masks 16x1x512x512
  W4   segmentation 8x21x256x256, axis 1, sparse labels 8x256x256
gluoncv's FocalLoss one-hots sparse labels on the LAST axis only, so for W4 it
gets a precomputed dense one-hot label of pred's shape (sparse_label=False);
for W3 it gets the mask with sparse_label=False.  For W2s/W1 gluoncv needs
num_class; it is given C (W1 includes background as class 0, like SSD).

Peak memory: each implementation runs W1 (or each of --rss-workloads) in its own
subprocess; "extra MB" is
the peak RSS minus the RSS after pred/label were created (so it includes the
gradient buffer and every temporary); the target for ours is gradient + <10%.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import mxnet as mx  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402

WORKLOADS = {
    # name: (pred shape, axis, label kind, full/quick factor handled below)
    'W1': dict(shape=(32, 24564, 21), axis=-1, label='sparse', pos=None),
    'W2s': dict(shape=(8, 120000, 80), axis=-1, label='sparse', pos=0.001),
    'W2d': dict(shape=(8, 120000, 80), axis=-1, label='dense', pos=0.001),
    'W3': dict(shape=(16, 1, 512, 512), axis=1, label='binary', pos=0.2),
    'W4': dict(shape=(8, 21, 256, 256), axis=1, label='sparse', pos=None),
}
QUICK = {'W1': (4, 4096, 21), 'W2s': (2, 12000, 80), 'W2d': (2, 12000, 80),
         'W3': (2, 1, 128, 128), 'W4': (2, 21, 64, 64)}


def make_inputs(wl, shape, seed=0):
    rng = np.random.RandomState(seed)
    axis = wl['axis'] % len(shape)
    C = shape[axis]
    pred = rng.randn(*shape).astype(np.float32)
    lshape = tuple(s for i, s in enumerate(shape) if i != axis)
    if wl['label'] == 'binary':
        lab = (rng.rand(*shape) < wl['pos']).astype(np.float32)
        return pred, lab, lab
    if wl['pos'] is None:
        sparse = rng.randint(0, C, size=lshape)
    else:  # mostly background (-1 -> no positive), rare positives
        sparse = np.where(rng.rand(*lshape) < wl['pos'], rng.randint(0, C, size=lshape), -1)
    if wl['label'] == 'dense':
        dense = np.zeros(shape, np.float32)
        idx = np.nonzero(sparse >= 0)
        dense[idx + (sparse[idx],)] = 1.0
        return pred, dense, sparse
    return pred, sparse.astype(np.float32), sparse


def build_impl(name, wl, shape):
    """Return (block, label_variant) or raise for 'not applicable'."""
    axis = wl['axis']
    C = shape[axis % len(shape)]
    mode = 'sparse' if wl['label'] == 'sparse' else 'dense'
    bg = -1 if (wl['label'] == 'sparse' and wl['pos'] is not None) else None
    if name.startswith('fused') or name == 'composite':
        import gluon_focal
        return gluon_focal.FocalLoss(axis=axis, label_mode='binary' if wl['label'] == 'binary'
                                     else mode, background_label=bg,
                                     impl='composite' if name == 'composite' else 'fused',
                                     normalization='mean'), 'native'
    if name == 'gluoncv':
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            from gluoncv.loss import FocalLoss as GFL
        if wl['label'] == 'sparse' and axis % len(shape) == len(shape) - 1:
            # gluoncv one_hot(-1) gives all-zero rows: same as background
            return GFL(axis=axis, sparse_label=True, num_class=C), 'native'
        return GFL(axis=axis, sparse_label=False), 'onehot'
    if name == 'bce':
        return gluon.loss.SigmoidBCELoss(from_sigmoid=False), 'onehot'
    raise KeyError(name)


def label_for(variant, wl, shape, lab_native, sparse):
    if variant == 'native' or wl['label'] in ('dense', 'binary'):
        return lab_native
    axis = wl['axis'] % len(shape)
    oh = np.zeros(shape, np.float32)
    idx = np.nonzero(sparse >= 0)
    full = list(idx)
    full.insert(axis, sparse[idx])
    oh[tuple(full)] = 1.0
    return oh


class AsLastLayer(gluon.HybridBlock):
    """The loss as the last layer of a hybridized network.

    Inside the outer graph the loss sees Symbols, like a loss applied to a
    network output: pred is an intermediate result without a gradient buffer
    of its own, so gluon_focal.FocalLoss does not route it through
    ``identity`` (that is only needed when pred itself owns an attached
    gradient whose grad_req may be 'add').  The input ``x`` carries
    attach_grad() only so that the benchmark can read the gradient; the loss
    writes d pred straight into it, as it would into the buffer that the
    network's last layer consumes.  Baselines are wrapped the same way.
    """

    def __init__(self, loss):
        super(AsLastLayer, self).__init__()
        self.loss = loss

    def hybrid_forward(self, F, x, y):
        return self.loss(x, y)


def time_impl(blk, x_np, y_np, warmup, repeats):
    blk = AsLastLayer(blk)
    blk.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.array(x_np)
    y = mx.nd.array(y_np)
    x.attach_grad()
    mx.nd.waitall()
    ts = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        with autograd.record():
            loss = blk(x, y)
        loss.backward()
        x.grad.wait_to_read()
        ts.append(time.perf_counter() - t0)
    del x, y
    return float(np.median(ts[warmup:]))


def impl_names(fused_ok):
    return (['fused-1t', 'fused-2t'] if fused_ok else []) + ['composite', 'gluoncv', 'bce']


def forward_backward(blk, x, y, repeats):
    """Forward+backward of a loss used as the last layer; x.grad holds d pred."""
    blk = AsLastLayer(blk)
    blk.hybridize(static_alloc=True, static_shape=True)
    x.attach_grad()
    for _ in range(repeats):
        with autograd.record():
            loss = blk(x, y)
        loss.backward()
        x.grad.wait_to_read()


def inputs_for(impl, wl, shape):
    """(loss block, pred NDArray, label NDArray) for one implementation."""
    pred, lab, sparse = make_inputs(wl, shape)
    blk, variant = build_impl(impl, wl, shape)
    return blk, mx.nd.array(pred), mx.nd.array(label_for(variant, wl, shape, lab, sparse))


def rss_child(impl, wname, quick):
    """Run in a fresh process: print JSON with baseline/peak RSS.

    The implementation first runs once on the quick-size input, so that its
    one-time costs (library, engine and thread start-up) are in the baseline
    and ``peak - base`` is what a call of this size needs."""
    wl = WORKLOADS[wname]
    shape = QUICK[wname] if quick else wl['shape']
    from gluon_focal import kernel
    kernel.load()
    if impl.startswith('fused'):
        kernel.set_num_threads(2 if impl.endswith('2t') else 1)
    forward_backward(*inputs_for(impl, wl, QUICK[wname]), repeats=1)
    blk, x, y = inputs_for(impl, wl, shape)
    mx.nd.waitall()
    with open('/proc/self/statm') as f:
        base = int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    try:  # reset the high-water mark (VmHWM) so that import-time peaks don't count
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        hwm_reset = True
    except OSError:
        hwm_reset = False
    forward_backward(blk, x, y, repeats=2)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if hwm_reset:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    peak = int(line.split()[1]) * 1024
    print(json.dumps({'base': base, 'peak': peak, 'grad_bytes': x.size * 4,
                      'hwm_reset': hwm_reset}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--json', default=None)
    ap.add_argument('--repeats', type=int, default=None)
    ap.add_argument('--workloads', default='W1,W2s,W2d,W3,W4')
    ap.add_argument('--impls', default=None)
    ap.add_argument('--no-rss', action='store_true')
    ap.add_argument('--rss-workloads', default='W1')
    ap.add_argument('--rss-child', nargs=2, metavar=('IMPL', 'WORKLOAD'))
    args = ap.parse_args()
    if args.rss_child:
        return rss_child(args.rss_child[0], args.rss_child[1], args.quick)

    from gluon_focal import kernel
    fused_ok = kernel.available()
    repeats = args.repeats or (5 if args.quick else 3)
    warmup = 2 if args.quick else 1
    names = args.impls.split(',') if args.impls else impl_names(fused_ok)
    rows = []
    info = {'cpu_count': os.cpu_count(), 'mxnet': mx.__version__, 'quick': args.quick,
            'simd': kernel.simd_level() if fused_ok else None,
            'fused_default_threads': kernel.default_num_threads() if fused_ok else None,
            'repeats': repeats, 'warmup': warmup}
    if not fused_ok:
        print('fused kernel unavailable: %s' % kernel.unavailable_reason(), file=sys.stderr)
    for wname in args.workloads.split(','):
        wl = WORKLOADS[wname]
        shape = QUICK[wname] if args.quick else wl['shape']
        pred, lab, sparse = make_inputs(wl, shape)
        n = int(np.prod(shape))
        for impl in names:
            try:
                if impl.startswith('fused'):
                    kernel.set_num_threads(2 if impl.endswith('2t') else 1)
                blk, variant = build_impl(impl, wl, shape)
                y_np = label_for(variant, wl, shape, lab, sparse)
                sec = time_impl(blk, pred, y_np, warmup, repeats)
                rows.append(dict(workload=wname, shape=list(shape), impl=impl, ms=sec * 1e3,
                                 ns_per_elem=sec * 1e9 / n, label=variant))
            except Exception as err:  # noqa: BLE001
                rows.append(dict(workload=wname, shape=list(shape), impl=impl, ms=None,
                                 ns_per_elem=None, error='%s: %s' % (type(err).__name__, err)))
            finally:
                if fused_ok:
                    kernel.set_num_threads(0)
                mx.nd.waitall()
    # ratios
    for r in rows:
        for ref in ('bce', 'gluoncv'):
            base = [b for b in rows if b['workload'] == r['workload'] and b['impl'] == ref]
            if base and base[0]['ms'] and r['ms']:
                r['x_vs_' + ref] = r['ms'] / base[0]['ms']
    mem = []
    for rss_workload in ([] if args.no_rss else args.rss_workloads.split(',')):
        for impl in names:
            cmd = [sys.executable, os.path.abspath(__file__), '--rss-child', impl, rss_workload]
            if args.quick:
                cmd.append('--quick')
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  universal_newlines=True)
            try:
                d = json.loads(proc.stdout.strip().splitlines()[-1])
                d['impl'], d['workload'] = impl, rss_workload
                d['extra_mb'] = (d['peak'] - d['base']) / 2**20
                d['grad_mb'] = d['grad_bytes'] / 2**20
                d['extra_over_grad'] = (d['peak'] - d['base']) / d['grad_bytes']
                mem.append(d)
            except Exception:  # noqa: BLE001
                mem.append({'impl': impl, 'workload': rss_workload, 'error': proc.stderr[-500:]})

    print('# focal loss fwd+bwd, hybridized, median of %d after %d warm-up; %s; simd=%s; '
          'cpus=%s' % (repeats, warmup, 'QUICK sizes' if args.quick else 'full sizes',
                       info['simd'], info['cpu_count']))
    hdr = '%-5s %-18s %-12s %10s %9s %8s %8s' % ('wl', 'shape', 'impl', 'ms', 'ns/elem',
                                                 'x bce', 'x gcv')
    print(hdr)
    print('-' * len(hdr))
    for r in rows:
        if r['ms'] is None:
            print('%-5s %-18s %-12s  n/a (%s)' % (r['workload'], 'x'.join(map(str, r['shape'])),
                                                 r['impl'], r['error'][:60]))
            continue
        print('%-5s %-18s %-12s %10.2f %9.3f %8s %8s' % (
            r['workload'], 'x'.join(map(str, r['shape'])), r['impl'], r['ms'], r['ns_per_elem'],
            '%.2f' % r['x_vs_bce'] if 'x_vs_bce' in r else '-',
            '%.2f' % r['x_vs_gluoncv'] if 'x_vs_gluoncv' in r else '-'))
    if mem:
        print('\n# peak memory%s, one subprocess per implementation and workload' %
              (' (quick size)' if args.quick else ''))
        print('%-5s %-12s %12s %10s %14s' % ('wl', 'impl', 'extra MB', 'grad MB', 'extra/grad'))
        for d in mem:
            if 'error' in d:
                print('%-5s %-12s  n/a %s' % (d['workload'], d['impl'], d['error'][-80:]))
            else:
                print('%-5s %-12s %12.1f %10.1f %14.3f' % (
                    d['workload'], d['impl'], d['extra_mb'], d['grad_mb'],
                    d['extra_over_grad']))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'info': info, 'rows': rows, 'memory': mem}, f, indent=1)


if __name__ == '__main__':
    main()
