"""Distributed training: parameter-server kvstore via our launcher, several
contexts on one machine, launcher clean-up and ssh command construction.

This file doubles as the worker script of the distributed tests
(``python tests/test_distributed.py train OUTDIR``), so the workers and the
single-process reference share the model, the data and the training loop.

Every process these tests start is bounded by a timeout and reaped, even when
a test fails: children are found by a unique marker (the test's tmp dir) in
their command line and killed.
"""
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from gluon_focal.distributed import launch as L  # noqa: E402
from gluon_focal.distributed import shard, shard_bounds  # noqa: E402

# ---------------------------------------------------------------- shared setup
NUM_WORKERS = 2
BATCH = 4            # per-worker batch size
STEPS = 3
IN_UNITS, NUM_CLASS = 5, 3
NUM_SAMPLES = NUM_WORKERS * BATCH * STEPS + 1   # +1: the even shard drops it
OPT = 'sgd'
OPT_PARAMS = {'learning_rate': 0.5, 'momentum': 0.9, 'wd': 1e-3}


def make_data():
    rng = np.random.RandomState(0)
    x = rng.randn(NUM_SAMPLES, IN_UNITS).astype('float32')
    y = (rng.rand(NUM_SAMPLES, NUM_CLASS) < 0.3).astype('float32')
    return x, y


def make_net(ctx):
    import mxnet as mx
    from mxnet import gluon
    net = gluon.nn.Dense(NUM_CLASS, in_units=IN_UNITS, prefix='dense_')
    net.initialize(ctx=ctx)
    rng = np.random.RandomState(1)
    net.weight.set_data(mx.nd.array(rng.randn(NUM_CLASS, IN_UNITS) * 0.5))
    net.bias.set_data(mx.nd.array(rng.randn(NUM_CLASS) * 0.1 - 1.0))
    return net


def make_loss():
    import gluon_focal
    # per-sample loss: mean over the classes of the element-wise focal loss
    return gluon_focal.FocalLoss(label_mode='dense', alpha=0.25, gamma=2.0)


def train(net, trainer, batches, ctx):
    """Plain Gluon loop: per-sample losses, backward, ``step(BATCH)``."""
    import mxnet as mx
    from mxnet import autograd
    loss_fn = make_loss()
    for xb, yb in batches:
        x, y = mx.nd.array(xb, ctx=ctx), mx.nd.array(yb, ctx=ctx)
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(BATCH)   # the per-worker batch size, as a training script does
    return {k: v.data(ctx).asnumpy() for k, v in net.collect_params().items()}


def batches_of(x, y):
    return [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x) - BATCH + 1, BATCH)]


def worker_main(outdir):
    """Run by every process of the launched job (scheduler and servers never
    get past ``import mxnet``)."""
    import mxnet as mx
    from mxnet import gluon
    from gluon_focal.distributed import create_kvstore
    kv = create_kvstore('dist_sync')
    x, y = make_data()
    xs, ys = shard(x, kv), shard(y, kv)
    ctx = mx.cpu()
    net = make_net(ctx)
    trainer = gluon.Trainer(net.collect_params(), OPT, dict(OPT_PARAMS), kvstore=kv)
    params = train(net, trainer, batches_of(xs, ys), ctx)
    np.savez(os.path.join(outdir, 'rank%d.npz' % kv.rank), **params)


def fail_main():
    """Worker 0 dies with code 3 once the job is up; worker 1 hangs (as it
    would in the next dist_sync push)."""
    import mxnet as mx
    mx.kv.create('dist_sync')
    if os.environ['DMLC_TASK_ID'] == '0':
        os._exit(3)
    time.sleep(300)


# ---------------------------------------------------------------- process helpers
def _pids_with(marker):
    pids = []
    for d in os.listdir('/proc'):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open('/proc/%s/cmdline' % d, 'rb') as f:
                cmd = f.read()
            with open('/proc/%s/stat' % d) as f:
                zombie = f.read().rsplit(')', 1)[1].split()[0] == 'Z'
        except OSError:
            continue
        if marker.encode() in cmd and not zombie:
            pids.append(int(d))
    return pids


