"""Evaluation metrics: confusion-matrix metrics for semantic segmentation."""
from seglab.metrics.semantic import SegmentationMetrics, format_table

__all__ = ["SegmentationMetrics", "format_table"]
