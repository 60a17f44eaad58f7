"""The detection examples' shared convention (gluon_focal.training) and the
COCO-format round trip: folder written, read back through GluonCV's
COCODetection, scored with GluonCV's COCODetectionMetric, trained on."""
import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import mxnet as mx
import pytest
from mxnet import gluon

pytest.importorskip('gluoncv')
pytest.importorskip('cv2')
pytest.importorskip('pycocotools')

from gluon_focal import training  # noqa: E402
from gluon_focal.detection import (CLASSES, SyntheticShapesDetection,  # noqa: E402
                                   coco_detection, write_coco_detection)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_RETINANET = ['--data-shape', '64', '--batch-size', '4', '--fpn-channels', '16',
                  '--head-channels', '16', '--num-vis', '1']
TINY_SSD = ['--data-shape', '64', '--batch-size', '4', '--num-vis', '1']
TINY = {'train_retinanet': ['--num-train', '8', '--num-val', '4'] + TINY_RETINANET,
        'train_ssd': ['--num-train', '8', '--num-val', '4'] + TINY_SSD,
        'train_segmentation': ['--train-size', '8', '--val-size', '4', '--crop-size', '32',
                               '--batch-size', '4', '--num-panels', '1']}
EXAMPLES = sorted(TINY)


def _example(name):
    spec = importlib.util.spec_from_file_location(
        'example_' + name, os.path.join(ROOT, 'examples', name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(example, argv):
    """An example's training (train_ssd.py: ``train(parse_args(argv))``), its history."""
    if hasattr(example, 'main'):
        return example.main(argv)
    return example.train(example.parse_args(argv))


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
    """The synthetic shapes as a COCO folder with its own categories."""
    root = str(tmp_path_factory.mktemp('shapes_coco'))
    ds = SyntheticShapesDetection(num_images=12, size=64, seed=5, min_size=12)
    ids = write_coco_detection(ds, root, {'train2017': 8, 'val2017': 4})
    return root, ds, ids


# ---------------------------------------------------------------------------
# COCO format
# ---------------------------------------------------------------------------
def test_coco_folder_round_trip(coco_root):
    root, ds, ids = coco_root
    assert ids == {'train2017': list(range(8)), 'val2017': [8, 9, 10, 11]}
    with open(os.path.join(root, 'annotations', 'instances_val2017.json')) as f:
        raw = json.load(f)
    assert [c['name'] for c in raw['categories']] == list(CLASSES)   # not COCO's 80
    assert all('coco_url' not in im for im in raw['images'])         # as annotation tools write
    assert sorted(os.listdir(os.path.join(root, 'val2017'))) == [
        '%06d.jpg' % i for i in range(8, 12)]
    for split, offset in (('train2017', 0), ('val2017', 8)):
        coco = coco_detection(root, split)
        assert type(coco).__mro__[1].__name__ == 'COCODetection'
        assert list(coco.classes) == list(CLASSES) and len(coco) == len(ids[split])
        for i in range(len(coco)):
            img, label = coco[i]
            ref_img, ref_label = ds[offset + i]
            assert img.shape == ref_img.shape
            # JPEG (lossy on these noisy images): the right image by far; boxes and
            # classes exact
            err = lambda a: np.abs(img.asnumpy().astype(int) - a.asnumpy()).mean()  # noqa
            assert err(ref_img) < 0.3 * err(ds[offset + (i + 1) % len(coco)][0])
            np.testing.assert_array_equal(label, ref_label[:, :5])
    with pytest.raises(IOError, match='instances_test2017.json'):
        coco_detection(root, 'test2017')


class _Replay(object):
    """A 'detector' that returns the given per-image detections in order."""

    def __init__(self, detections):
        self._detections = iter(detections)

    def __call__(self, x):
        rows = [next(self._detections) for _ in range(x.shape[0])]
        width = max(len(r) for r in rows)
        pad = lambda r: np.concatenate([r, -np.ones((width - len(r), 6))])  # noqa: E731
        out = mx.nd.array(np.stack([pad(r) for r in rows]))
        return out[:, :, 0:1], out[:, :, 1:2], out[:, :, 2:6]


def test_coco_metric_scores_through_gluoncv(coco_root, tmp_path):
    from gluoncv.data.batchify import Pad, Stack, Tuple
    from gluoncv.data.transforms.presets.ssd import SSDDefaultValTransform
    root, _, _ = coco_root
    val = coco_detection(root, 'val2017', skip_empty=False)
    loader = gluon.data.DataLoader(val.transform(SSDDefaultValTransform(64, 64)), 3,
                                   batchify_fn=Tuple(Stack(), Pad(pad_val=-1)))
    truth = [np.concatenate([label[:, 4:5], np.ones((len(label), 1)), label[:, :4]], axis=1)
             for _, label in (val[i] for i in range(len(val)))]
    metric = training.detection_metric('coco', val, val.classes, 64, str(tmp_path))
    perfect = training.evaluate_detector(_Replay(truth), loader, [mx.cpu()], metric)
    assert perfect['mAP'] == pytest.approx(1.0) and perfect['AP50'] == pytest.approx(1.0)
    # boxes shifted by a third of their size: found at IoU 0.5 sometimes, never at 0.95
    shifted = [np.concatenate([t[:, :2], t[:, 2:] + (t[:, 4:5] - t[:, 2:3]) / 3.], axis=1)
               for t in truth]
    worse = training.evaluate_detector(_Replay(shifted), loader, [mx.cpu()], metric)
    assert worse['mAP'] < 0.6


@pytest.mark.parametrize('name', ['train_retinanet', 'train_ssd'])
def test_example_trains_one_epoch_on_coco_folder(coco_root, tmp_path, name):
    root, _, _ = coco_root
    example = _example(name)
    argv = ['--dataset', 'coco', '--data-root', root, '--epochs', '1',
            '--out-dir', str(tmp_path)] + (TINY_RETINANET if name == 'train_retinanet'
                                           else TINY_SSD)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        history = (example.main(argv) if name == 'train_retinanet'
                   else example.train(example.parse_args(argv)))
    assert len(history['val_mAP']) == 1 and 0 <= history['val_mAP'][0] <= 1
    assert np.isfinite(history['loss']).all()
    with open(os.path.join(str(tmp_path), 'results.json')) as f:
        results = json.load(f)
    assert results['args']['dataset'] == 'coco' and results['epochs'] == [1]
    assert 'final validation mAP' in out.getvalue()


# ---------------------------------------------------------------------------
# one convention across the examples
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('name', EXAMPLES)
def test_help_shows_every_default(name):
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'examples', name + '.py'),
                          '--help'], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=ROOT), timeout=120).stdout
    options = out.split('options:')[1]
    blocks = [b for b in options.split('\n  --')[1:]]
    assert len(blocks) > 20
    for block in blocks:
        assert '(default:' in block, block
    assert re.search(r'--epochs EPOCHS +number of epochs \(default: \d+\)', out)


