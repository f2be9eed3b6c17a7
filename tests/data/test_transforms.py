import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from seglab.data import IMAGENET_MEAN, IMAGENET_STD, Shapes, eval_transforms, train_transforms
from seglab.data.transforms import PadToSize, pair

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
