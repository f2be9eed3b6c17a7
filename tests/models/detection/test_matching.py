"""IoU matching against torchvision's ``Matcher``."""
import pytest
import torch
from torchvision.models.detection import _utils as tv_utils

from seglab.models.detection import match


def test_matching_matches_torchvisions_matcher_including_low_quality_ties():
    generator = torch.Generator().manual_seed(5)
    iou = (torch.rand(4, 30, generator=generator) * 10).round() / 10  # many ties
    for low_quality in (False, True):
        expected = tv_utils.Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)(iou.clone())
        assert torch.equal(match(iou, 0.7, 0.3, low_quality), expected)
    with pytest.raises(ValueError, match="no ground truth"):
        match(torch.zeros(0, 5), 0.7, 0.3)
