"""Mask R-CNN (arXiv:1703.06870), torchvision-compatible, and Mask^X R-CNN (arXiv:1711.10370); importing this
package registers ``maskrcnn_resnet50_fpn``, ``maskrcnn_resnet18_fpn``, ``maskxrcnn_resnet50_fpn`` and
``maskxrcnn_resnet18_fpn``."""
from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .masks import MaskRCNNHeads, MaskRCNNPredictor, paste_masks_in_image
from .maskx import MaskXPredictor, WeightTransfer, detection_weights, maskxrcnn_resnet18_fpn, maskxrcnn_resnet50_fpn
from .model import MaskRCNN, maskrcnn, maskrcnn_resnet18_fpn, maskrcnn_resnet50_fpn
from .roi_heads import FastRCNNPredictor, RoIHeads, TwoMLPHead
from .rpn import RegionProposalNetwork, RPNHead
from .transform import RCNNTransform

__all__ = ["AnchorGenerator", "BoxCoder", "MaskRCNNHeads", "MaskRCNNPredictor", "paste_masks_in_image", "MaskRCNN",
           "maskrcnn", "maskrcnn_resnet18_fpn", "maskrcnn_resnet50_fpn", "FastRCNNPredictor", "RoIHeads",
           "TwoMLPHead", "RegionProposalNetwork", "RPNHead", "RCNNTransform", "MaskXPredictor", "WeightTransfer",
           "detection_weights", "maskxrcnn_resnet18_fpn", "maskxrcnn_resnet50_fpn"]
