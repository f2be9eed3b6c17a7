"""RoIAlign / RoIPool: seglab.ops (vectorised PyTorch) vs torchvision.ops (C++ kernels), CPU.

Load: a Mask R-CNN-like level — features 2×256×200×272 (an 800×1088 image at stride 4), 1000 boxes
(500 per image) with centres uniform over the image and sides log-uniform in 16..512 px, spatial
scale 1/4; outputs 7×7 (box head) and 14×14 (mask head), sampling ratio 2 and adaptive (-1).
Forward and forward+backward (sum of outputs), median of ``--repeats`` interleaved runs after a
warm-up; extra peak memory (VmHWM above the resident size once inputs exist) in a fresh process per
implementation and workload.

    python benchmarks/roi.py [--repeats 5] [--threads 2] [--ops roi_align roi_pool]
"""
from __future__ import annotations

import json

import torch
import torchvision

import peers
from seglab import ops

OPS = ("roi_align", "roi_pool")
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


def main() -> None:
    args = peers.arguments(__doc__, lambda parser: parser.add_argument(
        "--ops", nargs="+", choices=OPS, default=list(OPS), help="the ops to time (default: both)"))
    features, boxes = load()
    if args.memory_worker:
        impl, op, size, sampling, backward = json.loads(args.memory_worker)
        return peers.report_peak(lambda: run(impl, op, size, sampling, features, boxes, backward))
    print(f"{peers.machine(args.threads)}; float32; median of {args.repeats} after a warm-up\n")
    print("| op | output | sampling | pass | seglab (s) | torchvision (s) | ratio (seglab / peer) | "
          "seglab extra peak (MiB) | torchvision extra peak (MiB) |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for op, size, sampling in [workload for workload in WORKLOADS if workload[0] in args.ops]:
        for backward in (False, True):
            times = peers.interleaved_medians(
                {impl: lambda impl=impl: run(impl, op, size, sampling, features, boxes, backward)
                 for impl in ("seglab", "torchvision")}, args.repeats)
            ours, theirs = times["seglab"], times["torchvision"]
            memory = [peers.peak_extra_mib(__file__, [impl, op, size, sampling, backward])
                      for impl in ("seglab", "torchvision")]
            label = "adaptive" if sampling == -1 else ("—" if sampling is None else str(sampling))
            print(f"| {op} | {size}×{size} | {label} | {'forward+backward' if backward else 'forward'} | "
                  f"{ours:.3f} | {theirs:.3f} | {ours / theirs:.2f} | {memory[0]:.0f} | {memory[1]:.0f} |", flush=True)


if __name__ == "__main__":
    main()
