"""The instance-segmentation engine: COCO ground truth from any instance dataset, COCOeval through
evaluate_instances (an oracle model scores AP = 1), the training loss, the report and the mask IoU on true
boxes."""
import math

import pytest
import torch
from torch import nn
from torchvision.models.detection import maskrcnn_resnet50_fpn

from seglab.data import COCOInstances, Shapes, export_shapes
from seglab.engine.config import TrainConfig
from seglab.engine.instance import collate, evaluate, ground_truth, loss, train_transforms, write_report
from seglab.engine.sampler import SeededTransforms


class Oracle(nn.Module):
    """Returns each image's ground truth as its prediction (score 1), in dataset order."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset, self.calls, self.weight = dataset, 0, nn.Parameter(torch.zeros(1))

    def forward(self, images):
        _, target = self.dataset[self.calls]
        self.calls += 1
        n = len(target["labels"])
        return [{"boxes": target["boxes"].float(), "labels": target["labels"], "scores": torch.ones(n),
                 "masks": target["masks"][:, None].float()}]


def test_ground_truth_of_shapes_and_of_a_coco_export_score_ap_1_for_the_oracle(tmp_path):
    shapes = Shapes("val", 4, image_size=48)
    metrics, visuals = evaluate(Oracle(shapes), shapes, progress=False)
    assert metrics["bbox"]["AP"] == 1.0 and metrics["segm"]["AP"] == 1.0 and len(visuals) == 4
    export_shapes(tmp_path, "coco", {"val": 3}, image_size=48, seed=0)
    coco = COCOInstances(tmp_path / "val2017", tmp_path / "annotations" / "instances_val2017.json")
    gt, label_to_category, ids = ground_truth(coco)
    assert gt is coco.coco and ids == coco.ids
    metrics, _ = evaluate(Oracle(coco), coco, progress=False)
    assert metrics["segm"]["AP"] == 1.0
    table = write_report(metrics, visuals, {"classes": shapes.classes, "palette": shapes.palette}, tmp_path / "report")
    assert "segm" in table and (tmp_path / "report" / "overlays.png").is_file()
    assert (tmp_path / "report" / "metrics.json").is_file()


def test_instance_loss_trains_a_detection_model_on_augmented_shapes():
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5, min_size=64, max_size=64)
    dataset = SeededTransforms(Shapes("train", 2, image_size=48), train_transforms(TrainConfig()), seed=0)
    images, targets = collate([dataset[(0, 0)], dataset[(0, 1)]])
    assert images[0].dtype == torch.float32 and set(targets[0]) == {"boxes", "labels", "masks"}
    total = loss(model.train(), images, targets, torch.device("cpu"))
    assert torch.isfinite(total)
    total.backward()


def test_collate_keeps_images_apart_and_cuts_targets_to_what_the_model_reads():
    dataset = Shapes("train", 3, image_size=40)
    images, targets = collate([dataset[0], dataset[1]])
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2
    for image, target in zip(images, targets):
        assert set(target) == {"boxes", "labels", "masks"} and target["masks"].shape[-2:] == image.shape[-2:]
    assert collate([]) == ([], [])


def test_rotation_recomputes_each_box_from_its_rotated_mask_and_jitter_leaves_the_targets():
    from torchvision.ops import masks_to_boxes

    shapes = Shapes("train", 4, image_size=48)
    config = TrainConfig(rotate=30, color_jitter=[0.2, 0.2, 0.2, 0.05], hflip=False)
    dataset = SeededTransforms(shapes, train_transforms(config), seed=0)
    rotated = 0
    for index in range(4):
        image, target = dataset[(0, index)]
        assert image.dtype == torch.float32 and image.shape == (3, 48, 48)
        assert len(target["boxes"]) == len(target["labels"]) == len(target["masks"]) > 0
        assert target["masks"].flatten(1).any(1).all()  # instances left empty are dropped
        expected = masks_to_boxes(target["masks"]) + torch.tensor([0.0, 0.0, 1.0, 1.0])
        torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), expected)
        rotated += not torch.equal(target["mask"], shapes[index][1]["mask"])
        assert (target["mask"] == 255).any()  # the corners brought in are ignored
    assert rotated == 4
    images, targets = collate([dataset[(0, 0)], dataset[(0, 1)]])
    assert set(targets[0]) == {"boxes", "labels", "masks"}


def test_mask_iou_on_true_boxes_scores_the_mask_head_on_the_true_boxes():
    """Mask R-CNN and FCIS alike: their masks for the true boxes and classes; a head that answers "all inside"
    scores the IoU of each true mask with its box pasted by torchvision's rule."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste

    from seglab import models
    from seglab.engine.instance import mask_iou_on_true_boxes

    dataset = Shapes("val", 3, image_size=64)
    small = {"frozen_bn": False, "trainable_backbone_layers": 5, "min_size": 64, "max_size": 64}
    torch.manual_seed(0)
    for name, options in (("maskrcnn_resnet18_fpn", {"fpn_channels": 16, "representation_size": 32,
                                                      "mask_layers": [8]}),
                          ("fcis_resnet50", {"width_mult": 0.125, "reduce_channels": 16, "group_size": 3})):
        model = models.create(name, 5, **small, **options)
        value = mask_iou_on_true_boxes(model, dataset)
        assert 0.0 <= value <= 1.0
        model.roi_heads.masks_for = lambda features, boxes, labels, sizes: torch.ones(len(labels), 1, 6, 6)
        ious = []
        for image, target in dataset:
            filled = tv_paste(torch.ones(len(target["boxes"]), 1, 6, 6), target["boxes"].float(),
                              tuple(image.shape[-2:]))[:, 0] >= 0.5
            truth = target["masks"].bool()
            ious += ((filled & truth).flatten(1).sum(1) / (filled | truth).flatten(1).sum(1)).tolist()
        assert mask_iou_on_true_boxes(model, dataset) == pytest.approx(sum(ious) / len(ious), abs=1e-6)
        assert math.isnan(mask_iou_on_true_boxes(model, dataset, labels=[99]))  # no instance of class 99