IMPORT_WITHOUT_INSTALL = r"""
import contextlib, io, os, runpy, sys
root, names = sys.argv[1], sys.argv[2:]


class NotInstalled(object):  # gluon_focal is importable only from the checkout on sys.path
    def find_spec(self, name, path=None, target=None):
        if name == 'gluon_focal' and root not in [os.path.abspath(p or '.') for p in sys.path]:
            raise ImportError('gluon_focal is not installed')


sys.meta_path.insert(0, NotInstalled())
for name in names:
    sys.argv = [name, '--help']
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        runpy.run_path(os.path.join(root, 'examples', name + '.py'), run_name='__main__')
    print(name, os.path.abspath(os.path.dirname(sys.modules.pop('gluon_focal').__file__)))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != root]
    for module in [m for m in sys.modules if m.startswith('gluon_focal.')]:
        del sys.modules[module]
"""


def test_examples_import_the_installed_package_and_fall_back_to_the_checkout(tmp_path):
    import gluon_focal
    for name in EXAMPLES:   # importable (installed, or on PYTHONPATH): sys.path is left alone
        before = list(sys.path)
        assert _example(name).gluon_focal is gluon_focal and sys.path == before
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    out = subprocess.run([sys.executable, '-c', IMPORT_WITHOUT_INSTALL, ROOT] + EXAMPLES,
                         capture_output=True, text=True, env=env, cwd=str(tmp_path),
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [word for name in EXAMPLES
                                  for word in (name, os.path.join(ROOT, 'gluon_focal'))]


def test_examples_write_one_layout_numbered_from_1_and_resume_extends(tmp_path):
    """All three examples: the same files (the predictions PNG named for what it
    shows), checkpoints and results numbered from 1, a larger --epochs extends a
    resumed run, a smaller one than trained is refused."""
    layouts = {}
    for name in EXAMPLES:
        example = _example(name)
        out = str(tmp_path / name)
        argv = TINY[name] + ['--out-dir', out]
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            _run(example, argv + ['--epochs', '1'])
            history = _run(example, argv + ['--epochs', '2', '--resume'])   # extends to 2
        assert 'resumed after epoch 1 of 2' in printed.getvalue()
        assert '[epoch 2]' in printed.getvalue() and '[epoch 0]' not in printed.getvalue()
        assert 'after 2 epochs' in printed.getvalue().splitlines()[-1]
        assert len(history['loss']) == 2
        with open(os.path.join(out, 'results.json')) as f:
            results = json.load(f)
        assert results['epochs'] == [1, 2] and results['history'] == history
        with open(os.path.join(out, 'checkpoint.json')) as f:
            assert json.load(f)['epoch'] == 2
        layouts[name] = (sorted(f for f in os.listdir(out) if f != 'model.json'),
                         sorted(results), sorted(results['history']))
        with pytest.raises(SystemExit, match='holds 2 trained epochs but --epochs is 1'):
            _run(example, argv + ['--epochs', '1', '--resume'])
    checkpoints = ['checkpoint.json', 'curves.png', 'epoch-0001.params', 'epoch-0001.states',
                   'epoch-0002.params', 'epoch-0002.states']
    assert layouts['train_retinanet'][0] == layouts['train_ssd'][0] == sorted(
        checkpoints + ['detections.png', 'results.json'])
    assert layouts['train_segmentation'][0] == sorted(
        checkpoints + ['predictions.png', 'results.json'])
    assert (layouts['train_retinanet'][1] == layouts['train_ssd'][1]
            == layouts['train_segmentation'][1]
            == ['args', 'epochs', 'final', 'history', 'seconds_this_run'])
    for name in EXAMPLES:
        assert {'loss', 'images_per_s'} <= set(layouts[name][2])


def _tiny_trainer(iters_per_epoch, epochs, states=True):
    net = gluon.nn.Dense(2, in_units=3)
    net.initialize()
    schedule = training.warmup_cosine(0.1, epochs, iters_per_epoch, warmup_epochs=0)
    trainer = gluon.Trainer(net.collect_params(), 'sgd',
                            {'momentum': 0.9, 'lr_scheduler': schedule}, kvstore=None)
    return net, trainer, schedule


def test_resume_uses_this_runs_schedule(tmp_path):
    iters = 3
    net, trainer, _ = _tiny_trainer(iters, 2)
    for _ in range(2 * iters):
        with mx.autograd.record():
            loss = net(mx.nd.ones((1, 3))).sum()
        loss.backward()
        training.step(trainer, 1)
    checkpoints = training.CheckpointManager(str(tmp_path))
    checkpoints.save(2, net, trainer, {'loss': [1., 0.5]})   # after epoch 2
    # --epochs 4: the update count continues, the schedule ends at the new end
    net, trainer, schedule = _tiny_trainer(iters, 4)
    start, history = training.resume(checkpoints, net, trainer, schedule, 4, iters)
    assert start == 2 and history == {'loss': [1., 0.5]}
    assert trainer.optimizer.num_update == 2 * iters
    assert trainer.optimizer.lr_scheduler is schedule and schedule.max_update == 4 * iters
    assert trainer.learning_rate == pytest.approx(0.1 * (1 + np.cos(np.pi * 6 / 12)) / 2)
    # a checkpoint without optimizer states (dist_*): the count restarts where training stopped
    entry = checkpoints.latest()
    os.remove(entry['states'])
    with open(checkpoints.index_path) as f:
        index = json.load(f)
    index['states'] = None
    with open(checkpoints.index_path, 'w') as f:
        json.dump(index, f)
    net, trainer, schedule = _tiny_trainer(iters, 4)
    training.resume(checkpoints, net, trainer, schedule, 4, iters)
    assert trainer.optimizer.num_update == trainer.optimizer.begin_num_update == 2 * iters
    with pytest.raises(SystemExit, match='--epochs 2 or more'):
        training.resume(checkpoints, net, trainer, schedule, 1, iters)


def test_checkpoints_are_numbered_from_1_and_old_0_based_ones_still_resume(tmp_path):
    net, trainer, _ = _tiny_trainer(3, 2)
    checkpoints = training.CheckpointManager(str(tmp_path))
    with pytest.raises(ValueError, match='epoch: epochs are numbered from 1, got 0'):
        checkpoints.save(0, net, trainer, {})
    checkpoints.save(1, net, trainer, {'loss': [1.]})
    entry = checkpoints.latest()
    assert entry['epoch'] == 1 and os.path.basename(entry['params']) == 'epoch-0001.params'
    assert os.path.basename(entry['states']) == 'epoch-0001.states'
    # a checkpoint.json from before the renumbering: 'epoch' was the 0-based index of the
    # last epoch and the files were named by it
    os.rename(entry['params'], str(tmp_path / 'epoch-0000.params'))
    os.rename(entry['states'], str(tmp_path / 'epoch-0000.states'))
    with open(checkpoints.index_path, 'w') as f:
        json.dump({'epoch': 0, 'params': 'epoch-0000.params', 'states': 'epoch-0000.states',
                   'history': {'loss': [1.]}}, f)
    net, trainer, schedule = _tiny_trainer(3, 2)
    done, history = training.resume(checkpoints, net, trainer, schedule, 2, 3)
    assert done == 1 and history == {'loss': [1.]}   # one epoch trained: the next is 2
    checkpoints.save(2, net, trainer, {'loss': [1., .5]})
    assert checkpoints.latest()['epoch'] == 2
    assert sorted(os.listdir(str(tmp_path))) == [
        'checkpoint.json', 'epoch-0000.params', 'epoch-0000.states', 'epoch-0002.params',
        'epoch-0002.states']


def test_step_is_the_one_gradient_convention():
    calls = []

    class Trainer(object):
        def step(self, batch_size):
            calls.append(batch_size)
    training.step(Trainer(), 4)            # detection: losses per positive, 4 workers
    training.step(Trainer(), 2, 16)        # per-sample losses, 16 samples, 2 workers
    assert calls == [4, 32]


@pytest.mark.parametrize('name', EXAMPLES)
def test_only_the_chief_prints_and_writes(tmp_path, monkeypatch, name):
    example = _example(name)
    # a dist_sync worker of rank 1 of 2 (the kvstore itself is not needed to check this)
    monkeypatch.setattr(example, 'rank_and_size', lambda kv: (1, 2))
    monkeypatch.setattr(example, 'create_kvstore', lambda name: None)
    out = str(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()) as printed, \
            contextlib.redirect_stderr(io.StringIO()) as bar:
        history = _run(example, TINY[name] + ['--epochs', '1', '--out-dir', out])
    assert len(history['loss']) == 1
    assert printed.getvalue() == '' and 'epoch 1/1' not in bar.getvalue()
    assert os.listdir(out) == []


def test_progress_shows_the_schedules_lr(monkeypatch):
    """Under dist_* the local optimizer never counts updates: the bar reads the schedule."""
    shown = []

    class Bar(list):
        def set_postfix(self, **kw):
            shown.append(float(kw['lr']))

        def close(self):
            pass
    monkeypatch.setattr(training, 'progress', lambda it, **kw: Bar(it))
    net = gluon.nn.Dense(1)
    net.initialize()
    schedule = training.warmup_cosine(0.1, 2, 2, warmup_epochs=1)

    def fake_net(x):
        out = net(x.reshape((x.shape[0], -1)))
        return out.expand_dims(-1), out.expand_dims(-1).tile((1, 1, 4)), None

    def fake_loss(cls, box, cls_t, box_t):
        loss = [(c - t.expand_dims(-1)).square().sum(axis=(1, 2)) for c, t in zip(cls, cls_t)]
        return loss, loss, loss
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 1.0}, kvstore=None)
    batches = [(mx.nd.ones((2, 3)), mx.nd.ones((2, 1)), mx.nd.ones((2, 1, 4)))] * 2
    training.train_detector_epoch(fake_net, batches, fake_loss, trainer, [mx.cpu()], 1,
                                  schedule, 2, 'epoch 2/2')
    assert shown == pytest.approx([float('%.2e' % schedule(3)), float('%.2e' % schedule(4))])
    assert trainer.learning_rate == 1.0   # what the bar showed before: the constant lr


