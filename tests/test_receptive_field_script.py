"""scripts/receptive_field.py: the effective receptive field of a model whose field is known by construction,
its radii on hand-made fields, and the Boundary Refinement share on a GCN whose last BR is switched off."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import seglab
from seglab.engine.inference import normalize
from seglab.models.gcn import BoundaryRefinement

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "receptive_field.py"
spec = importlib.util.spec_from_file_location("receptive_field", SCRIPT)
receptive_field = importlib.util.module_from_spec(spec)
spec.loader.exec_module(receptive_field)

META = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


class ConvNet(nn.Module):
    """One k×k convolution to 3 score maps: each output pixel sees exactly the k×k window around it."""

    def __init__(self, k: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, k, padding=k // 2)
        self.meta = META

    def forward(self, x):
        return {"out": self.conv(x)}


@pytest.mark.parametrize("k", [1, 3, 7])
def test_field_of_one_convolution_is_its_window_weighted_by_the_chosen_class(k):
    torch.manual_seed(k)
    model = ConvNet(k).eval()
    images = torch.randint(0, 256, (5, 3, 21, 21), dtype=torch.uint8)
    field = receptive_field.effective_receptive_field(model, images, batch=2)
    assert field.shape == (21, 21) and math.isclose(float(field.sum()), 1.0, rel_tol=1e-12)
    window = torch.zeros(21, 21, dtype=torch.bool)
    window[10 - k // 2:11 + k // 2, 10 - k // 2:11 + k // 2] = True
    assert float(field[~window].abs().sum()) == 0.0
    # by hand: d(logit c at the centre)/d(image) at window offset (a, b) is weight[c, :, a, b], c the argmax
    x = normalize(images, META["mean"], META["std"])
    with torch.no_grad():
        chosen = model(x)["out"][:, :, 10, 10].argmax(1)
    expected = sum(model.conv.weight[c].detach().abs().sum(0).double() for c in chosen.tolist())
    expected = expected / expected.sum()
    torch.testing.assert_close(field[window].view(k, k), expected, rtol=1e-6, atol=1e-9)


def test_radii_hold_the_asked_fractions_of_the_mass():
    field = torch.zeros(11, 11, dtype=torch.float64)
    field[5, 5] = 0.5  # the centre
    field[5, 8] = 0.4  # 3 px right
    field[9, 9] = 0.1  # 4·√2 px away
    assert receptive_field.radii(field, (0.5, 0.9, 1.0)) == [0.0, 3.0, pytest.approx(4 * math.sqrt(2))]


def test_boundary_refinement_share_is_zero_when_the_last_block_adds_nothing_and_none_without_br():
    torch.manual_seed(0)
    model = seglab.models.create("gcn_resnet18", num_classes=3, width_mult=0.125, kernel_size=3).eval()
    model.meta = META
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    masks = torch.zeros(2, 64, 64, dtype=torch.long)
    masks[:, 20:40, 16:48] = 1
    inside, outside = receptive_field.boundary_refinement_share(model, images, masks, band=3)
    assert inside > 0 and outside > 0
    last = [m for m in model.modules() if isinstance(m, BoundaryRefinement)][-1]
    nn.init.zeros_(last.conv2.weight)
    nn.init.zeros_(last.conv2.bias)
    assert receptive_field.boundary_refinement_share(model, images, masks, band=3) == (0.0, 0.0)
    plain = seglab.models.create("gcn_resnet18", num_classes=3, width_mult=0.125, boundary_refinement=False).eval()
    plain.meta = META
    assert receptive_field.boundary_refinement_share(plain, images, masks, band=3) is None


def confusion_miou(pred, target, num_classes, where=None):
    """mIoU in float64 numpy over the pixels ``where`` (all by default), classes absent from both skipped."""
    import numpy as np

    pred, target = pred.numpy().ravel(), target.numpy().ravel()
    if where is not None:
        pred, target = pred[where.numpy().ravel()], target[where.numpy().ravel()]
    ious = []
    for c in range(num_classes):
        union = np.sum((pred == c) | (target == c))
        if union:
            ious.append(np.sum((pred == c) & (target == c)) / union)
    return float(np.mean(ious))


def test_dropping_br_at_test_time_equals_the_same_weights_without_br_blocks():
    """As trained: the mIoUs of the model's own predictions (recomputed in float64); BR dropped: those of a
    GCN built without BR carrying the same weights. A model without BR gets only the first pair."""
    from seglab.metrics.boundary import boundary_band

    torch.manual_seed(0)
    model = seglab.models.create("gcn_resnet18", num_classes=3, width_mult=0.125, kernel_size=3).eval()
    plain = seglab.models.create("gcn_resnet18", num_classes=3, width_mult=0.125, kernel_size=3,
                                 boundary_refinement=False).eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and unexpected  # the BR blocks' weights are all that differs
    meta = {**META, "num_classes": 3}
    model.meta = plain.meta = meta
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    masks = torch.zeros(2, 64, 64, dtype=torch.long)
    masks[:, 20:40, 16:48] = 1
    masks[:, 44:60, 4:30] = 2
    (trained, dropped) = receptive_field.scores_with_and_without_br(model, images, masks, band=3)
    band = boundary_band(masks, 3)
    for net, scores in ((model, trained), (plain, dropped)):
        with torch.no_grad():
            pred = net(normalize(images, META["mean"], META["std"]))["out"].argmax(1)
        assert scores == pytest.approx((confusion_miou(pred, masks, 3), confusion_miou(pred, masks, 3, band)))
    assert trained != dropped
    assert receptive_field.scores_with_and_without_br(plain, images, masks, band=3) == [dropped]
