"""Truncated and corrupt image files are named in the error, whatever the format."""
import numpy as np
import pytest
from PIL import Image

from seglab.data.images import load_image, read_label_png


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_a_truncated_file_is_an_error_naming_it(tmp_path, suffix):
    path = tmp_path / f"photo{suffix}"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"cannot read {path}"):
        load_image(path)


def test_a_colour_mask_is_refused_and_a_missing_one_is_not_found(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="rgb.png: expected a palette"):
        read_label_png(tmp_path / "rgb.png")
    with pytest.raises(FileNotFoundError):
        read_label_png(tmp_path / "missing.png")
