"""The shared two-stage flow: Mask R-CNN, Mask^X R-CNN and FCIS are each a ``GeneralizedRCNN`` with the module
tree torchvision's checkpoints expect, and only the first two are Mask R-CNNs; targets are checked up front."""
import pytest
import torch

from seglab import models
from seglab.models.detection import GeneralizedRCNN, check_targets
from seglab.models.fcis import FCIS
from seglab.models.maskrcnn import MaskRCNN


@pytest.mark.parametrize("name, is_maskrcnn", [("maskrcnn_resnet18_fpn", True), ("maskxrcnn_resnet18_fpn", True),
                                               ("fcis_resnet50", False)])
def test_instance_models_share_the_flow_and_module_tree(name, is_maskrcnn):
    with torch.device("meta"):
        model = models.create(name, 3)
    assert isinstance(model, GeneralizedRCNN) and isinstance(model, MaskRCNN) == is_maskrcnn
    assert isinstance(model, FCIS) != is_maskrcnn
    assert [n for n, _ in model.named_children()] == ["transform", "backbone", "rpn", "roi_heads"]


def test_check_targets_names_the_model_and_the_problem():
    with pytest.raises(ValueError, match="FCIS needs targets"):
        check_targets(None, "FCIS")
    boxes = torch.tensor([[1.0, 2.0, 1.0, 5.0]])
    with pytest.raises(ValueError, match="lacks \\['masks'\\]"):
        check_targets([{"boxes": boxes, "labels": torch.tensor([1])}])
    with pytest.raises(ValueError, match="no positive width"):
        check_targets([{"boxes": boxes, "labels": torch.tensor([1]), "masks": torch.zeros(1, 8, 8)}])
    with pytest.raises(ValueError, match="labels must be int64"):
        check_targets([{"boxes": boxes, "labels": torch.tensor([1.0]), "masks": torch.zeros(1, 8, 8)}])
