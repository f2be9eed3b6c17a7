"""One training step of seglab's models against torchvision's, with the same weights, in the same run.

A step is what a training loop does per batch: ``zero_grad``, forward in train mode, the loss, backward, an SGD
step (lr 1e-4, momentum 0.9, weight decay 1e-4). The torchvision model is built with random initialisation and
``seglab.interop.from_torchvision`` gives the seglab model with its weights (and, for Mask R-CNN, the settings
that live outside the state dict); before timing, both run in eval mode on the same input and must agree
(``allclose``), so the two sides time the same computation. Workloads:

- ``deeplabv3_resnet50``, ``fcn_resnet50``: aux head on (torchvision ``aux_loss=True``, seglab ``aux=True``),
  batch 2 at 512×512, 21 classes, loss = CE(out) + 0.4·CE(aux), ignore 255, random masks.
- ``maskrcnn_resnet50_fpn``: the fine-tuning setup torchvision builds when it is given weights (FrozenBatchNorm,
  conv1 + layer1 frozen, 3 trainable backbone stages; seglab's defaults ``frozen_bn=True,
  trainable_backbone_layers=3``), 91 classes, batch 2 images at 800×1088 (no resize: 800 is the min size),
  3 random boxes + masks per image, loss = the sum of the loss dict. The frozen BN statistics are calibrated on
  one random image (each BN's input mean/var) so activations keep a trained network's scale instead of
  growing through 16 un-normalised blocks.

Timings are interleaved (``peers.interleaved_medians``: one warm-up each, then one step of each side per round),
median of ``--repeats`` (default 5 for the semantic workloads, 3 for Mask R-CNN). ``--profile`` then profiles
one step of each side of every workload whose ratio is above 1.05 (``--profile-all``: every workload) and
prints the top 10 ops by self CPU time.

    python benchmarks/train_step.py [--only deeplabv3_resnet50|fcn_resnet50|maskrcnn_resnet50_fpn]
                                    [--repeats N] [--threads 2] [--profile | --profile-all]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile
from torchvision.models import segmentation as tvseg
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import interleaved_medians  # noqa: E402

import seglab  # noqa: E402
from seglab.engine.benchmark import cpu_name  # noqa: E402

SEMANTIC = {"deeplabv3_resnet50": tvseg.deeplabv3_resnet50, "fcn_resnet50": tvseg.fcn_resnet50}
WORKLOADS = [*SEMANTIC, "maskrcnn_resnet50_fpn"]
SEMANTIC_CLASSES, SEMANTIC_SIZE, BATCH = 21, 512, 2
DETECTION_CLASSES, DETECTION_SIZE, BOXES_PER_IMAGE = 91, (800, 1088), 3
AUX_WEIGHT = 0.4  # torchvision's references/segmentation/train.py criterion


def machine(threads: int) -> str:
    return (f"CPU: {cpu_name()}, {os.cpu_count()} cores, {threads} torch threads; torch {torch.__version__}, "
            f"torchvision {torchvision.__version__}; float32")


# --- models with the same weights -------------------------------------------------------------------------------

def semantic_pair(name: str) -> tuple[nn.Module, nn.Module]:
    """(seglab, torchvision) ``name`` with the aux head and torchvision's random initialisation in both."""
    torch.manual_seed(0)
    tv = SEMANTIC[name](weights=None, weights_backbone=None, num_classes=SEMANTIC_CLASSES, aux_loss=True)
    return seglab.interop.from_torchvision(tv), tv


@torch.no_grad()
def calibrate_frozen_bn(body: nn.Module, image: torch.Tensor) -> None:
    """Set every FrozenBatchNorm2d's running mean/var to its input's channel statistics on ``image``, in forward
    order (a pre-hook sets them just before the layer runs), as trained statistics would be."""

    def hook(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3)))

    handles = [m.register_forward_pre_hook(hook) for m in body.modules() if isinstance(m, FrozenBatchNorm2d)]
    body(image)
    for handle in handles:
        handle.remove()


