import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes

from seglab.data import IMAGENET_MEAN, IMAGENET_STD, Shapes, eval_transforms, train_transforms
from seglab.data.transforms import PadToSize, RandomRotate, color_jitter_transform, pair
from seglab.engine.sampler import SeededTransforms

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def sample():
    return Shapes("train", 4, image_size=128, seed=2)[3]


def copy(sample):
    image, target = sample
    return image.clone(), {key: value.clone() for key, value in target.items()}


def assert_boxes_enclose_masks(target, tolerance=0.0):
    boxes, masks = target["boxes"], target["masks"]
    assert len(boxes) == len(target["labels"]) == len(masks)
    height, width = masks.shape[-2:]
    assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    for box, mask in zip(boxes.tolist(), masks.numpy()):
        rows, cols = np.nonzero(mask)
        if len(rows):
            assert box[0] <= cols.min() + tolerance and box[2] >= cols.max() + 1 - tolerance
            assert box[1] <= rows.min() + tolerance and box[3] >= rows.max() + 1 - tolerance


def test_padding_is_ignore_for_the_semantic_mask_and_zero_for_instance_masks(sample):
    image, target = copy(sample)
    transforms = train_transforms(96, scale_range=(0.5, 0.5), hflip=False)  # 128 -> 64, padded to 96
    out_image, out = transforms(image, target)

    assert out_image.shape == (3, 96, 96) and out["mask"].shape == (96, 96)
    # torch "nearest" at scale 1/2 samples source pixel 2i
    np.testing.assert_array_equal(out["mask"][:64, :64].numpy(), target["mask"][::2, ::2].numpy())
    assert (out["mask"][64:] == 255).all() and (out["mask"][:, 64:] == 255).all()
    masks = out["masks"]
    assert masks.dtype == torch.uint8 and masks.shape[1:] == (96, 96)
    assert (masks[:, 64:] == 0).all() and (masks[:, :, 64:] == 0).all()
    np.testing.assert_array_equal(masks[:, :64, :64].numpy(), target["masks"][:, ::2, ::2].numpy())
    padded_pixel = ((0 - MEAN) / STD).view(3)
    torch.testing.assert_close(out_image[:, 80, 80], padded_pixel)
    assert out["boxes"].canvas_size == (96, 96)
    assert_boxes_enclose_masks(out, tolerance=1.0)


@pytest.mark.parametrize("crop_size", [48, (64, 160), 200])
def test_random_scale_and_crop_keep_mask_dtype_and_label_values(sample, crop_size):
    torch.manual_seed(0)
    transforms = train_transforms(crop_size)
    expected_size = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    labels = set(sample[1]["mask"].unique().tolist())
    for _ in range(10):
        image, target = transforms(*copy(sample))
        assert type(image) is tv_tensors.Image and image.dtype == torch.float32
        assert image.shape == (3, *expected_size)
        mask = target["mask"]
        assert type(mask) is tv_tensors.Mask and mask.dtype == torch.int64 and mask.shape == expected_size
        assert set(mask.unique().tolist()) <= labels | {255}
        assert target["masks"].dtype == torch.uint8 and set(target["masks"].unique().tolist()) <= {0, 1}
        assert target["labels"].dtype == torch.int64
        assert_boxes_enclose_masks(target, tolerance=1.0)


def test_horizontal_flip_moves_boxes_with_the_masks(sample):
    transforms = train_transforms(128, scale_range=(1.0, 1.0))
    flips = set()
    for seed in range(8):
        torch.manual_seed(seed)
        image, target = transforms(*copy(sample))
        flipped = not torch.equal(target["mask"], sample[1]["mask"])
        flips.add(flipped)
        if flipped:
            assert torch.equal(target["mask"], sample[1]["mask"].flip(-1))
        for box, mask in zip(target["boxes"].tolist(), target["masks"].numpy()):
            rows, cols = np.nonzero(mask)
            assert box == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    assert flips == {True, False}