def _kill_marked(marker):
    for pid in _pids_with(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _child_env():
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([REPO] + [p for p in [env.get('PYTHONPATH')] if p])
    env.update(OMP_NUM_THREADS='1', MXNET_CPU_WORKER_NTHREADS='1')
    return env


def _launch(args, marker, timeout=60, on_start=None, as_module=True):
    """Run the launcher; return (returncode, output).  Whatever happens, the
    launcher and every process carrying ``marker`` are gone afterwards.

    ``as_module=False`` runs launch.py as a script, which skips importing the
    ``gluon_focal`` package (and mxnet) in the launcher: cheaper on 2 cores."""
    entry = ['-m', 'gluon_focal.distributed.launch'] if as_module else [L.__file__]
    cmd = [sys.executable] + entry + args
    proc = subprocess.Popen(cmd, cwd=REPO, env=_child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if on_start is not None:
            on_start(proc)
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out.decode(errors='replace')
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)        # let the launcher clean up
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _kill_marked(marker)


def _no_leftovers(marker, within=3.0):
    end = time.monotonic() + within
    while _pids_with(marker) and time.monotonic() < end:
        time.sleep(0.1)
    return _pids_with(marker)


def _has_dist_kvstore():
    try:
        import mxnet as mx
        return mx.runtime.Features().is_enabled('DIST_KVSTORE')
    except Exception:  # pragma: no cover
        return False


posix_only = pytest.mark.skipif(not sys.platform.startswith('linux'),
                                reason='process groups and /proc')
needs_dist = pytest.mark.skipif(not _has_dist_kvstore(),
                                reason='mxnet built without DIST_KVSTORE')


# ---------------------------------------------------------------- tests
@posix_only
@needs_dist
def test_dist_sync_two_workers_match_single_process(tmp_path):
    """2 workers + 1 server with dist_sync end with identical parameters, equal
    to one process training on the union of the shards.

    dist_sync sums the workers' gradients on the server, and the optimizer
    there was set up by ``Trainer.step(BATCH)`` with ``rescale_grad =
    1/BATCH`` (the per-worker batch size).  So one step applies
    ``(1/BATCH) * sum over both workers' samples`` of the per-sample
    gradients: exactly a single process that feeds the union batch
    (2*BATCH samples, worker 0's then worker 1's) and calls ``step(BATCH)``.
    """
    import mxnet as mx
    from mxnet import gluon
    marker = str(tmp_path)
    rc, out = _launch(['-n', str(NUM_WORKERS), '-s', '1', '--timeout', '50', '--',
                       sys.executable, os.path.abspath(__file__), 'train', marker],
                      marker, timeout=55)
    assert rc == 0, out
    assert not _no_leftovers(marker)
    got = [dict(np.load(str(tmp_path / ('rank%d.npz' % r)))) for r in range(NUM_WORKERS)]
    assert set(got[0]) == {'dense_weight', 'dense_bias'}
    for k in got[0]:
        np.testing.assert_array_equal(got[0][k], got[1][k])

    # single-process equivalent
    x, y = make_data()
    shards = [shard_bounds(len(x), NUM_WORKERS, r) for r in range(NUM_WORKERS)]
    per_worker = [batches_of(x[a:b], y[a:b]) for a, b in shards]
    union = [(np.concatenate([w[t][0] for w in per_worker]),
              np.concatenate([w[t][1] for w in per_worker])) for t in range(STEPS)]
    assert len(per_worker[0]) == len(per_worker[1]) == STEPS
    ctx = mx.cpu()
    net = make_net(ctx)
    init = {k: v.data().asnumpy() for k, v in net.collect_params().items()}
    trainer = gluon.Trainer(net.collect_params(), OPT, dict(OPT_PARAMS), kvstore=None)
    ref = train(net, trainer, union, ctx)
    for k in ref:
        assert not np.allclose(ref[k], init[k])     # the steps did something
        np.testing.assert_allclose(got[0][k], ref[k], rtol=1e-5, atol=1e-6)


def test_multi_context_matches_single_context():
    """split_and_load over [cpu(0), cpu(1)]: same total loss, summed
    gradients and updated parameters as one context on the same batch."""
    import mxnet as mx
    from mxnet import autograd, gluon
    x, y = make_data()
    x, y = x[:2 * BATCH], y[:2 * BATCH]
    loss_fn = make_loss()

    one = [mx.cpu(0)]
    net1 = make_net(one)
    with autograd.record():
        loss1 = loss_fn(net1(mx.nd.array(x)), mx.nd.array(y))
    loss1.backward()
    total1 = loss1.sum().asscalar()
    grads1 = {k: p.grad(one[0]).asnumpy() for k, p in net1.collect_params().items()}

    ctxs = [mx.cpu(0), mx.cpu(1)]
    net2 = make_net(ctxs)
    xs = gluon.utils.split_and_load(mx.nd.array(x), ctxs)
    ys = gluon.utils.split_and_load(mx.nd.array(y), ctxs)
    with autograd.record():
        losses = [loss_fn(net2(xi), yi) for xi, yi in zip(xs, ys)]
    autograd.backward(losses)
    total2 = sum(l.sum().asscalar() for l in losses)
    assert abs(total2 - total1) <= 1e-5 * max(1.0, abs(total1))
    for k, p in net2.collect_params().items():
        summed = sum(g.asnumpy() for g in p.list_grad())
        np.testing.assert_allclose(summed, grads1[k], rtol=1e-5, atol=1e-5)

    # and the trainers agree ('device' kvstore reduces over the two contexts)
    t1 = gluon.Trainer(net1.collect_params(), OPT, dict(OPT_PARAMS), kvstore='device')
    t2 = gluon.Trainer(net2.collect_params(), OPT, dict(OPT_PARAMS), kvstore='device')
    t1.step(2 * BATCH)
    t2.step(2 * BATCH)
    for k, p in net2.collect_params().items():
        want = net1.collect_params()[k].data(one[0]).asnumpy()
        for c in ctxs:
            np.testing.assert_allclose(p.data(c).asnumpy(), want, rtol=1e-5, atol=1e-6)


@posix_only
@needs_dist
def test_launcher_forwards_failing_worker_exit_code(tmp_path):
    marker = str(tmp_path)
    t0 = time.monotonic()
    rc, out = _launch(['-n', '2', '-s', '1', '--grace', '2', '--timeout', '40', '--',
                       sys.executable, os.path.abspath(__file__), 'fail', marker],
                      marker, timeout=45, as_module=False)
    assert rc == 3, out
    assert 'worker0 exited with code 3' in out
    assert time.monotonic() - t0 < 35       # stopped at once, not at the timeout
    assert not _no_leftovers(marker)


_SLEEPER = 'import sys, time; time.sleep(float(sys.argv[1]))'


@posix_only
def test_launcher_timeout_kills_everything(tmp_path):
    marker = str(tmp_path)
    rc, out = _launch(['-n', '2', '-s', '1', '--timeout', '1', '--grace', '1', '--',
                       sys.executable, '-c', _SLEEPER, '60', marker], marker,
                      timeout=30, as_module=False)
    assert rc == L.TIMEOUT_EXIT_CODE, out
    assert not _no_leftovers(marker)


@posix_only
def test_launcher_sigterm_kills_everything(tmp_path):
    marker = str(tmp_path)

    def on_start(proc):
        end = time.monotonic() + 20
        def children():   # the launcher's own command line holds the marker too
            return [p for p in _pids_with(marker) if p != proc.pid]
        while len(children()) < 4 and time.monotonic() < end:
            time.sleep(0.05)
        assert len(children()) == 4     # scheduler, server, 2 workers
        proc.send_signal(signal.SIGTERM)

    rc, out = _launch(['-n', '2', '-s', '1', '--grace', '1', '--',
                       sys.executable, '-c', _SLEEPER, '60', marker], marker,
                      timeout=30, on_start=on_start, as_module=False)
    assert rc == 128 + signal.SIGTERM, out
    assert not _no_leftovers(marker)


@posix_only
def test_launcher_success_and_env(tmp_path):
    """Exit code 0 once the workers are done; loopback-only ps-lite env."""
    marker = str(tmp_path)
    script = ('import json, os, sys\n'
              'env = {k: v for k, v in os.environ.items() if k.startswith("DMLC_")}\n'
              'name = env["DMLC_ROLE"] + env.get("DMLC_TASK_ID", "")\n'
              'json.dump(env, open(os.path.join(sys.argv[1], name + ".json"), "w"))\n')
    rc, out = _launch(['-n', '2', '-s', '1', '--env', 'FOO=1', '--',
                       sys.executable, '-c', script, marker], marker, timeout=30)
    assert rc == 0, out
    import json
    envs = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob('*.json')}
    assert set(envs) == {'scheduler', 'server2', 'worker0', 'worker1'}
    port = envs['scheduler']['DMLC_PS_ROOT_PORT']
    for name, env in envs.items():
        assert env['DMLC_PS_ROOT_URI'] == '127.0.0.1'
        assert env['DMLC_PS_ROOT_PORT'] == port
        assert env['DMLC_NUM_WORKER'] == '2' and env['DMLC_NUM_SERVER'] == '1'
        if name != 'scheduler':
            assert env['DMLC_NODE_HOST'] == '127.0.0.1'
    assert not _no_leftovers(marker)


