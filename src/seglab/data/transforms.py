"""Training and evaluation transforms on ``(image, target)`` pairs, built on torchvision.transforms.v2.

Inputs follow the dataset convention: ``image`` tv_tensors.Image uint8 (3, H, W), ``target`` a dict
with the semantic ``"mask"`` tv_tensors.Mask (H, W) int64 (255 = ignore) and, where instances exist,
``"boxes"`` BoundingBoxes XYXY, ``"labels"`` (N,) int64 and ``"masks"`` tv_tensors.Mask (N, H, W) uint8.
Outputs: the image float32, normalised; the targets keep their dtypes (masks are resized with
nearest-neighbour interpolation by v2, so no new label values appear).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255
INSTANCE_KEYS = ("boxes", "labels", "masks", "area", "iscrowd")
_PER_INSTANCE = ("labels", "area", "iscrowd")  # plain tensors filtered alongside the boxes


def pair(value: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    """``h`` or ``(h,)`` -> (h, h); ``(h, w)`` -> (h, w); positive ints only, else ValueError naming ``name``."""
    result = (value, value) if isinstance(value, int) else tuple(value)
    if len(result) == 1:
        result = result * 2
    if len(result) != 2 or not all(isinstance(v, int) and v > 0 for v in result):
        raise ValueError(f"{name} expects a positive int H or a pair (H, W), got {value!r}")
    return result


class RandomScale(v2.Transform):
    """Resize everything by one factor s ~ U(scale_range) of the input's own size (DeepLab's random scale).

    v2.ScaleJitter scales relative to a fixed target size instead, which would shrink large
    images (Cityscapes 1024x2048) when the target is the crop size.
    """

    def __init__(self, scale_range: tuple[float, float] = (0.5, 2.0)):
        super().__init__()
        self.scale_range = scale_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        low, high = self.scale_range
        scale = low + (high - low) * torch.rand(()).item()
        return {"size": [max(1, round(height * scale)), max(1, round(width * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, size=params["size"], antialias=True)


class PadToSize(torch.nn.Module):
    """Pad ``(image, target)`` at the bottom and right to at least ``size`` = (h, w) pixels.

    The image and the instance ``"masks"`` are padded with 0, the semantic ``"mask"`` with
    ``ignore_index``, boxes get the larger canvas. v2.RandomCrop(pad_if_needed=True) cannot do this:
    its ``fill`` is chosen per tv_tensor type, and both masks are tv_tensors.Mask.
    """

    def __init__(self, size: int | Sequence[int], ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.size = pair(size)
        self.ignore_index = ignore_index

    def extra_repr(self) -> str:
        return f"size={self.size}, ignore_index={self.ignore_index}"

    def forward(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        height, width = F.get_size(image)
        padding = [0, 0, max(0, self.size[1] - width), max(0, self.size[0] - height)]  # left, top, right, bottom
        if not any(padding):
            return image, target
        padded = {
            key: F.pad(value, padding, fill=self.ignore_index if key == "mask" else 0)
            if isinstance(value, tv_tensors.TVTensor)
            else value
            for key, value in target.items()
        }
        return F.pad(image, padding, fill=0), padded


class SanitizeInstances(torch.nn.Module):
    """v2.SanitizeBoundingBoxes on the instance keys only (boxes and, per instance, labels, masks, area,
    iscrowd); no-op without ``"boxes"``.

    Keeping the semantic (H, W) ``"mask"`` out of it avoids indexing it with the (N,) keep vector.
    """

    def __init__(self, min_size: float = 1.0):
        super().__init__()
        self.sanitize = v2.SanitizeBoundingBoxes(
            min_size=min_size, labels_getter=lambda sample: tuple(sample[k] for k in _PER_INSTANCE if k in sample))

    def forward(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        if "boxes" not in target:
            return image, target
        instances = {key: target[key] for key in INSTANCE_KEYS if key in target}
        return image, {**target, **self.sanitize(instances)}


class RandomRotate(torch.nn.Module):
    """Rotate ``(image, target)`` by one angle a ~ U(-degrees, degrees) (or U(low, high) for a pair),
    counter-clockwise about the image centre, keeping the canvas size (mmsegmentation's RandomRotate).

    The image is interpolated bilinearly and filled with 0 where the rotation brings in new pixels; the
    masks use nearest neighbours (no new label values), the semantic ``"mask"`` filled with ``ignore_index``
    and the instance ``"masks"`` with 0. Boxes are recomputed from the rotated instance masks (tight, with
    the datasets' exclusive x2/y2) and instances left empty are dropped with their per-instance values
    (v2's rotation of a box would give the loose box of the rotated box); boxes without masks are rotated
    by v2 (that loose box), clamped, and dropped when empty. The angle is drawn from the torch RNG only (``engine.sampler.SeededTransforms``).
    """

    def __init__(self, degrees: float | Sequence[float], ignore_index: int = IGNORE_INDEX,
                 interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR):
        super().__init__()
        low, high = (-float(degrees), float(degrees)) if isinstance(degrees, (int, float)) else map(float, degrees)
        if low > high:
            raise ValueError(f"degrees expects a non-negative number or a pair (low, high), got {degrees!r}")
        self.degrees, self.ignore_index, self.interpolation = (low, high), ignore_index, interpolation

    def extra_repr(self) -> str:
        return f"degrees={self.degrees}, ignore_index={self.ignore_index}"

    def forward(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        low, high = self.degrees
        angle = low + (high - low) * torch.rand(()).item()
        image = F.rotate(image, angle, interpolation=self.interpolation, fill=0)
        out = dict(target)
        for key, fill in (("mask", self.ignore_index), ("masks", 0)):
            if key in target:
                mask = target[key] if isinstance(target[key], tv_tensors.Mask) else tv_tensors.Mask(target[key])
                out[key] = F.rotate(mask, angle, fill=fill)  # a Mask: nearest neighbours
        if "boxes" in target and "masks" in target:
            masks = out["masks"]
            keep = (masks.flatten(1) != 0).any(1)
            masks = tv_tensors.Mask(masks.as_subclass(torch.Tensor)[keep])
            boxes = masks_to_boxes(masks.as_subclass(torch.Tensor)) + torch.tensor([0.0, 0.0, 1.0, 1.0])
            old = target["boxes"]
            out["boxes"] = tv_tensors.BoundingBoxes(boxes.to(old.dtype), format=tv_tensors.BoundingBoxFormat.XYXY,
                                                    canvas_size=tuple(masks.shape[-2:]))
            if old.format != tv_tensors.BoundingBoxFormat.XYXY:
                out["boxes"] = F.convert_bounding_box_format(out["boxes"], new_format=old.format)
            out["masks"] = masks
        elif "boxes" in target:  # no masks to recompute from: v2's box of the rotated box, degenerate ones dropped
            boxes = F.convert_bounding_box_format(F.clamp_bounding_boxes(F.rotate(target["boxes"], angle)),
                                                  new_format=tv_tensors.BoundingBoxFormat.XYXY)
            keep = ((boxes[:, 2:] - boxes[:, :2]) > 0).all(1).as_subclass(torch.Tensor)
            boxes = tv_tensors.wrap(boxes.as_subclass(torch.Tensor)[keep], like=boxes)
            out["boxes"] = F.convert_bounding_box_format(boxes, new_format=target["boxes"].format)
        if "boxes" in target:  # the per-instance values of the instances kept
            for key in _PER_INSTANCE:
                if key in target:
                    out[key] = target[key][keep]
        return image, out


def train_transforms(
    crop_size: int | Sequence[int],
    scale_range: tuple[float, float] = (0.5, 2.0),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    hflip: bool = True,
    rotate: float = 0.0,
    color_jitter: Sequence[float] | None = None,
) -> v2.Compose:
    """Random scale, random rotation of up to ± ``rotate`` degrees (``RandomRotate``; 0: none), pad (ignore for
    the semantic mask) and random crop to ``crop_size`` (h, w) pixels, horizontal flip, colour jitter of the
    image only (``color_jitter`` = brightness, contrast, saturation, hue of v2.ColorJitter; None: none), drop
    instances left empty, then image -> float32 in [0, 1] -> (x - mean) / std."""
    crop = pair(crop_size, "crop_size")
    steps = [
        RandomScale(scale_range),
        *([RandomRotate(rotate)] if rotate else []),
        PadToSize(crop),
        v2.RandomCrop(crop),
        *([v2.RandomHorizontalFlip()] if hflip else []),
        *([color_jitter_transform(color_jitter)] if color_jitter is not None else []),
        SanitizeInstances(),
    ]
    return v2.Compose(steps + eval_transforms(mean, std).transforms)


def color_jitter_transform(values: Sequence[float]) -> v2.ColorJitter:
    """v2.ColorJitter(brightness, contrast, saturation, hue) from 4 numbers (hue <= 0.5); it changes the image
    only (masks and boxes pass through) and draws from the torch RNG only."""
    if len(values) != 4:
        raise ValueError(f"color_jitter expects 4 numbers (brightness contrast saturation hue), got {values!r}")
    brightness, contrast, saturation, hue = (float(v) for v in values)
    return v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)


def eval_transforms(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """Image uint8 -> float32 in [0, 1] -> (x - mean) / std; no resizing, targets untouched."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
