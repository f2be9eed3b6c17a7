"""Mask pasting against torchvision's ``paste_masks_in_image`` (the mask-branch comparison on a converted
model: tests/models/test_maskrcnn.py)."""
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste_masks_in_image

from seglab.models.detection import paste_masks_in_image


def test_paste_masks_matches_torchvision_at_borders_and_tiny_boxes():
    generator = torch.Generator().manual_seed(3)
    masks = torch.rand(6, 1, 28, 28, generator=generator)
    boxes = torch.tensor([[0.0, 0.0, 50.0, 40.0], [-7.3, 3.2, 12.9, 61.0], [30.5, 20.2, 31.1, 20.9],
                          [10.0, 10.0, 10.0, 10.0], [55.1, 47.7, 80.0, 90.0], [3.7, 1.2, 59.9, 47.8]])
    for size in [(48, 60), (50, 61)]:
        torch.testing.assert_close(paste_masks_in_image(masks, boxes, size),
                                   tv_paste_masks_in_image(masks, boxes, size), rtol=0, atol=1e-5)
    assert paste_masks_in_image(masks[:0], boxes[:0], (48, 60)).shape == (0, 1, 48, 60)
