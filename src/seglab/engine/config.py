"""Run configuration: defaults here, a YAML file over them, command-line flags over both."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class TrainConfig:
    """Every option of ``seglab train``; the resolved values are saved as ``config.yaml`` in the run."""

    # model
    model: str = "fcn8s_vgg16"
    num_classes: int | None = None  # default: len(dataset.classes)
    width_mult: float = 1.0
    batch_norm: bool | None = None  # VGG models: BatchNorm after each conv (None: the model's default)
    model_options: dict = field(default_factory=dict)  # any other builder option, e.g. {padding: same}
    backbone_weights: str | None = None  # torchvision classification state dict on disk
    weights: str | None = None  # start from these weights (a seglab checkpoint or state dict on disk)
    frozen_bn: bool = False  # replace BatchNorm by FrozenBatchNorm2d (stated in the log)
    mask_classes: list[str] | None = None  # instance models: classes with mask supervision (set A); others box-only
    # data
    data: str = "shapes"
    data_root: str | None = None
    data_options: dict = field(default_factory=dict)  # reader options, e.g. {voc_root: DIR} for sbd train_aug
    image_size: int = 128  # Shapes image size
    crop_size: int | None = None  # training crop, default image_size
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip: bool = True
    num_train: int | None = None  # Shapes images per split (default 1000 train, 200 val)
    num_val: int | None = None
    train_split: str = "train"
    val_split: str = "val"
    num_workers: int = 0
    # optimisation
    iters: int = 1000
    epochs: int | None = None  # overrides iters when set
    batch_size: int = 8  # per process (torchrun: the global batch is batch_size × processes × accumulate)
    optimizer: str = "sgd"  # sgd (momentum) | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "poly"  # poly | step | cosine | constant
    poly_power: float = 0.9
    step_size: int | None = None  # step schedule: decay every step_size iters (default iters // 3)
    step_gamma: float = 0.1
    warmup: int = 0  # linear warm-up iterations
    accumulate: int = 1  # micro-batches per optimiser step (gradient accumulation): batch = batch_size × this
    skip_nonfinite: bool = False  # skip a step whose loss or gradient is NaN/inf instead of stopping
    sync_bn: bool = False  # SyncBatchNorm across processes (torchrun on CUDA only)
    amp: bool = False  # autocast: bfloat16 on CPU, float16 (with gradient scaling) on CUDA
    channels_last: bool = False  # NHWC memory format (faster convolutions on recent CPUs and GPUs)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # bookkeeping
    out: str = "runs/train"
    log_every: int = 10
    tensorboard: bool = False  # also write loss, lr, validation metrics and overlays as TensorBoard events
    val_every: int = 0  # 0: validate only at the end
    ckpt_every: int = 500
    best_metric: str | None = None  # default: miou (semantic), segm_AP (instance: COCO mask AP)
    resume: bool = False
    stop_at: int | None = None  # stop after this step with a checkpoint (e.g. a job's time limit)

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
