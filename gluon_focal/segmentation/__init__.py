"""Semantic segmentation with the sigmoid focal loss on GluonCV models.

* :class:`SegmentationFocalLoss` (alias ``MixSigmoidFocalLoss``) and
  :class:`SegmentationBCELoss`: drop-ins for ``MixSoftmaxCrossEntropyLoss``,
  with an optional Dice term (``dice_weight``); :class:`DiceLoss` alone.
* :class:`SmallTargetUNet` / :func:`get_small_target_unet`: a stride-1
  segmentation network from GluonCV parts, for 3-30 px targets.
* :class:`SigmoidSegmentationMetric` and :func:`sigmoid_to_two_class`: scoring
  sigmoid outputs.
* :class:`SyntheticSmallTargets`, :func:`write_voc_segmentation`,
  :func:`voc_segmentation`: seeded small-target data, also as a VOC folder.

See ``docs/segmentation.md``.
"""
from .data import (SyntheticSmallTargets, make_sample, voc_segmentation,
                   write_voc_segmentation)
from .dice import DiceLoss
from .loss import MixSigmoidFocalLoss, SegmentationBCELoss, SegmentationFocalLoss
from .model import SmallTargetUNet, get_small_target_unet
from .metric import SigmoidSegmentationMetric, confusion_counts, sigmoid_to_two_class

__all__ = ['SegmentationFocalLoss', 'MixSigmoidFocalLoss', 'SegmentationBCELoss', 'DiceLoss',
           'SmallTargetUNet', 'get_small_target_unet',
           'SigmoidSegmentationMetric', 'sigmoid_to_two_class', 'confusion_counts',
           'SyntheticSmallTargets', 'make_sample', 'write_voc_segmentation',
           'voc_segmentation']
