"""Instance models on the CPU. Mask R-CNN R50-FPN inference latency, seglab vs torchvision with the same
weights in the same run; then every instance model (Mask R-CNN, Mask^X R-CNN, FCIS): ResNet-50 inference
at 800×1088 and training iterations/s of its small configuration on Shapes, next to Mask R-CNN's.

Inference: torchvision's ``maskrcnn_resnet50_fpn(weights=None)`` (random weights, seeded) converted by
``seglab.interop.from_torchvision``; one 800×1088 image; the box score threshold is 0 so that both run
the mask head on 100 detections (random weights score everything low). Median of ``--repeats`` runs,
interleaved, after a warm-up. Training: ``configs/maskrcnn_resnet18_fpn_shapes.yaml``'s model, batch 8
of 128×128 Shapes scenes, SGD; median step time over ``--steps`` steps after two warm-up steps.

    python benchmarks/instance.py [--repeats 5] [--steps 10]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torchvision
from torchvision.models.detection import maskrcnn_resnet50_fpn

import seglab
from seglab.data import Shapes
from seglab.engine import instance
from seglab.engine.benchmark import cpu_name
from seglab.engine.config import TrainConfig, load_config
from seglab.engine.sampler import SeededTransforms

CONFIGS = Path(__file__).parents[1] / "configs"
CONFIG = CONFIGS / "maskrcnn_resnet18_fpn_shapes.yaml"
# (full-size model, small model, the config whose model options make it small)
FAMILY = [("maskrcnn_resnet50_fpn", "maskrcnn_resnet18_fpn", CONFIG),
          ("maskxrcnn_resnet50_fpn", "maskxrcnn_resnet18_fpn", CONFIG),
          ("fcis_resnet50", "fcis_resnet50", CONFIGS / "fcis_resnet50_shapes.yaml")]


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


def small_model(name: str, config_path: Path) -> torch.nn.Module:
    """``name`` with the model options of ``config_path`` (a small configuration), 5 Shapes classes, training mode."""
    torch.manual_seed(0)
    return seglab.models.create(name, 5, **load_config(config_path).model_kwargs()).train()


def steps_per_second(model: torch.nn.Module, steps: int) -> float:
    """Median SGD steps/s of ``model`` on batches of 8 Shapes scenes at 128 px, float32."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dataset = SeededTransforms(Shapes("train", 64, image_size=128), instance.train_transforms(TrainConfig()),
                               seed=0)
    batches = [instance.collate([dataset[(0, i)] for i in range(b * 8, b * 8 + 8)]) for b in range(8)]

    def step(b: int) -> None:
        loss = instance.loss(model, *batches[b % len(batches)], torch.device("cpu"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for b in range(2):
        step(b)
    return 1 / statistics.median(seconds(lambda b=b: step(b)) for b in range(steps))


@torch.no_grad()
def latency(model: torch.nn.Module, repeats: int) -> float:
    """Median seconds of one 800×1088 image through ``model`` in eval mode, after a warm-up."""
    image = [torch.rand(3, 800, 1088, generator=torch.Generator().manual_seed(0))]
    model.eval()(image)
    return statistics.median(seconds(lambda: model(image)) for _ in range(repeats))


def family_rows(repeats: int, steps: int) -> list[str]:
    """Inference on an 800×1088 image (ResNet-50, random weights, score threshold 0, each model's own resize:
    Mask R-CNN's 800 px, FCIS's 600 px short side) and small-configuration training speed (float32) of each
    instance model, with the ratio to Mask R-CNN measured in the same run."""
    rows = ["| model | inference 800×1088 (s) | vs Mask R-CNN | training, small config (it/s) | vs Mask R-CNN |",
            "|---|---:|---:|---:|---:|"]
    base = None
    for full, small, config_path in FAMILY:
        torch.manual_seed(0)
        seconds_ = latency(seglab.models.create(full, 91, box_score_thresh=0.0), repeats)
        rate = steps_per_second(small_model(small, config_path), steps)
        base = base or (seconds_, rate)
        rows.append(f"| {full} / {small} | {seconds_:.3f} | {seconds_ / base[0]:.2f} | {rate:.2f} | "
                    f"{rate / base[1]:.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    print(f"CPU {cpu_name()}, {torch.get_num_threads()} torch threads; torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}; float32\n")
    print("| workload | seglab | torchvision (same weights) | ratio (seglab / peer) |\n|---|---:|---:|---:|")
    print(inference_row(args.repeats), flush=True)
    print()
    for row in family_rows(args.repeats, args.steps):
        print(row, flush=True)


if __name__ == "__main__":
    main()
