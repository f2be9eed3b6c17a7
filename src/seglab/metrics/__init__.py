"""Evaluation metrics: confusion-matrix metrics for semantic segmentation, COCO metrics (pycocotools)."""
from seglab.metrics.coco import coco_results, evaluate_coco, format_coco_table, write_coco_results
from seglab.metrics.semantic import SegmentationMetrics, format_table

__all__ = [
    "SegmentationMetrics",
    "coco_results",
    "evaluate_coco",
    "format_coco_table",
    "format_table",
    "write_coco_results",
]
