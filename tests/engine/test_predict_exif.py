"""``seglab predict`` reads a phone photo stored sideways (EXIF orientation 6) as it is displayed, as the folder
reader and ``seglab data check`` do (tests/data/test_data_check.py, the EXIF test)."""
import numpy as np
from PIL import Image

from seglab.cli import main
from seglab.data.images import EXIF_ORIENTATION


def test_predict_writes_masks_in_the_displayed_orientation_of_an_exif_rotated_photo(tmp_path):
    stored = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)  # 40 wide, 30 high as stored
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # rotated 90° clockwise on display: 30 wide, 40 high
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif)
    main(["predict", "--model", "fcn8s_vgg16", "--num-classes", "3", "--model-option", "width_mult=0.0625",
          str(tmp_path / "phone.jpg"), "--out", str(tmp_path / "pred")])
    mask = next((tmp_path / "pred").rglob("phone.png"))  # under OUT, named after the photo
    assert Image.open(mask).size == (30, 40)  # (W, H) as displayed
