"""Evaluation metrics: confusion-matrix metrics for semantic segmentation (whole set and per image), COCO
metrics (pycocotools) and the official Cityscapes pixel-level evaluation."""
from seglab.metrics.cityscapes import evaluate_results
from seglab.metrics.coco import coco_results, evaluate_coco, format_coco_table, write_coco_results
from seglab.metrics.semantic import SegmentationMetrics, format_table, image_miou

__all__ = [
    "SegmentationMetrics",
    "coco_results",
    "evaluate_coco",
    "evaluate_results",
    "format_coco_table",
    "format_table",
    "image_miou",
    "write_coco_results",
]
