"""Position-sensitive RoIAlign: seglab.ops.ps_roi_align (vectorised PyTorch) vs torchvision.ops.ps_roi_align
(C++ kernel), CPU.

Load: FCIS's score maps at stride 16 for an 800×1088 image — 1×2058×50×68 features (k = 7 cells, 2×21
output channels: inside/outside for 21 classes, 2·21·49 input channels), 300 RoIs with centres uniform over
the image and sides log-uniform in 32..512 px, spatial scale 1/16; output 7×7, sampling 2 and adaptive
(-1). Forward and forward+backward (sum of outputs), median of ``--repeats`` interleaved runs after a
warm-up; extra peak memory (VmHWM above the resident size once inputs exist) in a fresh process per
implementation and workload.

    python benchmarks/ps_roi.py [--repeats 5] [--threads 2]
"""
from __future__ import annotations

import json
import math

import torch
import torchvision

import peers
from seglab import ops

K, OUT_CHANNELS, ROIS, SCALE = 7, 2 * 21, 300, 1 / 16
IMPLEMENTATIONS = ("seglab", "torchvision")


def load(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(1, OUT_CHANNELS * K * K, 50, 68, generator=g)
    centre = torch.rand(ROIS, 2, generator=g) * torch.tensor([1088.0, 800.0])
    side = torch.exp(torch.empty(ROIS, 2).uniform_(math.log(32.0), math.log(512.0), generator=g))
    return features, torch.cat([torch.zeros(ROIS, 1), centre - side / 2, centre + side / 2], 1)


def run(impl: str, sampling: int, backward: bool, features: torch.Tensor, boxes: torch.Tensor) -> None:
    module = ops if impl == "seglab" else torchvision.ops
    x = features.requires_grad_(backward)
    out = module.ps_roi_align(x, boxes, K, SCALE, sampling)
    if backward:
        out.sum().backward()
        x.grad = None


def main() -> None:
    args = peers.arguments(__doc__)
    inputs = load()
    if args.memory_worker:
        return peers.report_peak(lambda: run(*json.loads(args.memory_worker), *inputs))
    print(f"{peers.machine(args.threads)}; float32; features {tuple(inputs[0].shape)}, {ROIS} RoIs, {K}×{K} "
          f"cells, {OUT_CHANNELS} output channels; median of {args.repeats} after a warm-up\n")
    print("| sampling | pass | seglab (s) | torchvision (s) | ratio (seglab / peer) | seglab extra peak (MiB) | "
          "torchvision extra peak (MiB) |\n|---:|---|---:|---:|---:|---:|---:|")
    for sampling in (2, -1):
        for backward in (False, True):
            times = peers.interleaved_medians(
                {impl: lambda impl=impl: run(impl, sampling, backward, *inputs) for impl in IMPLEMENTATIONS},
                args.repeats)
            memory = [peers.peak_extra_mib(__file__, [impl, sampling, backward]) for impl in IMPLEMENTATIONS]
            ratio = times["seglab"] / times["torchvision"]
            print(f"| {'adaptive' if sampling < 0 else sampling} | {'forward+backward' if backward else 'forward'} | "
                  f"{times['seglab']:.4f} | {times['torchvision']:.4f} | {ratio:.2f} | {memory[0]:.0f} | "
                  f"{memory[1]:.0f} |", flush=True)


if __name__ == "__main__":
    main()
