"""The training loop: data → model → loss → optimiser step, with validation, best/last checkpoints,
exact resume, gradient accumulation, mixed precision, a stop (or skip) on a non-finite loss or gradient,
and a clean stop with a checkpoint on SIGINT/SIGTERM. What differs between tasks comes from the model's task
module (``engine.tasks``): semantic models train with cross-entropy (ignore 255) and validate by mIoU
(``engine.semantic``); instance models (torchvision's detection I/O) train on their own loss dict and validate
by COCO mask AP (``engine.instance``).

Under torchrun the same loop runs data-parallel (``engine.distributed``): DistributedDataParallel, each
process a slice of every global batch, the cross-entropy normalised by the global count of labelled
pixels (so N processes give the weights of one process with the N-times batch), metrics reduced across
processes, and only rank 0 writing logs, plots and checkpoints.

``--ema DECAY`` keeps an exponential moving average of the weights with torch's own
``AveragedModel(get_ema_multi_avg_fn(DECAY), use_buffers=True)``: after the first optimiser step it is a
copy of the weights, after every later one ``ema = DECAY * ema + (1 - DECAY) * weights``, for the parameters and
the floating-point buffers (BatchNorm statistics) alike; integer buffers (``num_batches_tracked``) are copied.
Validation and ``best.pt`` use the average; ``last.pt`` holds both (``"model"`` and ``"ema"``). Under torchrun
every process averages its unwrapped model, and rank 0's averaged buffers are broadcast after each update so
that the average is the same everywhere. ``--early-stop PATIENCE`` stops after PATIENCE validations without
an improvement of ``--best-metric``; the count is in ``last.pt``."""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from torchvision.ops.misc import FrozenBatchNorm2d
from tqdm import tqdm

from .. import viz
from ..io import json_text, safe_load, save_checkpoint
from ..models import create, model_meta
from ..models.base import check_device, load_part
from . import distributed
from .compiled import Compiled
from .config import TrainConfig, save_config
from .datasets import build_split
from .optim import build_optimizer, build_scheduler
from .rng import rng_state, set_rng_state
from .sampler import EpochBatchSampler, SeededTransforms
from .tasks import task_module


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_datasets(config: TrainConfig):
    """(train, val, num_classes): the datasets without transforms, on-disk data validated before training starts."""
    def build(split: str, count: int | None, num_classes: int | None):
        return build_split(config.data, split, root=config.data_root, num_images=count, image_size=config.image_size,
                           seed=config.seed, num_classes=num_classes, options=config.data_options,
                           announce=distributed.is_main(),
                           report=Path(config.out) / f"data_check_{split}.txt" if distributed.is_main() else None)

    train_set = build(config.train_split, config.num_train, config.num_classes)
    num_classes = config.num_classes or len(train_set.classes)
    val_set = build(config.val_split, config.num_val, num_classes) if config.val_split else None
    return train_set, val_set, num_classes


@contextlib.contextmanager
def stop_signals_call(handler):
    """While inside, SIGINT and SIGTERM call ``handler(signum, frame)``; the previous handlers come back after."""
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def autocast_is_native(device: torch.device) -> bool:
    """Whether ``--amp`` speeds ``device`` up: always on accelerators; on a CPU only with oneDNN's bfloat16
    kernels (AVX512 or AMX), without which bfloat16 autocast is emulated (measured on an AVX2 CPU: a training
    step 7x slower than in float32)."""
    return device.type != "cpu" or torch.ops.mkldnn._is_mkldnn_bf16_supported()


