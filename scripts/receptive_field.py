"""How far trained semantic models look, and what GCN's Boundary Refinement changes, on Shapes val scenes:

- the effective receptive field (Luo et al., NeurIPS 2016) at the centre pixel: the mean over scenes of
  |∂z/∂x|, z the logit of the class predicted at the scene's centre and x the normalised image, summed over
  RGB and scaled to mass 1; r50 / r90 are the radii (px, Euclidean from the centre) that hold 50% / 90% of it;
- for GCN runs with BR, the last BR block's residual (the stride-1 one, x + conv(ReLU(conv(x))) on the score
  maps): its mean |residual| / mean |x| inside the ±W px boundary band of the ground truth and outside it;
- for GCN runs with BR, mIoU and the band's mIoU on those scenes as trained and with every BR block's residual
  dropped at test time (each block the identity): how much of the trained model's accuracy BR carries.

    python scripts/receptive_field.py RUN [RUN ...] [--num-val 32] [--image-size 256] [--band 3] [--figure F.png]

Prints a Markdown table (one row per run); ``--figure`` draws each run's field (log scale) with its r50 / r90
circles and the Shapes objects' circumradii (10-25% of the image side) dashed.
"""
from __future__ import annotations

import argparse
import math

import matplotlib
import numpy as np
import torch

import seglab
from seglab.data.shapes import RADIUS_RANGE
from seglab.engine.inference import normalize
from seglab.metrics.boundary import BoundaryBandMetrics, boundary_band
from seglab.metrics.semantic import SegmentationMetrics
from seglab.models.gcn import BoundaryRefinement

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend)


