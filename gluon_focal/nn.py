"""Layers that run a fused CPU kernel of the operator library where it helps.

:class:`GroupNorm` is ``mxnet.gluon.nn.GroupNorm`` (same parameters, names,
shapes and numbers) computed by ``gluon_focal_group_norm`` on CPU: MXNet 1.9's
CPU GroupNorm costs about 8 elementwise passes forward + backward, a quarter
of the RetinaNet demo's training step.

:class:`Conv2D` is ``mxnet.gluon.nn.Conv2D`` computed, on CPU with MKLDNN, with its
output channels padded to a multiple of 16: a detection head's predictor (9
anchors x 5 classes = 45 channels) otherwise falls off MKLDNN's blocked kernels.
"""
import functools

import mxnet as mx
from mxnet import ndarray
from mxnet.gluon import nn

from . import kernel

__all__ = ['Conv2D', 'GroupNorm', 'GROUP_NORM_OP']

#: The fused operator's name (``mx.nd.gluon_focal_group_norm``); its outputs are
#: the normalised data, then the mean and 1 / std of each (sample, group).
GROUP_NORM_OP = 'gluon_focal_group_norm'


class GroupNorm(nn.GroupNorm):
    """Drop-in for ``mxnet.gluon.nn.GroupNorm`` (MXNet 1.x: ``gamma`` and ``beta``
    have one value per group, shape ``(num_groups,)``) that runs the fused CPU kernel.

    Parameters are those of ``mxnet.gluon.nn.GroupNorm`` (checkpoints load either
    way), plus:

    impl : {'auto', 'fused', 'composite'}
        'auto' runs the kernel on CPU arrays when the operator library is loaded,
        and MXNet's ``GroupNorm`` otherwise (other contexts; inside a hybridized
        parent while a GPU is visible, since the graph's context is unknown then);
        see :func:`gluon_focal.kernel.choose_backend`. 'composite' is always
        MXNet's operator.

    Inputs and outputs: data of shape N x C x ... (at least 3 dimensions, C
    divisible by ``num_groups``), float16/32/64; output of the same shape.
    """

    def __init__(self, num_groups=1, epsilon=1e-5, center=True, scale=True,
                 beta_initializer='zeros', gamma_initializer='ones', impl='auto', **kwargs):
        super(GroupNorm, self).__init__(num_groups, epsilon, center, scale, beta_initializer,
                                        gamma_initializer, **kwargs)
        # checks impl, and with 'fused' that the kernel is there (context: at the call)
        kernel.choose_backend(impl, kernel.available(), None, num_gpus=0)
        self._impl = impl
        self._runs, self._grad_add = None, False   # what the current graph is for

    def forward(self, x):
        """Choose the backend for x's context, then run (clears a graph built for another)."""
        if isinstance(x, ndarray.NDArray):
            runs = kernel.choose_backend(self._impl, kernel.available(), x.context)
            # an input that owns its gradient may have grad_req='add', which the op cannot see
            grad_add = runs == 'fused' and kernel.needs_grad_add(x)
        else:
            runs, grad_add = kernel.choose_backend(self._impl, kernel.available(), None), False
        if (runs, grad_add) != (self._runs, self._grad_add):
            self._runs, self._grad_add = runs, grad_add
            self._clear_cached_op()
        return super(GroupNorm, self).forward(x)

    def hybrid_forward(self, F, x, gamma, beta):
        if self._runs != 'fused':
            return super(GroupNorm, self).hybrid_forward(F, x, gamma, beta)
        # the op overwrites the gradients it writes; MXNet's identity honours grad_req='add'
        # (gamma and beta are tiny; x only when it owns its gradient)
        if self._grad_add:
            x = F.identity(x)
        out = getattr(F, GROUP_NORM_OP)(x, F.identity(gamma), F.identity(beta),
                                        num_groups=self._num_groups, eps=self._epsilon)
        return out[0]


@functools.lru_cache(maxsize=None)
def _mkldnn():
    """Whether this MXNet was built with MKLDNN (asked once: Features() lists them all)."""
    return mx.runtime.Features().is_enabled('MKLDNN')


class Conv2D(nn.Conv2D):
    """Drop-in for ``mxnet.gluon.nn.Conv2D`` (same parameters, names, shapes and
    numbers up to summation order) that pads its output channels with zero
    filters to a multiple of 16 where MKLDNN computes it, and slices them off.

    MKLDNN's fast CPU convolutions work on 16-channel blocks; with another number
    of output channels MXNet 1.9's MKLDNN falls back to a GEMM kernel and plain
    layouts, 2-4x slower (the RetinaNet demo's training step: 5-10% faster, see
    docs/detection.md). Padding costs up to a third more filters (so 12 or more
    channels are padded: 45 -> 48, 36 -> 48, not 4 -> 16), a concat of the
    weights and a slice of the output. Layout NCHW only.

    Parameters are those of ``mxnet.gluon.nn.Conv2D``, plus:

    pad_channels : {'auto', True, False}
        'auto' pads where MXNet was built with MKLDNN and the input is on CPU
        (for a Symbol inside a hybridized parent: when no GPU is visible; see
        :func:`gluon_focal.kernel.choose_backend`); True on any context. Either
        only where the rule above allows.
    """

    CHANNEL_BLOCK = 16

    def __init__(self, *args, pad_channels='auto', **kwargs):
        super(Conv2D, self).__init__(*args, **kwargs)
        if pad_channels not in ('auto', True, False):
            raise ValueError("pad_channels must be 'auto', True or False, got %r"
                             % (pad_channels,))
        self._pad_channels = pad_channels
        self._padded = None  # what the current graph was built for

    def _pads(self, x):
        pad = -self._channels % self.CHANNEL_BLOCK
        # at most a third more filters: 1..11 channels stay on MKLDNN's GEMM path
        if (pad == 0 or 3 * pad > self._channels or self._pad_channels is False
                or self._kwargs['layout'] != 'NCHW'):
            return False
        if self._pad_channels is True:
            return True
        if not _mkldnn():
            return False
        context = x.context if isinstance(x, ndarray.NDArray) else None
        return kernel.choose_backend('auto', True, context) == 'fused'

    def forward(self, x, *args):
        padded = self._pads(x)
        if padded != self._padded:
            self._padded = padded
            self._clear_cached_op()
        return super(Conv2D, self).forward(x, *args)

    def hybrid_forward(self, F, x, weight, bias=None):
        if not self._padded:
            return super(Conv2D, self).hybrid_forward(F, x, weight, bias)
        channels = self._channels
        pad = -channels % self.CHANNEL_BLOCK

        def padded(param):
            extra = F.zeros_like(param.slice_axis(axis=0, begin=0, end=1))
            return F.concat(param, *[extra] * pad, dim=0)
        kwargs = dict(self._kwargs, num_filter=channels + pad)
        if bias is None:
            out = F.Convolution(x, padded(weight), name='fwd', **kwargs)
        else:
            out = F.Convolution(x, padded(weight), padded(bias), name='fwd', **kwargs)
        out = out.slice_axis(axis=1, begin=0, end=channels)
        return self.act(out) if self.act is not None else out
