"""The two-stage detectors' image transform (torchvision's ``GeneralizedRCNNTransform``): normalise, resize so
the short side is ``min_size`` (Mask R-CNN's 800) unless the long side would exceed ``max_size`` (1333), pad
into one batch; and map the detections back to the original images."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .masks import paste_masks_in_image


def resize_boxes(boxes: Tensor, original_size: Sequence[int], new_size: Sequence[int]) -> Tensor:
    """Boxes (K,4) xyxy from an image of ``original_size`` (h, w) to one of ``new_size``."""
    ratio_h, ratio_w = (torch.tensor(new, dtype=torch.float32, device=boxes.device)
                        / torch.tensor(old, dtype=torch.float32, device=boxes.device)
                        for new, old in zip(new_size, original_size))
    return boxes * torch.stack([ratio_w, ratio_h, ratio_w, ratio_h])


class RCNNTransform(nn.Module):
    """list[(3,H_i,W_i) float in 0..1] (+ targets) → (padded batch (N,3,H,W), resized sizes [(h_i, w_i)], targets).

    Each image is normalised with ``image_mean`` / ``image_std``, resized bilinearly by
    s = min(min_size / short side, max_size / long side), and padded with zeros at the bottom/right to a
    size divisible by ``size_divisible`` (the FPN's coarsest stride). Target boxes are scaled alike and
    masks resized by nearest neighbour. ``min_size`` may be a tuple: training then draws one per image
    (multi-scale training), inference uses the last.
    """

    def __init__(self, min_size: int | Sequence[int] = 800, max_size: int = 1333,
                 image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD,
                 size_divisible: int = 32):
        super().__init__()
        self.min_size = tuple(min_size) if isinstance(min_size, Sequence) else (min_size,)
        self.max_size, self.size_divisible = max_size, size_divisible
        self.image_mean, self.image_std = list(image_mean), list(image_std)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[Tensor, list[tuple[int, int]], list[dict[str, Tensor]] | None]:
        resized, new_targets = [], []
        for index, image in enumerate(images):
            if image.dim() != 3 or not image.is_floating_point():
                raise ValueError(f"images must be float (3, H, W) tensors in 0..1, got image {index} of dtype "
                                 f"{image.dtype} and shape {tuple(image.shape)}")
            target = None if targets is None else dict(targets[index])
            image, target = self.resize(self.normalize(image), target)
            resized.append(image)
            new_targets.append(target)
        sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in resized]
        return self.batch(resized), sizes, None if targets is None else new_targets

    def normalize(self, image: Tensor) -> Tensor:
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return (image - mean[:, None, None]) / std[:, None, None]

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None
               ) -> tuple[Tensor, dict[str, Tensor] | None]:
        """One normalised image (3,H,W) and its target → resized (see the class)."""
        if self.training:  # one draw per image even for a single size, as torchvision (same RNG stream)
            min_size = self.min_size[int(torch.empty(1).uniform_(0.0, float(len(self.min_size))).item())]
        else:
            min_size = self.min_size[-1]
        height, width = int(image.shape[-2]), int(image.shape[-1])
        scale = min(min_size / min(height, width), self.max_size / max(height, width))
        # torchvision's size (scale_factor with recompute_scale_factor: floor in double precision), computed
        # here so that an exported graph has it too rather than re-deriving it in float32
        size = (math.floor(height * scale), math.floor(width * scale))
        resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        if target is None:
            return resized, None
        target["boxes"] = resize_boxes(target["boxes"], (height, width), size)
        if "masks" in target:
            target["masks"] = F.interpolate(target["masks"][:, None].float(), size=size)[:, 0].byte()
        return resized, target

    def batch(self, images: list[Tensor]) -> Tensor:
        """Zero-pad to the largest height and width, rounded up to ``size_divisible`` → (N,3,H,W)."""
        height, width = (int(math.ceil(max(image.shape[axis] for image in images) / self.size_divisible))
                         * self.size_divisible for axis in (1, 2))
        # F.pad rather than copies into a zero batch: an exported graph keeps no in-place copy into a view
        return torch.stack([F.pad(image, (0, width - image.shape[2], 0, height - image.shape[1])) for image in images])

    def postprocess(self, detections: list[dict[str, Tensor]], image_sizes: list[tuple[int, int]],
                    original_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Detections on the resized images → on the originals: boxes rescaled, 28×28 masks pasted into
        (D,1,H,W) probability maps (not thresholded)."""
        for detection, size, original in zip(detections, image_sizes, original_sizes):
            detection["boxes"] = resize_boxes(detection["boxes"], size, original)
            if "masks" in detection:
                detection["masks"] = paste_masks_in_image(detection["masks"], detection["boxes"], original)
        return detections
