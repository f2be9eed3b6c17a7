"""The Mask^X R-CNN experiment (Hu et al. 2018, §4) on Shapes: circles and squares carry masks (set A),
triangles and stars only boxes (set B). Two models train on the same data for the same budget:

1. the class-agnostic Mask R-CNN baseline (one mask map for every class, trained on set-A masks);
2. Mask^X R-CNN (class masks predicted by the weight transfer τ from the box head's weights).

Both start from ``configs/maskrcnn_resnet18_fpn_shapes.yaml`` (the small configuration) and are scored on
the held-out Shapes val scenes with COCOeval: mask AP on set B (the point of the paper) next to box AP on set B
(masks can only be as good as the detections they belong to), and both on set A. To take detection out of
the comparison, each model's mask head is also handed the ground-truth boxes and classes of the val
instances: the mean IoU of those masks measures mask quality alone.

    python scripts/maskx_partial_shapes.py [--iters 600] [--out runs/maskx_shapes]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import seglab
from seglab.engine.config import load_config
from seglab.engine import instance
from seglab.engine.train import train
from seglab.models.detection import paste_masks_in_image, resize_boxes
from seglab.models.maskrcnn import class_masks

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "maskrcnn_resnet18_fpn_shapes.yaml"
SET_A, SET_B = ["circle", "square"], ["triangle", "star"]
RUNS = {"class-agnostic Mask R-CNN": ("maskrcnn_resnet18_fpn", {"class_agnostic_masks": True}),
        "Mask^X R-CNN (τ: cls+box)": ("maskxrcnn_resnet18_fpn", {})}


@torch.no_grad()
def mask_iou_on_true_boxes(model, dataset, labels: list[int]) -> float:
    """Mean IoU between the ground-truth masks of the ``labels`` instances in ``dataset`` and the model's masks
    (probability ≥ 0.5) for their ground-truth boxes and classes: mask quality apart from detection."""
    model.eval()
    ious = []
    for image, target in dataset:
        keep = torch.isin(target["labels"], torch.tensor(labels))
        if not keep.any():
            continue
        boxes, size = target["boxes"][keep].float(), tuple(image.shape[-2:])
        batch, sizes, _ = model.transform([image.float() / 255])
        logits = model.roi_heads.mask_logits(model.backbone(batch), [resize_boxes(boxes, size, sizes[0])], sizes)
        masks = paste_masks_in_image(class_masks(logits, target["labels"][keep]), boxes, size)[:, 0] >= 0.5
        truth = target["masks"][keep].bool()
        ious.append((masks & truth).flatten(1).sum(1) / (masks | truth).flatten(1).sum(1).clamp(min=1))
    return torch.cat(ious).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--out", default="runs/maskx_shapes")
    args = parser.parse_args()
    rows = ["| model | mask AP, set B (no masks in training) | mask AP50 / AP75, set B | box AP, set B | "
            "mask IoU on true boxes, set B | mask AP, set A | box AP, set A | mask IoU on true boxes, set A |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, (model, options) in RUNS.items():
        out = Path(args.out) / model
        config = load_config(CONFIG, {"model": model, "model_options": options, "mask_classes": SET_A,
                                      "iters": args.iters, "out": str(out), "val_split": ""})
        train(config)
        val_set = seglab.data.build_dataset("shapes", "val", image_size=config.image_size, seed=config.seed)
        trained = seglab.models.load(out)
        labels = {group: [val_set.classes.index(c) for c in names] for group, names in (("A", SET_A), ("B", SET_B))}
        set_b, set_a = (instance.summary(instance.evaluate(trained, val_set, labels=labels[group])[0])
                        for group in "BA")
        iou = {group: mask_iou_on_true_boxes(trained, val_set, group_labels) for group, group_labels in labels.items()}
        (out / "partial_supervision.json").write_text(json.dumps({"B": set_b, "A": set_a, "mask_iou_on_true_boxes": iou},
                                                                 indent=2))
        rows.append(f"| {name} | {100 * set_b['segm_AP']:.1f} | {100 * set_b['segm_AP50']:.1f} / "
                    f"{100 * set_b['segm_AP75']:.1f} | {100 * set_b['bbox_AP']:.1f} | {100 * iou['B']:.1f} | "
                    f"{100 * set_a['segm_AP']:.1f} | {100 * set_a['bbox_AP']:.1f} | {100 * iou['A']:.1f} |")
        print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
