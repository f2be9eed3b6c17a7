"""Mask R-CNN on the CPU: R50-FPN inference latency, seglab vs torchvision with the same weights in the
same run, and training iterations/s of the small ResNet-18-FPN configuration on Shapes.

Inference: torchvision's ``maskrcnn_resnet50_fpn(weights=None)`` (random weights, seeded) converted by
``seglab.interop.from_torchvision``; one 800×1088 image; the box score threshold is 0 so that both run
the mask head on 100 detections (random weights score everything low). Median of ``--repeats`` runs,
interleaved, after a warm-up. Training: ``configs/maskrcnn_resnet18_fpn_shapes.yaml``'s model, batch 8
of 128×128 Shapes scenes, SGD; median step time over ``--steps`` steps after two warm-up steps.

    python benchmarks/instance.py [--repeats 5] [--steps 10]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
import torchvision
from torchvision.models.detection import maskrcnn_resnet50_fpn

import seglab
from seglab.data import Shapes
from seglab.engine.config import load_config
from seglab.engine.instance import collate_for_model, instance_loss, instance_transforms
from seglab.engine.sampler import SeededTransforms

CONFIG = Path(__file__).parents[1] / "configs" / "maskrcnn_resnet18_fpn_shapes.yaml"


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.no_grad()
def inference_row(repeats: int) -> str:
    torch.manual_seed(0)
    theirs = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_score_thresh=0.0).eval()
    ours = seglab.interop.from_torchvision(theirs).eval()
    image = [torch.rand(3, 800, 1088, generator=torch.Generator().manual_seed(0))]
    detections = (len(ours(image)[0]["boxes"]), len(theirs(image)[0]["boxes"]))  # also the warm-up
    times = {"seglab": [], "torchvision": []}
    for _ in range(repeats):
        times["seglab"].append(seconds(lambda: ours(image)))
        times["torchvision"].append(seconds(lambda: theirs(image)))
    a, b = statistics.median(times["seglab"]), statistics.median(times["torchvision"])
    return (f"| maskrcnn_resnet50_fpn inference, 800×1088, {detections[0]}/{detections[1]} detections | "
            f"{a:.3f} s | {b:.3f} s | {a / b:.2f} |")


def training_row(steps: int) -> str:
    config = load_config(CONFIG)
    torch.manual_seed(0)
    model = seglab.models.create(config.model, 5, **config.model_kwargs()).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dataset = SeededTransforms(Shapes("train", 64, image_size=128), instance_transforms(), seed=0)
    batches = [collate_for_model([dataset[(0, i)] for i in range(b * 8, b * 8 + 8)]) for b in range(8)]

    def step(b: int) -> None:
        loss = instance_loss(model, *batches[b % len(batches)], torch.device("cpu"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for b in range(2):
        step(b)
    median = statistics.median(seconds(lambda b=b: step(b)) for b in range(steps))
    return (f"| maskrcnn_resnet18_fpn (small config) training, batch 8 × 128² | {1 / median:.2f} it/s "
            f"({median:.2f} s/step) | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    print(f"CPU {platform.machine()}, {torch.get_num_threads()} torch threads; torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}; float32\n")
    print("| workload | seglab | torchvision (same weights) | ratio (seglab / peer) |\n|---|---:|---:|---:|")
    print(inference_row(args.repeats), flush=True)
    print(training_row(args.steps), flush=True)


if __name__ == "__main__":
    main()
