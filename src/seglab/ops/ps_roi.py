"""Position-sensitive RoIAlign (R-FCN, arXiv:1605.06409 §2; FCIS's "assembling", arXiv:1611.07709 §3.1) in
vectorised PyTorch, with ``torchvision.ops.ps_roi_align``'s signature and semantics.

The input holds one group of ``out_channels`` maps per cell of a k×k grid over the RoI; output bin (i, j)
averages bilinear samples of its own cell's maps only. This is RoIAlign (``aligned=True`` arithmetic,
torchvision's) gathered from a channels-last table whose rows are blocked by cell, (k·k·N·H·W, out_channels):
each bin's gather indices are offset to its cell's block, so the same embedding_bag gather (and its chunking
and checkpointing under autograd) serves both ops.

ONNX has no position-sensitive RoIAlign: under export each cell becomes one ``RoiAlign`` of its own maps
over its part of the box (the rows and columns of output bins it covers), the same samples as here.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair  # torchvision's size pair

from .roi import align_gather, as_rois, roi_align

__all__ = ["ps_roi_align", "PSRoIAlign"]


def ps_roi_align(input: Tensor, boxes: Tensor | list[Tensor], output_size, spatial_scale: float = 1.0,
                 sampling_ratio: int = -1, group_size=None) -> Tensor:
    """(N, out_channels·kh·kw, H, W) score maps and K boxes → (K, out_channels, ph, pw), as
    ``torchvision.ops.ps_roi_align`` when ``group_size`` is None (k = output size).

    Boxes are (K, 5) ``(batch index, x1, y1, x2, y2)`` or a list of per-image (Ki, 4), xyxy in input-image
    pixels, scaled by ``spatial_scale`` and shifted by −0.5 pixel (no minimum size). Output bin (i, j) of
    channel c averages ``sampling_ratio``² bilinear samples (``ceil(bin size)`` per axis when
    ``sampling_ratio <= 0``) of input channel c·kh·kw + (i·kh // ph)·kw + (j·kw // pw): with ``group_size``
    (kh, kw) coarser than the output, each cell of the k×k grid covers several output bins (FCIS assembles
    21×21 RoI maps from 7×7 cells). Samples beyond one pixel outside the map count as zero; a bin without
    samples (an adaptive grid over an empty box) is 0 where torchvision divides 0 by 0.
    """
    if input.dim() != 4:
        raise ValueError(f"input must be (N, C, H, W), got shape {tuple(input.shape)}")
    pooled = _pair(output_size)
    group = pooled if group_size is None else _pair(group_size)
    if min(*pooled, *group) < 1:
        raise ValueError(f"output_size and group_size must be positive, got {output_size} and {group_size}")
    batch, channels, height, width = input.shape
    cells = group[0] * group[1]
    if channels % cells:
        raise ValueError(f"input channels ({channels}) must be a multiple of the {group[0]}×{group[1]} cells "
                         f"of the position-sensitive grid ({cells})")
    if torch.onnx.is_in_onnx_export():
        return _cellwise_roi_align(input, as_rois(input, boxes), pooled, group, spatial_scale, sampling_ratio)
    table = input.reshape(batch, channels // cells, cells, height, width).permute(2, 0, 3, 4, 1)
    table = table.reshape(cells * batch * height * width, channels // cells)
    return align_gather(table, as_rois(input, boxes), pooled, spatial_scale, sampling_ratio, True, (height, width),
                         _cell_rows(pooled, group, batch * height * width, input.device))


def _cell_rows(pooled: tuple[int, int], group: tuple[int, int], block: int, device) -> Tensor:
    """(ph·pw,) first table row of the cell each output bin reads: cell (i·kh // ph, j·kw // pw) × ``block``."""
    rows = torch.arange(pooled[0], device=device) * group[0] // pooled[0]
    cols = torch.arange(pooled[1], device=device) * group[1] // pooled[1]
    return ((rows[:, None] * group[1] + cols[None, :]) * block).reshape(-1)


def _bin_ranges(pooled: int, group: int) -> list[tuple[int, int]]:
    """Per cell g of ``group`` along one axis: the output bins [first, last) with ``i·group // pooled == g``."""
    cell = [i * group // pooled for i in range(pooled)]
    return [(cell.index(g), pooled - cell[::-1].index(g)) for g in range(group) if g in cell]


def _cellwise_roi_align(input: Tensor, rois: Tensor, pooled: tuple[int, int], group: tuple[int, int],
                        spatial_scale: float, sampling_ratio: int) -> Tensor:
    """:func:`ps_roi_align` of (K, 5) ``rois`` as one :func:`roi_align` per cell (the ONNX form): cell (gi, gj)
    reads its own ``out_channels`` maps over the part of each box under its output bins [i0, i1) × [j0, j1),
    a sub-box of the same bin size, so every sample falls where the position-sensitive gather puts it."""
    batch, channels, height, width = input.shape
    maps = input.reshape(batch, channels // (group[0] * group[1]), group[0] * group[1], height, width)
    bin_h = (rois[:, 4] - rois[:, 2]) / pooled[0]
    bin_w = (rois[:, 3] - rois[:, 1]) / pooled[1]
    rows = []
    for gi, (i0, i1) in enumerate(_bin_ranges(pooled[0], group[0])):
        row = []
        for gj, (j0, j1) in enumerate(_bin_ranges(pooled[1], group[1])):
            sub = torch.stack([rois[:, 0], rois[:, 1] + j0 * bin_w, rois[:, 2] + i0 * bin_h,
                               rois[:, 1] + j1 * bin_w, rois[:, 2] + i1 * bin_h], 1)
            row.append(roi_align(maps[:, :, gi * group[1] + gj], sub, (i1 - i0, j1 - j0), spatial_scale,
                                 sampling_ratio, aligned=True))
        rows.append(torch.cat(row, 3))
    return torch.cat(rows, 2)


class PSRoIAlign(nn.Module):
    """Module form of :func:`ps_roi_align` (``torchvision.ops.PSRoIAlign``, plus ``group_size``)."""

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, group_size=None):
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale
        self.sampling_ratio, self.group_size = sampling_ratio, group_size

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return ps_roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.group_size)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, group_size={self.group_size}")
