import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from seglab.data import Shapes
from seglab.data.shapes import CLASSES, MIN_VISIBLE_AREA
from seglab.data.palette import voc_palette


@pytest.fixture(scope="module")
def items():
    dataset = Shapes("train", 50, image_size=96, seed=1)
    return [dataset[i] for i in range(len(dataset))]


def assert_items_equal(a, b):
    assert torch.equal(a[0], b[0])
    assert a[1].keys() == b[1].keys()
    for key in a[1]:
        assert torch.equal(a[1][key], b[1][key]), key


def test_same_seed_split_and_index_give_identical_items():
    first, second = Shapes("val", 5, seed=7), Shapes("val", 5, seed=7)
    for i in (0, 4, 2):
        assert_items_equal(first[i], second[i])
    assert_items_equal(first[3], first[3])


def test_other_seed_split_or_index_gives_other_images():
    image = Shapes("train", 3, seed=0)[1][0]
    for other in (Shapes("train", 3, seed=1)[1][0], Shapes("val", 3, seed=0)[1][0], Shapes("test", 3)[1][0],
                  Shapes("train", 3, seed=0)[2][0]):
        assert not torch.equal(image, other)


def test_item_types_shapes_and_dtypes(items):
    image, target = items[0]
    assert type(image) is tv_tensors.Image and image.dtype == torch.uint8 and image.shape == (3, 96, 96)
    assert set(target) == {"mask", "boxes", "labels", "masks"}
    assert type(target["mask"]) is tv_tensors.Mask
    assert target["mask"].dtype == torch.int64 and target["mask"].shape == (96, 96)
    n = len(target["labels"])
    assert target["labels"].dtype == torch.int64
    assert type(target["masks"]) is tv_tensors.Mask
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (n, 96, 96)
    boxes = target["boxes"]
    assert type(boxes) is tv_tensors.BoundingBoxes and boxes.dtype == torch.float32 and boxes.shape == (n, 4)
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY and tuple(boxes.canvas_size) == (96, 96)


def test_dataset_attributes():
    dataset = Shapes("test", 12, image_size=64, seed=5)
    assert len(dataset) == 12 and dataset.split == "test" and dataset.image_size == 64
    assert dataset.classes == ("background", "circle", "square", "triangle", "star")
    assert dataset.palette == voc_palette()


def test_every_scene_has_one_to_six_instances_each_visible_on_enough_pixels(items):
    counts = [len(target["labels"]) for _, target in items]
    assert min(counts) >= 1 and max(counts) <= 6 and len(set(counts)) > 2
    for _, target in items:
        assert (target["masks"].sum(dim=(1, 2)) >= MIN_VISIBLE_AREA).all()
        assert ((target["labels"] >= 1) & (target["labels"] < len(CLASSES))).all()


def test_instance_masks_partition_the_semantic_mask(items):
    for _, target in items:
        masks = target["masks"].numpy().astype(bool)
        semantic = target["mask"].numpy()
        assert masks.sum(axis=0).max() <= 1, "instances overlap: occlusion must keep only the visible part"
        np.testing.assert_array_equal(masks.any(axis=0), semantic != 0)
        for mask, label in zip(masks, target["labels"].tolist()):
            assert (semantic[mask] == label).all()


def test_boxes_are_the_tight_pixel_extent_of_instance_masks(items):
    for _, target in items:
        for mask, box in zip(target["masks"].numpy(), target["boxes"].tolist()):
            rows, cols = np.nonzero(mask)
            assert box == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def test_objects_are_large_and_all_four_classes_appear(items):
    labels = torch.cat([target["labels"] for _, target in items])
    assert set(labels.tolist()) == {1, 2, 3, 4}
    topmost_areas = [target["masks"][-1].sum().item() for _, target in items]
    assert np.median(topmost_areas) > 0.03 * 96 * 96


def test_object_colours_do_not_reveal_the_class(items):
    mean_colour = {label: [] for label in range(1, 5)}
    for image, target in items:
        for mask, label in zip(target["masks"].bool(), target["labels"].tolist()):
            mean_colour[label].append(image[:, mask].float().mean(dim=1))
    spreads = [torch.stack(colours).std(dim=0).min().item() for colours in mean_colour.values()]
    assert min(spreads) > 30


def test_transforms_receive_and_return_image_and_target():
    def transforms(image, target):
        return image.flip(-1), {**target, "seen": True}

    plain, transformed = Shapes("train", 2)[1], Shapes("train", 2, transforms=transforms)[1]
    assert torch.equal(transformed[0], plain[0].flip(-1)) and transformed[1]["seen"]


def test_bad_index_or_split_raise():
    with pytest.raises(IndexError):
        Shapes("train", 3)[3]
    with pytest.raises(ValueError, match="split"):
        Shapes("training", 3)
