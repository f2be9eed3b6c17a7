"""Run configuration: defaults here, a YAML file over them, command-line flags over both."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import losses


def option(default: Any, help: str):
    """A ``TrainConfig`` field: its default and the help text ``seglab train --help`` shows."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every option of ``seglab train``; the resolved values are saved as ``config.yaml`` in the run."""

    # model
    model: str = option("fcn8s_vgg16", "registered model name (seglab models lists them)")
    num_classes: int | None = option(None, "classes including the background (default: the dataset's)")
    width_mult: float = option(1.0, "channel width multiplier of the backbone and heads (0.25: a CPU-sized model)")
    batch_norm: bool | None = option(None, "VGG models: BatchNorm after each conv (default: the model's)")
    model_options: dict = option({}, "any other builder option as KEY=VALUE (value parsed as YAML), e.g. padding=same; "
                                     "repeatable (seglab models NAME lists them)")
    backbone_weights: str | None = option(None, "ImageNet weights of the backbone: torchvision's name (IMAGENET1K_V1, "
                                                "DEFAULT, …; seglab models NAME lists them) or a state-dict file")
    weights: str | None = option(None, "start from these weights: torchvision's trained model by name (DEFAULT; "
                                       "another --num-classes re-initialises the classifiers) or a seglab "
                                       "checkpoint / state dict file")
    frozen_bn: bool = option(False, "replace BatchNorm by FrozenBatchNorm2d (fixed statistics and affine; logged)")
    mask_classes: list[str] | None = option(None, "instance models: the classes with mask supervision (set A); the "
                                                  "others train boxes only")
    # data
    data: str = option("shapes", "dataset: shapes | voc | sbd | cityscapes | coco | folder")
    data_root: str | None = option(None, "the dataset's folder (every dataset but shapes)")
    data_options: dict = option({}, "a dataset reader option as KEY=VALUE, e.g. voc_root=DIR for sbd's train_aug; "
                                    "repeatable")
    image_size: int = option(128, "Shapes image side in pixels")
    crop_size: int | None = option(None, "semantic models: training crop side in pixels (default: image size)")
    scale_range: tuple[float, float] = option((0.5, 2.0), "semantic models: random rescale range (min max)")
    hflip: bool = option(True, "random horizontal flips")
    color_jitter: list[float] | None = option(None, "brightness contrast saturation hue jitter (torchvision "
                                                    "ColorJitter): 4 numbers, e.g. 0.4 0.4 0.4 0.1")
    rotate: float = option(0.0, "random rotation of up to ± this many degrees (mask fill 255: ignore)")
    num_train: int | None = option(None, "Shapes training images (default 1000)")
    num_val: int | None = option(None, "Shapes validation images (default 200)")
    train_split: str = option("train", "split trained on")
    val_split: str = option("val", "split validated on")
    num_workers: int = option(0, "DataLoader worker processes")
    # loss (semantic models; seglab.losses)
    loss: str = option("ce", "semantic models: ce | focal | focal-sigmoid | dice | lovasz, '+' sums terms "
                             "(ce+dice); 255 is ignored, the aux head weighs 0.4")
    loss_weights: list[float] | None = option(None, "one factor per --loss term, in order (default: 1 each)")
    class_weights: str | None = option(None, "class weights of the pixel-wise terms: auto (median-frequency "
                                             "balancing of the training split, stored in the checkpoint's meta) | "
                                             "w0,w1,... (one per class)")
    ohem: list[str] | None = option(None, "THRESH MIN_KEPT: the pixel-wise terms on the hard pixels only "
                                          "(mmsegmentation's OHEM: p_gt < max(THRESH, the sorted p_gt at index k), "
                                          "k = MIN_KEPT x images; THRESH none: the top k by loss); per process "
                                          "under torchrun")
    label_smoothing: float = option(0.0, "ce label smoothing in [0, 1)")
    # optimisation
    iters: int = option(1000, "optimiser steps")
    epochs: int | None = option(None, "passes over the training split; overrides iters when set")
    batch_size: int = option(8, "images per step and process (torchrun: the global batch is batch size × "
                                "processes × accumulate)")
    optimizer: str = option("sgd", "sgd (with momentum) | adamw")
    lr: float = option(0.01, "peak learning rate")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "L2 weight decay")
    schedule: str = option("poly", "learning-rate schedule: poly | step | cosine | constant")
    poly_power: float = option(0.9, "poly schedule exponent: lr × (1 - step/steps)^power")
    step_size: int | None = option(None, "step schedule: decay every this many steps (default: steps // 3)")
    step_gamma: float = option(0.1, "step schedule: decay factor")
    warmup: int = option(0, "linear warm-up steps")
    accumulate: int = option(1, "micro-batches per optimiser step (gradient accumulation)")
    skip_nonfinite: bool = option(False, "skip a step whose loss or gradient is NaN/inf instead of stopping")
    sync_bn: bool = option(False, "SyncBatchNorm across processes (torchrun on CUDA only)")
    amp: bool = option(False, "autocast: bfloat16 on CPU, float16 with gradient scaling on CUDA")
    channels_last: bool = option(False, "NHWC memory format (faster convolutions on recent CPUs and GPUs)")
    seed: int = option(0, "seed of the data order, augmentation and initialisation")
    device: str = option("auto", "auto | cpu | cuda | cuda:N (auto: CUDA when available)")
    # bookkeeping
    out: str = option("runs/train", "run directory: config.yaml, metrics.jsonl, last.pt, best.pt, plots")
    log_every: int = option(10, "steps between log lines in metrics.jsonl")
    tensorboard: bool = option(False, "also write loss, lr, validation metrics and overlays as TensorBoard events")
    val_every: int = option(0, "steps between validations (0: only at the end)")
    ckpt_every: int = option(500, "steps between last.pt checkpoints")
    best_metric: str | None = option(None, "validation metric that selects best.pt (default: miou for semantic "
                                           "models, segm_AP (COCO mask AP) for instance models)")
    resume: bool = option(False, "continue the run in --out from its last.pt")
    stop_at: int | None = option(None, "stop after this step with a checkpoint (e.g. a job's time limit)")
    ema: float | None = option(None, "DECAY: also keep an exponential moving average of the weights (parameters "
                                     "and buffers; torch's AveragedModel EMA), updated after every optimiser step; "
                                     "validation and best.pt use it (e.g. 0.999)")
    early_stop: int | None = option(None, "PATIENCE: stop when --best-metric has not improved for this many "
                                          "validations (needs --val-every)")
    logger: str | None = option(None, "tensorboard (as --tensorboard) | mlflow: an MLflow run in RUN_DIR/mlruns "
                                      "(pip install 'seglab[mlflow]')")

    def __post_init__(self):
        # the loss options that need no data are checked here, before any dataset is read (one-line ValueErrors)
        losses.parse_loss(self.loss)
        losses.parse_ohem(self.ohem)
        if self.loss_weights is not None:
            try:  # flags give strings
                self.loss_weights = [float(w) for w in self.loss_weights]
            except (TypeError, ValueError):
                raise ValueError(f"loss_weights: {self.loss_weights!r} are not numbers") from None
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing: {self.label_smoothing} is outside [0, 1)")
        if self.color_jitter is not None:
            try:  # a YAML file may give strings
                self.color_jitter = [float(v) for v in self.color_jitter]
            except (TypeError, ValueError):
                raise ValueError(f"color_jitter: {self.color_jitter!r} are not numbers") from None
            if len(self.color_jitter) != 4 or min(self.color_jitter) < 0 or self.color_jitter[3] > 0.5:
                raise ValueError(f"color_jitter: {self.color_jitter} must be 4 non-negative numbers (brightness "
                                 f"contrast saturation hue), hue <= 0.5")
        if not self.rotate >= 0:
            raise ValueError(f"rotate: {self.rotate} must be >= 0 degrees")
        # the training-loop options that need no data
        if self.ema is not None and not 0 <= self.ema < 1:
            raise ValueError(f"ema: decay {self.ema} is outside [0, 1)")
        if self.early_stop is not None:
            if self.early_stop < 1:
                raise ValueError(f"early_stop: patience {self.early_stop} must be >= 1 (validations)")
            if not self.val_every or not self.val_split:
                raise ValueError(f"early_stop: --early-stop {self.early_stop} needs --val-every N and a validation "
                                 f"split (the patience is counted in validations)")
        if self.logger not in (None, "tensorboard", "mlflow"):
            raise ValueError(f"logger: {self.logger!r} is not one of tensorboard, mlflow")

    def model_kwargs(self) -> dict:
        """Keyword options for ``seglab.models.create``."""
        options = dict(self.model_options)  # only options set away from their defaults: not every model takes them
        if self.width_mult != 1.0:
            options["width_mult"] = self.width_mult
        if self.frozen_bn:
            options["frozen_bn"] = True
        if self.batch_norm is not None:
            options["batch_norm"] = self.batch_norm
        if self.backbone_weights:
            options["weights_backbone"] = self.backbone_weights
        if self.weights:
            options["weights"] = self.weights
        return options

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["scale_range"] = list(self.scale_range)
        return data


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """Defaults ← YAML file at ``path`` ← ``overrides`` (None values are ignored; ``model_options`` and
    ``data_options`` merge key by key). Unknown keys are errors."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        values.update(yaml.safe_load(path.read_text()) or {})
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key in ("model_options", "data_options"):
        if key in overrides:
            overrides[key] = {**values.get(key, {}), **overrides[key]}
    values.update(overrides)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown} (from {path or 'flags'}); known keys: {sorted(known)}")
    if "scale_range" in values:
        values["scale_range"] = tuple(values["scale_range"])
    return TrainConfig(**values)


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
