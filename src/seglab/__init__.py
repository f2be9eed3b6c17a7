"""seglab: image segmentation from FCN to Mask^X R-CNN, each model verified against a reference."""
__version__ = "0.1.0"

from . import crf, data, export, interop, metrics, models, ops, viz  # noqa: E402

__all__ = ["crf", "data", "export", "interop", "metrics", "models", "ops", "viz", "__version__"]
