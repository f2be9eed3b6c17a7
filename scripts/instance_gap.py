"""Where two instance models differ on Shapes val: box AP next to mask AP (a mask is no better than its box),
AP50 / AP75, per-size APs, and the mask IoU on the true boxes and classes (mask quality apart from detection),
for trained run directories, e.g. FCIS against Mask R-CNN at the same budget:

    python scripts/instance_gap.py runs/experiments/fcis-vs-maskrcnn/*/seed_0 [--num-val 200]

Every run is scored on the same held-out scenes (Shapes val, seed 0).
"""
from __future__ import annotations

import argparse

import seglab
from seglab.engine import instance

COLUMNS = [("box AP", "bbox_AP"), ("box APs", "bbox_APs"), ("box APm", "bbox_APm"), ("mask AP", "segm_AP"),
           ("mask AP50", "segm_AP50"), ("mask AP75", "segm_AP75"), ("mask APs", "segm_APs"), ("mask APm", "segm_APm")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories (or checkpoints) of instance models")
    parser.add_argument("--num-val", type=int, default=200, help="Shapes val scenes (default 200)")
    parser.add_argument("--image-size", type=int, default=128, help="Shapes scene size in pixels (default 128)")
    args = parser.parse_args()
    print("| run | model | parameters | " + " | ".join(name for name, _ in COLUMNS) + " | mask IoU on true boxes |")
    print("|---|---|---:|" + "---:|" * (len(COLUMNS) + 1))
    for run in args.runs:
        model = seglab.models.load(run)
        val_set = seglab.data.build_dataset("shapes", "val", num_images=args.num_val,
                                            image_size=args.image_size, seed=0)
        summary = instance.summary(instance.evaluate(model, val_set, progress=False)[0])
        iou = instance.mask_iou_on_true_boxes(model, val_set)
        cells = [f"{100 * summary[key]:.1f}" for _, key in COLUMNS]
        parameters = sum(p.numel() for p in model.parameters())
        print(f"| {run} | {model.meta['model']} | {parameters:,} | " + " | ".join(cells) + f" | {100 * iou:.1f} |")


if __name__ == "__main__":
    main()
