"""Run configuration: defaults here, a YAML file over them, command-line flags over both. Every value is checked
for its type and range when the configuration is built, before any data is read."""
from __future__ import annotations

import copy
import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import yaml

from .. import losses

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("poly", "step", "cosine", "constant")


class ConfigError(ValueError):
    """A value of option ``option`` that cannot be used; ``str()`` is one line naming the option."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


class Check(NamedTuple):
    """A range check: ``test(value)`` is true for a usable value; ``wording`` describes one, ``{}`` standing for
    the type's noun (``"a positive {}"`` → "a positive integer")."""

    test: Callable[[Any], bool]
    wording: str


POSITIVE = Check(lambda v: v > 0, "a positive {}")
NON_NEGATIVE = Check(lambda v: v >= 0, "a non-negative {}")
FRACTION = Check(lambda v: 0 <= v < 1, "a {} in [0, 1)")


DEVICE_NAME = Check(lambda v: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None, "auto, cpu, cuda or cuda:N")


def one_of(*choices: str) -> Check:
    return Check(lambda v: v in choices, "one of " + ", ".join(choices))


def option(default: Any, help: str, check: Check | None = None):
    """A ``TrainConfig`` field: its default, the help text ``seglab train --help`` shows and its range ``check``
    (its type is the field's annotation)."""
    metadata = {"help": help, "check": check}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Every option of ``seglab train``; the resolved values are saved as ``config.yaml`` in the run."""

    # model
    model: str = option("fcn8s_vgg16", "registered model name (seglab models lists them)")
    num_classes: int | None = option(None, "classes including the background (default: the dataset's)", POSITIVE)
    width_mult: float = option(1.0, "channel width multiplier of the backbone and heads (0.25: a CPU-sized model)",
                               POSITIVE)
    batch_norm: bool | None = option(None, "VGG models: BatchNorm after each conv (default: the model's)")
    model_options: dict = option({}, "any other builder option as KEY=VALUE (value parsed as YAML), e.g. padding=same; "
                                     "repeatable (seglab models NAME lists them)")
    backbone_weights: str | None = option(None, "ImageNet weights of the backbone: torchvision's name (IMAGENET1K_V1, "
                                                "DEFAULT, …; seglab models NAME lists them) or a state-dict file")
    weights: str | None = option(None, "start from these weights: torchvision's trained model by name (DEFAULT; "
                                       "another --num-classes re-initialises the classifiers) or a seglab "
                                       "checkpoint / state dict file")
    init_from: str | None = option(None, "start from a seglab checkpoint (or state dict) whose weights are a part of "
                                         "this model's, e.g. FCN-16s from a trained FCN-32s (FCN's staged training); "
                                         "the other weights keep their initialisation")
    frozen_bn: bool = option(False, "replace BatchNorm by FrozenBatchNorm2d (fixed statistics and affine; logged)")
    mask_classes: list[str] | None = option(None, "instance models: the classes with mask supervision (set A); the "
                                                  "others train boxes only")
    # data
    data: str = option("shapes", "dataset: shapes | voc | sbd | cityscapes | coco | folder")
    data_root: str | None = option(None, "the dataset's folder (every dataset but shapes)")
    data_options: dict = option({}, "a dataset reader option as KEY=VALUE, e.g. voc_root=DIR for sbd's train_aug; "
                                    "repeatable")
    image_size: int = option(128, "Shapes image side in pixels", POSITIVE)
    crop_size: int | None = option(None, "semantic models: training crop side in pixels (default: image size)",
                                   POSITIVE)
    scale_range: tuple[float, float] = option((0.5, 2.0), "semantic models: random rescale range (min max)")
    hflip: bool = option(True, "random horizontal flips")
    color_jitter: list[float] | None = option(None, "brightness contrast saturation hue jitter (torchvision "
                                                    "ColorJitter): 4 numbers, e.g. 0.4 0.4 0.4 0.1", NON_NEGATIVE)
    rotate: float = option(0.0, "random rotation of up to ± this many degrees (mask fill 255: ignore)", NON_NEGATIVE)
    num_train: int | None = option(None, "Shapes training images (default 1000)", POSITIVE)
    num_val: int | None = option(None, "Shapes validation images (default 200)", POSITIVE)
    train_split: str = option("train", "split trained on")
    val_split: str | None = option("val", "split validated on (null in YAML: no validation)")
    num_workers: int = option(0, "DataLoader worker processes", NON_NEGATIVE)
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
    label_smoothing: float = option(0.0, "ce label smoothing in [0, 1)", FRACTION)
    # optimisation
    iters: int = option(1000, "optimiser steps", POSITIVE)
    epochs: int | None = option(None, "passes over the training split; overrides iters when set", POSITIVE)
    batch_size: int = option(8, "images per step and process (torchrun: the global batch is batch size × "
                                "processes × accumulate)", POSITIVE)
    optimizer: str = option("sgd", "sgd (with momentum) | adamw", one_of(*OPTIMIZERS))
    lr: float = option(0.01, "peak learning rate", NON_NEGATIVE)
    momentum: float = option(0.9, "SGD momentum", FRACTION)
    weight_decay: float = option(5e-4, "L2 weight decay", NON_NEGATIVE)
    schedule: str = option("poly", "learning-rate schedule: poly | step | cosine | constant", one_of(*SCHEDULES))
    poly_power: float = option(0.9, "poly schedule exponent: lr × (1 - step/steps)^power", POSITIVE)
    step_size: int | None = option(None, "step schedule: decay every this many steps (default: steps // 3)", POSITIVE)
    step_gamma: float = option(0.1, "step schedule: decay factor", POSITIVE)
    warmup: int = option(0, "linear warm-up steps", NON_NEGATIVE)
    accumulate: int = option(1, "micro-batches per optimiser step (gradient accumulation)", POSITIVE)
    skip_nonfinite: bool = option(False, "skip a step whose loss or gradient is NaN/inf instead of stopping")
    sync_bn: bool = option(False, "SyncBatchNorm across processes (torchrun on CUDA only)")
    amp: bool = option(False, "autocast: bfloat16 on CPU (one with AVX512 or AMX; elsewhere float32, said so), "
                                "float16 with gradient scaling on CUDA")
    channels_last: bool = option(False, "NHWC memory format (faster convolutions on recent CPUs and GPUs)")
    compile: bool = option(False, "torch.compile the model (the first steps compile; a model or backend it cannot "
                                  "compile trains without it, with a warning)")
    seed: int = option(0, "seed of the data order, augmentation and initialisation", NON_NEGATIVE)
    device: str = option("auto", "auto | cpu | cuda | cuda:N (auto: CUDA when available)", DEVICE_NAME)
    # bookkeeping
    out: str = option("runs/train", "run directory: config.yaml, metrics.jsonl, last.pt, best.pt, plots")
    log_every: int = option(10, "steps between log lines in metrics.jsonl", POSITIVE)
    tensorboard: bool = option(False, "also write loss, lr, validation metrics and overlays as TensorBoard events")
    val_every: int = option(0, "steps between validations (0: only at the end)", NON_NEGATIVE)
    ckpt_every: int = option(500, "steps between last.pt checkpoints", NON_NEGATIVE)
    best_metric: str | None = option(None, "validation metric that selects best.pt (default: miou for semantic "
                                           "models, segm_AP (COCO mask AP) for instance models)")
    resume: bool = option(False, "continue the run in --out from its last.pt")
    stop_at: int | None = option(None, "stop after this step with a checkpoint (e.g. a job's time limit)", POSITIVE)
    ema: float | None = option(None, "DECAY: also keep an exponential moving average of the weights (parameters "
                                     "and buffers; torch's AveragedModel EMA), updated after every optimiser step; "
                                     "validation and best.pt use it (e.g. 0.999)", FRACTION)
    early_stop: int | None = option(None, "PATIENCE: stop when --best-metric has not improved for this many "
                                          "validations (needs --val-every)", POSITIVE)
    logger: str | None = option(None, "tensorboard (as --tensorboard) | mlflow: an MLflow run in RUN_DIR/mlruns "
                                      "(pip install 'seglab[mlflow]')", one_of("tensorboard", "mlflow"))

    def __post_init__(self):
        """Every value converted to its field's type and checked against its range, then the options that
        depend on each other, all before any data is read: a ``ConfigError`` (one line) names the option."""
        hints = typing.get_type_hints(TrainConfig)
        for f in dataclasses.fields(self):
            setattr(self, f.name, checked(f.name, hints[f.name], getattr(self, f.name), f.metadata["check"]))
        for name, parse in (("loss", losses.parse_loss), ("ohem", losses.parse_ohem)):
            reworded(name, parse, getattr(self, name))
        if self.color_jitter is not None and (len(self.color_jitter) != 4 or self.color_jitter[3] > 0.5):
            raise ConfigError("color_jitter", f"color_jitter must be 4 non-negative numbers (brightness contrast "
                                              f"saturation hue), hue <= 0.5, got {self.color_jitter}")
        if self.scale_range[0] > self.scale_range[1]:
            raise ConfigError("scale_range", f"scale_range must be MIN MAX with MIN <= MAX, got "
                                             f"{list(self.scale_range)}")
        if self.early_stop is not None and (not self.val_every or not self.val_split):
            raise ConfigError("early_stop", f"early_stop {self.early_stop} needs --val-every N and a validation "
                                            f"split (the patience is counted in validations)")
        self._check_names()

    def _check_names(self) -> None:
        """The model, the dataset, its reader options and the best-metric name exist."""
        from .. import data, models
        from .tasks import task_module

        if self.model not in models.names():
            raise ConfigError("model", f"model must be a registered model (seglab models lists them), got "
                                       f"{self.model!r}")
        if self.data not in data.dataset_names():
            raise ConfigError("data", f"data must be one of {', '.join(data.dataset_names())}, got {self.data!r}")
        reworded("data_options", data.check_reader_options, self.data, self.data_options)
        metrics = task_module({"model": self.model}).METRICS
        if self.best_metric is not None and self.best_metric not in metrics:
            raise ConfigError("best_metric", f"best_metric must be a validation metric of {self.model} "
                                             f"({', '.join(metrics)}), got {self.best_metric!r}")

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


def checked(name: str, hint, value, check: Check | None = None):
    """``value`` of option ``name`` as its type ``hint`` (``int``, ``float``, ``str``, ``bool``, ``dict``,
    ``list[str]``, ``list[float]``, ``tuple[float, float]``, each optionally ``| None``), within ``check``.
    Numbers may come as YAML strings (``1e-3``); an integer option takes only whole numbers. ConfigError else."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint) or hint
    if origin in (list, tuple):
        item = typing.get_args(hint)[0]
        size = len(typing.get_args(hint)) if origin is tuple else None
        if not isinstance(value, (list, tuple)) or size is not None and len(value) != size:
            raise ConfigError(name, f"{name} must be {NOUNS[origin, item]}, got {value!r}")
        items = [_scalar(item, v) for v in value]
        if any(v is None for v in items) or check and not all(check.test(v) for v in items):
            each = "" if check is None else f", each {check.wording.format(NOUNS[item].split(' ', 1)[1])}"
            raise ConfigError(name, f"{name} must be {NOUNS[origin, item]}{each}, got {value!r}")
        return origin(items)
    converted = _scalar(origin, value)
    if converted is None or check is not None and not check.test(converted):
        noun = NOUNS[origin]
        wording = noun if check is None else check.wording.format(noun.split(" ", 1)[1])
        raise ConfigError(name, f"{name} must be {wording}, got {value!r}")
    return converted


