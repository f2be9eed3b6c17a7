"""Semantic models on the CPU, full width, random weights. Two tables:

``--table fcn``: FCN-8s/VGG16 inference latency, training images/s and peak RSS at 320 and 512 px.
``--table models``: every registered semantic model at 512×512: parameters (next to the paper's or
torchvision's figure where one is published), inference latency and peak RSS; for fcn_resnet50 and
deeplabv3_resnet50 also torchvision's latency with the same weights (``interop.from_torchvision``),
interleaved in the same process, and the ratio.

The peer is torchvision's ``fcn_resnet50`` (weights=None), the FCN a torchvision user reaches for; it
has a different backbone (ResNet-50, output stride 8), so the ratio compares two real workloads rather
than two implementations of one network. Timings are interleaved in one process (median of
``--repeats`` runs after a warm-up); peak RSS is measured in a fresh subprocess per model and size.

    python benchmarks/semantic.py [--table fcn|models|all] [--sizes 320 512] [--repeats 5] [--train-batch 2]
                                  [--models NAME ...]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torchvision

import seglab
from seglab.engine.benchmark import cpu_name

NUM_CLASSES = 21


# Published parameter counts at 21 classes: the FCN paper's "134M", DeepLab-LargeFOV's "20.5M", and torchvision's model docs, which
# include the auxiliary FCN head (2,365,205 parameters on ResNet layer3) that these builds leave out.
PUBLISHED = {"deeplabv1_vgg16": "20.5M (paper)", "fcn8s_vgg16": "≈134M (paper)", "fcn16s_vgg16": "≈134M (paper)", "fcn32s_vgg16": "≈134M (paper)",
             "fcn_resnet50": "35,322,218 with aux (torchvision)", "fcn_resnet101": "54,314,346 with aux (torchvision)",
             "deeplabv3_resnet50": "42,004,074 with aux (torchvision)",
             "deeplabv3_resnet101": "60,996,202 with aux (torchvision)"}
TORCHVISION_PEERS = {"fcn_resnet50": torchvision.models.segmentation.fcn_resnet50,
                     "deeplabv3_resnet50": torchvision.models.segmentation.deeplabv3_resnet50}


def build(name: str) -> torch.nn.Module:
    """A seglab model by registry name, or ``torchvision NAME`` for a torchvision segmentation model."""
    if name.startswith("torchvision "):
        return getattr(torchvision.models.segmentation, name.split()[1])(
            weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=False)
    return seglab.models.create(name.removeprefix("seglab "), NUM_CLASSES)


def inference_seconds(model, images) -> float:
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        model(images)
    return time.perf_counter() - start


def train_seconds(model, optimizer, images, masks) -> float:
    model.train()
    start = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(images)["out"], masks, ignore_index=255)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def peak_rss_mib(name: str, size: int, batch: int) -> float:
    """Peak resident memory (MiB) of a fresh process running one inference and, if ``batch`` > 0, one
    training step."""
    out = subprocess.run([sys.executable, __file__, "--rss-worker", name, str(size), str(batch)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mib"]


def rss_worker(name: str, size: int, batch: int) -> None:
    torch.manual_seed(0)
    model = build(name)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    inference_seconds(model, torch.randn(1, 3, size, size))
    if batch:
        train_seconds(model, optimizer, torch.randn(batch, 3, size, size),
                      torch.randint(0, NUM_CLASSES, (batch, size, size)))
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the parent across fork/exec.
    status = open("/proc/self/status").read()
    peak_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    print(json.dumps({"peak_rss_mib": peak_kib / 1024}))


def header(repeats: int) -> str:
    return (f"CPU: {cpu_name()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads; torch {torch.__version__}, torchvision {torchvision.__version__}; "
            f"float32, {NUM_CLASSES} classes, random weights; median of {repeats} after 1 warm-up\n")


def fcn_table(sizes: list[int], repeats: int, train_batch: int) -> None:
    names = ["seglab fcn8s_vgg16", "torchvision fcn_resnet50"]
    print("| workload | size | seglab FCN-8s | torchvision fcn_resnet50 | ratio (seglab / peer) |")
    print("|---|---:|---:|---:|---:|")
    torch.manual_seed(0)
    models = {name: build(name) for name in names}
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for name, m in models.items()}
    for size in sizes:
        image = torch.randn(1, 3, size, size)
        images = torch.randn(train_batch, 3, size, size)
        masks = torch.randint(0, NUM_CLASSES, (train_batch, size, size))
        latency = {name: [] for name in names}
        train = {name: [] for name in names}
        for repeat in range(repeats + 1):
            for name in names:  # interleaved
                t_inf = inference_seconds(models[name], image)
                t_train = train_seconds(models[name], optimizers[name], images, masks)
                if repeat:  # the first round is the warm-up
                    latency[name].append(t_inf)
                    train[name].append(train_batch / t_train)
        lat = [statistics.median(latency[n]) for n in names]
        ips = [statistics.median(train[n]) for n in names]
        rss = [peak_rss_mib(n, size, train_batch) for n in names]
        print(f"| inference latency (s/image) | {size} | {lat[0]:.3f} | {lat[1]:.3f} | {lat[0] / lat[1]:.2f} |")
        print(f"| training (images/s, batch {train_batch}) | {size} | {ips[0]:.2f} | {ips[1]:.2f} | "
              f"{ips[0] / ips[1]:.2f} |")
        print(f"| peak RSS (MiB, 1 inference + 1 train step) | {size} | {rss[0]:.0f} | {rss[1]:.0f} | "
              f"{rss[0] / rss[1]:.2f} |", flush=True)


def models_table(size: int, repeats: int, names: list[str]) -> None:
    print(f"| model | parameters | published | latency at {size}² (s) | torchvision, same weights (s) | "
          f"ratio | peak RSS (MiB) |")
    print("|---|---:|---|---:|---:|---:|---:|")
    image = torch.randn(1, 3, size, size)
    for name in names:
        torch.manual_seed(0)
        model = build(name)
        runners = {"seglab": model}
        if name in TORCHVISION_PEERS:
            peer = TORCHVISION_PEERS[name](weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                                           aux_loss=False)
            runners["torchvision"] = peer
            model.load_state_dict(peer.state_dict())  # same weights, so the same numbers
        times = {key: [] for key in runners}
        for repeat in range(repeats + 1):
            for key, runner in runners.items():
                elapsed = inference_seconds(runner, image)
                if repeat:
                    times[key].append(elapsed)
        ours = statistics.median(times["seglab"])
        peer_cell, ratio_cell = "", ""
        if "torchvision" in times:
            theirs = statistics.median(times["torchvision"])
            peer_cell, ratio_cell = f"{theirs:.3f}", f"{ours / theirs:.2f}"
        params = sum(p.numel() for p in model.parameters())
        rss = peak_rss_mib(name, size, 0)
        print(f"| {name} | {params:,} | {PUBLISHED.get(name, '')} | {ours:.3f} | {peer_cell} | {ratio_cell} | "
              f"{rss:.0f} |", flush=True)
        del model, runners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", choices=["fcn", "models", "all"], default="all")
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=None, help="models of the models table (default: all)")
    parser.add_argument("--rss-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_worker:
        name, size, batch = args.rss_worker
        return rss_worker(name, int(size), int(batch))
    print(header(args.repeats))
    if args.table in ("fcn", "all"):
        fcn_table(args.sizes, args.repeats, args.train_batch)
        print()
    if args.table in ("models", "all"):
        models_table(max(args.sizes), args.repeats, args.models or seglab.models.names("semantic"))


if __name__ == "__main__":
    main()
