"""The lecture's building blocks, each verified against a reference."""
from .bilinear import FixedBilinearUpsample, bilinear_conv_transpose, bilinear_kernel, upsampling_padding
from .nms import batched_nms
from .ps_roi import PSRoIAlign, ps_roi_align, ps_roi_pool
from .roi import MultiScaleRoIAlign, RoIAlign, RoIPool, fpn_levels, roi_align, roi_pool

__all__ = ["bilinear_kernel", "bilinear_conv_transpose", "FixedBilinearUpsample", "upsampling_padding",
           "roi_align", "roi_pool", "RoIAlign", "RoIPool", "MultiScaleRoIAlign", "fpn_levels",
           "ps_roi_align", "ps_roi_pool", "PSRoIAlign", "batched_nms"]