NOUNS = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
         dict: "a mapping of KEY: VALUE", (list, str): "a list of strings", (list, float): "a list of numbers",
         (tuple, float): "two numbers MIN MAX"}


def _scalar(kind: type, value):
    """``value`` as ``kind`` (int, float, str, bool, dict) or None where it is not one: booleans are not numbers,
    a float must be finite, an int whole; numeric strings count as numbers, numbers in a list of strings as
    strings."""
    if kind is bool or isinstance(value, bool):
        return value if kind is bool and isinstance(value, bool) else None
    if kind is dict:
        return dict(value) if isinstance(value, dict) and all(isinstance(k, str) for k in value) else None
    if kind is str:
        return value if isinstance(value, str) else str(value) if isinstance(value, (int, float)) else None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if kind is int:
        return int(value) if float(value).is_integer() else None
    return float(value)


def reworded(name: str, parse: Callable, *args):
    """``parse(*args)``, a ValueError of it raised as the ConfigError of option ``name``."""
    try:
        return parse(*args)
    except ConfigError:
        raise
    except ValueError as error:
        message = str(error).splitlines()[0]
        raise ConfigError(name, message if message.startswith(name) else f"{name}: {message}") from None


def merge_settings(lower: dict, upper: dict) -> dict:
    """``upper``'s settings over ``lower``'s; ``model_options`` and ``data_options`` merge key by key."""
    values = {**lower, **upper}
    for key in ("model_options", "data_options"):
        if isinstance(lower.get(key), dict) and isinstance(upper.get(key), dict):
            values[key] = {**lower[key], **upper[key]}
    return values


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """Defaults ← YAML file at ``path`` ← ``overrides`` (a None value sets the option to None, as ``null`` does in
    the file; ``model_options`` and ``data_options`` merge key by key). Unknown keys and unusable values are
    one-line ValueErrors, those of the file's values prefixed with its path."""
    from_file = read_yaml_mapping(Path(path)) if path is not None else {}
    overrides = dict(overrides or {})
    values = merge_settings(from_file, overrides)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown} (from {path or 'flags'}); known keys: {sorted(known)}")
    try:
        return TrainConfig(**values)
    except ConfigError as error:
        if error.option in from_file and error.option not in overrides:
            raise ConfigError(error.option, f"{path}: {error}") from None
        raise


def read_yaml_mapping(path: Path) -> dict:
    """The ``option: value`` mapping of a YAML file (empty file: {}); a one-line ValueError naming the file when
    it is missing, not YAML or not a mapping."""
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file (YAML expected)") from None
    if values is None:
        return {}
    if not isinstance(values, dict) or not all(isinstance(key, str) for key in values):
        raise ValueError(f"{path}: expected a mapping of option: value (e.g. 'iters: 100'), got a "
                         f"{type(values).__name__}")
    return values


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
