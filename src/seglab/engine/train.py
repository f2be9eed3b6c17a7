"""The training loop: data → model → loss → optimiser step, with validation, best/last checkpoints,
exact resume, and a stop on a non-finite loss. Semantic models train with cross-entropy (ignore 255)
and validate by mIoU; instance models (torchvision's detection I/O) train on their own loss dict and
validate by COCO mask AP (``engine.instance``)."""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.ops.misc import FrozenBatchNorm2d
from tqdm import tqdm

from .. import data, viz
from ..data.coco import aspect_ratio_groups
from ..models import create, entry
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig, save_config
from .evaluate import evaluate, write_report
from .instance import (collate_for_model, evaluate_instances, flat_metrics, instance_loss, instance_transforms,
                       write_instance_report)
from .optim import build_optimizer, build_scheduler
from .sampler import EpochBatchSampler, SeededTransforms

IGNORE_INDEX = 255


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def collate_semantic(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """[(image (3,H,W) float, {"mask": (H,W)})] → images (N,3,H,W), masks (N,H,W) int64."""
    images = torch.stack([image for image, _ in batch])
    masks = torch.stack([target["mask"] for _, target in batch]).long()
    return images, masks


def semantic_loss(outputs: dict, masks: torch.Tensor, aux_weight: float = 0.4) -> torch.Tensor:
    """Pixel-wise cross-entropy ignoring label 255, plus ``aux_weight`` × the auxiliary head's loss."""
    loss = F.cross_entropy(outputs["out"].float(), masks, ignore_index=IGNORE_INDEX)
    if "aux" in outputs:
        loss = loss + aux_weight * F.cross_entropy(outputs["aux"].float(), masks, ignore_index=IGNORE_INDEX)
    return loss


def build_datasets(config: TrainConfig):
    """(train, val) datasets without transforms; on-disk data is validated before training starts."""
    def build(split: str, count: int):
        return data.build_dataset(config.data, split, root=config.data_root, num_images=count,
                                  image_size=config.image_size, seed=config.seed)

    train_set = build(config.train_split, config.num_train)
    val_set = build(config.val_split, config.num_val) if config.val_split else None
    num_classes = config.num_classes or len(train_set.classes)
    if config.data != "shapes":  # generated data is valid by construction
        for dataset in (train_set, val_set):
            if dataset is not None:
                data.validate_dataset(dataset, num_classes)
    return train_set, val_set, num_classes


class Trainer:
    """Holds the state of one run directory; ``run()`` trains to ``config.iters`` (or ``stop_at``)."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(config.device)
        seed_everything(config.seed)
        self.train_set, self.val_set, self.num_classes = build_datasets(config)
        self.task = entry(config.model).task
        self.best_metric = config.best_metric or ("miou" if self.task == "semantic" else "segm_AP")
        self.model = create(config.model, self.num_classes, **config.model_kwargs()).to(self.device)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        if config.frozen_bn:
            frozen = sum(isinstance(m, FrozenBatchNorm2d) for m in self.model.modules())
            tqdm.write(f"seglab: {frozen} BatchNorm layers frozen (FrozenBatchNorm2d: fixed statistics and affine)")
        self.batches_per_epoch = len(self.train_set) // config.batch_size
        self.total = config.epochs * self.batches_per_epoch if config.epochs else config.iters
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, self.total, config)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp and self.device.type == "cuda")
        self.step, self.best = 0, -float("inf")
        self.meta = {
            "model": config.model, "options": config.model_kwargs() | {"weights_backbone": None},
            "num_classes": self.num_classes, "classes": list(self.train_set.classes)[:self.num_classes],
            "palette": [list(c) for c in self.train_set.palette], "mean": list(data.IMAGENET_MEAN),
            "std": list(data.IMAGENET_STD), "task": self.task,
        }
        if config.resume:
            self._resume()
        save_config(config, self.out / "config.yaml")

    # -- checkpoints -----------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_state(),
            "step": self.step, "epoch": self.step // self.batches_per_epoch, "best": self.best,
            "config": self.config.to_dict(), "meta": self.meta,
        }

    def _resume(self) -> None:
        path = self.out / "last.pt"
        if not path.is_file():
            tqdm.write(f"seglab: --resume: no checkpoint at {path}, starting from scratch")
            return
        checkpoint = load_checkpoint(path)
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"])
        self.step, self.best = checkpoint["step"], checkpoint["best"]
        tqdm.write(f"seglab: resumed from {path} at step {self.step}")

    # -- loop ------------------------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        config = self.config
        if self.task == "instance":  # the model resizes and normalises; batches share an aspect ratio
            transforms, collate = instance_transforms(config.hflip), collate_for_model
            groups = aspect_ratio_groups(self.train_set) if hasattr(self.train_set, "coco") else None
        else:
            transforms = data.train_transforms(config.crop_size or config.image_size,
                                               scale_range=config.scale_range, hflip=config.hflip)
            collate, groups = collate_semantic, None
        sampler = EpochBatchSampler(len(self.train_set), config.batch_size, config.seed, groups=groups)
        sampler.start = sampler.position(self.step)
        dataset = SeededTransforms(self.train_set, transforms, config.seed)
        # Its own generator: creating the iterator must not draw from the global RNG, or a resumed run
        # would see different dropout masks than a straight one.
        return DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers,
                          collate_fn=collate, persistent_workers=config.num_workers > 0,
                          generator=torch.Generator().manual_seed(config.seed))

    def _log(self, record: dict) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def validate(self) -> dict:
        if self.task == "instance":
            result, visuals = evaluate_instances(self.model, self.val_set)
            summary = flat_metrics(result)
        else:
            result, visuals = evaluate(self.model, self.val_set, self.num_classes, self.meta["mean"], self.meta["std"])
            summary = {k: result[k] for k in ("pixel_acc", "mean_acc", "miou", "fwiou")}
        self._log({"step": self.step, **{f"val/{k}": v for k, v in summary.items()}})
        if self.best_metric not in summary:
            raise ValueError(f"best_metric {self.best_metric!r} is not a validation metric; one of {sorted(summary)}")
        metric = summary[self.best_metric]
        if metric > self.best:
            self.best = metric
            save_checkpoint(self.state(), self.out / "best.pt")
        self.last_result, self.last_visuals = result, visuals
        return result

    def run(self) -> dict | None:
        """Train until ``config.iters`` (or ``stop_at``); returns the last validation result, if any."""
        config, model = self.config, self.model
        end = min(self.total, config.stop_at) if config.stop_at else self.total
        autocast_dtype = torch.bfloat16 if self.device.type == "cpu" else torch.float16
        model.train()
        batches = iter(self._loader())
        progress = tqdm(total=end, initial=self.step, desc="train", unit="it", dynamic_ncols=True)
        result, started = None, time.perf_counter()
        while self.step < end:
            images, targets = next(batches)
            with torch.autocast(self.device.type, dtype=autocast_dtype, enabled=config.amp):
                if self.task == "instance":
                    loss = instance_loss(model, images, targets, self.device)
                else:
                    images = images.to(self.device, memory_format=self.memory_format, non_blocking=True)
                    loss = semantic_loss(model(images), targets.to(self.device, non_blocking=True))
            loss_value = loss.item()  # the one host sync per step
            if not math.isfinite(loss_value):
                progress.close()
                raise FloatingPointError(
                    f"loss is {loss_value} at step {self.step + 1}: training stopped. The last good checkpoint "
                    f"{self.out / 'last.pt'} is left intact; lower the learning rate or check the data.")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            lr = self.optimizer.param_groups[0]["lr"]
            progress.update(1)
            progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            if self.step % config.log_every == 0 or self.step == end:
                self._log({"step": self.step, "loss": loss_value, "lr": lr,
                           "time": round(time.perf_counter() - started, 2)})
            if config.val_every and self.step % config.val_every == 0 and self.val_set is not None:
                result = self.validate()
            if config.ckpt_every and self.step % config.ckpt_every == 0 and self.step < end:
                save_checkpoint(self.state(), self.out / "last.pt")
        progress.close()
        validated_last_step = config.val_every and self.step % config.val_every == 0
        if self.step >= self.total and self.val_set is not None and not validated_last_step:
            result = self.validate()
        save_checkpoint(self.state(), self.out / "last.pt")  # once at the end, after the final validation
        viz.plot_curves(self.out / "metrics.jsonl", self.out / "curves.png")
        if result is not None:
            report = write_instance_report if self.task == "instance" else write_report
            tqdm.write(report(result, self.meta["classes"], self.meta["palette"], self.last_visuals, self.out / "eval"))
        return result


def train(config: TrainConfig) -> dict | None:
    """Train as ``config`` says; the run directory ``config.out`` receives config, logs, checkpoints, plots."""
    return Trainer(config).run()
