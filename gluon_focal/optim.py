"""MultiAdam: ``mx.optimizer.Adam`` with one operator call per step for all
float32 CPU parameters.

MXNet 1.9 aggregates only SGD (``multi_sgd_update``); with Adam, ``gluon.Trainer``
issues one ``adam_update`` per parameter, whose Python and dispatch overhead
dominates the optimizer's time on small networks (the RetinaNet demo: 99
parameters, ~14 ms per step on 2 cores).  :class:`MultiAdam` computes every
parameter's learning rate and weight decay exactly as ``Adam.update`` does
(``lr_mult``/``wd_mult``, the ``lr_scheduler``, the bias correction), in the same
order, and hands them to ``gluon_focal_multi_adam`` (kernel/multi_adam.cc), which
repeats ``adam_update``'s float32 arithmetic element by element: the weights and
states are the bits ``Adam`` gives.  (``mx.nd.contrib.multi_adamw_update`` is
AdamW, decoupled weight decay: another recipe.)

Everything else -- float16/float64 (with or without ``multi_precision``),
sparse arrays, non-CPU contexts, weights MXNet holds in an MKLDNN layout at that
moment, a missing kernel, the one-index calls of a kvstore updater (a ``Trainer``
that updates on its kvstore) -- goes through ``Adam`` itself.  States are Adam's
``(mean, var)`` per index, so ``Trainer.save_states``/``load_states`` files are
interchangeable between the two (see :func:`keep_multi_adam`).
"""
import ctypes
import math

import mxnet as mx
import numpy as np
from mxnet.base import _LIB
from mxnet.optimizer import Adam

from . import kernel

__all__ = ['MultiAdam', 'keep_multi_adam', 'OP_NAME']

#: The fused operator (``mx.nd.gluon_focal_multi_adam``).
OP_NAME = 'gluon_focal_multi_adam'
#: Parameters per operator call by default (the RetinaNet demo has 99).
AGGREGATE_NUM = 512


@mx.optimizer.register
class MultiAdam(Adam):
    """``mx.optimizer.Adam`` (same arguments, same numbers), updating up to
    ``aggregate_num`` float32 CPU parameters per operator call.

    Usable wherever Adam is: ``gluon.Trainer(params, 'multiadam', {...})`` or
    ``gluon.Trainer(params, MultiAdam(...))``.
    """
    def __init__(self, aggregate_num=AGGREGATE_NUM, **kwargs):
        super(MultiAdam, self).__init__(**kwargs)
        # gluon's Updater passes lists of this many parameters (0: one at a time)
        self.aggregate_num = int(aggregate_num)
        self._fusable_cache = {}

    def _fusable(self, index, weight, grad, state):
        """Whether the operator takes this parameter (float32, CPU, dense, kernel
        loaded).  Asking the arrays costs ctypes calls, so the answer is kept per
        index for as long as the same array objects come (their dtype, storage and
        context never change)."""
        arrays = (weight, grad) + tuple(state) if isinstance(state, (tuple, list)) else None
        known = self._fusable_cache.get(index)
        if known is not None and arrays is not None and len(known[0]) == len(arrays) and all(
                a is b for a, b in zip(known[0], arrays)):
            return known[1]
        fusable = (arrays is not None and len(state) == 2 and kernel.available()
                   and weight.dtype == grad.dtype == np.float32
                   and weight.context.device_type == 'cpu'
                   and all(a.stype == 'default' for a in arrays))
        self._fusable_cache[index] = (arrays, fusable)
        return fusable

    def __getstate__(self):
        state = super(MultiAdam, self).__getstate__()
        del state['_fusable_cache']   # arrays: not part of a saved optimizer
        return state

    def __setstate__(self, state):
        super(MultiAdam, self).__setstate__(state)
        self._fusable_cache = {}

    @staticmethod
    def _in_mkldnn_layout(weight):
        """Whether MXNet's CPU build keeps ``weight`` in an MKLDNN layout (an
        inference forward of a hybridized net reorders conv weights so; a training
        forward reorders them back, but only once it runs).  The extension API
        cannot write such an array (MXNet raises), so Adam's own path takes it.
        MXNDArrayGetData refuses exactly those arrays, without waiting."""
        data = ctypes.c_void_p()
        return _LIB.MXNDArrayGetData(weight.handle, ctypes.byref(data)) != 0

    def _lr_wd(self, index):
        """Adam.update's bookkeeping for one index: (bias-corrected lr, wd)."""
        self._update_count(index)
        lr = self._get_lr(index)
        wd = self._get_wd(index)
        t = self._index_update_count[index]
        coef1 = 1. - self.beta1**t
        coef2 = 1. - self.beta2**t
        lr *= math.sqrt(coef2)/coef1
        return lr, wd

    def update_multi_precision(self, index, weight, grad, state):
        if not isinstance(index, (list, tuple)):
            return super(MultiAdam, self).update_multi_precision(index, weight, grad, state)
        fused, lrs, wds = [], [], []
        # in index order, as Adam would: each index's update count moves num_update,
        # which the lr_scheduler reads for the indices after it
        for i, w, g, s in zip(index, weight, grad, state):
            if self._fusable(i, w, g, s) and not self._in_mkldnn_layout(w):
                lr, wd = self._lr_wd(i)
                fused.append((w, g, s))
                lrs.append(lr)
                wds.append(wd)
            else:
                super(MultiAdam, self).update_multi_precision(i, w, g, s)
        if fused:
            self._multi_update(fused, lrs, wds)

    def _multi_update(self, fused, lrs, wds):
        arrays = []
        for w, g, (mean, var) in fused:
            arrays += [w, g, mean, var]
        getattr(mx.nd, OP_NAME)(
            *arrays, out=[w for w, _, _ in fused], num_weights=len(fused),
            lrs=','.join(map(repr, lrs)), wds=','.join(map(repr, wds)), beta1=self.beta1,
            beta2=self.beta2, epsilon=self.epsilon, rescale_grad=self.rescale_grad,
            clip_gradient=self.clip_gradient if self.clip_gradient else -1.)


def keep_multi_adam(trainer):
    """After ``trainer.load_states``: when ``trainer`` was made with
    :class:`MultiAdam` but the file was saved with ``mx.optimizer.Adam``,
    ``load_states`` installed the saved Adam (it unpickles the optimizer), while
    the trainer's updaters still pass lists of parameters, which Adam cannot
    take.  Makes that optimizer a MultiAdam again, keeping its state (update
    counts, learning rate, multipliers).  Does nothing otherwise."""
    updaters = getattr(trainer, '_updaters', None) or []
    optimizer = trainer._optimizer
    if type(optimizer) is Adam and any(u.aggregate_updates for u in updaters):
        optimizer.__class__ = MultiAdam
        optimizer.aggregate_num = AGGREGATE_NUM
        optimizer._fusable_cache = {}
    return trainer
