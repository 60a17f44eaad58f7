"""Small pieces every training example shares: arguments, contexts,
crash-safe checkpoints, a progress bar and curve plots."""
import glob
import json
import os
import tempfile

import mxnet as mx


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

    Each epoch writes ``epoch-XXXX.params`` and ``epoch-XXXX.states``, then
    ``checkpoint.json`` naming them (relative to the folder); the json is
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
        stem = 'epoch-%04d' % epoch
        _atomic_write(os.path.join(self.directory, stem + '.params'), net.save_parameters)
        trainer = trainer if _holds_optimizer_states(trainer) else None
        if trainer is not None:
            _atomic_write(os.path.join(self.directory, stem + '.states'), trainer.save_states)

        def write_index(path):
            with open(path, 'w') as f:
                json.dump({'epoch': epoch, 'params': stem + '.params',
                           'states': stem + '.states' if trainer is not None else None,
                           'history': history}, f)
        _atomic_write(self.index_path, write_index)

    def latest(self):
        """The last complete checkpoint's index entry (with full paths), or None."""
        if not os.path.exists(self.index_path):
            return None
        with open(self.index_path) as f:
            entry = json.load(f)
        for key in ('params', 'states'):  # stored relative, so the folder can move
            if entry[key]:
                entry[key] = os.path.join(self.directory, entry[key])
        return entry

    def restore(self, net, trainer, ctx=None):
        """Load the last complete checkpoint; return (start_epoch, history)."""
        entry = self.latest()
        if entry is None:
            return 0, {}
        net.load_parameters(entry['params'], ctx=ctx)
        if _holds_optimizer_states(trainer) and entry['states']:
            trainer.load_states(entry['states'])
        return entry['epoch'] + 1, entry['history']


def progress(iterable, total=None, desc=''):
    """A tqdm progress bar (gluoncv depends on tqdm) that also works in logs."""
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, ncols=90, mininterval=1.0)


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
