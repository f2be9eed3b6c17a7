"""Permutohedral lattice (Adams, Baek & Davis 2010) for high-dimensional Gaussian filtering, in PyTorch.

The construction follows Krähenbühl's densecrf code (the C++ behind pydensecrf) step by step, in float32,
so that the same features give the same lattice: elevation onto the plane ``sum(x) = 0`` of R^(d+1),
the nearest remainder-0 point by rounding half-to-even, the enclosing simplex from the ranks of the
residuals, barycentric weights, and the d+1 simplex vertices of every point. Vertices are identified by
sorting integer keys (no hash table). Splatting, blurring (``v + (v[n1] + v[n2]) / 2`` along each of the
d+1 lattice directions) and slicing are weighted gathers done by ``embedding_bag``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["NORMALIZATIONS", "PermutohedralLattice", "LatticeFilter"]

#: Kernel normalisations K̃ of ``PermutohedralLattice.kernel``, D = diag(K·1): D^-1/2 K D^-1/2, D^-1 K, K D^-1,
#: K; pydensecrf's NORMALIZE_SYMMETRIC, NORMALIZE_AFTER, NORMALIZE_BEFORE, NO_NORMALIZATION.
NORMALIZATIONS = ("symmetric", "after", "before", "none")

_MAX_CODE = 2**62  # mixed-radix vertex codes must stay inside int64
_INT32_CODES = 2**31  # code ranges below this are built, sorted and searched in int32
_SLICE_BLOCK = 2**16  # points sliced at once by LatticeFilter.accumulate: a few MB, reused by the allocator
_BUILD_BLOCK = 2**16  # points whose simplices and vertex codes are computed at once: a column of a block exceeds
# torch's 32,768-element grain, so its element-wise ops split over two threads


def _elevate(features: Tensor) -> Tensor:
    """(P, d) float32 features -> (P, d+1) points on the lattice plane, scaled to unit filter std."""
    d = features.shape[1]
    inv_std = float(torch.tensor(math.sqrt(2.0 / 3.0) * (d + 1), dtype=torch.float32))
    scale = torch.tensor([1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std for i in range(d)], dtype=torch.float32)
    cf = features * scale.to(features.device)
    suffix = cf.flip(1).cumsum(1).flip(1)  # suffix[:, m] = cf[:, m] + ... + cf[:, d-1], summed from the end
    above = torch.cat([suffix[:, 1:], torch.zeros_like(cf[:, :1])], 1)  # sum of cf beyond coordinate m
    steps = torch.arange(1, d + 1, dtype=torch.float32, device=features.device)
    return torch.cat([suffix[:, :1], above - steps * cf], 1)


def _enclosing_simplex(elevated: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Remainder-0 point divided by d+1 (P, d+1) int32, ranks (P, d+1) int64, barycentric weights (P, d+1)."""
    d1 = elevated.shape[1]
    down = torch.tensor(1.0 / d1, dtype=torch.float32)
    v = torch.round(elevated * down)  # half-to-even, like densecrf's SSE conversion
    rem0 = v * d1
    residual = (elevated - rem0).unbind(1)
    rank = [torch.zeros_like(residual[0], dtype=torch.uint8) for _ in range(d1)]  # counts < d+1: bytes add fastest
    for i in range(d1 - 1):  # densecrf's pairwise comparison, ties included
        for j in range(i + 1, d1):
            before = residual[i] < residual[j]
            rank[i] += before
            rank[j] += ~before
    small = torch.int16  # ranks and wraps are small: int16 arithmetic is several times faster than int64's
    rank = torch.stack(rank, 1).to(small) + v.sum(1, keepdim=True).to(small)
    wrap = (rank < 0).to(small) - (rank > d1 - 1).to(small)  # bring the point back onto the plane
    rank = (rank + wrap * d1).long()
    rem0 = rem0 + wrap * d1
    weight = (elevated - rem0) * down
    by_rank = torch.zeros_like(weight).scatter_(1, rank, weight).flip(1)  # [:, r]: coordinate of rank d-r
    bary = torch.empty_like(weight)
    bary[:, 1:] = by_rank[:, 1:] - by_rank[:, :-1]
    bary[:, 0] = by_rank[:, 0] + (1.0 + (-by_rank[:, -1]))
    return v.int() + wrap, rank, bary  # |m| < 2^24 / (d+1): float32 features hold no larger integers


