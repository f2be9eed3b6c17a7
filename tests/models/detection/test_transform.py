"""The detection image transform against torchvision's ``GeneralizedRCNNTransform``, and the RoI pooler's
feature-map scales for the padded batch it makes (issue 21: min_size = max_size = 64 on a 3:2 photo)."""
import pytest
import torch
import torchvision
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from seglab import models
from seglab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from seglab.models.detection.transform import RCNNTransform
from seglab.ops import MultiScaleRoIAlign


@pytest.mark.parametrize("sizes", [[(64, 96)], [(96, 64)], [(63, 97), (64, 96)], [(50, 50), (120, 40)]])
def test_resize_and_padding_equal_torchvision_on_3_2_photos(sizes):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, h, w, generator=g) for h, w in sizes]
    theirs = GeneralizedRCNNTransform(64, 64, IMAGENET_MEAN, IMAGENET_STD).eval()(images)[0]
    batch, resized, _ = RCNNTransform(64, 64).eval()(images)
    assert resized == theirs.image_sizes and batch.shape == theirs.tensors.shape
    torch.testing.assert_close(batch, theirs.tensors, rtol=0, atol=1e-6)


def test_roi_pooling_uses_the_scale_of_the_padded_batch_where_the_images_are_padded():
    # a 64x96 photo at min_size = max_size = 64 is resized to 42x64 and padded to 64x64: FPN maps of 16..2 pixels
    g = torch.Generator().manual_seed(0)
    features = {name: torch.randn(1, 4, 64 // s, 64 // s, generator=g) for name, s in
                [("0", 4), ("1", 8), ("2", 16), ("3", 32)]}
    corner = torch.rand(20, 2, generator=g) * 30
    boxes = [torch.cat([corner, corner + torch.rand(20, 2, generator=g) * 30 + 1], 1)]
    ours = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(features, boxes, [(42, 64)])
    # torchvision given the padded size, where it infers the true strides 4..32 (given (42, 64) it takes the h
    # ratio 16 / 42 for a stride of 2)
    reference = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(features, boxes, [(64, 64)])
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_mask_rcnn_at_min_and_max_size_64_runs_on_a_3_2_photo():
    model = models.create("maskrcnn_resnet18_fpn", 3, min_size=64, max_size=64, fpn_channels=16).eval()
    with torch.no_grad():
        detections = model([torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(0))])[0]
    assert detections["masks"].shape[1:] == (1, 64, 96) and detections["boxes"].shape[1] == 4
