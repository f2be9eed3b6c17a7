"""The neutral parts of two-stage instance models (Mask R-CNN, Mask^X R-CNN, FCIS): anchors, box coding, matching
and sampling (OHEM), the RPN, the image transform, mask targets and pasting, and the generic two-stage flow."""
from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .generalized_rcnn import GeneralizedRCNN, check_targets
from .masks import mask_targets, paste_masks_in_image
from .matching import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, label_proposals, match
from .rpn import RegionProposalNetwork, RPNHead, SingleMapRPN
from .sampling import ohem_select, sample_balanced
from .transform import RCNNTransform, resize_boxes

__all__ = ["AnchorGenerator", "BoxCoder", "GeneralizedRCNN", "check_targets", "mask_targets", "paste_masks_in_image",
           "BELOW_LOW_THRESHOLD", "BETWEEN_THRESHOLDS", "label_proposals", "match", "RegionProposalNetwork", "RPNHead",
           "SingleMapRPN", "ohem_select", "sample_balanced", "RCNNTransform", "resize_boxes"]
