"""Crash safety of training: SIGKILL at any moment, then resume.

(a) unit level: a child process saves checkpoints with
    ``gluon_focal.training.CheckpointManager`` in a loop and is SIGKILLed at
    random moments, several times in the same folder (each new child resumes
    from the last checkpoint). After every kill, ``latest()`` must name
    complete, loadable files holding exactly the epoch it claims; no temporary
    file is ever named by it, and every file with a final checkpoint name loads.
(b) end to end: ``examples/train_segmentation.py`` on a tiny synthetic set is
    SIGKILLed right after its first checkpoint appears, rerun with
    ``--resume``, and must continue from the next epoch and finish.
"""
import glob
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
from mxnet import gluon

from gluon_focal.training import CheckpointManager
from hostile_helpers import REPO, subprocess_env

UNITS = 700          # a 700 x 700 Dense layer: ~2 MB of parameters, ~4 MB of Adam states

SAVER = '''
import sys
import mxnet as mx
from mxnet import autograd, gluon
from gluon_focal.training import CheckpointManager

directory, units = sys.argv[1], int(sys.argv[2])
net = gluon.nn.Dense(units, in_units=units)
net.initialize()
trainer = gluon.Trainer(net.collect_params(), 'adam')
with autograd.record():
    loss = net(mx.nd.ones((1, units))).sum()
loss.backward()
trainer.step(1)                      # creates the optimizer states
manager = CheckpointManager(directory)
entry = manager.latest()
epoch = 1 if entry is None else entry['epoch'] + 1   # numbered from 1
print('resumed at', epoch, flush=True)
while True:
    for param in net.collect_params().values():
        param.set_data(mx.nd.full(param.shape, epoch))
    manager.save(epoch, net, trainer, {'marker': [epoch]})
    print('saved', epoch, flush=True)
    epoch += 1
'''


def _make_net_and_trainer():
    net = gluon.nn.Dense(UNITS, in_units=UNITS)
    net.initialize()
    return net, gluon.Trainer(net.collect_params(), 'adam')


def _assert_complete(entry, directory):
    """The checkpoint ``entry`` names complete files holding its epoch."""
    epoch = entry['epoch']
    for key in ('params', 'states'):
        path = entry[key]
        assert os.path.dirname(os.path.abspath(path)) == os.path.abspath(directory)
        assert not os.path.basename(path).startswith('.tmp'), 'names a temp file: %s' % path
        assert os.path.basename(path) == 'epoch-%04d.%s' % (epoch, key), path
        assert os.path.isfile(path), 'checkpoint.json names a missing file: %s' % path
    net, trainer = _make_net_and_trainer()
    net.load_parameters(entry['params'])
    for name, param in net.collect_params().items():
        values = param.data().asnumpy()
        assert np.all(values == epoch), '%s of epoch %d holds %s' % (name, epoch,
                                                                   np.unique(values)[:3])
    trainer.load_states(entry['states'])
    assert entry['history'] == {'marker': [epoch]}


