"""The Mask^X R-CNN experiment (Hu et al. 2018, §4) on Shapes: circles and squares carry masks (set A),
triangles and stars only boxes (set B). Three models train on the same data for the same budget, once per seed:

1. the class-agnostic Mask R-CNN baseline (one mask map for every class, trained on set-A masks);
2. Mask^X R-CNN, τ transfer (class masks predicted by the weight transfer τ from the box head's weights);
3. Mask^X R-CNN, τ + MLP (plus the class-agnostic MLP mask branch, §3.4).

All start from ``configs/maskrcnn_resnet18_fpn_shapes.yaml`` (the small configuration); seed s (0 .. N-1) sets the
training scenes, the initialisation and the data order. Every run is scored on the same held-out Shapes val
scenes (seed 0) with COCOeval: mask AP on set B (the point of the paper) next to box AP on set B (masks can only be
as good as the detections they belong to), and both on set A. To take detection out of the comparison, each model's
mask head is also handed the ground-truth boxes and classes of the val instances: the mean IoU of those masks
measures mask quality alone. The table gives mean ± standard deviation (sample, over the seeds) in points.

    python scripts/maskx_partial_shapes.py [--iters 600] [--seeds 3] [--out runs/maskx_shapes]
    python scripts/maskx_partial_shapes.py --iters 2 --seeds 1 --num-train 16 --num-val 8   # smoke run
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import seglab
from seglab.engine.config import load_config
from seglab.engine import instance
from seglab.engine.experiment import mean_std
from seglab.engine.train import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "maskrcnn_resnet18_fpn_shapes.yaml"
SET_A, SET_B = ["circle", "square"], ["triangle", "star"]
VAL_SEED = 0  # one val set for every run: the seeds vary training only
RUNS = {"class_agnostic": ("class-agnostic Mask R-CNN", "maskrcnn_resnet18_fpn", {"class_agnostic_masks": True}),
        "transfer": ("Mask^X R-CNN (τ: cls+box)", "maskxrcnn_resnet18_fpn", {}),
        "transfer_mlp": ("Mask^X R-CNN (τ + MLP)", "maskxrcnn_resnet18_fpn", {"mlp_branch": True})}
COLUMNS = [("mask AP, set B (no masks in training)", "B", "segm_AP"), ("mask AP50, set B", "B", "segm_AP50"),
           ("mask AP75, set B", "B", "segm_AP75"), ("box AP, set B", "B", "bbox_AP"),
           ("mask IoU on true boxes, set B", "iou", "B"), ("mask AP, set A", "A", "segm_AP"),
           ("box AP, set A", "A", "bbox_AP"), ("mask IoU on true boxes, set A", "iou", "A")]


def run(model: str, options: dict, seed: int, out: Path, args) -> dict:
    """Train one model with one seed into ``out``, score it on the val set: {"B", "A": summaries, "iou": {A, B}}.

    A run whose scores are already in ``out`` is reused, so an interrupted experiment continues where it stopped."""
    scores = out / "partial_supervision.json"
    if scores.is_file():
        return json.loads(scores.read_text())
    config = load_config(CONFIG, {"model": model, "model_options": options, "mask_classes": SET_A, "seed": seed,
                                  "iters": args.iters, "num_train": args.num_train, "out": str(out),
                                  "val_split": ""})
    train(config)
    val_set = seglab.data.build_dataset("shapes", "val", num_images=args.num_val, image_size=config.image_size,
                                        seed=VAL_SEED)
    trained = seglab.models.load(out)
    labels = {group: [val_set.classes.index(c) for c in names] for group, names in (("A", SET_A), ("B", SET_B))}
    result = {group: instance.summary(instance.evaluate(trained, val_set, labels=labels[group])[0]) for group in "BA"}
    result["iou"] = {group: instance.mask_iou_on_true_boxes(trained, val_set, group_labels)
                     for group, group_labels in labels.items()}
    scores.write_text(json.dumps(result, indent=2))
    return result


def table(results: dict[str, list[dict]]) -> str:
    """Markdown table: one row per model, each column's mean ± std over that model's seeds so far."""
    rows = ["| model | seeds | " + " | ".join(name for name, _, _ in COLUMNS) + " |",
            "|---|---:|" + "---:|" * len(COLUMNS)]
    for key, runs in results.items():
        cells = [mean_std([r[group][metric] for r in runs]) for _, group, metric in COLUMNS]
        rows.append(f"| {RUNS[key][0]} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 for every model")
    parser.add_argument("--num-train", type=int, help="Shapes training scenes (default: the config's, 1000)")
    parser.add_argument("--num-val", type=int, default=200, help="Shapes val scenes scored")
    parser.add_argument("--out", default="runs/maskx_shapes")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    results: dict[str, list[dict]] = {key: [] for key in RUNS}
    for seed in range(args.seeds):
        for key, (_, model, options) in RUNS.items():
            results[key].append(run(model, options, seed, Path(args.out) / key / f"seed{seed}", args))
        (Path(args.out) / "summary.json").write_text(json.dumps(results, indent=2))
        print(table(results), flush=True)


if __name__ == "__main__":
    main()
