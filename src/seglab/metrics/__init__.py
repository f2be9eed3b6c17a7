"""Evaluation metrics: confusion-matrix metrics for semantic segmentation (whole set and per image), COCO
metrics (pycocotools), the official Cityscapes pixel-level evaluation and DeepLab's boundary band (trimap)."""
from seglab.metrics.boundary import BoundaryBandMetrics, boundary_band
from seglab.metrics.cityscapes import evaluate_results
from seglab.metrics.coco import coco_results, evaluate_coco, format_coco_table, write_coco_results
from seglab.metrics.semantic import SegmentationMetrics, format_table, image_miou

__all__ = [
    "BoundaryBandMetrics",
    "SegmentationMetrics",
    "boundary_band",
    "coco_results",
    "evaluate_coco",
    "evaluate_results",
    "format_coco_table",
    "format_table",
    "image_miou",
    "write_coco_results",
]
