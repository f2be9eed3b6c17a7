"""Whole-image, sliding-window and multi-scale/flip inference (seglab.engine.inference)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import seglab
from seglab.engine.inference import (infer_logits, multiscale_logits, normalize,
                                     slide_windows, sliding_window_logits)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Convs(nn.Module):
    """Conv → ReLU → conv returning ``{"out": logits}``: kernel 1 is per-pixel, kernel 3 sees 5×5 pixels."""

    def __init__(self, kernel_size: int, num_classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(3, 8, kernel_size, padding=kernel_size // 2), nn.ReLU(),
                                  nn.Conv2d(8, num_classes, kernel_size, padding=kernel_size // 2))

    def forward(self, x):
        return {"out": self.body(x)}


class Recorder(nn.Module):
    """Wraps a model and records the shape of every input it is called with."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.shapes = model, []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.model(x)


def images(n, h, w, seed=0):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def fcn():
    return seglab.models.create("fcn8s_vgg16", num_classes=3, width_mult=0.0625, padding="same").eval()


def test_slide_windows_match_a_hand_worked_grid_with_the_last_window_on_the_edge():
    # 70×90, crop 32, stride 20: rows start 0, 20, then 38 (= 70 − 32); columns 0, 20, 40, 58 (= 90 − 32).
    rows = [(0, 32), (20, 52), (38, 70)]
    cols = [(0, 32), (20, 52), (40, 72), (58, 90)]
    assert slide_windows(70, 90, 32, 20) == [(y1, y2, x1, x2) for y1, y2 in rows for x1, x2 in cols]
    assert slide_windows(70, 90, (32, 90), (20, 5)) == [(y1, y2, 0, 90) for y1, y2 in rows]
    assert slide_windows(20, 30, 32, 20) == [(0, 20, 0, 30)]  # image smaller than the crop: one window


@pytest.mark.parametrize("size", [(1, 1), (31, 17), (32, 32), (33, 97), (160, 101)])
@pytest.mark.parametrize("crop, stride", [(32, 21), (32, 32), ((16, 24), (5, 24)), (7, 1)])
def test_slide_windows_cover_every_pixel_with_crop_sized_windows(size, crop, stride):
    h, w = size
    crop_h, crop_w = (crop, crop) if isinstance(crop, int) else crop
    count = torch.zeros(h, w)
    for y1, y2, x1, x2 in slide_windows(h, w, crop, stride):
        assert y2 - y1 == min(crop_h, h) and x2 - x1 == min(crop_w, w)
        count[y1:y2, x1:x2] += 1
    assert count.min() >= 1


def test_sliding_window_accumulator_count_has_no_zeros():
    ones = lambda x: {"out": torch.ones(x.shape[0], 2, *x.shape[-2:])}  # noqa: E731
    out = sliding_window_logits(ones, images(1, 67, 45), crop=24, stride=16)
    assert torch.equal(out, torch.ones(1, 2, 67, 45))  # a pixel counted zero times would be nan


def test_single_window_of_the_image_size_equals_whole_image_inference(fcn):
    x = images(1, 64, 96)
    assert torch.allclose(sliding_window_logits(fcn, x, (64, 96), 32), fcn(x)["out"], atol=1e-6)


@pytest.mark.parametrize("n, size, crop, stride", [(1, (70, 90), 32, 20), (2, (37, 53), 16, 11),
                                                   (2, (33, 31), (16, 9), (5, 9)), (1, (20, 30), 32, 20)])
def test_sliding_window_of_a_per_pixel_model_equals_whole_image(n, size, crop, stride):
    model, x = Convs(kernel_size=1), images(n, *size)
    out = sliding_window_logits(model, x, crop, stride)
    assert out.shape == (n, 3, *size)
    assert torch.allclose(out, model(x)["out"], atol=1e-6)


def test_sliding_window_of_a_3x3_model_is_exact_where_each_window_sees_the_receptive_field():
    # Two 3×3 convs: a pixel's logits depend on pixels within 2 px. A window reproduces the whole-image
    # logits at pixels at least 2 px from its sides, except at sides lying on the image border (where
    # both see the same zero padding). The grid is the hand-worked one of 70×90, crop 32, stride 20.
    model, x = Convs(kernel_size=3), images(1, 70, 90)
    h, w, radius = 70, 90, 2
    windows = [(y1, y2, x1, x2) for y1, y2 in [(0, 32), (20, 52), (38, 70)]
               for x1, x2 in [(0, 32), (20, 52), (40, 72), (58, 90)]]
    exact = torch.ones(h, w, dtype=torch.bool)
    ys, xs = torch.arange(h)[:, None], torch.arange(w)[None, :]
    for y1, y2, x1, x2 in windows:
        inside = (ys >= y1) & (ys < y2) & (xs >= x1) & (xs < x2)
        sees_all = (((y1 == 0) | (ys - y1 >= radius)) & ((y2 == h) | (y2 - 1 - ys >= radius))
                    & ((x1 == 0) | (xs - x1 >= radius)) & ((x2 == w) | (x2 - 1 - xs >= radius)))
        exact &= ~inside | sees_all
    out, whole = sliding_window_logits(model, x, 32, 20), model(x)["out"]
    assert exact.float().mean() > 0.6
    assert torch.allclose(out[..., exact], whole[..., exact], atol=1e-5)
    assert not torch.allclose(out[..., ~exact], whole[..., ~exact], atol=1e-5)  # window sides do matter


