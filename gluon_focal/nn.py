"""Layers that run a fused CPU kernel of the operator library where it helps.

:class:`GroupNorm` is ``mxnet.gluon.nn.GroupNorm`` (same parameters, names,
shapes and numbers) computed by ``gluon_focal_group_norm`` on CPU: MXNet 1.9's
CPU GroupNorm costs about 8 elementwise passes forward + backward, a quarter
of the RetinaNet demo's training step.
"""
from mxnet import ndarray
from mxnet.gluon import nn

from . import kernel

__all__ = ['GroupNorm', 'GROUP_NORM_OP']

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
