"""Box coding against torchvision's ``BoxCoder``."""
import torch
from torchvision.models.detection import _utils as tv_utils

from seglab.models.detection import BoxCoder


def test_box_coder_matches_torchvision_including_the_size_clip():
    generator = torch.Generator().manual_seed(4)
    boxes, targets = (torch.cat([xy, xy + torch.rand(50, 2, generator=generator) * 50 + 1], 1)
                      for xy in torch.rand(2, 50, 2, generator=generator) * 100)
    deltas = torch.randn(50, 12, generator=generator) * 3  # large enough to hit the log(1000/16) clip
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        ours, theirs = BoxCoder(weights), tv_utils.BoxCoder(weights)
        torch.testing.assert_close(ours.encode(targets, boxes), theirs.encode_single(targets, boxes))
        torch.testing.assert_close(ours.decode(deltas, boxes), theirs.decode_single(deltas, boxes).view(50, 3, 4))
