"""Running a semantic model on uint8 images: normalisation, batching, logits at input resolution."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N,3,H,W) or (3,H,W) in [0, 255] → float32 (x/255 − mean) / std."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    return (images.float() / 255 - mean_t) / std_t


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Logits (N,C,H,W) of uint8 images (N,3,H,W) on the model's device."""
    device = next(model.parameters()).device
    return model(normalize(images.to(device), mean, std))["out"]
