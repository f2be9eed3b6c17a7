"""Anchors (Faster R-CNN §3.1.1) on every FPN level: one size per level (FPN §4.1: 32² … 512² on P2 … P6)
and three aspect ratios, centred on the top-left corner of each feature cell, as torchvision places them."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


class AnchorGenerator(nn.Module):
    """Anchors of all levels for a padded batch: ``forward(image_size, feature_sizes)`` → (A, 4) xyxy in
    input pixels, ordered level by level, then cell by cell (row-major), then anchor by anchor — the
    order of the RPN head's flattened outputs. Every image of the batch shares them.

    Args:
        sizes: per level, the anchor sizes (√area, pixels), e.g. ((32,), (64,), (128,), (256,), (512,)).
        aspect_ratios: per level, the ratios height / width, e.g. ((0.5, 1.0, 2.0),) * 5.
    """

    def __init__(self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]]):
        super().__init__()
        if len(sizes) != len(aspect_ratios):
            raise ValueError(f"anchor sizes and aspect ratios need one entry per level, got {len(sizes)} sizes "
                             f"and {len(aspect_ratios)} ratio sets")
        self.sizes = tuple(tuple(s) for s in sizes)
        self.aspect_ratios = tuple(tuple(r) for r in aspect_ratios)

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)]

    @staticmethod
    def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], device=None) -> Tensor:
        """(len(ratios)·len(sizes), 4) float32 anchors centred on (0, 0), ratio-major, corners rounded to
        whole pixels (torchvision's arithmetic, e.g. size 32, ratio 0.5 → (−23, −11, 23, 11))."""
        scales = torch.as_tensor(sizes, dtype=torch.float32, device=device)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=torch.float32, device=device))
        ws = (1 / h_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()

    def forward(self, image_size: tuple[int, int], feature_sizes: list[tuple[int, int]], dtype=torch.float32,
                device=None) -> Tensor:
        if len(feature_sizes) != len(self.sizes):
            raise ValueError(f"{len(feature_sizes)} feature maps but anchors for {len(self.sizes)} levels")
        anchors = []
        for (height, width), sizes, ratios in zip(feature_sizes, self.sizes, self.aspect_ratios):
            stride_y, stride_x = image_size[0] // height, image_size[1] // width
            shift_y, shift_x = torch.meshgrid(torch.arange(height, dtype=dtype, device=device) * stride_y,
                                              torch.arange(width, dtype=dtype, device=device) * stride_x,
                                              indexing="ij")
            shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).reshape(-1, 1, 4)
            anchors.append((shifts + self.cell_anchors(sizes, ratios, device).to(dtype)).reshape(-1, 4))
        return torch.cat(anchors)
