"""Mask R-CNN (arXiv:1703.06870), torchvision-compatible; importing this package registers
``maskrcnn_resnet50_fpn`` and ``maskrcnn_resnet18_fpn``. Its neutral parts (anchors, RPN, transform, ...)
live in ``seglab.models.detection``, Mask^X R-CNN in ``seglab.models.maskxrcnn``."""
from .masks import MaskRCNNHeads, MaskRCNNPredictor, class_masks, mask_loss
from .model import MaskRCNN, maskrcnn, maskrcnn_resnet18_fpn, maskrcnn_resnet50_fpn, maskrcnn_resnet_fpn
from .roi_heads import FastRCNNPredictor, RoIHeads, TwoMLPHead

# Deprecated aliases, for one release: Mask^X R-CNN moved to seglab.models.maskxrcnn (importing it here also
# registers its builders).
from ..maskxrcnn import (MaskXPredictor, WeightTransfer, detection_weights,
                         maskxrcnn_resnet18_fpn, maskxrcnn_resnet50_fpn)

__all__ = ["MaskRCNNHeads", "MaskRCNNPredictor", "class_masks", "mask_loss", "MaskRCNN", "maskrcnn",
           "maskrcnn_resnet18_fpn", "maskrcnn_resnet50_fpn", "maskrcnn_resnet_fpn", "FastRCNNPredictor", "RoIHeads",
           "TwoMLPHead", "MaskXPredictor", "WeightTransfer", "detection_weights", "maskxrcnn_resnet18_fpn",
           "maskxrcnn_resnet50_fpn"]
