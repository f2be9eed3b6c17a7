"""Position-sensitive RoI operators in vectorised PyTorch: RoIAlign (R-FCN, arXiv:1605.06409 §2) with
``torchvision.ops.ps_roi_align``'s signature and semantics, and the FCIS reference code's PSROIPooling
(FCIS's "assembling" by copying, arXiv:1611.07709 §3.1), :func:`ps_roi_pool`.

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
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair  # torchvision's size pair

from .roi import align_gather, as_rois, roi_align, round_half_away

__all__ = ["ps_roi_align", "ps_roi_pool", "PSRoIAlign"]


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
    pooled, group = _grids(input, output_size, group_size)
    batch, channels, height, width = input.shape
    cells = group[0] * group[1]
    if torch.onnx.is_in_onnx_export():
        return _cellwise_roi_align(input, as_rois(input, boxes), pooled, group, spatial_scale, sampling_ratio)
    table = input.reshape(batch, channels // cells, cells, height, width).permute(2, 0, 3, 4, 1)
    table = table.reshape(cells * batch * height * width, channels // cells)
    return align_gather(table, as_rois(input, boxes), pooled, spatial_scale, sampling_ratio, True, (height, width),
                         _cell_rows(pooled, group, batch * height * width, input.device))


def ps_roi_pool(input: Tensor, boxes: Tensor | list[Tensor], output_size, spatial_scale: float = 1.0,
                group_size=None) -> Tensor:
    """(N, out_channels·k², H, W) score maps and K boxes → (K, out_channels, ph, pw): the FCIS reference
    code's ``PSROIPooling`` (msracver/FCIS ``psroi_pooling.cu``), which is not torchvision's ``ps_roi_pool``.

    Each box (xyxy in input pixels, as for :func:`ps_roi_align`) is rounded to whole pixels, half away from
    zero; its end gets one pixel more (inclusive corners), then both are scaled by ``spatial_scale``;
    width and height are at least 0.1. Bin (i, j) covers map pixels ``floor(start + i·bin) ..
    ceil(start + (i+1)·bin)`` (exclusive end, clipped to the map) and is the plain mean of those pixels
    of channel c·k² + (i·k // ph)·k + (j·k // pw), 0 where it covers none; its gradient spreads evenly over
    them. Sums come from a summed-area table (float64 on the CPU, float32 elsewhere): each bin is one bag of
    ``F.embedding_bag`` over its four corners, so the cost does not grow with the bin size.
    """
    pooled, group = _grids(input, output_size, group_size)
    batch, channels, height, width = input.shape
    cells = group[0] * group[1]
    rois = as_rois(input, boxes)
    rows, row_end = _pool_spans(rois[:, 2], rois[:, 4], pooled[0], spatial_scale, height)  # (K, ph) each
    cols, col_end = _pool_spans(rois[:, 1], rois[:, 3], pooled[1], spatial_scale, width)  # (K, pw) each
    accumulate = torch.float64 if input.device.type == "cpu" else torch.float32
    summed = F.pad(input.to(accumulate).cumsum(2).cumsum(3), (1, 0, 1, 0))  # (N, C, H+1, W+1): sums above-left
    # one channels-last table, rows blocked by cell as in ps_roi_align: ((cell·N + n)·(H+1) + y)·(W+1) + x
    table = summed.reshape(batch, channels // cells, cells, -1).permute(2, 0, 3, 1).reshape(-1, channels // cells)
    plane = (height + 1) * (width + 1)
    cell = _cell_rows(pooled, group, batch * plane, input.device).view(1, *pooled)  # (1, ph, pw) its cell's block
    base = cell + rois[:, 0].long()[:, None, None] * plane
    corners = [y[:, :, None] * (width + 1) + x[:, None, :] for y in (row_end, rows) for x in (col_end, cols)]
    index = torch.stack(corners, -1) + base[..., None]  # (K, ph, pw, 4): the sum's four corners
    area = ((row_end - rows)[:, :, None] * (col_end - cols)[:, None, :]).to(accumulate)  # 0 where a bin is empty
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=accumulate, device=input.device)
    weights = signs / area.clamp(min=1)[..., None]
    out = _CornerSum.apply(table, index.reshape(-1, 4), weights.reshape(-1, 4))
    return out.view(len(rois), *pooled, channels // cells).permute(0, 3, 1, 2).to(input.dtype)


class _CornerSum(torch.autograd.Function):
    """Rows (B, C) = Σ_j weights[b, j] · table[index[b, j]]: one ``embedding_bag`` sum forward; backward, the
    transpose as one ``index_add_`` (embedding_bag's own dense backward sorts the indices and is slower)."""

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(index, weights)
        ctx.rows = table.shape[0]
        return F.embedding_bag(index, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    def backward(ctx, grad: Tensor):
        index, weights = ctx.saved_tensors
        spread = (grad[:, None, :] * weights[..., None]).reshape(-1, grad.shape[1])
        return grad.new_zeros(ctx.rows, grad.shape[1]).index_add_(0, index.reshape(-1), spread), None, None


def _grids(input: Tensor, output_size, group_size) -> tuple[tuple[int, int], tuple[int, int]]:
    """The output and cell grids (ph, pw), (kh, kw), after checking ``input``'s shape against them."""
    if input.dim() != 4:
        raise ValueError(f"input must be (N, C, H, W), got shape {tuple(input.shape)}")
    pooled = _pair(output_size)
    group = pooled if group_size is None else _pair(group_size)
    if min(*pooled, *group) < 1:
        raise ValueError(f"output_size and group_size must be positive, got {output_size} and {group_size}")
    cells = group[0] * group[1]
    if input.shape[1] % cells:
        raise ValueError(f"input channels ({input.shape[1]}) must be a multiple of the {group[0]}×{group[1]} cells "
                         f"of the position-sensitive grid ({cells})")
    return pooled, group


def _pool_spans(start: Tensor, end: Tensor, pooled: int, spatial_scale: float, length: int) -> tuple[Tensor, Tensor]:
    """PSROIPooling's bins along one axis of (K,) box coordinates in pixels: first and one-past-last map
    index (K, pooled), clipped to [0, length], in the input's float arithmetic (the reference's DType)."""
    first = round_half_away(start) * spatial_scale
    size = ((round_half_away(end) + 1) * spatial_scale - first).clamp(min=0.1) / pooled
    index = torch.arange(pooled, device=start.device, dtype=start.dtype)
    low = (index[None] * size[:, None] + first[:, None]).floor()
    high = ((index[None] + 1) * size[:, None] + first[:, None]).ceil()
    low, high = low.clamp(0, length).long(), high.clamp(0, length).long()
    return low, torch.maximum(low, high)


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
