"""Anchors against torchvision's ``AnchorGenerator``."""
import torch
from torchvision.models.detection import anchor_utils
from torchvision.models.detection.image_list import ImageList

from seglab.models.detection import AnchorGenerator


def test_anchor_generator_matches_torchvision():
    sizes, ratios = ((8,), (16, 24), (32,)), ((0.5, 1.0, 2.0), (1.0,), (0.25, 4.0))
    features = [torch.zeros(1, 1, 16, 20), torch.zeros(1, 1, 8, 10), torch.zeros(1, 1, 4, 5)]
    expected = anchor_utils.AnchorGenerator(sizes, ratios)(ImageList(torch.zeros(1, 3, 64, 80), [(60, 77)]), features)
    got = AnchorGenerator(sizes, ratios)((64, 80), [(16, 20), (8, 10), (4, 5)])
    torch.testing.assert_close(got, expected[0], rtol=0, atol=0)
