"""Detection: synthetic data, SSD focal multibox loss, RetinaNet."""
from .data import (CLASSES, SyntheticShapesDetection, write_voc_detection,
                   voc_detection, ShapesVOCDetection, write_coco_detection, coco_detection)
from .loss import DenseDetectionLoss, count_positives
from .ssd import (SSDFocalMultiBoxLoss, SigmoidSSD, init_focal_bias, tiny_ssd, resnet_ssd,
                  TinySSDBackbone, ssd_anchors, zoo_ssd)
from .retinanet import (RetinaNet, RetinaNetLoss, get_retinanet, retinanet_resnet18_v1b,
                        retinanet_resnet50_v1b, scaled_resnet_v1b)
from .targets import (RetinaNetTargetGenerator, RetinaNetTrainTransform, BACKGROUND_LABEL,
                      IGNORE_LABEL)

__all__ = ['CLASSES', 'SyntheticShapesDetection', 'write_voc_detection', 'voc_detection',
           'ShapesVOCDetection', 'write_coco_detection', 'coco_detection',
           'SSDFocalMultiBoxLoss', 'SigmoidSSD', 'init_focal_bias', 'tiny_ssd', 'TinySSDBackbone',
           'resnet_ssd', 'ssd_anchors', 'zoo_ssd', 'RetinaNet', 'RetinaNetLoss', 'DenseDetectionLoss',
           'count_positives', 'get_retinanet', 'retinanet_resnet18_v1b',
           'retinanet_resnet50_v1b', 'scaled_resnet_v1b', 'RetinaNetTargetGenerator',
           'RetinaNetTrainTransform', 'BACKGROUND_LABEL', 'IGNORE_LABEL']
