"""RoIPool (Fast R-CNN) and RoIAlign (Mask R-CNN) in vectorised PyTorch, with torchvision.ops' signatures
and semantics (border rules, adaptive sampling, the ``aligned`` half-pixel offset).

Both are weighted gathers over the feature map laid out channels-last, (N·H·W, C): every output bin
is one bag of ``F.embedding_bag`` — the mean of bilinear samples for RoIAlign (each sample a weighted
sum of 4 pixels), the max over the bin's pixels for RoIPool. Autograd gives the input gradient (boxes
get none, as in torchvision). RoIs are processed in chunks of bounded size; under autograd each of
several RoIAlign chunks is checkpointed (its gather indices rebuilt in backward), so the extra memory is
one channels-last copy of the input plus one chunk, whatever the number of boxes. RoIPool keeps instead,
as torchvision, the position of each maximum (int32, the size of the output): its backward is a scatter.

Under ONNX export (TorchScript exporter, opset >= 16) the ops are emitted as ONNX ``RoiAlign``
(``coordinate_transformation_mode`` "half_pixel" for ``aligned=True``, "output_half_pixel" otherwise,
``sampling_ratio`` 0 for adaptive) and ``MaxRoiPool``, whose definitions are torchvision's arithmetic (while
tracing, the values still come from the code here).
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair  # torchvision's size pair

from .counting import add_gathered

__all__ = ["roi_align", "roi_pool", "RoIAlign", "RoIPool", "MultiScaleRoIAlign", "fpn_levels", "convert_boxes_to_roi_format",
           "as_rois", "align_gather"]

_CHUNK_ENTRIES = 1 << 20  # gather entries per chunk: bounds the index tensors (tens of MB)
# RoIPool's chunks, counted in pixels plus (bin, channel) maxima: int64 temporaries of 16 MB stay under
# glibc's mmap threshold, so the allocator reuses their memory instead of page-faulting fresh pages.
_POOL_CHUNK = 1 << 21
_threads: dict[int, ThreadPoolExecutor] = {}  # RoIPool's worker threads, one pool per thread count, kept


def _pool_threads(workers: int) -> ThreadPoolExecutor:
    """A kept pool of ``workers`` threads (made once, not on every RoIPool call)."""
    if workers not in _threads:
        _threads[workers] = ThreadPoolExecutor(workers, thread_name_prefix="seglab-roi-pool")
    return _threads[workers]


def convert_boxes_to_roi_format(boxes: Tensor | list[Tensor]) -> Tensor:
    """A (K, 5) tensor ``(batch index, x1, y1, x2, y2)`` from itself or a list of per-image (Ki, 4) boxes."""
    if isinstance(boxes, (list, tuple)):
        for b in boxes:
            if b.dim() != 2 or b.shape[1] != 4:
                raise ValueError(f"per-image boxes must be (K, 4), got shape {tuple(b.shape)}")
        if not boxes:
            raise ValueError("boxes is an empty list")
        index = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)])  # traceable: no len()
        return torch.cat([index, torch.cat(list(boxes))], 1)
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(f"boxes must be a (K, 5) tensor or a list of (K, 4) tensors, got shape {tuple(boxes.shape)}")
    return boxes


def _channels_last_table(input: Tensor) -> Tensor:
    """(N, C, H, W) -> (N·H·W, C), rows in (n, y, x) order."""
    return input.permute(0, 2, 3, 1).reshape(-1, input.shape[1])


def as_rois(input: Tensor, boxes: Tensor | list[Tensor]) -> Tensor:
    """The (K, 5) ``(batch index, x1, y1, x2, y2)`` RoIs of ``boxes`` (see :func:`convert_boxes_to_roi_format`)
    in the dtype of ``input`` (N, C, H, W), detached: boxes get no gradient, as in torchvision."""
    return convert_boxes_to_roi_format(boxes).detach().to(input.dtype)


def _chunks(total: int, per_item: Tensor, budget: int | None = None) -> list[tuple[int, int]]:
    """Split range(total) into consecutive chunks whose summed ``per_item`` stays under ``budget``
    (default ``_CHUNK_ENTRIES``)."""
    budget = budget or _CHUNK_ENTRIES
    if total == 0:
        return []
    ends = torch.cumsum(per_item, 0)
    chunks, start = [], 0
    while start < total:
        base = int(ends[start - 1]) if start else 0
        stop = int(torch.searchsorted(ends, base + budget, right=True))
        stop = max(stop, start + 1)
        chunks.append((start, min(stop, total)))
        start = stop
    return chunks


def _gather_rois(chunk_fn, table: Tensor, cost: Tensor, bins: int, chunk_args) -> Tensor:
    """(K, bins, C): ``chunk_fn(table, *chunk_args(first, last))`` over chunks of RoIs bounded by ``cost`` (the
    values each RoI gathers per channel; also what ``ops.counting`` counts).

    A single chunk is gathered directly. Under autograd several chunks are each checkpointed (their
    gather indices are rebuilt in backward rather than kept) and concatenated; without autograd they
    are written into one preallocated output.
    """
    k, channels = cost.numel(), table.shape[1]
    add_gathered(cost, channels)
    chunks = _chunks(k, cost)
    if len(chunks) == 1:
        return chunk_fn(table, *chunk_args(0, k)).view(k, bins, channels)
    if chunks and table.requires_grad and torch.is_grad_enabled():
        return torch.cat([torch.utils.checkpoint.checkpoint(chunk_fn, table, *chunk_args(first, last),
                                                            use_reentrant=False).view(last - first, bins, channels)
                          for first, last in chunks])
    out = table.new_empty(k, bins, channels)
    for first, last in chunks:
        out[first:last] = chunk_fn(table, *chunk_args(first, last)).view(last - first, bins, channels)
    return out


def _align_samples(rois: Tensor, pooled: tuple[int, int], spatial_scale: float, sampling_ratio: int, aligned: bool):
    """Per RoI: start (K, 2), bin size (K, 2) and sampling grid (K, 2) in (y, x), torchvision's arithmetic."""
    offset = 0.5 if aligned else 0.0
    start = rois[:, [2, 1]] * spatial_scale - offset
    size = rois[:, [4, 3]] * spatial_scale - offset - start
    if not aligned:
        size = size.clamp_min(1.0)
    bins = size / torch.tensor(pooled, dtype=rois.dtype, device=rois.device)
    if sampling_ratio > 0:
        grid = torch.full_like(bins, sampling_ratio, dtype=torch.long)
    else:
        grid = torch.ceil(bins).long().clamp_min(0)  # no samples in a bin of negative size
    return start, bins, grid