def test_train_epoch_per_sample_losses_average_over_the_global_batch(monkeypatch):
    """Segmentation's convention: per-sample losses, each step normalised by this
    worker's samples times the workers; the bar reads the schedule (dist_*)."""
    shown, steps = [], []

    class Bar(list):
        def set_postfix(self, **kw):
            shown.append((float(kw['loss']), float(kw['lr'])))

        def close(self):
            pass

    class Trainer(object):
        def step(self, batch_size):
            steps.append(batch_size)
    monkeypatch.setattr(training, 'progress', lambda it, **kw: Bar(it))
    schedule = mx.lr_scheduler.PolyScheduler(max_update=10, base_lr=0.1, pwr=0.9)
    weight = mx.nd.ones((1,))
    weight.attach_grad()
    batches = [(mx.nd.array([[1.], [2.], [3.]]),), (mx.nd.array([[4.], [6.]]),)]
    means, speed = training.train_epoch(
        batches, lambda x: ([(weight * part).sum(axis=1) for part in x],), Trainer(),
        [mx.cpu(0), mx.cpu(1)], 2, schedule, 4, 'epoch 2/2', per_sample=True)
    assert steps == [3 * 2, 2 * 2]                       # samples x workers
    np.testing.assert_allclose(means, [(2. + 5.) / 2])   # mean per sample, per batch
    assert weight.grad.asscalar() == pytest.approx(4. + 6.)   # last batch: a sum; step divides
    assert [loss for loss, _ in shown] == pytest.approx([2., 3.5])
    assert [lr for _, lr in shown] == pytest.approx([float('%.2e' % schedule(5)),
                                                     float('%.2e' % schedule(6))])
    assert speed > 0
    with pytest.raises(ValueError, match='loader: no training batch'):
        training.train_epoch([], lambda x: ([x],), Trainer(), [mx.cpu()], 1, schedule, 0, '')


def test_stack_batchify_plain_in_process_shared_for_workers():
    """Both stack each field like GluonCV's Tuple(Stack(), ...); only worker
    processes get shared memory (costly to allocate on every batch)."""
    from gluoncv.data.batchify import Stack, Tuple
    rng = np.random.RandomState(0)
    samples = [(mx.nd.array(rng.rand(3, 4, 4)), mx.nd.array(rng.rand(5)),
                mx.nd.array(rng.rand(5, 4))) for _ in range(3)]
    expected = Tuple(Stack(), Stack(), Stack())(samples)
    for workers, context in ((0, mx.cpu()), (2, mx.Context('cpu_shared', 0))):
        batch = training.stack_batchify(workers)(samples)
        assert len(batch) == 3
        for got, want in zip(batch, expected):
            assert got.context == context
            np.testing.assert_array_equal(got.asnumpy(), want.asnumpy())