# ---------------------------------------------------------------- argument construction
def test_parse_args():
    a = L.parse_args(['-n', '2', '--', 'python', 'train.py', '--kvstore', 'dist_sync'])
    assert (a.num_workers, a.num_servers, a.launcher) == (2, 2, 'local')
    assert a.command == ['python', 'train.py', '--kvstore', 'dist_sync']
    a = L.parse_args(['-n', '2', '-s', '1', '-H', 'hosts', '--env', 'A=b=c',
                      'python', 'train.py'])
    assert (a.num_servers, a.launcher, a.extra_env) == (1, 'ssh', {'A': 'b=c'})
    with pytest.raises(SystemExit):
        L.parse_args(['-n', '2', '--launcher', 'ssh', '--', 'python'])
    with pytest.raises(SystemExit):
        L.parse_args(['-n', '2', '--'])


def test_local_commands():
    procs = L.local_commands(2, 1, ['python', 't.py'], port=1234, extra_env={'X': '1'})
    assert [p.name for p in procs] == ['scheduler', 'server0', 'worker0', 'worker1']
    for p in procs:
        assert p.argv == ['python', 't.py']
        assert p.env['DMLC_PS_ROOT_URI'] == '127.0.0.1'
        assert p.env['DMLC_PS_ROOT_PORT'] == '1234'
        assert p.env['DMLC_ROLE'] == p.role and p.env['X'] == '1'
    assert 'DMLC_NODE_HOST' not in procs[0].env
    assert all(p.env['DMLC_NODE_HOST'] == '127.0.0.1' for p in procs[1:])