def _axis_taps(coord: Tensor, length: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """torchvision's bilinear rule along one axis: (low index, high index, weight of high) and validity."""
    valid = (coord >= -1.0) & (coord <= length)
    coord = coord.clamp_min(0.0)
    low = coord.floor().long()
    at_end = low >= length - 1
    low = torch.where(at_end, torch.full_like(low, length - 1), low)
    high = torch.where(at_end, low, low + 1)
    frac = torch.where(at_end, torch.zeros_like(coord), coord - low.to(coord.dtype))
    return low, high, frac, valid


def roi_align(input: Tensor, boxes: Tensor | list[Tensor], output_size, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """RoIAlign: (N, C, H, W) features and K boxes -> (K, C, ph, pw), as ``torchvision.ops.roi_align``.

    Each output bin averages ``sampling_ratio``² bilinear samples (``ceil(roi size / bins)`` per axis
    when ``sampling_ratio <= 0``) at regularly spaced points of the bin; boxes are in input-image
    coordinates scaled by ``spatial_scale``. ``aligned=True`` shifts the box by −0.5 pixel so that
    pixel centres line up (Detectron2); without it RoIs are at least 1×1. Samples beyond one pixel
    outside the map count as zero.
    """
    rois, pooled = as_rois(input, boxes), _pair(output_size)
    if torch.onnx.is_in_onnx_export():
        return _OnnxRoIAlign.apply(input, rois, pooled, spatial_scale, sampling_ratio, aligned)
    return align_gather(_channels_last_table(input), rois, pooled, spatial_scale, sampling_ratio, aligned,
                         input.shape[-2:])


class _OnnxRoIAlign(torch.autograd.Function):
    """:func:`roi_align` as one ONNX ``RoiAlign`` node under the TorchScript exporter (forward: the values)."""

    @staticmethod
    def forward(ctx, input, rois, pooled, spatial_scale, sampling_ratio, aligned):
        return align_gather(_channels_last_table(input), rois, pooled, spatial_scale, sampling_ratio, aligned,
                             input.shape[-2:])

    @staticmethod
    def symbolic(g, input, rois, pooled, spatial_scale, sampling_ratio, aligned):
        if g.opset < 16:
            raise ValueError(f"exporting roi_align needs ONNX opset >= 16 (RoiAlign's coordinate_transformation_mode), "
                             f"got opset {g.opset}")
        batch_index = g.op("Cast", g.op("Gather", rois, g.op("Constant", value_t=torch.tensor(0)), axis_i=1),
                           to_i=torch.onnx.TensorProtoDataType.INT64)
        corners = g.op("Gather", rois, g.op("Constant", value_t=torch.tensor([1, 2, 3, 4])), axis_i=1)
        return g.op("RoiAlign", input, corners, batch_index, mode_s="avg", output_height_i=pooled[0],
                    output_width_i=pooled[1], sampling_ratio_i=max(sampling_ratio, 0),
                    spatial_scale_f=spatial_scale,
                    coordinate_transformation_mode_s="half_pixel" if aligned else "output_half_pixel")


def align_gather(table: Tensor, rois: Tensor, pooled: tuple[int, int], spatial_scale: float, sampling_ratio: int,
                 aligned: bool, size: tuple[int, int], cell_rows: Tensor | None = None) -> Tensor:
    """RoIAlign (arguments as :func:`roi_align`'s) of (K, 5) ``rois`` on a channels-last ``table`` (N·H·W, C),
    rows (n, y, x) of maps of ``size`` (H, W) → (K, C, ph, pw), channels-last in memory. ``cell_rows``
    (ph·pw,), if given, is added to the row index of each output bin (ph, pw) in row-major order: the
    block of the position-sensitive table (:func:`~seglab.ops.ps_roi_align`) that bin reads."""
    start, bins, grid = _align_samples(rois, pooled, spatial_scale, sampling_ratio, aligned)
    image = rois[:, 0].long()
    cells = pooled[0] * pooled[1]
    out = _gather_rois(_align_chunk, table, grid[:, 0] * grid[:, 1] * cells * 4, cells,
                       lambda a, b: (image[a:b], start[a:b], bins[a:b], grid[a:b], tuple(size), pooled, cell_rows))
    return out.view(-1, *pooled, table.shape[1]).permute(0, 3, 1, 2)


def _align_chunk(table, image, start, bins, grid, size, pooled, cell_rows=None):
    """RoIAlign of a chunk of RoIs: one embedding_bag bag per output bin, 4 taps per sample."""
    height, width = size
    pooled_h, pooled_w = pooled
    device, dtype = start.device, start.dtype
    k = start.shape[0]
    gh, gw = grid[:, 0], grid[:, 1]
    per_bin = gh * gw  # samples in each bin of this RoI
    bins_total = k * pooled_h * pooled_w
    roi_of_bin = torch.arange(k, device=device).repeat_interleave(pooled_h * pooled_w)
    counts = per_bin[roi_of_bin]  # (bins,)
    # Every sample: its bin, and its (iy, ix) in the bin's grid.
    bin_of_sample = torch.arange(bins_total, device=device).repeat_interleave(counts)
    first_sample = torch.cumsum(counts, 0) - counts
    within = torch.arange(bin_of_sample.numel(), device=device) - first_sample[bin_of_sample]
    roi = roi_of_bin[bin_of_sample]
    gx = gw[roi]
    iy, ix = within // gx, within % gx
    cell = bin_of_sample % (pooled_h * pooled_w)
    py, px = cell // pooled_w, cell % pooled_w
    y = start[roi, 0] + py.to(dtype) * bins[roi, 0] + (iy.to(dtype) + 0.5) * bins[roi, 0] / gh[roi].to(dtype)
    x = start[roi, 1] + px.to(dtype) * bins[roi, 1] + (ix.to(dtype) + 0.5) * bins[roi, 1] / gx.to(dtype)
    y_low, y_high, ly, y_ok = _axis_taps(y, height)
    x_low, x_high, lx, x_ok = _axis_taps(x, width)
    scale = (y_ok & x_ok).to(dtype) / counts[bin_of_sample].clamp_min(1).to(dtype)
    hy, hx = 1 - ly, 1 - lx
    base = image[roi] * (height * width)
    if cell_rows is not None:
        base = base + cell_rows[cell]
    index = torch.stack([base + y_low * width + x_low, base + y_low * width + x_high,
                         base + y_high * width + x_low, base + y_high * width + x_high], 1).reshape(-1)
    weight = (torch.stack([hy * hx, hy * lx, ly * hx, ly * lx], 1) * scale[:, None]).reshape(-1).to(table.dtype)
    offsets = torch.cat([first_sample, counts.sum().view(1)]) * 4  # empty bins (count 0) give 0
    return F.embedding_bag(index, table, offsets, mode="sum", per_sample_weights=weight, include_last_offset=True)


def roi_pool(input: Tensor, boxes: Tensor | list[Tensor], output_size, spatial_scale: float = 1.0) -> Tensor:
    """RoIPool: (N, C, H, W) features and K boxes -> (K, C, ph, pw), as ``torchvision.ops.roi_pool``.

    Box corners are scaled and rounded to whole pixels (half away from zero), the RoI is at least 1×1,
    each bin spans ``floor(i·h/ph) .. ceil((i+1)·h/ph)`` of it, clipped to the map, and outputs its
    maximum (0 for a bin entirely outside).
    """
    rois, (pooled_h, pooled_w) = as_rois(input, boxes), _pair(output_size)
    if torch.onnx.is_in_onnx_export():
        return _OnnxRoIPool.apply(input, rois, (pooled_h, pooled_w), spatial_scale)
    return _pool(input, rois, (pooled_h, pooled_w), spatial_scale)


def round_half_away(values: Tensor) -> Tensor:
    """C's ``std::round``: to the nearest integer, halves away from zero (``torch.round`` goes to even)."""
    return values.sign() * torch.floor(values.abs() + 0.5)


def _pool(input: Tensor, rois: Tensor, pooled: tuple[int, int], spatial_scale: float) -> Tensor:
    """:func:`roi_pool` of (K, 5) ``rois``."""
    pooled_h, pooled_w = pooled
    height, width = input.shape[2:]
    scaled = rois[:, 1:] * spatial_scale
    corner = round_half_away(scaled).long()
    start_x, start_y, end_x, end_y = corner.unbind(1)
    roi_w = (end_x - start_x + 1).clamp_min(1)
    roi_h = (end_y - start_y + 1).clamp_min(1)
    y0, y1 = _pool_bins(start_y, roi_h, pooled_h, height, rois.dtype)  # (K, ph) each
    x0, x1 = _pool_bins(start_x, roi_w, pooled_w, width, rois.dtype)
    rows = (y1 - y0).clamp_min(0)
    cols = (x1 - x0).clamp_min(0)
    area = rows[:, :, None] * cols[:, None, :]  # (K, ph, pw) pixels per bin
    pixels = area.flatten(1).sum(1)  # (K,) values each RoI compares per channel
    add_gathered(pixels, input.shape[1])
    return _BinMax.apply(input, rois[:, 0].long(), y0, x0, cols, area, pixels)


class _BinMax(torch.autograd.Function):
    """RoIPool's bin maxima (K, C, ph, pw), channels-last in memory, of (N, C, H, W) ``input``; the other
    arguments are :func:`_pool_chunk`'s for all K RoIs, and ``pixels`` (K,) their bins' pixel totals. Forward
    keeps the pixel (a row of the channels-last (N·H·W, C) table) each (bin, channel) maximum comes from — the
    first in row-major order, as torchvision — so backward maps those rows to positions in the map and is one
    ``index_add`` (the whole gradient goes there); nothing is recomputed. ``embedding_bag``'s max mode runs on one thread, so the chunks go to
    ``torch.get_num_threads()`` Python threads (it releases the GIL).
    """

    @staticmethod
    def forward(ctx, input, image, y0, x0, cols, area, pixels):
        channels, height, width = input.shape[1:]
        k, pooled_h, pooled_w = area.shape
        bins = pooled_h * pooled_w
        table = _channels_last_table(input.detach())  # worker threads may have grad mode on
        out = table.new_empty(k * bins, channels)
        wide = input.numel() >= 2**31 - 1  # int32 where backward's indices into the map fit, as torchvision's
        argmax = torch.empty(k * bins, channels, dtype=torch.int64 if wide else torch.int32, device=input.device)
        per_roi = pixels + bins * channels
        workers = torch.get_num_threads() if input.device.type == "cpu" else 1
        chunks = _chunks(k, per_roi, min(_POOL_CHUNK, max(1, -(-int(per_roi.sum()) // workers))))

        def pool(chunk):
            a, b = chunk
            values, row = _pool_chunk(table, image[a:b], y0[a:b], x0[a:b], cols[a:b], area[a:b], (height, width))
            out[a * bins:b * bins], argmax[a * bins:b * bins] = values, row

        if workers > 1 and len(chunks) > 1:
            list(_pool_threads(workers).map(pool, chunks))
        else:
            for chunk in chunks:
                pool(chunk)
        ctx.save_for_backward(argmax, image)
        ctx.input_shape, ctx.bins = input.shape, bins
        return out.view(k, pooled_h, pooled_w, channels).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):
        argmax, image = ctx.saved_tensors
        batch, channels, height, width = ctx.input_shape
        plane, total = height * width, ctx.input_shape.numel()
        grad = grad.permute(0, 2, 3, 1).reshape(-1)  # (K, ph, pw, C): the order of ``argmax``
        empty = argmax[:, 0] == batch * plane  # bins outside the map, for every channel
        # the table's row (n, y, x) -> the index in the (N, C, H, W) map, in argmax's dtype (int32 where it fits)
        element = argmax + torch.arange(channels, device=grad.device, dtype=argmax.dtype) * plane
        offset = image.repeat_interleave(ctx.bins) * ((channels - 1) * plane)
        element.add_(offset.to(argmax.dtype)[:, None])
        element[empty] = total
        grad_input = grad.new_zeros(total + 1).index_add_(0, element.view(-1), grad)  # + one for the empty bins
        return grad_input[:total].view(ctx.input_shape), None, None, None, None, None, None


class _OnnxRoIPool(torch.autograd.Function):
    """:func:`roi_pool` as one ONNX ``MaxRoiPool`` node under the TorchScript exporter (forward: the values)."""

    @staticmethod
    def forward(ctx, input, rois, pooled, spatial_scale):
        return _pool(input, rois, pooled, spatial_scale)

    @staticmethod
    def symbolic(g, input, rois, pooled, spatial_scale):
        return g.op("MaxRoiPool", input, rois, pooled_shape_i=list(pooled), spatial_scale_f=spatial_scale)


def _pool_bins(start: Tensor, length: Tensor, pooled: int, limit: int, dtype) -> tuple[Tensor, Tensor]:
    """Bin edges along one axis (torchvision's float arithmetic), clipped to [0, limit]."""
    # A tensor divisor: CUDA divides by a Python scalar as a multiplication by its reciprocal, which can
    # move a bin edge by one pixel against torchvision's true division.
    bin_size = length.to(dtype) / torch.full_like(length, pooled, dtype=dtype)
    index = torch.arange(pooled, device=start.device, dtype=dtype)
    lo = torch.floor(index * bin_size[:, None]).long() + start[:, None]
    hi = torch.ceil((index + 1) * bin_size[:, None]).long() + start[:, None]
    return lo.clamp(0, limit), hi.clamp(0, limit)


def _pool_chunk(table, image, y0, x0, cols, area, size) -> tuple[Tensor, Tensor]:
    """RoIPool of a chunk of K RoIs on ``table`` (N·H·W, C) of maps of ``size`` (H, W): one max-mode
    ``embedding_bag`` bag per bin over its pixels in row-major order. Returns the bin maxima (K·ph·pw, C)
    and the row of ``table`` (the pixel) each comes from; an empty bin (outside the map) gives 0 and row
    N·H·W, past the map."""
    k, pooled_h = y0.shape
    pooled_w = x0.shape[1]
    height, width = size
    device = y0.device
    counts = area.reshape(-1)
    bin_of_pixel = torch.arange(counts.numel(), device=device).repeat_interleave(counts)
    first = torch.cumsum(counts, 0) - counts
    within = torch.arange(bin_of_pixel.numel(), device=device) - first[bin_of_pixel]
    roi = bin_of_pixel // (pooled_h * pooled_w)
    cell = bin_of_pixel % (pooled_h * pooled_w)
    py, px = cell // pooled_w, cell % pooled_w
    ncols = cols[roi, px]
    y = y0[roi, py] + within // ncols
    x = x0[roi, px] + within % ncols
    plane = height * width
    index = image[roi] * plane + y * width + x
    offsets = torch.cat([first, counts.sum().view(1)])
    # mode 2 is max; ties keep the first maximum (a strict comparison), as torchvision
    values, _, _, row = torch.embedding_bag(table, index, offsets, False, 2, False, None, True)
    row[counts == 0] = table.shape[0]  # embedding_bag gives row 0 there
    return values, row


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align` (``torchvision.ops.RoIAlign``)."""

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, aligned: bool = False):
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale
        self.sampling_ratio, self.aligned = sampling_ratio, aligned

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")


class RoIPool(nn.Module):
    """Module form of :func:`roi_pool` (``torchvision.ops.RoIPool``)."""

    def __init__(self, output_size, spatial_scale: float):
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


def fpn_levels(boxes: Tensor, k_min: int, k_max: int, canonical_scale: float = 224.0, canonical_level: int = 4,
               eps: float = 1e-6) -> Tensor:
    """FPN level of each (K, 4) box (Lin et al. 2017, eq. 1): ⌊k0 + log2(√(wh)/224) + ε⌋ clamped to
    [k_min, k_max], returned as an offset from k_min. ε (torchvision's 1e-6) keeps boxes of exactly
    224·2ⁿ pixels on level k0 + n despite rounding in the logarithm."""
    size = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(canonical_level + torch.log2(size / canonical_scale) + eps)
    return (levels.clamp(k_min, k_max) - k_min).to(torch.int64)


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign over FPN levels, as ``torchvision.ops.MultiScaleRoIAlign``: each box is pooled from the
    level :func:`fpn_levels` assigns it, at that level's scale (``2^round(log2(feature / image))``).

    ``forward(features: dict[str, Tensor], boxes: list[(Ki, 4)], image_shapes: list[(h, w)])`` -> (K, C, h, w).
    ``mode="pool"`` uses RoIPool on each level instead (the Mask R-CNN paper's RoIPool ablation).
    """

    def __init__(self, featmap_names: list[str], output_size, sampling_ratio: int, *, canonical_scale: int = 224,
                 canonical_level: int = 4, mode: str = "align"):
        super().__init__()
        if mode not in ("align", "pool"):
            raise ValueError(f"mode must be 'align' or 'pool', got {mode!r}")
        self.featmap_names, self.output_size = list(featmap_names), _pair(output_size)
        self.sampling_ratio, self.mode = sampling_ratio, mode
        self.canonical_scale, self.canonical_level = canonical_scale, canonical_level

    def _pool(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        if self.mode == "pool":
            return roi_pool(feature, rois, self.output_size, scale)
        return roi_align(feature, rois, self.output_size, scale, self.sampling_ratio, aligned=False)

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        maps = [features[name] for name in self.featmap_names]
        original = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
        scales = [_infer_scale(m, original) for m in maps]
        rois = convert_boxes_to_roi_format(boxes)
        if len(maps) == 1:
            return self._pool(maps[0], rois, scales[0])
        k_min, k_max = round(-math.log2(scales[0])), round(-math.log2(scales[-1]))
        levels = fpn_levels(rois[:, 1:], k_min, k_max, self.canonical_scale, self.canonical_level)
        if torch.onnx.is_in_onnx_export():  # no Python list of per-level counts: it would be frozen into the graph
            pooled = rois.new_zeros(rois.shape[0], maps[0].shape[1], *self.output_size)
            for level, (feature, scale) in enumerate(zip(maps, scales)):
                index = torch.where(levels == level)[0]
                pooled[index] = self._pool(feature, rois[index], scale)
            return pooled
        order = torch.argsort(levels, stable=True)  # RoIs grouped by level, pooled level by level
        counts = torch.bincount(levels, minlength=len(maps)).tolist()
        pooled = [self._pool(feature, level_rois, scale)
                  for feature, scale, level_rois in zip(maps, scales, rois[order].split(counts))]
        return torch.cat(pooled)[torch.argsort(order)]  # back in the boxes' order


def _infer_scale(feature: Tensor, original: tuple[int, int]) -> float:
    """The power-of-two scale 2^-k of a feature map relative to the images (``original``: their largest resized,
    unpadded (h, w)): the smallest k at which the map covers the images along both axes. The map was computed
    from the padded batch, so the ratio along a padded axis (e.g. 16 / 42 for a 42×64 image padded to 64×64) is
    above 2^-k; torchvision rounds the ratio along h alone, which gives 1/2 there instead of 1/4."""
    k = max(math.ceil(math.log2(o / f) - 1e-9) for f, o in zip(feature.shape[-2:], original))
    return 2.0 ** -k
