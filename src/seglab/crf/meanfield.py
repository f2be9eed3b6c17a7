"""Fully-connected CRF (Krähenbühl & Koltun 2011) by mean-field inference, as used by DeepLab.

E(x) = sum_i U_i(x_i) + sum_{i<j} mu(x_i, x_j) [w1 k_appearance(f_i, f_j) + w2 k_smoothness(p_i, p_j)],
k_appearance = exp(-|p_i - p_j|²/2θα² - |I_i - I_j|²/2θβ²), k_smoothness = exp(-|p_i - p_j|²/2θγ²),
with positions p in pixels and colours I in 0..255. The update (10 times by default) is

    Q ← softmax(−U − Σ_k compat_k · (K̃_k Q)),   D = diag(K·1),

with the normalised kernel K̃ one of pydensecrf's (``normalization``; the self-contribution is not removed):

    "symmetric"  D^-1/2 K D^-1/2   NORMALIZE_SYMMETRIC, pydensecrf's (and ``dense_crf``'s) default
    "after"      D^-1 K            NORMALIZE_AFTER: densecrf v1's PottsPotential (w·norm_i·(KQ)_i), the
                                   CRF DeepLab released and cross-validated its kernels with
    "before"     K D^-1            NORMALIZE_BEFORE
    "none"       K                 NO_NORMALIZATION: densecrf v2's initLattice computes N / Σ K·1 but its
                                   filter() never applies it (v1's per_pixel_normalization=false did)

each K filtered on a permutohedral lattice (``seglab.crf.lattice``).
"""
from __future__ import annotations

from numbers import Number

import numpy as np
import torch
from torch import Tensor

from .lattice import NORMALIZATIONS, LatticeFilter, PermutohedralLattice

__all__ = ["dense_crf", "NORMALIZATIONS", "PRESETS", "unary_from_probs"]

#: Published kernel settings; each maps onto ``dense_crf``'s keywords.
PRESETS: dict[str, dict[str, float | str]] = {
    # pydensecrf's README example (and dense_crf's defaults).
    "default": dict(gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=80.0, bilateral_srgb=13.0,
                    bilateral_compat=10.0, normalization="symmetric"),
    # DeepLab-CRF-LargeFOV (Chen et al., ICLR 2015, released test setting): w2 = 3, θγ = 3, and the
    # cross-validated w1 = 4, θα = 121, θβ = 5, under densecrf v1's per-pixel normalisation D^-1 K.
    "deeplab": dict(gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=121.0, bilateral_srgb=5.0,
                    bilateral_compat=4.0, normalization="after"),
    # DeepLab v2 ResNet-101 (Chen et al., TPAMI 2017, released setting): w2 = 3, θγ = 1, w1 = 4, θα = 67, θβ = 3,
    # the same densecrf v1 (D^-1 K).
    "deeplab-v2": dict(gaussian_sxy=1.0, gaussian_compat=3.0, bilateral_sxy=67.0, bilateral_srgb=3.0,
                       bilateral_compat=4.0, normalization="after"),
}

_UNARY_CLIP = 1e-5  # pydensecrf.utils.unary_from_softmax's clip


def unary_from_probs(probs: Tensor) -> Tensor:
    """U = −log(max(p, 1e-5)), pydensecrf.utils.unary_from_softmax with its default clip."""
    return -torch.log(probs.clamp(_UNARY_CLIP, 1.0))