def test_parse_host_file(tmp_path):
    f = tmp_path / 'hosts'
    f.write_text('# cluster\n10.0.0.1\n\nalice@10.0.0.2:2222\n10.0.0.3 slots=8\n')
    assert L.parse_host_file(str(f)) == [('10.0.0.1', None), ('alice@10.0.0.2', '2222'),
                                         ('10.0.0.3', None)]
    with pytest.raises(ValueError):
        L.parse_host_file(['', '# nothing'])


def test_ssh_commands():
    hosts = [('10.0.0.1', None), ('alice@10.0.0.2', '2222')]
    procs = L.ssh_commands(3, 2, ['/venv/bin/python', 'train.py', '--kvstore', 'dist_sync',
                                  '--name', 'a b'],
                           hosts, port=9000, workdir='/code dir', extra_env={'FOO': 'x y'},
                           environ={'OMP_NUM_THREADS': '4', 'MXNET_X': '1', 'HOME': '/h',
                                    'DMLC_ROLE': 'worker'})
    assert [p.name for p in procs] == ['scheduler', 'server0', 'server1',
                                       'worker0', 'worker1', 'worker2']
    where = {}
    for p in procs:
        assert p.env == {}
        argv = p.argv
        assert argv[:6] == ['ssh', '-tt', '-o', 'StrictHostKeyChecking=no', '-o', 'BatchMode=yes']
        login = argv[-2]
        if login == 'alice@10.0.0.2':
            assert argv[6:8] == ['-p', '2222']
        else:
            assert login == '10.0.0.1' and len(argv) == 8
        where[p.name] = login
        remote = shlex.split(argv[-1])
        assert remote[:4] == ['cd', '/code dir', '&&', 'env']
        i = remote.index('/venv/bin/python')
        assert remote[i:] == ['/venv/bin/python', 'train.py', '--kvstore', 'dist_sync',
                              '--name', 'a b']
        env = dict(kv.split('=', 1) for kv in remote[4:i])
        assert env['DMLC_ROLE'] == p.role
        assert env['DMLC_PS_ROOT_URI'] == '10.0.0.1' and env['DMLC_PS_ROOT_PORT'] == '9000'
        assert env['DMLC_NUM_WORKER'] == '3' and env['DMLC_NUM_SERVER'] == '2'
        assert env['FOO'] == 'x y' and env['OMP_NUM_THREADS'] == '4'
        assert env['MXNET_X'] == '1' and 'HOME' not in env
        if p.role == 'scheduler':
            assert 'DMLC_NODE_HOST' not in env
        else:
            assert env['DMLC_NODE_HOST'] == login.split('@')[-1]
    assert where == {'scheduler': '10.0.0.1', 'server0': '10.0.0.1',
                     'server1': 'alice@10.0.0.2', 'worker0': '10.0.0.1',
                     'worker1': 'alice@10.0.0.2', 'worker2': '10.0.0.1'}