class Trainer:
    """Holds the state of one run directory; ``run()`` trains to ``config.iters`` (or ``stop_at``)."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.out = Path(config.out)
        self.device = distributed.setup(check_device(config.device))
        self.main = distributed.is_main()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.events = self._event_writer() if config.tensorboard or config.logger == "tensorboard" else None
        if config.logger == "mlflow":
            MlflowRun.check()
        self.mlflow: MlflowRun | None = None  # rank 0's, started once the config is final
        seed_everything(config.seed)
        self.train_set, self.val_set, self.num_classes = build_datasets(config)
        self.task = task_module({"model": config.model})
        self.best_metric = config.best_metric or self.task.DEFAULT_METRIC
        options = config.model_kwargs() | self.task.model_options(config, self.train_set.classes)
        self.model = create(config.model, self.num_classes, **options).to(self.device)
        if config.init_from:
            loaded = load_part(self.model, config.init_from)
            self._say(f"seglab: {loaded} of {len(self.model.state_dict())} weight tensors from {config.init_from}")
        if config.sync_bn:
            if not (distributed.active() and self.device.type == "cuda"):
                raise ValueError("sync_bn needs torchrun on CUDA devices (SyncBatchNorm reduces through NCCL)")
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        if config.frozen_bn:
            frozen = sum(isinstance(m, FrozenBatchNorm2d) for m in self.model.modules())
            self._say(f"seglab: {frozen} BatchNorm layers frozen (FrozenBatchNorm2d: fixed statistics and affine)")
        # the average of the unwrapped model, made before DDP wraps it (identical on every process)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True) \
            if config.ema is not None else None
        # what the loop calls: the model (compiled with --compile), under torchrun in its DDP wrapper
        self.trained = Compiled(self.model) if config.compile else self.model
        if distributed.active():
            self.trained = DistributedDataParallel(self.trained, device_ids=[self.device] if self.device.type == "cuda"
                                                   else None)
        world = distributed.world_size()
        self.batches_per_epoch = len(self.train_set) // (config.batch_size * world * config.accumulate)
        if config.epochs and not self.batches_per_epoch:
            raise ValueError(f"epochs: {len(self.train_set)} training images make no full step of batch size "
                             f"{config.batch_size} x {world} processes x accumulate {config.accumulate}; lower "
                             f"--batch-size or use --iters")
        self.total = config.epochs * self.batches_per_epoch if config.epochs else config.iters
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, self.total, config)
        self.amp = config.amp and autocast_is_native(self.device)
        if config.amp and not self.amp:
            capability = torch.backends.cpu.get_cpu_capability()
            self._say(f"seglab: --amp ignored, training in float32: this CPU ({capability}) has no native bfloat16 "
                      f"(AVX512 or AMX), where autocast runs several times slower")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp and self.device.type == "cuda")
        self.step, self.best, self.skipped = 0, -float("inf"), 0
        self.saved_step: int | None = None  # the step of the last good last.pt (None: none written yet)
        self.finished = False  # the final validation and report are done (in last.pt: --resume has nothing to do)
        self.stale = 0  # validations since --best-metric last improved (--early-stop)
        self.stop_requested, self.stopped_early = False, False
        self.stop_signal: int | None = None  # the signal that stopped the loop, if one did
        self.mlflow_run: str | None = None  # the MLflow run id, kept in last.pt so that --resume continues it
        built = self.model.meta  # options the weights needed, and the input normalisation they expect
        self.meta = model_meta(config.model, self.num_classes, built["options"], classes=self.train_set.classes,
                               palette=self.train_set.palette, mean=built["mean"], std=built["std"])
        self.criterion = self.task.criterion(config, self.train_set, self.meta)  # may add meta["class_weights"]
        if config.resume or distributed.restarted():  # torchrun restarted the group after a failure
            self._resume()
        if self.main:
            save_config(config, self.out / "config.yaml")
            if config.logger == "mlflow":
                self.mlflow = MlflowRun(self.out, config.to_dict(), self.mlflow_run)
                self.mlflow_run = self.mlflow.run_id

    def _say(self, message: str) -> None:
        if self.main:
            tqdm.write(message)

    def _event_writer(self):
        """A TensorBoard ``SummaryWriter`` on the run directory on rank 0 (None on the others)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ValueError("tensorboard (--tensorboard) needs the tensorboard package: "
                             "pip install 'seglab[tensorboard]'") from error
        return SummaryWriter(str(self.out)) if self.main else None

    # -- checkpoints -----------------------------------------------------------------------------------
    def state(self) -> dict:
        state = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_state(),
            "step": self.step, "epoch": self.step // max(self.batches_per_epoch, 1), "best": self.best,
            "skipped": self.skipped, "stale": self.stale, "config": self.config.to_dict(), "meta": self.meta,
            "finished": self.finished,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()  # AveragedModel's: "module.*" and "n_averaged"
        if self.mlflow_run is not None:
            state["mlflow_run"] = self.mlflow_run
        return state

    def evaluated_model(self) -> torch.nn.Module:
        """What validation evaluates and ``best.pt`` keeps: the EMA weights with ``--ema``, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def save(self, name: str) -> None:
        """Write ``name`` (``last.pt`` / ``best.pt``) in the run directory: rank 0 only, atomically. ``best.pt``
        holds the evaluated weights as its ``"model"`` (the EMA with ``--ema``), so that ``models.load`` gives them."""
        if self.main:
            state = self.state()
            if name == "best.pt":
                state["model"] = self.evaluated_model().state_dict()
            try:
                save_checkpoint(state, self.out / name)
            except OSError as error:
                raise type(error)(f"{error} ({self._last_good()})") from None
        if name == "last.pt":
            self.saved_step = self.step

    def _last_good(self) -> str:
        """Where the last good checkpoint stands, for a message about a failed step or write."""
        if self.saved_step is None:
            return "no checkpoint was written yet"
        return f"last good checkpoint: {self.out / 'last.pt'}, step {self.saved_step}"

    def _resume(self) -> None:
        path = self.out / "last.pt"
        if not path.is_file():
            self._say(f"seglab: --resume: no checkpoint at {path}, starting from scratch")
            return
        checkpoint = safe_load(path)
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"])
        self.step, self.best, self.skipped = checkpoint["step"], checkpoint["best"], checkpoint.get("skipped", 0)
        self.stale, self.mlflow_run = checkpoint.get("stale", 0), checkpoint.get("mlflow_run")
        self.saved_step, self.finished = self.step, checkpoint.get("finished", False)
        self._drop_log_rows_after(self.step)
        if self.ema is not None:
            if "ema" in checkpoint:
                self.ema.load_state_dict(checkpoint["ema"])
            else:
                self._say(f"seglab: --resume: {path} has no EMA; the average starts at the next step")
        self._say(f"seglab: resumed from {path} at step {self.step}")

    # -- loop ------------------------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        config = self.config
        sampler = EpochBatchSampler(len(self.train_set), config.batch_size, config.seed,
                                    groups=self.task.batch_groups(self.train_set), rank=distributed.rank(),
                                    num_replicas=distributed.world_size())
        sampler.start = sampler.position(self.step * config.accumulate)
        dataset = SeededTransforms(self.train_set, self.task.train_transforms(config, self.meta), config.seed)
        # Its own generator: creating the iterator must not draw from the global RNG, or a resumed run
        # would see different dropout masks than a straight one.
        return DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers,
                          collate_fn=self.task.collate, persistent_workers=config.num_workers > 0,
                          generator=torch.Generator().manual_seed(config.seed))

    def _drop_log_rows_after(self, step: int) -> None:
        """Rewrite ``metrics.jsonl`` without the rows past ``step`` (those of steps a resumed run repeats)."""
        path = self.out / "metrics.jsonl"
        if not self.main or not path.is_file():
            return
        rows = path.read_text().splitlines(keepends=True)
        kept = [row for row in rows if row.strip() and json.loads(row).get("step", 0) <= step]
        if len(kept) != len(rows):
            temporary = path.with_suffix(".jsonl.tmp")
            temporary.write_text("".join(kept))
            os.replace(temporary, path)

    def _log(self, record: dict) -> None:
        if self.main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json_text(record) + "\n")  # a skipped step's NaN loss as null
        if self.events is not None:
            for key, value in record.items():
                if key not in ("step", "time"):
                    self.events.add_scalar(key, value, record["step"])
        if self.mlflow is not None:
            self.mlflow.log(record)

    def validate(self) -> dict:
        result, visuals = self.task.evaluate(self.evaluated_model(), self.val_set, self.meta, progress=self.main)
        summary = self.task.summary(result)
        self._log({"step": self.step, **{f"val/{k}": v for k, v in summary.items()}})
        if self.events is not None and visuals:
            rows = self.task.pictures(visuals, self.meta)
            self.events.add_image("val/overlays", np.asarray(viz.grid(rows)), self.step, dataformats="HWC")
        if self.best_metric not in summary:
            raise ValueError(f"best_metric {self.best_metric!r} is not a validation metric; one of {sorted(summary)}")
        metric = summary[self.best_metric]
        if metric > self.best:
            self.best, self.stale = metric, 0
            self.save("best.pt")
        else:
            self.stale += 1
        self.last_result, self.last_visuals = result, visuals
        return result

    def _loss(self, images, targets, normalizer) -> torch.Tensor:
        """The loss of one micro-batch, scaled so that the gradients summed over the micro-batches (and
        averaged over processes by DDP) are those of the whole global batch."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16 if self.device.type == "cpu" else torch.float16,
                            enabled=self.amp):
            return self.task.loss(self.trained, images, targets, self.device, normalizer, self.memory_format,
                                  self.criterion)

    def train_step(self, micro_batches: list) -> tuple[float, bool]:
        """Forward and backward over the micro-batches of one step; returns (the loss of the global
        batch, whether loss and gradients are finite). Also agrees on a stop request across processes: one
        all-reduce of (loss, stop request, non-finite gradients), the one host sync of the step."""
        normalizer = self.task.loss_normalizer(micro_batches, self.device, self.criterion)
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for index, (images, targets) in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            parallel = isinstance(self.trained, DistributedDataParallel)
            with self.trained.no_sync() if parallel and not last else contextlib.nullcontext():
                loss = self._loss(images, targets, normalizer)
                self.scaler.scale(loss).backward()
            total += loss.detach().float()
        flags = torch.tensor([float(self.stop_requested)], device=self.device)
        stats = distributed.all_reduce_sum(torch.cat([total[None], flags, self._nonfinite_gradients()]))
        loss_value, stop, nonfinite = stats.tolist()
        self.stop_requested = stop > 0
        loss_value /= distributed.world_size()
        return loss_value, math.isfinite(loss_value) and nonfinite == 0

    def _nonfinite_gradients(self) -> torch.Tensor:
        """(1,) 1.0 if some gradient holds NaN/inf, else 0.0 (after DDP's all-reduce: the same on every
        process). With fp16 gradient scaling the scaler checks instead (and skips such steps itself)."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if self.scaler.is_enabled() or not grads:
            return torch.zeros(1, device=self.device)
        norms = torch.stack([torch.linalg.vector_norm(g).float() for g in grads])
        return (~torch.isfinite(norms).all()).float()[None]

    def _nonfinite(self, loss_value: float) -> None:
        """Skip the step (``skip_nonfinite``) or stop training with the last good checkpoint intact."""
        what = f"loss {loss_value}" if not math.isfinite(loss_value) else "a non-finite gradient"
        if not self.config.skip_nonfinite:
            raise FloatingPointError(f"{what} at step {self.step + 1}: training stopped ({self._last_good()}); lower "
                                     f"the learning rate, check the data, or pass --skip-nonfinite to skip such "
                                     f"steps.")
        self.skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        self._say(f"seglab: {what} at step {self.step + 1}: step skipped ({self.skipped} so far)")

    @torch.no_grad()
    def _update_ema(self) -> None:
        """One EMA update after an optimiser step (integer buffers copied); under torchrun rank 0's averaged
        buffers go to every process (the parameters are already the same everywhere)."""
        self.ema.update_parameters(self.model)
        for averaged, current in zip(self.ema.module.buffers(), self.model.buffers()):
            if not (averaged.is_floating_point() or averaged.is_complex()):
                averaged.copy_(current)
        if distributed.active():
            for buffer in self.ema.module.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def _patience_spent(self) -> bool:
        return self.config.early_stop is not None and self.stale >= self.config.early_stop

    def _stop_on_signals(self):
        """SIGINT/SIGTERM ask the loop to stop after the current step (with a checkpoint)."""
        def request(signum, frame):
            self.stop_requested, self.stop_signal = True, signum

        return stop_signals_call(request)

    def run(self) -> dict | None:
        """Train until ``config.iters`` (or ``stop_at``, or a SIGINT/SIGTERM); returns the last validation
        result, if any."""
        config = self.config
        end = min(self.total, config.stop_at) if config.stop_at else self.total
        if self.finished and self.step >= end:
            self._say(f"seglab: the run in {self.out} already finished at step {self.step}; nothing to do "
                      f"(raise --iters to train on)")
            return None
        self.finished = False
        self.trained.train()
        batches = iter(self._loader())
        progress = tqdm(total=end, initial=self.step, desc="train", unit="it", dynamic_ncols=True,
                        disable=not self.main)
        result, started = None, time.perf_counter()
        with self._stop_on_signals():
            while self.step < end and not self.stop_requested and not self._patience_spent():
                loss_value, finite = self.train_step([next(batches) for _ in range(config.accumulate)])
                if finite:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    if self.ema is not None:
                        self._update_ema()
                else:
                    self._nonfinite(loss_value)
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
                    self.stopped_early = self._patience_spent()
                if config.ckpt_every and self.step % config.ckpt_every == 0 and self.step < end:
                    self.save("last.pt")
        progress.close()
        if self.stop_requested:
            self.save("last.pt")
            self._say(f"seglab: stopped by a signal at step {self.step}; {self.out / 'last.pt'} saved, "
                      f"continue with --resume")
            if self.mlflow is not None:
                self.mlflow.end("KILLED")
            return result
        if self._patience_spent() and self.step < end:
            if not self.stopped_early:  # resumed a run that had already stopped early
                self._say(f"seglab: early stop: the run in {self.out} already stopped at step {self.step} "
                          f"(--early-stop {config.early_stop}); nothing to do")
                if self.mlflow is not None:
                    self.mlflow.end("FINISHED")
                return result
            self._say(f"seglab: early stop at step {self.step}: {self.best_metric} has not improved for "
                      f"{self.stale} validations (--early-stop {config.early_stop}; best {self.best:.4f}); "
                      f"{self.out / 'last.pt'} saved")
            self._log({"step": self.step, "early_stop": 1})
        validated_last_step = config.val_every and self.step % config.val_every == 0
        if self.step >= self.total and self.val_set is not None and not validated_last_step:
            self.save("last.pt")  # first, so that a failing final validation loses no training
            result = self.validate()
        self.finished = self.step >= self.total
        self.save("last.pt")  # the final validation's best, and the mark that --resume has nothing left to do
        if self.main:
            viz.plot_curves(self.out / "metrics.jsonl", self.out / "curves.png")
            if result is not None:
                tqdm.write(self.task.write_report(result, self.last_visuals, self.meta, self.out / "eval",
                                                  config=self.config.to_dict(), run_dir=self.out))
            if self.mlflow is not None:
                self.mlflow.finish(self.out / "curves.png", self.out / "eval")
        return result


class TrainingStopped(Exception):
    """A signal (``signum``) stopped the training of ``what`` before its end, after ``last.pt`` was saved."""

    def __init__(self, what: str, signum: int):
        super().__init__(what, signum)  # the arguments, so that it pickles (from an experiment's worker process)
        self.what, self.signum = what, signum

    def __str__(self) -> str:
        return f"{self.what} stopped by {signal.Signals(self.signum).name}, last.pt saved"


def train(config: TrainConfig, *, stop_raises: bool = False) -> dict | None:
    """Train as ``config`` says; the run directory ``config.out`` receives config, logs, checkpoints, plots.
    Under torchrun every process calls this; the process group is left when it returns. A run directory this call
    created is removed again when training fails before anything was written into it. A SIGINT/SIGTERM stops
    training with a checkpoint; then this returns, or with ``stop_raises`` raises :class:`TrainingStopped`."""
    out = Path(config.out)
    created = not out.exists()
    trainer = None
    try:
        trainer = Trainer(config)
        with trainer.events or contextlib.nullcontext():  # closing the TensorBoard writer flushes it
            try:
                result = trainer.run()
            except BaseException:
                if trainer.mlflow is not None:
                    trainer.mlflow.end("FAILED")
                raise
        if stop_raises and trainer.stop_signal is not None:
            raise TrainingStopped(f"training in {out}", trainer.stop_signal)
        return result
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()) and distributed.is_main():
            out.rmdir()
        raise
    finally:
        # the DDP reducer holds the process group: release it here, not in the interpreter's teardown, where
        # gloo's worker threads can abort the process (SIGABRT, "terminate called without an active exception")
        del trainer
        distributed.cleanup()


class MlflowRun:
    """The run's MLflow record (rank 0): a local file store ``RUN_DIR/mlruns`` (experiment ``seglab``), the
    config as params, every ``metrics.jsonl`` record as metrics at its step, ``curves.png`` and the eval report
    as artifacts at the end. ``--resume`` continues the run whose id ``last.pt`` holds. Sets
    ``MLFLOW_ALLOW_FILE_STORE=true`` unless set (mlflow 3 refuses a file store without it)."""

    @staticmethod
    def check() -> None:
        """A one-line error when mlflow is missing (before any data is read)."""
        try:
            import mlflow.tracking  # noqa: F401
        except ImportError as error:
            raise ValueError("mlflow (--logger mlflow) needs the mlflow package: pip install 'seglab[mlflow]'") \
                from error

    def __init__(self, out: Path, config: dict, run_id: str | None = None):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        # mlflow >= 3.x keeps the file store in maintenance mode and refuses it unless this is set
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.tracking_uri = (Path(out) / "mlruns").resolve().as_uri()
        self.client = MlflowClient(self.tracking_uri)
        if run_id is not None and self._exists(run_id):
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name("seglab")
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("seglab")
        self.run_id = self.client.create_run(experiment_id, run_name=Path(out).resolve().name).info.run_id
        params = [Param(key, str(value)[:6000]) for key, value in _flat(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return True
        except Exception:  # MlflowException: not in this store (e.g. a copied run directory)
            return False

    def log(self, record: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, int(record["step"])) for key, value in record.items()
                   if key != "step" and isinstance(value, (int, float))]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, curves: Path, report: Path) -> None:
        if curves.is_file():
            self.client.log_artifact(self.run_id, str(curves))
        if report.is_dir():
            self.client.log_artifacts(self.run_id, str(report), "eval")
        self.end("FINISHED")

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


def _flat(values: dict, prefix: str = "") -> dict:
    """``{"model_options": {"padding": "same"}}`` → ``{"model_options.padding": "same"}``."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