def _image_batch(image, size: tuple[int, int], batch: int, device) -> Tensor:
    """uint8 (H,W,3) array/tensor or (N,3,H,W) tensor -> (N, H, W, 3) float32 colours."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, Tensor):
        raise TypeError(f"image must be a numpy array or a tensor, got {type(image).__name__}")
    if image.dtype != torch.uint8:
        raise TypeError(f"image must be uint8 RGB (0..255), got dtype {image.dtype}")
    if image.dim() == 3:
        if image.shape[-1] != 3:
            raise ValueError(f"an (H, W, 3) RGB image is expected, got shape {tuple(image.shape)}")
        image = image.unsqueeze(0)
    elif image.dim() == 4:
        if image.shape[1] != 3:
            raise ValueError(f"an (N, 3, H, W) RGB batch is expected, got shape {tuple(image.shape)}")
        image = image.permute(0, 2, 3, 1)
    else:
        raise ValueError(f"image must be (H, W, 3) or (N, 3, H, W), got shape {tuple(image.shape)}")
    if tuple(image.shape[1:3]) != size or image.shape[0] != batch:
        raise ValueError(f"image is {image.shape[0]}×{tuple(image.shape[1:3])} (N×(H, W)) but the "
                         f"probabilities are {batch}×{size}")
    return image.to(device=device, dtype=torch.float32)


def _kernel_features(colours: Tensor | None, size: tuple[int, int], sxy: float, srgb: float | None) -> Tensor:
    """(B, H*W, 2 or 5) features x/sxy, y/sxy[, r/srgb, g/srgb, b/srgb] in float32, pixels in row-major order."""
    height, width = size
    device = colours.device if colours is not None else None
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float32, device=device),
                          torch.arange(width, dtype=torch.float32, device=device), indexing="ij")
    position = torch.stack([x, y], -1).reshape(1, -1, 2) / torch.tensor(sxy, dtype=torch.float32)
    if srgb is None:
        return position
    colour = colours.reshape(colours.shape[0], -1, 3) / torch.tensor(srgb, dtype=torch.float32)
    return torch.cat([position.expand(colour.shape[0], -1, -1), colour], -1)


def _compatibility(weight, compat, num_classes: int, dtype, device) -> tuple[Tensor, Tensor | None]:
    """(Potts weight w, None) or (1, symmetrised C×C matrix M) of the update −M·K̃Q, pydensecrf's sign."""
    weight = torch.as_tensor(weight, dtype=dtype, device=device)
    if weight.dim() == 0 and compat is None:
        return weight, None
    if weight.dim() == 2:
        matrix = weight
    elif weight.dim() == 0:
        matrix = torch.as_tensor(compat, dtype=dtype, device=device) * weight
    else:
        raise ValueError(f"a kernel compat must be a number or a C×C matrix, got shape {tuple(weight.shape)}")
    if matrix.shape != (num_classes, num_classes):
        raise ValueError(f"compatibility matrix must be {num_classes}×{num_classes}, got {tuple(matrix.shape)}")
    return torch.ones((), dtype=dtype, device=device), 0.5 * (matrix + matrix.T)


