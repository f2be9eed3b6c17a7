"""``seglab predict`` on a folder, batch 1 against batch 8: images/s of the whole command path (discovery, reading,
one forward pass per batch, its predictions copied to the CPU, writing the palette PNG and the overlay) for
DeepLab v3/ResNet-50 at width_mult 0.25, 21 classes, random weights (seeded), on ``--images`` generated 128×128
PNGs in a temporary folder. No peer: the comparison is seglab's own batch 1.

The two batch sizes are interleaved (median of ``--repeats`` runs after a warm-up of each); each run writes to
a fresh output folder. The ratio is batch 8's images/s over batch 1's.

    python benchmarks/predict.py [--repeats 5] [--threads 2] [--images 32] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

import seglab
from seglab.engine.predict import predict

BATCH_SIZES = (1, 8)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def write_images(folder: Path, count: int, size: int = 128) -> None:
    generator = np.random.default_rng(0)
    for index in range(count):  # smooth blobs rather than noise, so the PNGs compress as photos do
        small = generator.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BILINEAR).save(folder / f"{index:03d}.png")


def seconds(model: torch.nn.Module, folder: Path, out: Path, batch_size: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # the progress bar
        predict(model, [folder], out, batch_size=batch_size)
    return time.perf_counter() - start


def main() -> None:
    args = arguments()
    torch.manual_seed(0)
    model = seglab.models.create("deeplabv3_resnet50", 21, width_mult=0.25).to(args.device).eval()
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        write_images(folder, args.images)
        times = {batch: [] for batch in BATCH_SIZES}
        for repeat in range(args.repeats + 1):
            for batch in BATCH_SIZES:  # interleaved; the first round is the warm-up
                elapsed = seconds(model, folder, Path(tmp) / "out", batch)
                if repeat:
                    times[batch].append(elapsed)
    rate = {batch: args.images / statistics.median(values) for batch, values in times.items()}
    print(f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads; torch {torch.__version__}, torchvision "
          f"{torchvision.__version__}; device {device}; median of {args.repeats} after 1 warm-up\n")
    print("| workload | batch 1 (images/s) | batch 8 (images/s) | ratio (batch 8 / batch 1) |")
    print("|---|---:|---:|---:|")
    print(f"| predict folder: {args.images} PNGs 128×128, deeplabv3_resnet50 ×0.25, 21 classes | {rate[1]:.1f} | "
          f"{rate[8]:.1f} | {rate[8] / rate[1]:.2f} |")


if __name__ == "__main__":
    main()
