"""Forward+backward benchmark of sigmoid focal loss implementations on MXNet.

    python benchmarks/bench_loss.py [--quick] [--json PATH] [--repeats N] [--threads 1,2]
                                    [--statistic median|min]
                                    [--workloads W1,W2s,...] [--impls ...] [--no-rss]
                                    [--rss-workloads W1,W3,...]

Every implementation is a hybridized Gluon block run under autograd.record(),
as the last layer of an outer hybridized block (see AsLastLayer: pred is then
a network-like intermediate without a gradient buffer of its own, so no
grad_req='add' identity copy is inserted); a step is forward + backward +
wait_to_read on the gradient.

Equal resources: MXNet fixes its own operator thread count from
OMP_NUM_THREADS when the process starts, so each thread count runs in its own
child process (OMP_NUM_THREADS = GLUON_FOCAL_NUM_THREADS = n) on the same
seeded inputs, and every ratio compares implementations of the same child.
Within a child the implementations are interleaved (one step of each per
round, --repeats rounds after a warm-up step each), so a busy machine slows
them alike; the median of the rounds is reported (``--statistic min``: the
fastest round of each, for a machine whose other tenants only ever add
time), with the load average.

Implementations
  floor      MXNet elemwise_add of two logits-sized float32 arrays into a third
             (read 2, write 1: the 12 bytes per element that fused forward +
             backward must move at least); the memory floor
  fused      gluon_focal.FocalLoss(impl='fused')
  fused_fwd  its forward pass alone (no autograd): reads pred and labels once,
             writes one value per sample, so what it costs beyond a third of
             the floor is computation
  composite  gluon_focal.FocalLoss(impl='composite')
  gluoncv    gluoncv.loss.FocalLoss (from_logits=False, i.e. logits)
  bce        gluon.loss.SigmoidBCELoss (no focal term)

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
    if name in ('fused', 'composite'):
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


IMPLS = ('floor', 'fused', 'fused_fwd', 'composite', 'gluoncv', 'bce')


class Floor(object):
    """The memory floor: elemwise_add of two logits-sized arrays into a third."""

    def __init__(self, shape):
        self.a, self.b = mx.nd.ones(shape), mx.nd.ones(shape)
        self.out = mx.nd.zeros(shape)

    def step(self):
        mx.nd.elemwise_add(self.a, self.b, out=self.out)
        self.out.wait_to_read()


class ForwardStep(object):
    """One implementation's forward pass alone, outside autograd."""

    def __init__(self, blk, x_np, y_np):
        self.blk = AsLastLayer(blk)
        self.blk.hybridize(static_alloc=True, static_shape=True)
        self.x, self.y = mx.nd.array(x_np), mx.nd.array(y_np)

    def step(self):
        self.blk(self.x, self.y).wait_to_read()


class LossStep(ForwardStep):
    """One implementation's forward + backward on fixed inputs."""

    def __init__(self, blk, x_np, y_np):
        super(LossStep, self).__init__(blk, x_np, y_np)
        self.x.attach_grad()

    def step(self):
        with autograd.record():
            loss = self.blk(self.x, self.y)
        loss.backward()
        self.x.grad.wait_to_read()


def load_average():
    with open('/proc/loadavg') as f:
        return float(f.read().split()[0])


def timing_child(threads, workloads, quick, repeats, impls, statistic):
    """Run in a child with OMP_NUM_THREADS=threads: time every implementation
    on every workload, interleaved; print one JSON line per (workload, impl)."""
    from gluon_focal import kernel
    fused_ok = kernel.available()
    for wname in workloads:
        wl = WORKLOADS[wname]
        shape = QUICK[wname] if quick else wl['shape']
        pred, lab, sparse = make_inputs(wl, shape)
        steps, rows = {}, {}
        for impl in impls:
            row = dict(workload=wname, shape=list(shape), impl=impl, threads=threads, ms=None)
            rows[impl] = row
            try:
                if impl == 'floor':
                    steps[impl] = Floor(shape)
                else:
                    if impl.startswith('fused') and not fused_ok:
                        raise RuntimeError(kernel.unavailable_reason())
                    blk, variant = build_impl(impl.replace('_fwd', ''), wl, shape)
                    row['label'] = variant
                    step = ForwardStep if impl == 'fused_fwd' else LossStep
                    steps[impl] = step(blk, pred, label_for(variant, wl, shape, lab, sparse))
                steps[impl].step()   # warm-up: graph building, allocation
            except Exception as err:  # noqa: BLE001
                row['error'] = '%s: %s' % (type(err).__name__, err)
                steps.pop(impl, None)
        times = {impl: [] for impl in steps}
        load_before = load_average()
        for _ in range(repeats):
            for impl, step in steps.items():
                t0 = time.perf_counter()
                step.step()
                times[impl].append(time.perf_counter() - t0)
        n = int(np.prod(shape))
        for impl, row in rows.items():
            if impl in times:
                sec = float(getattr(np, statistic)(times[impl]))
                row.update(ms=sec * 1e3, ns_per_elem=sec * 1e9 / n,
                           load=[load_before, load_average()])
            print(json.dumps(row), flush=True)
        del steps
        mx.nd.waitall()


def run_timings(threads, workloads, quick, repeats, impls, statistic):
    """Rows of every thread count, each from its own child process."""
    rows = []
    for n in threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(n), GLUON_FOCAL_NUM_THREADS=str(n))
        cmd = [sys.executable, os.path.abspath(__file__), '--timing-child', str(n),
               '--workloads', ','.join(workloads), '--repeats', str(repeats),
               '--statistic', statistic,
               '--impls', ','.join(impls)] + (['--quick'] if quick else [])
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, env=env)
        got = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
        if proc.returncode != 0 and not got:
            raise RuntimeError('timing child (%d threads) failed:\n%s' % (n, proc.stderr[-3000:]))
        rows += got
    return rows


