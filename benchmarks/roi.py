"""RoIAlign / RoIPool: seglab.ops (vectorised PyTorch) vs torchvision.ops (C++ kernels), CPU.

Load: a Mask R-CNN-like level — features 2×256×200×272 (an 800×1088 image at stride 4), 1000 boxes
(500 per image) with centres uniform over the image and sides log-uniform in 16..512 px, spatial
scale 1/4; outputs 7×7 (box head) and 14×14 (mask head), sampling ratio 2 and adaptive (-1).
Forward and forward+backward (sum of outputs), median of ``--repeats`` interleaved runs after a
warm-up; extra peak memory (VmHWM above the resident size once inputs exist) in a fresh process per
implementation and workload.

    python benchmarks/roi.py [--repeats 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch
import torchvision

from seglab import ops

WORKLOADS = [("roi_align", 7, 2), ("roi_align", 7, -1), ("roi_align", 14, 2), ("roi_align", 14, -1),
             ("roi_pool", 7, None), ("roi_pool", 14, None)]


def load(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 256, 200, 272, generator=g)
    centre = torch.rand(1000, 2, generator=g) * torch.tensor([1088.0, 800.0])
    side = torch.exp(torch.empty(1000, 2).uniform_(torch.log(torch.tensor(16.0)).item(),
                                                    torch.log(torch.tensor(512.0)).item(), generator=g))
    image = torch.arange(2).repeat_interleave(500)[:, None].float()
    return features, torch.cat([image, centre - side / 2, centre + side / 2], 1)


def run(impl: str, op: str, size: int, sampling: int | None, features, boxes, backward: bool) -> None:
    module = ops if impl == "seglab" else torchvision.ops
    x = features.requires_grad_(backward)
    if op == "roi_align":
        out = module.roi_align(x, boxes, size, 0.25, sampling, False)
    else:
        out = module.roi_pool(x, boxes, size, 0.25)
    if backward:
        out.sum().backward()
        x.grad = None


def seconds(*args) -> float:
    start = time.perf_counter()
    run(*args)
    return time.perf_counter() - start


def peak_extra_mib(impl: str, op: str, size: int, sampling, backward: bool) -> float:
    out = subprocess.run([sys.executable, __file__, "--memory-worker", json.dumps([impl, op, size, sampling, backward])],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["extra_mib"]


def memory_worker(spec: str) -> None:
    impl, op, size, sampling, backward = json.loads(spec)
    features, boxes = load()

    def status(field: str) -> float:
        line = next(l for l in open("/proc/self/status") if l.startswith(field))
        return int(line.split()[1]) / 1024

    before = status("VmRSS:")
    run(impl, op, size, sampling, features, boxes, backward)
    print(json.dumps({"extra_mib": status("VmHWM:") - before}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        return memory_worker(args.memory_worker)
    features, boxes = load()
    print(f"CPU {platform.machine()}, {args.threads} torch threads; torch {torch.__version__}, torchvision "
          f"{torchvision.__version__}; float32; median of {args.repeats} after a warm-up\n")
    print("| op | output | sampling | pass | seglab (s) | torchvision (s) | ratio (seglab / peer) | "
          "seglab extra peak (MiB) | torchvision extra peak (MiB) |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for op, size, sampling in WORKLOADS:
        for backward in (False, True):
            spec = (op, size, sampling, features, boxes, backward)
            times = {"seglab": [], "torchvision": []}
            for impl in times:
                run(impl, *spec)  # warm-up
            for _ in range(args.repeats):
                for impl in times:
                    times[impl].append(seconds(impl, *spec))
            ours, theirs = (statistics.median(times[i]) for i in ("seglab", "torchvision"))
            memory = [peak_extra_mib(i, op, size, sampling, backward) for i in ("seglab", "torchvision")]
            label = "adaptive" if sampling == -1 else ("—" if sampling is None else str(sampling))
            print(f"| {op} | {size}×{size} | {label} | {'forward+backward' if backward else 'forward'} | "
                  f"{ours:.3f} | {theirs:.3f} | {ours / theirs:.2f} | {memory[0]:.0f} | {memory[1]:.0f} |", flush=True)


if __name__ == "__main__":
    main()