def _vertex_codes(m: Tensor, rank: Tensor, set_offset: Tensor, low: Tensor, stride: Tensor) -> Tensor:
    """(P, d+1) codes r + (d+1)·Q of each point's simplex vertices (``PermutohedralLattice``), in ``stride``'s
    integer dtype: ``m``, ``rank`` from :func:`_enclosing_simplex`, ``set_offset`` (P,) the set's place in the
    mixed radix, ``low`` the smallest q_i, ``stride`` (d,) the radix's place values."""
    d = stride.numel()
    base = ((m[:, :d] - low) * stride).sum(1, dtype=stride.dtype) + set_offset
    stride_by_rank = stride.new_zeros(rank.shape).scatter_(1, rank, torch.cat([stride, stride.new_zeros(1)]).expand_as(rank))
    dropped = torch.cat([base.new_zeros(base.shape[0], 1), stride_by_rank.flip(1)[:, :-1].cumsum(1, dtype=stride.dtype)], 1)
    return torch.arange(d + 1, device=m.device, dtype=stride.dtype) + (d + 1) * (base[:, None] - dropped)


def _block_rows(tensor: Tensor, rows: int) -> int:
    """Rows of ``tensor`` to process at once: ``rows`` on the CPU, all of them on an accelerator (whose caching
    allocator reuses memory, where the CPU's hands out fresh pages for every large tensor)."""
    return rows if tensor.device.type == "cpu" else max(1, tensor.shape[0])


def _by_blocks(fn, *tensors: Tensor):
    """``fn`` on blocks of ``_BUILD_BLOCK`` rows of ``tensors``, its tensor (or tuple of tensors) results
    concatenated: a block's temporaries are small enough for the allocator to reuse, where a large image's
    (P, d+1) temporaries would each be a fresh mapping whose page faults cost more than the arithmetic."""
    rows = _block_rows(tensors[0], _BUILD_BLOCK)
    results = [fn(*block) for block in zip(*(t.split(rows) for t in tensors))]
    if isinstance(results[0], Tensor):
        return torch.cat(results)
    return tuple(torch.cat(parts) for parts in zip(*results))


