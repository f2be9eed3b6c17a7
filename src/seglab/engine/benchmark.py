"""``seglab benchmark``: a model's parameters, multiply-accumulates, latency, throughput and peak memory, for
inference or one training step, on synthetic inputs of a given size.

MACs follow torchvision's "GFLOPS" convention (one multiply-add counts 1): ``torch.utils.flop_counter`` counts 2
per MAC for convolutions and matrix products, so its total is halved; seglab's RoI ops, which it cannot see,
add their own counts (``ops.counting``). Element-wise ops, normalisation and activations count nothing, as in
torchvision's tables.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..models.base import model_device
from ..ops.counting import counting
from .compiled import Compiled
from .tasks import task_module


@dataclass
class Measurement:
    """One benchmark row: ``macs`` per batch (None where uncountable, e.g. an ONNX file), seconds per batch
    (``p50``, ``p95``), images per second at the median, peak resident memory (MiB) of the process and, on CUDA,
    the peak allocated device memory (MiB); ``compile_s``: the first (compiling) call with ``--compile``."""

    name: str
    mode: str
    parameters: int
    macs: int | None
    p50: float
    p95: float
    images_per_s: float
    host_peak_mib: float
    device_peak_mib: float | None
    compile_s: float | None = None


def count_macs(model: nn.Module, *inputs) -> int:
    """Multiply-accumulates of ``model(*inputs)`` (no gradients): convolutions and matrix products as
    ``torch.utils.flop_counter`` sees them (halved) plus seglab's RoI ops (``ops.counting``)."""
    with torch.no_grad(), FlopCounterMode(display=False) as flops, counting() as roi:
        model(*inputs)
    return flops.get_total_flops() // 2 + roi.macs


def _reset_host_peak() -> None:
    """Reset the process's peak resident size (Linux: writing 5 to /proc/self/clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _host_peak_mib() -> float:
    """Peak resident size (VmHWM) of this process in MiB; 0 where /proc is not there."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        return 0.0


def _timed(call: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(model: nn.Module, *, size: tuple[int, int] = (512, 512), batch: int = 1, train: bool = False,
            amp: bool = False, channels_last: bool = False, compile: bool = False, repeats: int = 10,
            warmup: int = 2) -> Measurement:
    """Benchmark ``model`` (with ``.meta``; on its device) on a synthetic batch of ``batch`` images of ``size``
    (H, W) pixels: inference (eval mode, no gradients) or, with ``train``, one training step (forward, the task's
    loss, backward, SGD step). ``amp``: autocast (bfloat16 on CPU, float16 on CUDA); ``channels_last``: NHWC
    weights and inputs; ``compile``: ``torch.compile`` (the first call, which compiles, timed apart).
    ``warmup`` untimed calls, then ``repeats`` timed ones."""
    task = task_module(model.meta)
    device = model_device(model)
    generator = torch.Generator().manual_seed(0)
    images, targets = task.synthetic_batch(model.meta, batch, size, generator)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    parameters = sum(p.numel() for p in model.parameters())
    macs = None
    if parameters:  # an ONNX file runs outside torch: nothing to count
        macs = count_macs(model.eval(), task.model_inputs(images, device, memory_format))
    model.train(train)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16,
                              enabled=amp)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6) if train else None

    def step(runner: nn.Module) -> None:
        with autocast:
            if train:
                normalizer = task.loss_normalizer([(images, targets)], device)
                loss = task.loss(runner, images, targets, device, normalizer, memory_format)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            else:
                with torch.no_grad():
                    runner(task.model_inputs(images, device, memory_format))

    runner, compile_s = Compiled(model) if compile else model, None
    if compile:
        compile_s = _timed(lambda: step(runner), device)
        compile_s = None if runner.failure else compile_s
    for _ in range(warmup):
        step(runner)
    _reset_host_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = sorted(_timed(lambda: step(runner), device) for _ in range(repeats))
    p50 = statistics.median(times)
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return Measurement(model.meta["model"], "train" if train else "inference", parameters, macs, p50, p95,
                       batch / p50, _host_peak_mib(),
                       torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None, compile_s)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo, else the platform's) and the instruction set of torch's CPU kernels,
    e.g. "AMD EPYC (AVX2)": what decides, among others, whether bfloat16 autocast is native."""
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def machine_line(device: str) -> str:
    """The machine a table was measured on: the device (a GPU's name, else the CPU's), cores, torch version."""
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else cpu_name()
    return (f"{device}: {name}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads; "
            f"torch {torch.__version__}")


HEADER = ("| model | mode | parameters | GMACs (forward) | p50 (ms) | p95 (ms) | images/s | host peak (MiB) | "
          "device peak (MiB) | compile (s) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def table_row(m: Measurement) -> str:
    """``m`` as a row of the Markdown table under ``HEADER``."""
    def shown(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    return (f"| {m.name} | {m.mode} | {m.parameters:,} | {shown(m.macs and m.macs / 1e9, '.2f')} | "
            f"{m.p50 * 1e3:.1f} | {m.p95 * 1e3:.1f} | {m.images_per_s:.2f} | {m.host_peak_mib:.0f} | "
            f"{shown(m.device_peak_mib, '.0f')} | {shown(m.compile_s, '.1f')} |")