def ratio_table(rows, threads, workloads):
    """Lines of the table: per workload and thread count, ns/element of each
    implementation and the ratios at that thread count."""
    def ns(w, n, impl):
        r = [x for x in rows if x['workload'] == w and x['threads'] == n and x['impl'] == impl]
        return r[0].get('ns_per_elem') if r else None

    def fmt(v, spec='%.2f'):
        return spec % v if v is not None else 'n/a'

    hdr = ('%-4s %-16s %3s %7s %7s %10s %7s %9s %8s %9s %8s %9s %11s' % (
        'wl', 'shape', 'thr', 'floor', 'fused', 'fused/flr', 'fwd', 'gluoncv', 'gcv/fus', 'bce',
        'bce/fus', 'composite', 'load'))
    lines = [hdr, '-' * len(hdr)]
    for w in workloads:
        for n in threads:
            r = [x for x in rows if x['workload'] == w and x['threads'] == n]
            if not r:
                continue
            floor, fused, fwd, gcv, bce, comp = (
                ns(w, n, i) for i in ('floor', 'fused', 'fused_fwd', 'gluoncv', 'bce', 'composite'))
            loads = [x['load'] for x in r if x.get('load')]
            lines.append('%-4s %-16s %3d %7s %7s %10s %7s %9s %8s %9s %8s %9s %11s' % (
                w, 'x'.join(map(str, r[0]['shape'])), n, fmt(floor), fmt(fused),
                fmt(fused / floor if fused and floor else None), fmt(fwd), fmt(gcv, '%.1f'),
                fmt(gcv / fused if gcv and fused else None, '%.1f'), fmt(bce, '%.1f'),
                fmt(bce / fused if bce and fused else None, '%.1f'), fmt(comp, '%.1f'),
                '%.1f-%.1f' % (min(l[0] for l in loads), max(l[1] for l in loads)) if loads else '-'))
    errors = ['%s %s %dt: %s' % (x['workload'], x['impl'], x['threads'], x['error'][:100])
              for x in rows if x.get('error')]
    return lines + (['n/a: ' + e for e in errors] if errors else [])


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


def peak_memory(impls, workloads, quick):
    mem = []
    for wname in workloads:
        for impl in impls:
            if impl in ('floor', 'fused_fwd'):
                continue
            cmd = [sys.executable, os.path.abspath(__file__), '--rss-child', impl, wname]
            if quick:
                cmd.append('--quick')
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  universal_newlines=True)
            try:
                d = json.loads(proc.stdout.strip().splitlines()[-1])
                d['extra_mb'] = (d['peak'] - d['base']) / 2**20
                d['grad_mb'] = d['grad_bytes'] / 2**20
                d['extra_over_grad'] = (d['peak'] - d['base']) / d['grad_bytes']
            except Exception:  # noqa: BLE001
                d = {'error': proc.stderr[-500:]}
            d['impl'], d['workload'] = impl, wname
            mem.append(d)
    return mem


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--json', default=None)
    ap.add_argument('--repeats', type=int, default=None)
    ap.add_argument('--statistic', choices=('median', 'min'), default='median')
    ap.add_argument('--threads', default='1,2')
    ap.add_argument('--workloads', default='W1,W2s,W2d,W3,W4')
    ap.add_argument('--impls', default=','.join(IMPLS))
    ap.add_argument('--no-rss', action='store_true')
    ap.add_argument('--rss-workloads', default='W1')
    ap.add_argument('--rss-child', nargs=2, metavar=('IMPL', 'WORKLOAD'))
    ap.add_argument('--timing-child', type=int, metavar='THREADS')
    args = ap.parse_args()
    workloads, impls = args.workloads.split(','), args.impls.split(',')
    repeats = args.repeats or (5 if args.quick else 3)
    if args.rss_child:
        return rss_child(args.rss_child[0], args.rss_child[1], args.quick)
    if args.timing_child:
        return timing_child(args.timing_child, workloads, args.quick, repeats, impls,
                            args.statistic)

    from gluon_focal import kernel
    fused_ok = kernel.available()
    if not fused_ok:
        print('fused kernel unavailable: %s' % kernel.unavailable_reason(), file=sys.stderr)
    threads = [int(t) for t in args.threads.split(',')]
    info = {'cpu_count': os.cpu_count(), 'mxnet': mx.__version__, 'quick': args.quick,
            'simd': kernel.simd_level() if fused_ok else None, 'repeats': repeats,
            'threads': threads}
    rows = run_timings(threads, workloads, args.quick, repeats, impls, args.statistic)
    mem = [] if args.no_rss else peak_memory(impls, args.rss_workloads.split(','), args.quick)

    print('# focal loss fwd+bwd, ns per logit element, hybridized; %s; simd=%s; %d cpus; '
          '%s of %d interleaved rounds; each thread count in its own process '
          '(OMP_NUM_THREADS = GLUON_FOCAL_NUM_THREADS); ratios at equal threads; load = '
          'load average during the rounds' % ('QUICK sizes' if args.quick else 'full sizes',
                                              info['simd'], info['cpu_count'], args.statistic,
                                              repeats))
    print('\n'.join(ratio_table(rows, threads, workloads)))
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
