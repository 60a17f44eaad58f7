"""Helpers for training scripts run with MXNet's kvstore (local or ``dist_*``).

A script that takes ``--kvstore local|device|dist_sync|dist_device_sync``::

    kv = create_kvstore(args.kvstore)
    train_set = shard(train_set, kv)            # this worker's part
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {...}, kvstore=kv)
    ...
    trainer.step(batch_size)                    # the per-worker batch size

Launch it on several processes with ``python -m gluon_focal.distributed.launch``
(see ``docs/distributed.md``).  This module does not import ``mxnet`` at
import time, so the launcher stays light.
"""

__all__ = ['create_kvstore', 'is_distributed', 'rank_and_size', 'shard_bounds', 'shard']


def create_kvstore(name='device'):
    """``mx.kv.create(name)``; ``None``/``''``/``'none'`` give ``None`` (no
    kvstore) and a ``KVStore`` is returned as is.  A ``dist_*`` store must be
    created in a process started by the launcher (it connects to the
    scheduler and blocks until every worker has joined)."""
    if name is None or (isinstance(name, str) and name.lower() in ('', 'none')):
        return None
    if not isinstance(name, str):
        return name
    import mxnet as mx
    return mx.kv.create(name)


def is_distributed(kv):
    """Whether ``kv`` is a multi-process (``dist*``) kvstore."""
    return kv is not None and not isinstance(kv, str) and 'dist' in kv.type


def rank_and_size(kv):
    """``(kv.rank, kv.num_workers)`` for a ``dist*`` kvstore, else ``(0, 1)``."""
    if is_distributed(kv):
        return kv.rank, kv.num_workers
    return 0, 1


def shard_bounds(length, num_shards, index, even=True):
    """``(start, end)`` of contiguous shard ``index`` out of ``num_shards``.

    With ``even=True`` every shard has ``length // num_shards`` items (the
    last ``length % num_shards`` items are dropped), so every worker runs the
    same number of iterations: with ``dist_sync`` a worker that takes one
    step more than the others waits forever for them.  With ``even=False``
    the split matches ``gluon.data.Dataset.shard`` (sizes differ by <= 1).
    """
    if not 0 <= index < num_shards:
        raise ValueError('shard index %d out of range for %d shards' % (index, num_shards))
    size, rest = divmod(length, num_shards)
    if even:
        return size * index, size * (index + 1)
    start = size * index + min(index, rest)
    return start, start + size + (index < rest)


def shard(data, kv, even=True):
    """This worker's contiguous part of ``data`` by ``kv.rank`` /
    ``kv.num_workers`` when ``kv`` is ``dist*``; ``data`` itself otherwise.

    ``data`` may be an int (a number of samples: returns a ``range`` of
    indices), a ``gluon.data.Dataset`` (returns a lazily indexed dataset) or
    anything sliceable (list, range, numpy array, NDArray).  Shard before
    shuffling so that workers see disjoint samples.  See :func:`shard_bounds`
    for ``even``.
    """
    rank, size = rank_and_size(kv)
    if size == 1:
        return range(data) if isinstance(data, int) else data
    if isinstance(data, int):
        return range(*shard_bounds(data, size, rank, even))
    try:
        from mxnet.gluon.data import Dataset
    except ImportError:  # pragma: no cover
        Dataset = ()
    if isinstance(data, Dataset):
        # Dataset's public take + shard give exactly [start, end)
        whole = data.take(len(data) // size * size) if even else data
        return whole.shard(size, rank)
    start, end = shard_bounds(len(data), size, rank, even)
    return data[start:end]