class PermutohedralLattice:
    """The lattice of B feature sets of N points each; ``operators()`` gives the Gaussian filter on it.

    Args:
        features: (B, N, d) positions in filter units (a unit-std Gaussian), built in float32. The B sets
            share one block-diagonal lattice, so one call filters every set at once.
        pad_multiple: densecrf's SSE build processes points in blocks of 4 and pads the last block with
            all-zero features; their vertices join the lattice (they change the blur near the origin)
            without carrying values. 4 reproduces pydensecrf; 1 gives the plain lattice.
    """

    def __init__(self, features: Tensor, pad_multiple: int = 4):
        if features.dim() != 3:
            raise ValueError(f"features must be (B, N, d), got shape {tuple(features.shape)}")
        batch, n, d = features.shape
        device = features.device
        features = features.float()
        padded = (-n) % pad_multiple > 0
        if padded:  # all-zero points share one simplex: one per set is enough
            features = torch.cat([features, features.new_zeros(batch, 1, d)], 1)
        points = features.shape[1]
        m, rank, bary = _by_blocks(lambda block: _enclosing_simplex(_elevate(block)), features.reshape(-1, d))

        # Vertex r of a point's simplex is the remainder-r lattice point with key_i = (d+1)·q_i + r, where
        # q_i = m_i - [rank_i > d - r] (densecrf's canonical simplex). Its integer code is r + (d+1)·Q, Q
        # the mixed-radix number of (q_0 .. q_{d-1}, set index); blur neighbours move each q_i by at most 1.
        low = m[:, :d].amin(0) - 2
        radix = m[:, :d].amax(0) + 2 - low + 1
        strides = [1]
        for r in radix.tolist():
            strides.append(strides[-1] * r)
        code_range = strides[-1] * batch * (d + 1)
        if code_range >= _MAX_CODE:
            raise ValueError("lattice keys exceed int64: the features span too many filter widths "
                             "(use larger standard deviations or smaller images)")
        code_dtype = torch.int32 if code_range < _INT32_CODES else torch.int64  # int32 sorts and adds faster
        stride = torch.tensor(strides[:-1], device=device, dtype=code_dtype)
        set_offset = torch.arange(batch, device=device, dtype=code_dtype).repeat_interleave(points) * strides[-1]
        codes = _by_blocks(lambda *block: _vertex_codes(*block, low, stride), m, rank, set_offset)

        sorted_codes, order = torch.sort(codes.reshape(-1), stable=True)
        vertex_codes, vertex_of_sorted, counts = torch.unique_consecutive(
            sorted_codes, return_inverse=True, return_counts=True)
        num_vertices = vertex_codes.numel()
        index_dtype = torch.int32 if codes.numel() < 2**31 else torch.int64  # embedding_bag gathers int32 faster
        vertex = torch.empty(codes.numel(), dtype=index_dtype, device=device).scatter_(
            0, order, vertex_of_sorted.to(index_dtype)).view(batch, points, d + 1)
        bary = bary.view(batch, points, d + 1)

        # Splat: for each vertex, its points in order; a padding point keeps its slot with weight 0.
        point = order // (d + 1)
        self._splat_bary = bary.reshape(-1).index_select(0, order)  # index_select: a fraction of [order]'s time
        if padded:
            set_index, within = point // points, point % points
            real = within < n
            point = torch.where(real, set_index * n + within, torch.zeros_like(point))
            self._splat_bary = torch.where(real, self._splat_bary, torch.zeros((), device=device))
        self._splat_point = point.to(index_dtype)
        self._splat_offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]]).to(index_dtype)
        # Slice: the d+1 vertices and weights of each real point (densecrf's offset_ and barycentric_).
        self._slice_vertex = vertex[:, :n].reshape(-1, d + 1)
        self._slice_bary = bary[:, :n].reshape(-1, d + 1)

        # Blur neighbours along direction j: key -/+ 1 everywhere and +/- d at j (j = d moves only the
        # implicit last coordinate), i.e. remainder r -/+ 1 with q moved as below. A missing neighbour is
        # the vertex itself with weight 0. Each direction is a bag (vertex, n1, n2) weighted (1, ½, ½).
        r = vertex_codes % (d + 1)
        everywhere = int(stride.sum())
        itself = torch.arange(num_vertices, device=device, dtype=index_dtype)
        index, weight = [], []  # per direction: (V, 3) bags and their weights
        for j in range(d + 1):
            at_j = strides[j] if j < d else 0
            lower = torch.where(r >= 1, vertex_codes - 1 + (d + 1) * at_j, vertex_codes + d + (d + 1) * (at_j - everywhere))
            upper = torch.where(r < d, vertex_codes + 1 - (d + 1) * at_j, vertex_codes - d + (d + 1) * (everywhere - at_j))
            bag, bag_weight = [itself], [torch.ones(num_vertices, device=device)]
            for target in (lower, upper):
                at = torch.searchsorted(vertex_codes, target, out_int32=index_dtype == torch.int32)
                at = at.clamp_max(num_vertices - 1)
                found = vertex_codes.index_select(0, at) == target
                bag.append(torch.where(found, at, itself))
                bag_weight.append(0.5 * found.float())
            index.append(torch.stack(bag, 1))
            weight.append(torch.stack(bag_weight, 1))
        self._blur_index, self._blur_weight = torch.stack(index), torch.stack(weight)  # (d+1, V, 3)
        self.num_points, self.num_vertices, self.dim = batch * n, num_vertices, d
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))  # densecrf's output scaling of the blurred values

    def operators(self, dtype: torch.dtype = torch.float32, in_scale: Tensor | None = None,
                  out_scale: Tensor | None = None) -> "LatticeFilter":
        """The filter ``x ↦ diag(out_scale) · K · diag(in_scale) · x`` with weights in ``dtype``.

        ``out_scale`` may carry autograd history (e.g. a learnable kernel weight times a normaliser).
        """
        splat_weight = self._splat_bary.to(dtype)
        if in_scale is not None:
            splat_weight = splat_weight * in_scale.to(dtype).index_select(0, self._splat_point)
        slice_weight = self._slice_bary.to(dtype) * self.alpha
        if out_scale is not None:
            slice_weight = slice_weight * out_scale.to(dtype).reshape(-1, 1)
        return LatticeFilter(self._splat_point, self._splat_offsets, splat_weight, [self._blur_index],
                             [self._blur_weight.to(dtype)], self._slice_vertex, slice_weight)

    def kernel(self, normalization: str = "symmetric", dtype: torch.dtype = torch.float32,
               weight: Tensor | float = 1.0) -> "LatticeFilter":
        """The filter ``x ↦ weight · K̃ · x``, K̃ the kernel normalised as densecrf's DenseKernel does it.

        ``normalization``: one of :data:`NORMALIZATIONS`; the degrees D = K·1 enter as 1/√(D + 1e-20) on
        both sides ("symmetric") or 1/(D + 1e-20) on one. "none" is K itself: densecrf computes N / Σ K·1 for
        NO_NORMALIZATION in ``initLattice`` but its ``filter`` never applies it. ``weight``: a scalar, may
        carry autograd history.
        """
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        weight = torch.as_tensor(weight, dtype=dtype, device=self._slice_bary.device)
        if normalization == "none":
            return self.operators(dtype, out_scale=weight)
        degree = self.normalizer().double() + 1e-20
        if normalization == "symmetric":
            norm = (1.0 / torch.sqrt(degree)).to(dtype)
            return self.operators(dtype, in_scale=norm, out_scale=norm * weight)
        norm = (1.0 / degree).to(dtype)
        if normalization == "after":
            return self.operators(dtype, out_scale=norm * weight)
        return self.operators(dtype, in_scale=norm, out_scale=weight)

    def normalizer(self) -> Tensor:
        """(B*N,) filter response to a constant 1: ``K·1`` (each point's total kernel mass)."""
        ones = torch.ones(self.num_points, 1, device=self._slice_bary.device)
        return self.operators().apply(ones).view(-1)