def test_instances_cropped_away_are_dropped_with_their_labels_and_masks(sample):
    transforms = train_transforms(24, scale_range=(1.0, 1.0))
    counts = set()
    for seed in range(20):
        torch.manual_seed(seed)
        _, target = transforms(*copy(sample))
        counts.add(len(target["labels"]))
        assert_boxes_enclose_masks(target)
        assert ((target["boxes"][:, 2:] - target["boxes"][:, :2]) >= 1).all()
    assert min(counts) < len(sample[1]["labels"])


def test_semantic_only_targets_pass_through_train_transforms(sample):
    image, target = copy(sample)
    out_image, out = train_transforms(160)(image, {"mask": target["mask"]})
    assert set(out) == {"mask"} and out_image.shape == (3, 160, 160) and out["mask"].dtype == torch.int64


def test_eval_transforms_normalise_the_image_only(sample):
    image, target = copy(sample)
    out_image, out = eval_transforms()(image, target)
    expected = (image.numpy().astype(np.float64) / 255 - np.array(IMAGENET_MEAN)[:, None, None]) / np.array(
        IMAGENET_STD
    )[:, None, None]
    np.testing.assert_allclose(out_image.numpy(), expected, atol=1e-5)
    assert out_image.dtype == torch.float32 and out_image.shape == image.shape
    for key in target:
        assert torch.equal(out[key], target[key]) and out[key].dtype == target[key].dtype


def test_pair_accepts_an_int_or_one_or_two_positive_ints_and_names_a_bad_value():
    assert pair(5) == (5, 5) and pair((7,)) == (7, 7) and pair([3, 4]) == (3, 4) and pair((3, 4), "crop") == (3, 4)
    for bad in (0, -2, (3, 0), (1, 2, 3), (), (2.5, 3), "ab"):
        with pytest.raises(ValueError, match=r"^crop expects a positive int H or a pair \(H, W\), got "):
            pair(bad, "crop")
    with pytest.raises(ValueError, match=r"^size expects .* got \(4, -1\)$"):
        PadToSize((4, -1))
    with pytest.raises(ValueError, match="^crop_size expects"):
        train_transforms(0)


def hand_made(size=8):
    """A square uint8 image, a semantic mask with ids 0..2 and 255, two instance masks (one in a corner)."""
    generator = torch.Generator().manual_seed(0)
    image = tv_tensors.Image(torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator))
    mask = torch.randint(0, 3, (size, size), generator=generator)
    mask[0, 1] = 255
    masks = torch.zeros(2, size, size, dtype=torch.uint8)
    masks[0, 2:5, 1:7] = 1
    masks[1, 0, 0] = 1
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[1.0, 2, 7, 5], [0, 0, 1, 1]]), format="XYXY",
                                     canvas_size=(size, size))
    return image, {"mask": tv_tensors.Mask(mask), "masks": tv_tensors.Mask(masks), "boxes": boxes,
                   "labels": torch.tensor([1, 2]), "iscrowd": torch.tensor([0, 1])}


def tight_boxes(masks):
    return masks_to_boxes(masks.as_subclass(torch.Tensor)) + torch.tensor([0.0, 0.0, 1.0, 1.0])


def test_a_rotation_by_90_degrees_is_rot90_of_image_and_masks_with_boxes_from_the_masks():
    image, target = hand_made()
    out_image, out = RandomRotate((90, 90))(image, target)
    assert type(out_image) is tv_tensors.Image and torch.equal(out_image, torch.rot90(image, 1, (-2, -1)))
    assert type(out["mask"]) is tv_tensors.Mask and torch.equal(out["mask"], torch.rot90(target["mask"], 1, (-2, -1)))
    assert torch.equal(out["masks"], torch.rot90(target["masks"], 1, (-2, -1)))
    assert type(out["boxes"]) is tv_tensors.BoundingBoxes and out["boxes"].canvas_size == (8, 8)
    assert out["boxes"].tolist() == [[2.0, 1.0, 5.0, 7.0], [0.0, 7.0, 1.0, 8.0]]
    assert torch.equal(out["labels"], target["labels"]) and torch.equal(out["iscrowd"], target["iscrowd"])


