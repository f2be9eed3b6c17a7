"""Optimisers and learning-rate schedules of the papers: SGD with momentum or AdamW; warm-up then
poly (DeepLab: (1 − t/T)^0.9), step, cosine decay or a constant rate (FCN), all per iteration."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import SCHEDULES, TrainConfig


def lr_multipliers(model: nn.Module) -> dict[nn.Parameter, float]:
    """Each parameter's learning-rate multiplier: the ``lr_mult`` of the innermost module above it that sets
    one (a reference net's per-layer ``lr_mult``, e.g. FCIS's CONVNEW3), else 1."""
    multipliers = dict.fromkeys(model.parameters(), 1.0)
    outer_first = sorted(model.named_modules(), key=lambda item: len(item[0].split(".")) if item[0] else 0)
    for _, module in outer_first:
        if getattr(module, "lr_mult", None) is not None:
            multipliers.update(dict.fromkeys(module.parameters(), float(module.lr_mult)))
    return multipliers


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over the trainable parameters; no weight decay on biases and norm layers;
    parameters of a module with ``lr_mult`` train at that multiple of the rate (one group per multiple,
    after the base rate's two, so ``param_groups[0]`` holds the base rate)."""
    multipliers = lr_multipliers(model)
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for param in model.parameters():
        if param.requires_grad:
            groups.setdefault((param.dim() > 1, multipliers[param]), []).append(param)
    base_first = sorted(groups.items(), key=lambda item: (item[0][1] != 1.0, not item[0][0], item[0][1]))
    groups = [{"params": params, "weight_decay": config.weight_decay if decays else 0.0, "lr": config.lr * mult}
              for (decays, mult), params in base_first]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; expected 'sgd' or 'adamw'")


def lr_factor(step: int, total: int, config: TrainConfig) -> float:
    """Multiplier of the base learning rate at iteration ``step`` of ``total``."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    t = min(step - config.warmup, total - config.warmup) / max(1, total - config.warmup)
    if config.schedule == "poly":
        return (1 - t) ** config.poly_power
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if config.schedule == "step":
        step_size = config.step_size or max(1, total // 3)
        return config.step_gamma ** ((step - config.warmup) // step_size)
    raise ValueError(f"unknown schedule {config.schedule!r}; expected one of {SCHEDULES}")


def build_scheduler(optimizer: torch.optim.Optimizer, total: int, config: TrainConfig):
    """A ``LambdaLR`` stepping once per iteration (its state_dict holds only the step count)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, config))
