import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from seglab.data import Shapes, VOCSegmentation
from seglab.data.voc import VOC_CLASSES
from seglab.data.palette import voc_palette


def test_export_writes_the_voc_layout_and_lists(voc_root):
    lists = voc_root / "ImageSets" / "Segmentation"
    assert (lists / "train.txt").read_text().split() == [f"shapes_train_{i:06d}" for i in range(4)]
    assert (lists / "val.txt").read_text().split() == ["shapes_val_000000", "shapes_val_000001"]
    assert len(list((voc_root / "JPEGImages").glob("*.jpg"))) == 6
    assert len(list((voc_root / "SegmentationClass").glob("*.png"))) == 6
    assert (voc_root / "labels.txt").read_text().splitlines() == list(Shapes.classes)


def test_masks_are_palette_pngs_with_the_voc_palette(voc_root):
    with Image.open(voc_root / "SegmentationClass" / "shapes_val_000001.png") as png:
        assert png.format == "PNG" and png.mode == "P"
        palette = np.array(png.getpalette()).reshape(-1, 3)
    np.testing.assert_array_equal(palette, np.array(voc_palette()))


@pytest.mark.parametrize("split, count", [("train", 4), ("val", 2)])
def test_voc_reader_round_trips_the_exported_shapes(voc_root, split, count):
    dataset, shapes = VOCSegmentation(voc_root, split), Shapes(split, count, image_size=64, seed=3)
    assert len(dataset) == count and dataset.classes == Shapes.classes and dataset.palette == voc_palette()
    for i in range(count):
        image, target = dataset[i]
        expected_image, expected = shapes[i]
        assert type(image) is tv_tensors.Image and image.dtype == torch.uint8 and image.shape == (3, 64, 64)
        assert set(target) == {"mask"} and type(target["mask"]) is tv_tensors.Mask
        assert target["mask"].dtype == torch.int64
        assert torch.equal(target["mask"], expected["mask"])  # PNG is lossless
        assert (image.float() - expected_image.float()).abs().mean() < 10  # JPEG quality 95 on noisy images
        assert dataset.image_path(i).name == dataset.mask_path(i).stem + ".jpg" == f"shapes_{split}_{i:06d}.jpg"


def test_classes_come_from_argument_then_labels_file_then_voc(voc_root):
    assert VOCSegmentation(voc_root, "val", classes=["a", "b"]).classes == ("a", "b")
    (voc_root / "labels.txt").unlink()
    assert VOCSegmentation(voc_root, "val").classes == VOC_CLASSES and len(VOC_CLASSES) == 21


def test_transforms_are_applied_to_image_and_target(voc_root):
    dataset = VOCSegmentation(voc_root, "train", transforms=lambda image, target: (image[:1], target["mask"] + 1))
    image, mask = dataset[0]
    plain_image, plain = VOCSegmentation(voc_root, "train")[0]
    assert torch.equal(image, plain_image[:1]) and torch.equal(mask, plain["mask"] + 1)


def test_missing_root_or_split_list_raises_file_not_found_naming_it(tmp_path, voc_root):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VOCSegmentation(tmp_path / "nowhere", "train")
    with pytest.raises(FileNotFoundError, match="trainval.txt"):
        VOCSegmentation(voc_root, "trainval")


def test_corrupt_image_raises_value_error_naming_the_file(voc_root):
    dataset = VOCSegmentation(voc_root, "val")
    dataset.image_path(1).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    dataset[0]
    with pytest.raises(ValueError, match="shapes_val_000001.jpg"):
        dataset[1]


def test_mask_of_another_size_raises_value_error_naming_both_files(voc_root):
    dataset = VOCSegmentation(voc_root, "train")
    Image.new("P", (64, 48)).save(dataset.mask_path(2))
    with pytest.raises(ValueError, match=r"shapes_train_000002.png.*64x48.*shapes_train_000002.jpg.*64x64"):
        dataset[2]


def test_rgb_colour_mask_is_rejected(voc_root):
    dataset = VOCSegmentation(voc_root, "train")
    Image.new("RGB", (64, 64), (128, 0, 0)).save(dataset.mask_path(0))
    with pytest.raises(ValueError, match="shapes_train_000000.png.*mode RGB"):
        dataset[0]