def test_shard_helpers():
    class KV:
        type, rank, num_workers = 'dist_sync', 1, 3
    assert shard(10, KV()) == range(3, 6)
    assert shard(list(range(10)), KV()) == [3, 4, 5]
    assert shard(list(range(10)), KV(), even=False) == [4, 5, 6]   # as Dataset.shard
    assert shard(np.arange(10), None).tolist() == list(range(10))

    class Local:
        type, rank, num_workers = 'device', 0, 1
    assert shard(10, Local()) == range(10)
    assert [shard_bounds(10, 3, r, even=False) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]

    from gluon_focal.distributed import create_kvstore, is_distributed, rank_and_size
    assert create_kvstore(None) is None and create_kvstore('none') is None
    kv = create_kvstore('local')
    assert kv.type == 'local' and not is_distributed(kv) and rank_and_size(kv) == (0, 1)
    assert create_kvstore(kv) is kv and is_distributed(KV()) and rank_and_size(KV()) == (1, 3)

    from mxnet.gluon.data import ArrayDataset
    ds = ArrayDataset(np.arange(10))
    part = shard(ds, KV(), even=False)
    ref = ds.shard(3, 1)
    assert [part[i] for i in range(len(part))] == [ref[i] for i in range(len(ref))]


if __name__ == '__main__':
    if sys.argv[1] == 'train':
        worker_main(sys.argv[2])
    elif sys.argv[1] == 'fail':
        fail_main()
    else:
        raise SystemExit('usage: test_distributed.py train OUTDIR | fail MARKER')


@posix_only
def test_a_signal_while_processes_start_stops_every_started_one(tmp_path, monkeypatch):
    """SIGTERM arriving inside Popen (after the fork) used to lose that process, left
    running: the launcher now notes signals until every Popen has returned."""
    marker = str(tmp_path)
    real_popen = L.subprocess.Popen
    started = []

    def popen_then_signal(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        started.append(proc)
        if len(started) == 2:
            os.kill(os.getpid(), signal.SIGTERM)   # lands before Popen returns
        return proc

    monkeypatch.setattr(L.subprocess, 'Popen', popen_then_signal)
    procs = [L.Proc('worker', i, [sys.executable, '-c', _SLEEPER, '60', marker], {})
             for i in range(3)]
    try:
        assert L.run(procs, grace=1) == 128 + signal.SIGTERM
        assert len(started) == 2 and all(p.poll() is not None for p in started)
        assert not _no_leftovers(marker)
    finally:
        _kill_marked(marker)
