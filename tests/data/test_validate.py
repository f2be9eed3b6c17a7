import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from seglab.data import Shapes, VOCSegmentation, format_summary, validate_dataset


class InMemory(torch.utils.data.Dataset):
    """Items given as (image, mask) tensors; no file paths."""

    classes = ("background", "thing")

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        image, mask = self.items[index]
        return tv_tensors.Image(image), {"mask": tv_tensors.Mask(mask)}


class Wrapper(torch.utils.data.Dataset):
    """A dataset without a ``transforms`` attribute: its items are validated as they come."""

    def __init__(self, inner):
        self.inner, self.classes = inner, inner.classes

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, index):
        return self.inner[index]


def test_good_dataset_passes_and_pixel_counts_match_numpy(voc_root):
    dataset = VOCSegmentation(voc_root, "train")
    summary = validate_dataset(dataset, progress=False)
    masks = [np.array(Image.open(dataset.mask_path(i))) for i in range(len(dataset))]
    expected = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=5)
    assert summary["images"] == 4 and summary["total_pixels"] == 4 * 64 * 64
    assert summary["pixels_per_class"] == expected.tolist() and summary["ignore_pixels"] == 0
    assert summary["images_per_class"] == [sum((m == c).any() for m in masks) for c in range(5)]
    assert summary["min_size"] == summary["max_size"] == [64, 64]


def test_ignore_pixels_are_counted_apart():
    mask = torch.tensor([[0, 1, 255], [255, 1, 1]])
    summary = validate_dataset(InMemory([(torch.zeros(3, 2, 3, dtype=torch.uint8), mask)]), progress=False)
    assert summary["pixels_per_class"] == [1, 3] and summary["ignore_pixels"] == 2 and summary["total_pixels"] == 6


def test_corrupt_jpeg_raises_value_error_naming_the_file(voc_root):
    dataset = VOCSegmentation(voc_root, "train")
    data = dataset.image_path(3).read_bytes()
    dataset.image_path(3).write_bytes(data[:20] + bytes(len(data) - 20))
    with pytest.raises(ValueError, match="shapes_train_000003.jpg"):
        validate_dataset(dataset, progress=False)


def test_mask_of_another_size_raises_value_error_naming_the_file(voc_root):
    dataset = VOCSegmentation(voc_root, "val")
    Image.new("L", (32, 64)).save(dataset.mask_path(1))
    with pytest.raises(ValueError, match="shapes_val_000001.png"):
        validate_dataset(dataset, progress=False)
    image = torch.zeros(3, 4, 5, dtype=torch.uint8)
    masks = torch.zeros(4, 5, dtype=torch.int64), torch.zeros(4, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"InMemory\[1\].*\(4, 4\).*\(4, 5\)"):
        validate_dataset(InMemory([(image, masks[0]), (image, masks[1])]), progress=False)


def test_float_mask_is_rejected():
    with pytest.raises(ValueError, match=r"InMemory\[0\].*integer.*float32"):
        validate_dataset(InMemory([(torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(4, 4))]), progress=False)


def test_label_outside_the_classes_raises_value_error_naming_file_and_value(voc_root):
    dataset = VOCSegmentation(voc_root, "train")
    mask = np.array(Image.open(dataset.mask_path(1)))
    mask[10:12, 20:30] = 7
    bad = Image.fromarray(mask)
    bad.putpalette(Image.open(dataset.mask_path(0)).getpalette())
    bad.save(dataset.mask_path(1))
    with pytest.raises(ValueError, match=r"shapes_train_000001.png.*\[7\].*0\.\.4"):
        validate_dataset(dataset, progress=False)
    assert validate_dataset(dataset, num_classes=8, progress=False)["pixels_per_class"][7] == 20


def test_image_that_is_not_three_channel_is_rejected():
    items = [(torch.zeros(1, 4, 4, dtype=torch.uint8), torch.zeros(4, 4, dtype=torch.int64))]
    with pytest.raises(ValueError, match=r"InMemory\[0\].*3-channel.*\(1, 4, 4\)"):
        validate_dataset(InMemory(items), progress=False)


def test_transforms_are_disabled_during_validation_and_restored_after():
    calls = []

    def transforms(image, target):
        calls.append(1)
        return image, {"mask": target["mask"] + 100}

    dataset = Shapes("val", 3, image_size=32, transforms=transforms)
    assert validate_dataset(dataset, progress=False)["images"] == 3
    assert calls == [] and dataset.transforms is transforms
    with pytest.raises(ValueError, match=r"Wrapper\[0\]: mask values \[1\d\d"):
        validate_dataset(Wrapper(dataset), progress=False)


def test_format_summary_is_a_markdown_table_of_pixels_and_fractions():
    summary = {"images": 2, "problems": [], "total_pixels": 8, "ignore_pixels": 2, "pixels_per_class": [4, 2],
               "images_per_class": [2, 1], "min_size": [2, 2], "max_size": [2, 2], "unlabelled_images": 1}
    table = format_summary(summary, ["background", "thing"])
    assert table.startswith("2 images, 1 with no labelled pixel (all 255)")
    assert "| class | pixels | fraction | images |" in table
    assert "| background | 4 | 50.00% | 2 |" in table and "| thing | 2 | 25.00% | 1 |" in table
    assert "| ignore (255) | 2 | 25.00% | |" in table


def test_summary_has_warnings_and_the_imbalance_ratio_over_the_classes_present():
    image = torch.zeros(3, 2, 3, dtype=torch.uint8)
    masks = [torch.tensor([[0, 0, 0], [0, 0, 1]]), torch.tensor([[0, 0, 0], [0, 1, 1]])]
    summary = validate_dataset(InMemory([(image, m) for m in masks]), num_classes=3, progress=False)
    assert summary["imbalance_ratio"] == 9 / 3 and summary["pixels_per_class"] == [9, 3, 0]
    assert summary["warnings"] == ["class 2 has no pixels in the dataset (2 images checked)"]
    table = format_summary(summary, ["background", "thing", "rare"])
    assert "imbalance ratio (max / min pixel share over the 2 classes present): 3.0 (most: background 75.00%, " \
           "least: thing 25.00%)" in table and table.endswith("classes with no pixels: rare")


def test_the_0_255_warning_needs_two_classes_and_no_foreground_anywhere():
    image = torch.zeros(3, 2, 2, dtype=torch.uint8)
    binary = torch.tensor([[0, 255], [0, 0]])
    summary = validate_dataset(InMemory([(image, binary)]), progress=False)
    assert len(summary["warnings"]) == 2 and "InMemory[0]: a binary mask saved as 0/255 (255 on 25.0%" in \
        summary["warnings"][0]
    border = validate_dataset(InMemory([(image, binary), (image, torch.tensor([[1, 255], [0, 0]]))]), progress=False)
    assert border["warnings"] == []  # 255 beside real labels elsewhere is an ignore region, not the trap