def test_a_30_degree_rotation_fills_the_mask_corners_with_ignore_and_invents_no_class_ids(sample):
    image, target = copy(sample)
    labels = set(target["mask"].unique().tolist())
    out_image, out = RandomRotate((30, 30))(image, target)
    mask = out["mask"]
    assert mask.dtype == torch.int64 and mask.shape == target["mask"].shape
    assert all(mask[r, c] == 255 for r in (0, -1) for c in (0, -1))
    assert set(mask.unique().tolist()) <= labels | {255} and (mask != 255).float().mean() > 0.7
    assert all(out_image[:, r, c].eq(0).all() for r in (0, -1) for c in (0, -1))  # image fill 0
    assert set(out["masks"].unique().tolist()) <= {0, 1} and out["masks"][:, 0, 0].eq(0).all()  # instance fill 0
    torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), tight_boxes(out["masks"]))


def test_instances_rotated_out_of_the_image_are_dropped_with_their_labels():
    image, target = hand_made(16)
    _, out = RandomRotate((45, 45))(image, target)  # the corner pixel leaves the canvas
    assert len(out["masks"]) == len(out["boxes"]) == 1 and out["labels"].tolist() == [1]
    assert out["iscrowd"].tolist() == [0] and out["masks"].flatten(1).any(1).all()
    torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), tight_boxes(out["masks"]))


def test_color_jitter_changes_the_image_only_and_is_reproducible_per_seed(sample):
    jitter = color_jitter_transform([0.4, 0.4, 0.4, 0.1])
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(jitter(*copy(sample)))
    (a, target_a), (b, target_b), (c, _) = runs
    assert type(a) is tv_tensors.Image and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, sample[0])
    for key, value in sample[1].items():
        assert torch.equal(target_a[key], value) and type(target_a[key]) is type(value)
    with pytest.raises(ValueError, match="^color_jitter expects 4 numbers"):
        color_jitter_transform([0.1, 0.2])


def test_the_same_key_gives_the_same_augmented_sample_whatever_python_and_numpy_rngs_hold():
    import random

    transforms = train_transforms(48, rotate=20, color_jitter=[0.3, 0.3, 0.3, 0.05])
    dataset = SeededTransforms(Shapes("train", 3, image_size=64, seed=1), transforms, seed=7)
    samples = []
    for other_seed in (1, 2):  # only the torch RNG seeded by SeededTransforms may drive the draws
        random.seed(other_seed)
        np.random.seed(other_seed)
        samples.append(dataset[(2, 1)])
    (a, target_a), (b, target_b) = samples
    assert torch.equal(a, b) and set(target_a) == set(target_b)
    assert all(torch.equal(target_a[key], target_b[key]) for key in target_a)
    other, _ = dataset[(3, 1)]
    assert not torch.equal(a, other)
    state = torch.get_rng_state()
    dataset[(2, 1)]
    assert torch.equal(state, torch.get_rng_state())


def test_boxes_without_masks_are_rotated_by_v2_clamped_and_dropped_when_empty():
    image = tv_tensors.Image(torch.zeros(3, 16, 16, dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[0.0, 0, 1, 1], [4, 4, 6, 8]]), format="XYWH", canvas_size=(16, 16))
    _, out = RandomRotate((45, 45))(image, {"boxes": boxes, "labels": torch.tensor([1, 2])})
    assert out["labels"].tolist() == [2] and out["boxes"].format == tv_tensors.BoundingBoxFormat.XYWH
    assert out["boxes"].shape == (1, 4) and (out["boxes"][:, 2:] > 6).all()  # the loose box of the rotated box