def dense_crf(image, probs: Tensor, iterations: int = 10, *, gaussian_sxy: float = 3.0,
              gaussian_compat=3.0, bilateral_sxy: float = 80.0, bilateral_srgb: float = 13.0,
              bilateral_compat=10.0, compat=None, normalization: str = "symmetric", logits: bool = False) -> Tensor:
    """Refine class probabilities with a fully-connected CRF; returns Q with the shape of ``probs``.

    Args:
        image: uint8 RGB, (H, W, 3) array/tensor or (N, 3, H, W) tensor.
        probs: (C, H, W) or (N, C, H, W) softmax probabilities (summing to 1 over C), or scores if
            ``logits=True``. The unary is U = −log(max(p, 1e-5)) (pydensecrf's unary_from_softmax),
            or U = −logits.
        iterations: mean-field steps.
        gaussian_sxy, gaussian_compat: smoothness kernel θγ (pixels) and weight w2, as pydensecrf's
            ``addPairwiseGaussian(sxy, compat)``.
        bilateral_sxy, bilateral_srgb, bilateral_compat: appearance kernel θα (pixels), θβ (0..255
            intensity units) and weight w1, as ``addPairwiseBilateral(sxy, srgb, rgbim, compat)``.
        compat: optional C×C label compatibility M shared by both kernels (each scaled by its weight).
            Sign convention (pydensecrf's): the update is Q ← softmax(−U − w·M·K̃Q), so a scalar
            weight w alone (Potts) is M = −I, i.e. ``compat=-torch.eye(C)``. The paper's Potts
            μ(l, l') = [l ≠ l'] (a penalty for different labels) differs from −I by a per-pixel constant
            and gives the same Q. A kernel's ``*_compat`` may itself be a C×C matrix instead of a
            weight (pydensecrf's MatrixCompatibility). Matrices are symmetrised, ½(M + Mᵀ).
        normalization: how both kernels are normalised, one of :data:`NORMALIZATIONS` (module docstring).
            The default "symmetric" is pydensecrf's own default, so plain pydensecrf calls carry over;
            DeepLab's presets use "after", the per-pixel D^-1 K of densecrf v1 that DeepLab released.
        logits: treat ``probs`` as unnormalised scores.

    Differentiable (CRF-as-RNN): gradients reach ``probs`` and any weight or compatibility passed as a
    tensor with ``requires_grad`` through the unrolled iterations; the kernels' widths are fixed.
    """
    single = probs.dim() == 3
    if probs.dim() not in (3, 4):
        raise ValueError(f"probs must be (C, H, W) or (N, C, H, W), got shape {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise TypeError(f"probs must be a floating-point tensor, got {probs.dtype}")
    batch = probs.unsqueeze(0) if single else probs
    n, num_classes, height, width = batch.shape
    if not logits:
        totals = batch.detach().sum(1)
        if (batch.detach() < 0).any() or not torch.allclose(totals, torch.ones_like(totals), atol=1e-3):
            raise ValueError("probs must be probabilities that sum to 1 over the class dimension "
                             f"(sums range {totals.min().item():.4g}..{totals.max().item():.4g}); "
                             "pass logits=True for raw scores")
    colours = _image_batch(image, (height, width), n, batch.device)
    pixels = batch.permute(0, 2, 3, 1).clone(memory_format=torch.contiguous_format).view(-1, num_classes)  # (P, C)
    if torch.is_grad_enabled() and batch.requires_grad:
        unary = -pixels if logits else unary_from_probs(pixels)
    else:  # in place on the copy: a fresh (P, C) tensor of a large image costs more in page faults than in arithmetic
        unary = pixels.neg_() if logits else pixels.clamp_(_UNARY_CLIP, 1.0).log_().neg_()
    kernels = [
        (_kernel_features(colours, (height, width), gaussian_sxy, None).expand(n, -1, -1), gaussian_compat),
        (_kernel_features(colours, (height, width), bilateral_sxy, bilateral_srgb), bilateral_compat),
    ]
    messages = []
    for features, weight in kernels:
        scale, matrix = _compatibility(weight, compat, num_classes, batch.dtype, batch.device)
        messages.append((PermutohedralLattice(features).kernel(normalization, batch.dtype, scale), matrix))
    potts = [filter_ for filter_, matrix in messages if matrix is None]
    if len(potts) > 1:  # Potts kernels add up before the softmax: one splat and one slice for all
        messages = [(LatticeFilter.sum(potts), None)] + [m for m in messages if m[1] is not None]
    q = mean_field(unary, messages, iterations)
    q = q.view(n, height, width, num_classes).permute(0, 3, 1, 2).contiguous()
    return q[0] if single else q


def mean_field(unary: Tensor, messages, iterations: int) -> Tensor:
    """(P, C) unary energies -> (P, C) marginals after ``iterations`` parallel mean-field updates.

    ``messages``: (filter, M) pairs, each filter a normalised kernel K̃ (``PermutohedralLattice.kernel``);
    the update adds −filter(Q)·M, or +filter(Q) when M is None (a Potts kernel whose weight w is folded
    into the filter: −(−w·I)·K̃Q = w·K̃Q). Unless a gradient is wanted (grad mode on and the unary, a
    filter's weights or a matrix requiring it), the score and Q live in two buffers for all iterations and
    each message is added into the score in place (``LatticeFilter.accumulate``): a fresh (P, C) tensor of
    a large image is a new mapping whose page faults cost more than the arithmetic.
    """
    prior = -unary
    q = torch.softmax(prior, 1)
    wanted = [unary] + [t for filter_, matrix in messages for t in [*filter_.weights(), matrix] if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in wanted):  # autograd keeps every iteration's Q
        for _ in range(iterations):
            score = prior
            for filter_, matrix in messages:
                message = filter_.apply(q)
                score = score + message if matrix is None else score - message @ matrix
            q = torch.softmax(score, 1)
        return q
    score = torch.empty_like(prior)
    for _ in range(iterations):
        score.copy_(prior)
        for filter_, matrix in messages:
            filter_.accumulate(q, score, matrix)
        torch.softmax(score, 1, out=q)
    return q