def test_sigkill_while_saving_never_leaves_a_broken_latest_checkpoint(tmp_path):
    directory = str(tmp_path / 'checkpoints')
    rng = random.Random(1234)
    kills, mid_write_kills, last_epoch, temps_seen = 6, 0, 0, set()
    for round_index in range(kills):
        child = subprocess.Popen([sys.executable, '-u', '-c', SAVER, directory, str(UNITS)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=subprocess_env(), cwd=REPO)
        try:
            first = child.stdout.readline()        # 'resumed at N': about to save
            assert first.startswith('resumed at'), first + child.stderr.read()
            assert int(first.split()[-1]) == last_epoch + 1, (first, last_epoch)
            time.sleep(rng.uniform(0.0, 0.4))      # a random moment in the save loop
        finally:
            child.send_signal(signal.SIGKILL)      # only the child started above
            out, err = child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL, err[-2000:]
        reported = [int(line.split()[1]) for line in out.splitlines()
                    if line.startswith('saved')]
        entry = CheckpointManager(directory).latest()
        if entry is None:
            assert not reported, 'a reported save is missing'
            continue
        # a save that was reported is durable; at most the one after it completed unreported
        if reported:
            assert reported[-1] <= entry['epoch'] <= reported[-1] + 1, (reported, entry)
        assert entry['epoch'] >= last_epoch
        _assert_complete(entry, directory)
        # every file that has a final checkpoint name is complete (it was renamed
        # into place only after it was fully written), including any saved after
        # the index was last written
        for path in sorted(glob.glob(os.path.join(directory, 'epoch-*.params'))):
            net, _ = _make_net_and_trainer()
            net.load_parameters(path)
        temps = set(glob.glob(os.path.join(directory, '.tmp*')))
        mid_write_kills += bool(temps - temps_seen)
        temps_seen |= temps
        last_epoch = entry['epoch']
    print('\n%d SIGKILLs, %d of them mid-write (a new temporary file left behind), %d stale '
          'temporary files in the folder at the end, last complete epoch %d'
          % (kills, mid_write_kills, len(glob.glob(os.path.join(directory, '.tmp*'))),
             last_epoch))
    assert last_epoch >= 2, 'the children never got to save: the test proves nothing'


def test_a_new_checkpoint_manager_removes_temporary_files_of_a_killed_run(tmp_path):
    """BUG (gluon_focal/training.py): a SIGKILL during ``_atomic_write``
    leaves its ``.tmp-*`` file behind (the ``finally`` never runs), and
    nothing ever removes it: the test above ends with one stale temporary
    file per mid-write kill. Each is up to a full ``.states`` file (hundreds
    of MB for a detector), so a preemptible job that is killed and resumed
    many times fills its disk. A resumed run (a new CheckpointManager on the
    folder) must clear them; they are never checkpoints."""
    directory = tmp_path / 'checkpoints'
    directory.mkdir()
    stale = directory / '.tmp-k1lled'
    stale.write_bytes(b'half of a states file')
    manager = CheckpointManager(str(directory))
    net, trainer = _make_net_and_trainer()
    manager.save(1, net, None, {})
    assert manager.latest()['epoch'] == 1
    assert not stale.exists(), 'the temporary file of a killed run is still there'


# --- end to end: the segmentation example ---------------------------------------------------

EXAMPLE = os.path.join(REPO, 'examples', 'train_segmentation.py')
EPOCHS = 6
SMALL = ['--epochs', str(EPOCHS), '--train-size', '32', '--val-size', '8', '--crop-size', '32',
         '--batch-size', '8', '--num-panels', '1', '--seed', '0']


def test_sigkilled_segmentation_training_resumes_from_the_next_epoch(tmp_path):
    out_dir = str(tmp_path / 'run')
    index = os.path.join(out_dir, 'checkpoint.json')
    child = subprocess.Popen([sys.executable, EXAMPLE] + SMALL + ['--out-dir', out_dir],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=subprocess_env(), cwd=REPO)
    deadline = time.time() + 120
    try:
        while not os.path.exists(index) and child.poll() is None and time.time() < deadline:
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)          # right after the first checkpoint
        first_log, _ = child.communicate(timeout=60)
    assert os.path.exists(index), 'no checkpoint within 120 s:\n' + first_log[-3000:]
    assert child.returncode == -signal.SIGKILL, \
        'the first run finished before it could be killed; use more epochs\n' + first_log[-2000:]
    killed_at = CheckpointManager(out_dir).latest()['epoch']   # epochs trained
    assert 1 <= killed_at < EPOCHS

    resumed = subprocess.run([sys.executable, EXAMPLE] + SMALL + ['--out-dir', out_dir,
                                                                  '--resume'],
                             capture_output=True, text=True, env=subprocess_env(), cwd=REPO,
                             timeout=300)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-3000:]
    assert 'resumed after epoch %d' % killed_at in log, log[-3000:]
    trained = [int(e) for e in re.findall(r'^\[epoch (\d+)\] loss', log, re.M)]
    assert trained == list(range(killed_at + 1, EPOCHS + 1)), \
        'after a kill at epoch %d the resumed run trained epochs %s' % (killed_at, trained)
    entry = CheckpointManager(out_dir).latest()
    assert entry['epoch'] == EPOCHS
    assert os.path.basename(entry['params']) == 'epoch-%04d.params' % EPOCHS
    assert len(entry['history']['loss']) == EPOCHS, entry['history']
    with open(os.path.join(out_dir, 'results.json')) as f:
        assert json.load(f)['epochs'] == list(range(1, EPOCHS + 1))
    print('\nkilled after epoch %d, resumed and trained epochs %s' % (killed_at, trained))
