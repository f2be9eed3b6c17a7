"""Sampling: OHEM's per-image selection (the FCIS heads' OHEM losses: tests/models/test_fcis.py)."""
import torch

from seglab.models.detection import ohem_select


def test_ohem_keeps_the_highest_loss_rois_of_each_image():
    losses = torch.tensor([0.1, 0.9, 0.5, 0.3, 2.0, 0.2, 0.4])
    assert sorted(ohem_select(losses, [3, 4], 2).tolist()) == [1, 2, 4, 6]
    assert sorted(ohem_select(losses, [3, 4], 10).tolist()) == list(range(7))
