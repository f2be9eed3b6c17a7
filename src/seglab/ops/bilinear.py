"""Bilinear upsampling kernels and the upsampling layers FCN builds from them (arXiv:1411.4038 §3.3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bilinear_kernel(factor: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (k, k) bilinear interpolation kernel for upsampling by ``factor``, k = 2·factor − factor mod 2.

    Same construction as the FCN reference code (``upsample_filt``): the outer product of the 1-D
    tent ``1 − |x − c| / f`` with f = ⌈k/2⌉ and centre c = f − 1 (k odd) or f − 0.5 (k even).
    For factor 2 the rows are 0.0625, 0.1875, 0.1875, 0.0625 / 0.1875, 0.5625, 0.5625, 0.1875 / …
    """
    if factor < 1:
        raise ValueError(f"bilinear_kernel: factor must be >= 1, got {factor}")
    size = 2 * factor - factor % 2
    f = (size + 1) // 2
    center = f - 1 if size % 2 == 1 else f - 0.5
    tent = 1 - (torch.arange(size, dtype=torch.float64) - center).abs() / f
    return torch.outer(tent, tent).to(dtype)


def upsampling_padding(factor: int) -> int:
    """Padding of a stride-``factor`` transposed conv with the bilinear kernel that gives exactly ×factor
    output and pixel centres aligned as in ``F.interpolate(..., align_corners=False)``."""
    return factor // 2


def bilinear_conv_transpose(channels: int, factor: int, padding: int = 0) -> nn.ConvTranspose2d:
    """A learnable ``ConvTranspose2d(C, C, k, stride=factor, bias=False)`` initialised as in the FCN
    reference models: the bilinear kernel on the diagonal (class i → class i), zeros elsewhere."""
    size = 2 * factor - factor % 2
    layer = nn.ConvTranspose2d(channels, channels, size, stride=factor, padding=padding, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        kernel = bilinear_kernel(factor, layer.weight.dtype)
        for c in range(channels):
            layer.weight[c, c] = kernel
    return layer


class FixedBilinearUpsample(nn.Module):
    """The final, non-learned FCN upsampling (lr 0 in the reference Caffe nets), shape (N,C,H,W) →
    (N,C,(H−1)·f + k − 2·padding, …).

    Equal to ``bilinear_conv_transpose`` with frozen weights, but the kernel is a non-persistent
    buffer applied per channel (``groups=C``), so it is neither a parameter nor in the state dict.
    """

    def __init__(self, channels: int, factor: int, padding: int = 0):
        super().__init__()
        self.channels, self.factor, self.padding = channels, factor, padding
        kernel = bilinear_kernel(factor).expand(channels, 1, -1, -1).contiguous()
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel.to(x.dtype)
        return F.conv_transpose2d(x, kernel, stride=self.factor, padding=self.padding, groups=self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, factor={self.factor}, padding={self.padding}"
