"""The dense CRF as a trainable layer (CRF-as-RNN, Zheng et al. 2015): mean-field iterations unrolled
in autograd, with learnable kernel weights and, optionally, a learnable label compatibility."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .meanfield import PRESETS, dense_crf


class DenseCRF(nn.Module):
    """``forward(images, logits) -> Q``: images uint8 (N,3,H,W), logits (N,C,H,W), Q probabilities (N,C,H,W).

    Parameters: the smoothness and appearance weights w2, w1 (initialised from ``preset``) and, with
    ``learn_compat``, a C×C compatibility in pydensecrf's sign convention initialised to Potts (−I).
    The kernel widths stay fixed (they define the lattice). ``normalization`` (``dense_crf``'s) defaults
    to the preset's: "after" (D^-1 K) for DeepLab's, "symmetric" for "default".
    """

    def __init__(self, num_classes: int, iterations: int = 5, preset: str = "default", learn_compat: bool = False,
                 normalization: str | None = None):
        super().__init__()
        settings = PRESETS[preset]
        self.iterations = iterations
        self.gaussian_sxy, self.bilateral_sxy = settings["gaussian_sxy"], settings["bilateral_sxy"]
        self.bilateral_srgb = settings["bilateral_srgb"]
        self.normalization = normalization or settings["normalization"]
        self.gaussian_weight = nn.Parameter(torch.tensor(settings["gaussian_compat"]))
        self.bilateral_weight = nn.Parameter(torch.tensor(settings["bilateral_compat"]))
        self.compat = nn.Parameter(-torch.eye(num_classes)) if learn_compat else None

    def forward(self, images: Tensor, logits: Tensor) -> Tensor:
        return dense_crf(images, logits, self.iterations, gaussian_sxy=self.gaussian_sxy,
                         gaussian_compat=self.gaussian_weight.to(logits.dtype), bilateral_sxy=self.bilateral_sxy,
                         bilateral_srgb=self.bilateral_srgb, bilateral_compat=self.bilateral_weight.to(logits.dtype),
                         compat=None if self.compat is None else self.compat.to(logits.dtype),
                         normalization=self.normalization, logits=True)