def effective_receptive_field(model: torch.nn.Module, images: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """(H, W) field of uint8 images (N, 3, H, W): mean |∂z/∂x| over the images, summed over RGB, mass 1."""
    height, width = images.shape[-2:]
    total = torch.zeros(height, width, dtype=torch.float64)
    for chunk in images.split(batch):  # eval mode: the images do not interact, so one backward serves a chunk
        x = normalize(chunk, model.meta["mean"], model.meta["std"]).requires_grad_(True)
        centre = model(x)["out"][:, :, height // 2, width // 2]  # (n, C)
        (grad,) = torch.autograd.grad(centre.gather(1, centre.argmax(1, keepdim=True)).sum(), x)
        total += grad.abs().sum(1).sum(0).double()
    return total / total.sum()


def radii(field: torch.Tensor, fractions=(0.5, 0.9)) -> list[float]:
    """Smallest radii (px from the centre pixel) whose disc holds each fraction of the field's mass."""
    height, width = field.shape
    y, x = torch.meshgrid(torch.arange(height) - height // 2, torch.arange(width) - width // 2, indexing="ij")
    distance, order = torch.sqrt((y * y + x * x).double()).flatten().sort()
    mass = field.flatten()[order].cumsum(0)
    return [float(distance[int(torch.searchsorted(mass, torch.tensor(f, dtype=mass.dtype)))]) for f in fractions]


@torch.no_grad()
def boundary_refinement_share(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, band: int,
                              batch: int = 8) -> tuple[float, float] | None:
    """Mean |residual| / mean |x| of the model's last BR block inside / outside the ±``band`` px boundary band
    of ``masks`` (N, H, W); None for a model without BR."""
    blocks = [m for m in model.modules() if isinstance(m, BoundaryRefinement)]
    if not blocks:
        return None
    seen = {}
    hook = blocks[-1].register_forward_hook(lambda module, inputs, output: seen.update(x=inputs[0], y=output))
    sums = torch.zeros(2, 2, dtype=torch.float64)  # [inside, outside] x [|residual|, |x|]
    try:
        for chunk, target in zip(images.split(batch), masks.split(batch)):
            model(normalize(chunk, model.meta["mean"], model.meta["std"]))
            height, width = target.shape[-2:]
            x, residual = seen["x"][..., :height, :width], (seen["y"] - seen["x"])[..., :height, :width]
            inside = boundary_band(target, band)[:, None].expand_as(x)
            for row, where in enumerate((inside, ~inside)):
                sums[row, 0] += residual.abs()[where].sum().double()
                sums[row, 1] += x.abs()[where].sum().double()
    finally:
        hook.remove()
    return float(sums[0, 0] / sums[0, 1]), float(sums[1, 0] / sums[1, 1])



def _input_as_output(module, inputs, output):
    """Forward hook making a block the identity."""
    return inputs[0]


@torch.no_grad()
def scores_with_and_without_br(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, band: int,
                               batch: int = 8) -> list[tuple[float, float]]:
    """(mIoU, band mIoU) on uint8 images (N, 3, H, W) and masks (N, H, W), fractions in [0, 1]: as trained,
    then, for a model with BR, with every BR block the identity (its residual dropped)."""
    blocks = [m for m in model.modules() if isinstance(m, BoundaryRefinement)]
    scores = []
    for drop in (False, True) if blocks else (False,):
        hooks = [block.register_forward_hook(_input_as_output) for block in blocks] if drop else []
        whole = SegmentationMetrics(model.meta["num_classes"])
        near = BoundaryBandMetrics(model.meta["num_classes"], band)
        try:
            for chunk, target in zip(images.split(batch), masks.split(batch)):
                pred = model(normalize(chunk, model.meta["mean"], model.meta["std"]))["out"].argmax(1)
                whole.update(pred, target)
                near.update(pred, target)
        finally:
            for hook in hooks:
                hook.remove()
        scores.append((whole.compute()["miou"], near.compute()["miou"]))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories (or checkpoints) of semantic models")
    parser.add_argument("--num-val", type=int, default=32, help="Shapes val scenes (default 32)")
    parser.add_argument("--image-size", type=int, default=256, help="Shapes scene size in pixels (default 256)")
    parser.add_argument("--band", type=int, default=3, help="boundary band half-width in pixels (default 3)")
    parser.add_argument("--figure", help="write the fields to this PNG")
    args = parser.parse_args()
    scenes = seglab.data.Shapes("val", args.num_val, image_size=args.image_size, seed=0)
    images = torch.stack([torch.as_tensor(scenes[i][0]) for i in range(len(scenes))])
    masks = torch.stack([torch.as_tensor(scenes[i][1]["mask"]) for i in range(len(scenes))])
    lo, hi = (fraction * args.image_size for fraction in RADIUS_RANGE)
    print(f"Shapes val, {args.num_val} scenes of {args.image_size} px (objects' circumradii {lo:.0f}-{hi:.0f} px)\n")
    print(f"| run | model options | ERF r50 (px) | ERF r90 (px) | last BR, mean abs residual / mean abs input: in the "
          f"±{args.band} px band | outside it | mIoU (%) | band mIoU (%) | BR dropped: mIoU (%) | band mIoU (%) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    fields = []
    for run in args.runs:
        model = seglab.models.load(run)
        field = effective_receptive_field(model, images)
        r50, r90 = radii(field)
        share = boundary_refinement_share(model, images, masks, args.band)
        br = " | ".join(f"{v:.3f}" for v in share) if share else "no BR | no BR"
        scores = [f"{100 * v:.1f}" for pair in scores_with_and_without_br(model, images, masks, args.band) for v in pair]
        ablation = " | ".join(scores + ["no BR"] * (4 - len(scores)))
        print(f"| {run} | {model.meta['options']} | {r50:.0f} | {r90:.0f} | {br} | {ablation} |")
        fields.append((run, field, r50, r90))
    if args.figure:
        draw(fields, (lo, hi), args.figure)


def draw(fields, object_radii: tuple[float, float], path: str) -> None:
    """One panel per run: log10 of the field, r50 / r90 solid, the objects' circumradii dashed."""
    columns = min(3, len(fields))
    rows = -(-len(fields) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.3 * rows + 0.4), squeeze=False)
    for ax in axes.flat[len(fields):]:
        ax.axis("off")
    for ax, (run, field, r50, r90) in zip(axes.flat, fields):
        height, width = field.shape
        ax.imshow(np.log10(field.numpy() + 1e-12), cmap="magma", vmin=-8, vmax=math.log10(float(field.max())))
        for radius, style, colour in [(r50, "-", "cyan"), (r90, "-", "white"), (object_radii[0], "--", "lime"),
                                      (object_radii[1], "--", "lime")]:
            ax.add_patch(plt.Circle((width // 2, height // 2), radius, fill=False, ls=style, color=colour, lw=1))
        ax.set_title(f"{run.rstrip('/').split('/')[-2]}/{run.rstrip('/').split('/')[-1]}\n"
                     f"r50 {r50:.0f} px, r90 {r90:.0f} px", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle("effective receptive field at the centre pixel (log10 |dz/dx|): r50 cyan, r90 white, the "
                    "objects' smallest and largest circumradius dashed", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / figure.get_figheight()), h_pad=2.0)
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
