"""Semantic segmentation with the sigmoid focal loss on GluonCV models.

* :class:`SegmentationFocalLoss` (alias ``MixSigmoidFocalLoss``) and
  :class:`SegmentationBCELoss`: drop-ins for ``MixSoftmaxCrossEntropyLoss``.
* :class:`SigmoidSegmentationMetric` and :func:`sigmoid_to_two_class`: scoring
  sigmoid outputs.
* :class:`SyntheticSmallTargets`, :func:`write_voc_segmentation`,
  :func:`voc_segmentation`: seeded small-target data, also as a VOC folder.

See ``docs/segmentation.md``.
"""
from .data import (SyntheticSmallTargets, make_sample, voc_segmentation,
                   write_voc_segmentation)
from .loss import MixSigmoidFocalLoss, SegmentationBCELoss, SegmentationFocalLoss
from .metric import SigmoidSegmentationMetric, confusion_counts, sigmoid_to_two_class

__all__ = ['SegmentationFocalLoss', 'MixSigmoidFocalLoss', 'SegmentationBCELoss',
           'SigmoidSegmentationMetric', 'sigmoid_to_two_class', 'confusion_counts',
           'SyntheticSmallTargets', 'make_sample', 'write_voc_segmentation',
           'voc_segmentation']
