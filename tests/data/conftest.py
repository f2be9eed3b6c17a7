import pytest

from seglab.data import export_shapes


@pytest.fixture
def voc_root(tmp_path):
    """A fresh Shapes export in the VOC layout: train 4 and val 2 images of 64x64 pixels."""
    return export_shapes(tmp_path / "voc", "voc", {"train": 4, "val": 2}, image_size=64, seed=3, progress=False)
