"""Data loading and data-parallel scaling on the CPU. Two tables:

``loader``: images/s through a DataLoader with 0, 1 and 2 workers, reading a PASCAL VOC tree from disk
(Shapes exported at 256 px: JPEG + palette PNG decoding) with the semantic training transforms (random
scale, pad, crop 224, flip, normalise), batch 8. The peer is torchvision's own
``datasets.VOCSegmentation`` over the same files with the same transforms, measured in the same run.

``scaling``: a small training run (FCN-8s/VGG16 at width 1/4, Shapes 128 px, global batch 8) in one
process against two processes under ``torchrun`` (batch 4 each, gloo): optimiser steps/s over the
steps after the first 5, and the speed-up. Both use every core of the machine: one process with
``--threads`` intra-op threads, or two with ``threads / 2`` each.

    python benchmarks/training.py [--table loader|scaling|all] [--images 256] [--steps 40] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader

from seglab.data import VOCSegmentation, export_shapes, train_transforms
from seglab.engine.benchmark import cpu_name
from seglab.engine.semantic import collate as collate_semantic


def images_per_second(dataset, workers: int, batch_size: int = 8) -> float:
    """Images/s over one pass (the first batch, which pays for starting the workers, excluded)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_semantic, drop_last=True)
    batches = iter(loader)
    next(batches)
    start, count = time.perf_counter(), 0
    for images, _ in batches:
        count += len(images)
    return count / (time.perf_counter() - start)


class TorchvisionVOC(torch.utils.data.Dataset):
    """torchvision's VOCSegmentation (PIL image and mask) with the same v2 transforms as seglab's reader."""

    def __init__(self, devkit: Path, transforms):
        self.dataset = torchvision.datasets.VOCSegmentation(str(devkit), year="2012", image_set="train")
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        image, mask = self.dataset[index]
        image = torchvision.tv_tensors.Image(torchvision.transforms.v2.functional.pil_to_tensor(image))
        mask = torchvision.tv_tensors.Mask(torch.from_numpy(np.array(mask)).long())
        return self.transforms(image, {"mask": mask})


def loader_table(num_images: int) -> list[str]:
    rows = ["| workers | seglab VOCSegmentation (img/s) | torchvision VOCSegmentation (img/s) | ratio (higher = faster) |",
            "|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "VOCdevkit" / "VOC2012"
        export_shapes(root, "voc", {"train": num_images}, image_size=256, progress=False)
        transforms = train_transforms(224)
        ours = VOCSegmentation(root, "train", transforms=transforms)
        theirs = TorchvisionVOC(Path(tmp), transforms)
        for workers in (0, 1, 2):
            a, b = images_per_second(ours, workers), images_per_second(theirs, workers)
            rows.append(f"| {workers} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
    return rows


def steps_per_second(run_dir: Path, skip: int = 5) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if "time" in r]
    first, last = timed[skip - 1], timed[-1]
    return (last["step"] - first["step"]) / (last["time"] - first["time"])


def scaling_table(steps: int, threads: int) -> list[str]:
    args = ["train", "--model", "fcn8s_vgg16", "--width-mult", "0.25", "--model-option", "padding=same",
            "--data", "shapes", "--image-size", "128", "--iters", str(steps), "--log-every", "1",
            "--ckpt-every", "0", "--val-split", "", "--device", "cpu"]
    rows = ["| processes | batch per process | steps/s | images/s | speed-up |", "|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        single, double = Path(tmp) / "one", Path(tmp) / "two"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run([sys.executable, "-m", "seglab", *args, "--batch-size", "8", "--out", str(single)],
                       check=True, env=env, capture_output=True)
        env["OMP_NUM_THREADS"] = str(max(threads // 2, 1))
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "seglab", *args, "--batch-size", "4", "--out", str(double)],
                       check=True, env=env, capture_output=True)
        base = steps_per_second(single)
        for processes, batch, run_dir in ((1, 8, single), (2, 4, double)):
            rate = steps_per_second(run_dir)
            rows.append(f"| {processes} | {batch} | {rate:.2f} | {rate * 8:.1f} | {rate / base:.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", choices=["loader", "scaling", "all"], default="all")
    parser.add_argument("--images", type=int, default=256, help="images in the exported VOC tree")
    parser.add_argument("--steps", type=int, default=40, help="training steps per scaling run")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {cpu_name()}, "
          f"{os.cpu_count()} cores")
    if args.table in ("loader", "all"):
        print("\n".join(loader_table(args.images)), flush=True)
    if args.table in ("scaling", "all"):
        print("\n".join(scaling_table(args.steps, args.threads)), flush=True)


if __name__ == "__main__":
    main()
