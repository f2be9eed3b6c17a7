"""Running a semantic model on images: normalisation, whole-image, sliding-window and multi-scale/flip
inference, all giving logits (N,C,H,W) at input resolution."""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import resize  # what torchvision's weights transforms call

from ..crf import dense_crf
from ..data.transforms import pair
from ..models.base import model_device

Size = int | Sequence[int]


@contextlib.contextmanager
def inference_context(model: nn.Module) -> Iterator[nn.Module]:
    """The block runs ``model`` in eval mode without gradients; its training flag is restored afterwards
    (the one context every evaluation loop shares, as detectron2's ``inference_context``)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N,3,H,W) or (3,H,W) in [0, 255] → float32 (x/255 − mean) / std."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    return (images.float() / 255 - mean_t) / std_t


def slide_windows(height: int, width: int, crop: Size, stride: Size) -> list[tuple[int, int, int, int]]:
    """Windows ``(y1, y2, x1, x2)`` (pixels, end exclusive) covering a (height, width) image.

    mmsegmentation's 'slide' grid: top-left corners every ``stride`` pixels, the last row/column of
    windows shifted back to end at the bottom/right edge, so every pixel is covered. Windows are
    ``crop`` sized, except along a side shorter than the crop, where they span the whole side.
    """
    (crop_h, crop_w), (stride_h, stride_w) = pair(crop, "crop"), pair(stride, "stride")
    if stride_h > crop_h or stride_w > crop_w:
        raise ValueError(f"stride {stride!r} must not exceed crop {crop!r}: pixels between windows would be skipped")

    def starts(size: int, crop_len: int, step: int) -> list[tuple[int, int]]:
        count = max(size - crop_len + step - 1, 0) // step + 1
        ends = [min(i * step + crop_len, size) for i in range(count)]
        return [(max(end - crop_len, 0), end) for end in ends]

    return [(y1, y2, x1, x2) for y1, y2 in starts(height, crop_h, stride_h)
            for x1, x2 in starts(width, crop_w, stride_w)]


@torch.no_grad()
def sliding_window_logits(model: nn.Module, images: torch.Tensor, crop: Size, stride: Size) -> torch.Tensor:
    """Logits (N,C,H,W) of normalised float images (N,3,H,W), one ``crop`` window at a time.

    Windows follow :func:`slide_windows` (``crop``/``stride`` in pixels, int or (h, w)). Window logits
    are summed into an (N,C,H,W) accumulator and divided by how many windows cover each pixel, so
    memory is one window's activations plus the accumulator. A window smaller than the crop (image
    side shorter than the crop) is zero-padded bottom/right to the crop size — zero is the mean after
    normalisation — and the padded region's logits are dropped, i.e. treated as an ignore region.
    """
    n, _, height, width = images.shape
    crop_h, crop_w = pair(crop, "crop")
    total = None  # (N,C,H,W), allocated once the first window tells C
    count = images.new_zeros(height, width)
    for y1, y2, x1, x2 in slide_windows(height, width, crop, stride):
        window = F.pad(images[:, :, y1:y2, x1:x2], (0, crop_w - (x2 - x1), 0, crop_h - (y2 - y1)))
        logits = model(window)["out"][:, :, : y2 - y1, : x2 - x1]
        if total is None:
            total = images.new_zeros(n, logits.shape[1], height, width)
        total[:, :, y1:y2, x1:x2] += logits
        count[y1:y2, x1:x2] += 1
    return total.div_(count)


@torch.no_grad()
def multiscale_logits(model: nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False,
                      crop: Size | None = None, stride: Size | None = None) -> torch.Tensor:
    """Mean logits (N,C,H,W) of normalised float images (N,3,H,W) over ``scales`` (and horizontal flips).

    Each scale resizes the images bilinearly (align_corners=False) to round(H·s)×round(W·s), runs
    whole-image inference (``crop`` None) or :func:`sliding_window_logits`, and resizes the logits back
    to H×W bilinearly. ``flip`` adds the mirrored input at every scale, its logits mirrored back.
    Logits, not probabilities, are averaged (as in mmsegmentation's aug_test); argmax of the mean is the
    prediction. ``stride`` defaults to 2/3 of ``crop``; scale 1.0 involves no resizing.
    """
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive numbers, got {scales!r}")
    if crop is None and stride is not None:
        raise ValueError(f"stride {stride!r} needs a crop size")
    if crop is not None and stride is None:
        stride = tuple(max(1, round(c * 2 / 3)) for c in pair(crop, "crop"))
    height, width = images.shape[-2:]
    total = None
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = images if size == (height, width) else \
            F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            inputs = scaled.flip(-1) if mirrored else scaled
            logits = model(inputs)["out"] if crop is None else sliding_window_logits(model, inputs, crop, stride)
            if mirrored:
                logits = logits.flip(-1)
            if size != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            total = logits if total is None else total + logits
    return total / (len(scales) * (2 if flip else 1))


@torch.no_grad()
def infer_logits(model: nn.Module, images_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float], *,
                 crop: Size | None = None, stride: Size | None = None, scales: Sequence[float] = (1.0,),
                 flip: bool = False, resize_short: int | None = None) -> torch.Tensor:
    """Logits (N,C,H,W) of uint8 images (N,3,H,W), on the model's device, without gradients.

    Whole-image inference by default; ``crop``/``stride`` (pixels) select sliding windows and
    ``scales``/``flip`` test-time augmentation, as in :func:`multiscale_logits`. ``resize_short``: the model sees
    the images resized to this short side first (torchvision's ``Resize([size])``, bilinear with antialiasing,
    as the transforms of its segmentation weights do with 520), and the logits are resized back to H×W.
    """
    size = images_uint8.shape[-2:]
    if resize_short:
        images_uint8 = resize(images_uint8, [resize_short], antialias=True)
    images = normalize(images_uint8.to(model_device(model)), mean, std)
    logits = multiscale_logits(model, images, scales=scales, flip=flip, crop=crop, stride=stride)
    if logits.shape[-2:] != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits


@torch.no_grad()
def predict_labels(model: nn.Module, images_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float], *,
                   crf: dict | None = None, **inference) -> torch.Tensor:
    """Class ids (N,H,W) of uint8 images (N,3,H,W): argmax of :func:`infer_logits` (``inference`` are its
    keywords), refined first by the dense CRF when ``crf`` holds ``seglab.crf.dense_crf`` keywords."""
    logits = infer_logits(model, images_uint8, mean, std, **inference)
    return (logits if crf is None else crf_refine(images_uint8, logits, crf)).argmax(1)


def crf_refine(images_uint8: torch.Tensor, logits: torch.Tensor, crf: dict) -> torch.Tensor:
    """The dense CRF's class probabilities (N,C,H,W) for ``logits`` (N,C,H,W) of uint8 images (N,3,H,W), with
    ``seglab.crf.dense_crf`` keywords ``crf``: scores with the same argmax use as the logits."""
    return dense_crf(images_uint8, logits.float(), logits=True, **crf)
