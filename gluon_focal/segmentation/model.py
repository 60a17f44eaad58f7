"""A small U-shaped segmentation network that predicts at full resolution.

GluonCV's segmentation zoo (FCN, PSPNet, DeepLab: output stride 8; FastSCNN:
stride 8 as well) upsamples its logits from 1/8 of the input, so a target of
3-30 pixels (radius 1-3 px) is at most one or two output cells and comes back
as a blurred blob.  :class:`SmallTargetUNet` keeps a full-resolution path:

* encoder: a stride-1 stem of two GluonCV ``_ConvBNReLU`` layers, then GluonCV
  ResNet ``BasicBlockV1b`` stages at strides 2, 4 and 8;
* decoder: at each scale (8 -> 4 -> 2 -> 1) the coarser features are
  bilinearly resized onto the skip connection, concatenated with it and fused
  by a ``_ConvBNReLU`` -- so the logits have output stride 1;
* an optional auxiliary GluonCV ``_FCNHead`` on the stride-8 features, resized
  to the input, so the outputs are ``(main, aux)`` like FCN/PSP/DeepLab with
  ``aux=True`` and ``SegmentationFocalLoss`` weights them the same way.

With the default width 16 it has about 0.8 M parameters and trains from
scratch on 64 x 64 images on a CPU in minutes.  Any input size works (the
resizes follow the skip connections' shapes).
"""
import mxnet as mx
from mxnet.gluon import nn
from mxnet.gluon.block import HybridBlock

from gluoncv.model_zoo.fastscnn import _ConvBNReLU
from gluoncv.model_zoo.fcn import _FCNHead
from gluoncv.model_zoo.resnetv1b import BasicBlockV1b

from ..init import PriorProbability

__all__ = ['SmallTargetUNet', 'get_small_target_unet']


def _stage(in_channels, channels, strides, num_blocks, norm_layer, norm_kwargs):
    """``num_blocks`` ResNet basic blocks, the first one with ``strides``."""
    stage = nn.HybridSequential()
    with stage.name_scope():
        downsample = None
        if strides != 1 or in_channels != channels:
            downsample = nn.HybridSequential()
            downsample.add(nn.Conv2D(channels, 1, strides=strides, use_bias=False,
                                     in_channels=in_channels),
                           norm_layer(in_channels=channels, **norm_kwargs))
        stage.add(BasicBlockV1b(channels, strides=strides, downsample=downsample,
                                norm_layer=norm_layer, norm_kwargs=norm_kwargs))
        for _ in range(num_blocks - 1):
            stage.add(BasicBlockV1b(channels, norm_layer=norm_layer,
                                    norm_kwargs=norm_kwargs))
    return stage


class SmallTargetUNet(HybridBlock):
    """U-shaped network with output stride 1 for small targets (see module doc).

    Parameters
    ----------
    nclass : int
        Output channels: 1 for a binary sigmoid mask, C for C sigmoid classes,
        2 for a background/foreground softmax head.
    aux : bool, default True
        Also return an auxiliary output from the stride-8 features.
    width : int, default 16
        Channels at stride 1; strides 2, 4 and 8 have 2x, 4x and 8x as many.
    blocks : (int, int, int), default (1, 1, 2)
        Residual blocks at strides 2, 4 and 8.
    norm_layer, norm_kwargs :
        As in GluonCV's models (e.g. ``SyncBatchNorm`` for several devices).

    Inputs: ``x`` of shape N x 3 x H x W.  Outputs: ``(main,)`` or
    ``(main, aux)``, each N x nclass x H x W logits (a tuple, like GluonCV's
    segmentation models, so ``criterion(*net(x), label)`` works).
    """

    def __init__(self, nclass=1, aux=True, width=16, blocks=(1, 1, 2),
                 norm_layer=nn.BatchNorm, norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        norm_kwargs = norm_kwargs or {}
        self.aux = aux
        w = [width, 2 * width, 4 * width, 8 * width]     # channels at strides 1, 2, 4, 8
        conv = lambda cin, cout: _ConvBNReLU(cin, cout, 3, padding=1,  # noqa: E731
                                             norm_layer=norm_layer, norm_kwargs=norm_kwargs)
        with self.name_scope():
            self.stem = nn.HybridSequential()
            self.stem.add(conv(3, w[0]), conv(w[0], w[0]))
            self.down2 = _stage(w[0], w[1], 2, blocks[0], norm_layer, norm_kwargs)
            self.down4 = _stage(w[1], w[2], 2, blocks[1], norm_layer, norm_kwargs)
            self.down8 = _stage(w[2], w[3], 2, blocks[2], norm_layer, norm_kwargs)
            self.up4 = conv(w[3] + w[2], w[2])
            self.up2 = conv(w[2] + w[1], w[1])
            self.up1 = conv(w[1] + w[0], w[0])
            self.head = nn.Conv2D(nclass, 1, in_channels=w[0])
            if aux:
                self.auxlayer = _FCNHead(w[3], nclass, norm_layer=norm_layer,
                                         norm_kwargs=norm_kwargs)

    @staticmethod
    def _merge(F, fuse, coarse, skip):
        coarse = F.contrib.BilinearResize2D(coarse, skip, mode='like')
        return fuse(F.concat(coarse, skip, dim=1))

    def hybrid_forward(self, F, x):
        f1 = self.stem(x)
        f2 = self.down2(f1)
        f4 = self.down4(f2)
        f8 = self.down8(f4)
        y = self._merge(F, self.up4, f8, f4)
        y = self._merge(F, self.up2, y, f2)
        y = self._merge(F, self.up1, y, f1)
        main = self.head(y)
        if not self.aux:
            return (main,)
        aux = F.contrib.BilinearResize2D(self.auxlayer(f8), x, mode='like')
        return main, aux

    def final_convs(self):
        """The convolutions that produce logits (main, then aux): the ones whose
        bias a prior-probability init (:class:`gluon_focal.PriorProbability`) sets."""
        return [self.head] + ([self.auxlayer.block[-1]] if self.aux else [])


def get_small_target_unet(nclass=1, aux=True, width=16, prior_pi=0.01, ctx=mx.cpu(),
                          pretrained=False, **kwargs):
    """Model-zoo style constructor: an initialised :class:`SmallTargetUNet`.

    Weights are Xavier (magnitude 2, for ReLU); with ``prior_pi`` the bias of
    every logit convolution starts at ``-log((1 - pi) / pi)``, so each pixel
    starts at sigmoid probability ``pi`` (RetinaNet's prior init; use
    ``prior_pi=None`` for a softmax head).  There are no pretrained weights.
    """
    if pretrained:
        raise ValueError('pretrained=True: SmallTargetUNet has no pretrained weights; '
                         'it trains from scratch')
    net = SmallTargetUNet(nclass, aux=aux, width=width, **kwargs)
    net.initialize(mx.init.Xavier(magnitude=2), ctx=ctx)
    if prior_pi:
        for conv in net.final_convs():
            conv.bias.initialize(PriorProbability(prior_pi), ctx=ctx, force_reinit=True)
    return net