def maskrcnn_pair() -> tuple[nn.Module, nn.Module]:
    """(seglab, torchvision) Mask R-CNN R-50-FPN as torchvision builds it for fine-tuning (FrozenBatchNorm, 3
    trainable stages), random weights, calibrated frozen BN statistics."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    tv = MaskRCNN(_resnet_fpn_extractor(resnet, 3), num_classes=DETECTION_CLASSES)
    calibrate_frozen_bn(tv.backbone.body, tv.transform(
        [torch.rand(3, *DETECTION_SIZE, generator=torch.Generator().manual_seed(1))])[0].tensors)
    return seglab.interop.from_torchvision(tv), tv


# --- parity -----------------------------------------------------------------------------------------------------

def assert_close(name: str, ours: torch.Tensor, theirs: torch.Tensor, rtol: float, atol: float) -> None:
    if ours.shape != theirs.shape:
        raise AssertionError(f"{name}: shapes differ, seglab {tuple(ours.shape)} vs torchvision {tuple(theirs.shape)}")
    if not torch.allclose(ours, theirs, rtol=rtol, atol=atol):
        raise AssertionError(f"{name}: max |seglab - torchvision| = {(ours - theirs).abs().max().item():.3g}")


@torch.no_grad()
def check_semantic_parity(ours: nn.Module, theirs: nn.Module) -> str:
    image = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    ours.eval(), theirs.eval()
    a, b = ours(image), theirs(image)
    for key in ("out", "aux"):
        assert_close(key, a[key], b[key], rtol=1e-4, atol=1e-4)
    return "eval outputs out, aux allclose (1×3×256×256)"


@torch.no_grad()
def check_maskrcnn_parity(ours: nn.Module, theirs: nn.Module, images: list[torch.Tensor], targets) -> str:
    """Random weights score every class near 1/91, under the 0.05 threshold: compare with the threshold at 0
    (100 detections each), restored afterwards."""
    ours.eval(), theirs.eval()
    thresholds = ours.roi_heads.score_thresh, theirs.roi_heads.score_thresh
    ours.roi_heads.score_thresh = theirs.roi_heads.score_thresh = 0.0
    try:
        a, b = ours(images[:1])[0], theirs(images[:1])[0]
    finally:
        ours.roi_heads.score_thresh, theirs.roi_heads.score_thresh = thresholds
    for key in ("boxes", "scores", "labels", "masks"):
        assert_close(key, a[key].float(), b[key].float(), rtol=1e-3, atol=1e-3)
    # Train mode: the samplers draw from the global RNG in the same order, so one seed gives both the same losses.
    ours.train(), theirs.train()
    losses = []
    for model in (ours, theirs):
        torch.manual_seed(5)
        losses.append(model(images, targets))
    for key in losses[1]:
        assert_close(key, losses[0][key], losses[1][key], rtol=1e-4, atol=1e-5)
    return (f"eval detections (score threshold 0) boxes, scores, labels, masks allclose "
            f"({len(a['boxes'])} detections, 1 image); train-mode loss dicts allclose (same seed, the batch)")


# --- one training step ------------------------------------------------------------------------------------------

def sgd(model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)


def semantic_step(model: nn.Module, optimizer, images, masks) -> Callable[[], float]:
    def step() -> float:
        model.train()
        optimizer.zero_grad()
        outputs = model(images)
        loss = (F.cross_entropy(outputs["out"], masks, ignore_index=255)
                + AUX_WEIGHT * F.cross_entropy(outputs["aux"], masks, ignore_index=255))
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


def detection_step(model: nn.Module, optimizer, images, targets) -> Callable[[], float]:
    def step() -> float:
        model.train()
        optimizer.zero_grad()
        loss = sum(model(images, targets).values())
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


def semantic_inputs():
    g = torch.Generator().manual_seed(3)
    images = torch.randn(BATCH, 3, SEMANTIC_SIZE, SEMANTIC_SIZE, generator=g)
    masks = torch.randint(0, SEMANTIC_CLASSES, (BATCH, SEMANTIC_SIZE, SEMANTIC_SIZE), generator=g)
    masks[:, :, : SEMANTIC_SIZE // 8] = 255  # an ignored band, as at VOC's object borders
    return images, masks


def detection_inputs():
    """``BATCH`` images in [0, 1] at 800×1088 and their targets: ``BOXES_PER_IMAGE`` random boxes (48-400 px
    sides), labels in 1..90, masks = the ellipse inscribed in each box."""
    g = torch.Generator().manual_seed(4)
    height, width = DETECTION_SIZE
    images, targets = [], []
    ys, xs = torch.arange(height)[:, None] + 0.5, torch.arange(width)[None] + 0.5
    for _ in range(BATCH):
        images.append(torch.rand(3, height, width, generator=g))
        size = 48 + torch.rand(BOXES_PER_IMAGE, 2, generator=g) * 352
        corner = torch.rand(BOXES_PER_IMAGE, 2, generator=g) * (torch.tensor([width, height]) - size)
        boxes = torch.cat([corner, corner + size], 1)
        centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, size / 2
        masks = ((((xs - centre[:, 0, None, None]) / half[:, 0, None, None]) ** 2
                  + ((ys - centre[:, 1, None, None]) / half[:, 1, None, None]) ** 2) <= 1).to(torch.uint8)
        labels = torch.randint(1, DETECTION_CLASSES, (BOXES_PER_IMAGE,), generator=g)
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
    return images, targets


def workload(name: str) -> tuple[dict[str, Callable[[], float]], str]:
    """The two step callables (seglab, torchvision) of ``name`` and the parity line."""
    if name in SEMANTIC:
        ours, theirs = semantic_pair(name)
        parity = check_semantic_parity(ours, theirs)
        images, masks = semantic_inputs()
        make = lambda model: semantic_step(model, sgd(model), images, masks)  # noqa: E731
    else:
        ours, theirs = maskrcnn_pair()
        images, targets = detection_inputs()
        parity = check_maskrcnn_parity(ours, theirs, images, targets)
        make = lambda model: detection_step(model, sgd(model), images, targets)  # noqa: E731
    return {"seglab": make(ours), "torchvision": make(theirs)}, parity


def print_profile(name: str, side: str, step: Callable[[], float]) -> None:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(f"\n#### {name}: {side}, one step, top 10 ops by self CPU time\n```")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))
    print("```", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=WORKLOADS, action="append",
                        help="run only this workload (repeatable); default all")
    parser.add_argument("--repeats", type=int, help="timed steps per side (default 5 semantic, 3 Mask R-CNN)")
    parser.add_argument("--threads", type=int, default=2)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--profile", action="store_true", help="profile workloads whose ratio is above 1.05")
    group.add_argument("--profile-all", action="store_true", help="profile every workload")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows, notes, profiles = [], [], []
    for name in args.only or WORKLOADS:
        calls, parity = workload(name)
        repeats = args.repeats or (5 if name in SEMANTIC else 3)
        times = interleaved_medians(calls, repeats)
        ratio = times["seglab"] / times["torchvision"]
        rows.append(f"| {name} | {times['seglab']:.3f} | {times['torchvision']:.3f} | {ratio:.2f} |")
        notes.append(f"{name}: {parity}; median of {repeats} after 1 warm-up")
        print(f"[{name}] seglab {times['seglab']:.3f} s, torchvision {times['torchvision']:.3f} s, "
              f"ratio {ratio:.2f}", file=sys.stderr, flush=True)
        if args.profile_all or (args.profile and ratio > 1.05):
            profiles.append((name, calls))
        else:
            del calls

    print(machine(args.threads))
    print(f"batch {BATCH}; SGD lr 1e-4 momentum 0.9; step = zero_grad + train forward + loss + backward + step\n")
    print("| workload | seglab s/step | torchvision s/step | ratio (seglab / torchvision) |")
    print("|---|---:|---:|---:|")
    print("\n".join(rows))
    print()
    for note in notes:
        print(f"- {note}")
    for name, calls in profiles:
        for side, step in calls.items():
            print_profile(name, side, step)


if __name__ == "__main__":
    main()