def test_sliding_window_runs_one_crop_sized_window_per_call():
    model = Recorder(Convs(kernel_size=1))
    sliding_window_logits(model, images(2, 50, 41), crop=(24, 16), stride=(13, 10))
    assert model.shapes == [(2, 3, 24, 16)] * len(slide_windows(50, 41, (24, 16), (13, 10)))


def test_image_smaller_than_the_crop_is_padded_and_returns_its_own_size(fcn):
    model = Recorder(fcn)
    out = sliding_window_logits(model, images(2, 45, 61), crop=64, stride=32)
    assert model.shapes == [(2, 3, 64, 64)] and out.shape == (2, 3, 45, 61) and out.isfinite().all()


def test_batched_sliding_window_equals_one_image_at_a_time():
    model, x = Convs(kernel_size=3), images(2, 53, 71)
    both = sliding_window_logits(model, x, 32, 21)
    singles = torch.cat([sliding_window_logits(model, x[i:i + 1], 32, 21) for i in range(2)])
    assert torch.allclose(both, singles, atol=1e-5)


def test_stride_larger_than_crop_or_bad_sizes_are_errors():
    model, x = Convs(kernel_size=1), images(1, 40, 40)
    with pytest.raises(ValueError, match="stride"):
        sliding_window_logits(model, x, 16, 17)
    with pytest.raises(ValueError, match="crop"):
        sliding_window_logits(model, x, (16, 16, 16), 8)
    with pytest.raises(ValueError, match="crop"):
        multiscale_logits(model, x, crop=0)
    with pytest.raises(ValueError, match="scales"):
        multiscale_logits(model, x, scales=())


def test_multiscale_at_scale_one_without_flip_equals_whole_image(fcn):
    x = images(2, 47, 63)
    assert torch.equal(multiscale_logits(fcn, x), fcn(x)["out"])


def test_flip_of_a_horizontally_equivariant_model_equals_no_flip():
    model, x = Convs(kernel_size=1), images(2, 37, 50)
    assert torch.allclose(multiscale_logits(model, x, flip=True), model(x)["out"], atol=1e-6)
    assert torch.allclose(multiscale_logits(model, x, flip=True, crop=16, stride=11), model(x)["out"], atol=1e-6)


def test_multiscale_of_a_linear_per_pixel_model_averages_resized_logits():
    # A 1×1 conv commutes with bilinear resizing (weights sum to 1), so at scale s the logits are the
    # whole-image logits resized to round(s·H)×round(s·W) and back.
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 1)
    model = lambda x: {"out": conv(x)}  # noqa: E731
    x = images(1, 70, 90)
    with torch.no_grad():
        whole = model(x)["out"]
        half = F.interpolate(F.interpolate(whole, size=(35, 45), mode="bilinear"), size=(70, 90), mode="bilinear")
        out = multiscale_logits(model, x, scales=(0.5, 1.0))
    assert torch.allclose(out, (half + whole) / 2, atol=1e-5)


def test_multiscale_flip_and_sliding_window_on_odd_sizes_return_input_size():
    out = multiscale_logits(Convs(kernel_size=3), images(2, 45, 61), scales=(0.75, 1.25), flip=True, crop=(32, 40))
    assert out.shape == (2, 3, 45, 61) and out.isfinite().all()


def test_infer_logits_defaults_to_whole_image_on_normalised_uint8(fcn):
    uint8 = torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    whole = fcn(normalize(uint8, MEAN, STD))["out"]
    assert torch.equal(infer_logits(fcn, uint8, MEAN, STD), whole)
    assert torch.equal(infer_logits(fcn, uint8, MEAN, STD, crop=None, stride=None, scales=(1.0,), flip=False), whole)
    out = infer_logits(fcn, uint8, MEAN, STD, crop=40, scales=(0.75, 1.0), flip=True)
    assert out.shape == (2, 3, 40, 56) and not out.requires_grad