class LatticeFilter:
    """Splat, blur along the lattice directions, slice: ``apply(x)`` maps (P, C) to (P, C).

    Each stage is a weighted gather (``F.embedding_bag`` in sum mode), differentiable in ``x`` and in
    the weights. ``LatticeFilter.sum`` merges filters over the same points into one that returns the sum
    of their outputs with one splat and one slice pass.
    """

    def __init__(self, splat_point, splat_offsets, splat_weight, blur_index, blur_weight, slice_vertex,
                 slice_weight, parts=None):
        self.splat_point, self.splat_offsets, self.splat_weight = splat_point, splat_offsets, splat_weight
        self.blur_index, self.blur_weight = blur_index, blur_weight  # one (D, V, 3) pair per part
        self.slice_vertex, self.slice_weight = slice_vertex, slice_weight
        self.parts = parts or [splat_offsets.numel()]  # vertices of each lattice, in order

    @staticmethod
    def sum(filters: list["LatticeFilter"]) -> "LatticeFilter":
        """One filter computing ``sum(f.apply(x) for f in filters)``."""
        entries = shift = 0
        offsets, vertices = [], []
        for f in filters:  # renumber each filter's splat entries and vertices after the previous ones
            offsets.append(f.splat_offsets + entries)
            vertices.append(f.slice_vertex + shift)
            entries += f.splat_point.numel()
            shift += sum(f.parts)
        cat = torch.cat
        return LatticeFilter(cat([f.splat_point for f in filters]), cat(offsets),
                             cat([f.splat_weight for f in filters]),
                             [i for f in filters for i in f.blur_index], [w for f in filters for w in f.blur_weight],
                             cat(vertices, 1), cat([f.slice_weight for f in filters], 1),
                             [p for f in filters for p in f.parts])

    def weights(self) -> list[Tensor]:
        """The filter's weight tensors (splat, blur, slice): what may carry autograd history."""
        return [self.splat_weight, *self.blur_weight, self.slice_weight]

    def apply(self, values: Tensor) -> Tensor:
        """(P, C) values -> (P, C) filtered values, differentiable in the values and the weights."""
        return F.embedding_bag(self.slice_vertex, self._blurred(values), mode="sum",
                               per_sample_weights=self.slice_weight)

    def accumulate(self, values: Tensor, out: Tensor, matrix: Tensor | None = None) -> Tensor:
        """``out += filter(values)``, or ``out -= filter(values) · matrix`` ((C, C)), in place, without autograd.

        The slice is added into ``out`` block by block: a (P, C) result of a large image would be a fresh
        mapping per call, whose page faults cost more than the slice's arithmetic.
        """
        vertices = self._blurred(values)
        if matrix is not None:  # slicing is linear per point: slice(V)·M = slice(V·M)
            vertices = -(vertices @ matrix)
        rows = _block_rows(out, _SLICE_BLOCK)
        for start in range(0, out.shape[0], rows):
            block = slice(start, start + rows)
            out[block] += F.embedding_bag(self.slice_vertex[block], vertices, mode="sum",
                                          per_sample_weights=self.slice_weight[block])
        return out

    def _blurred(self, values: Tensor) -> Tensor:
        """(P, C) values -> (vertices, C) splatted and blurred along every lattice direction."""
        vertices = F.embedding_bag(self.splat_point, values, self.splat_offsets, mode="sum",
                                   per_sample_weights=self.splat_weight)
        blurred = []
        for part, index, weight in zip(vertices.split(self.parts), self.blur_index, self.blur_weight):
            for direction, direction_weight in zip(index, weight):
                part = F.embedding_bag(direction, part, mode="sum", per_sample_weights=direction_weight)
            blurred.append(part)
        return torch.cat(blurred) if len(blurred) > 1 else blurred[0]
