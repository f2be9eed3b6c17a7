import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from seglab.data.coco_format import decode_rle, encode_masks, instance_annotations, segmentation_to_rle

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def random_masks(seed, count, height, width):
    """(count, H, W) uint8 blobs: seeded noise thresholded, one mask touching the borders."""
    masks = (np.random.default_rng(seed).random((count, height, width)) < 0.3).astype(np.uint8)
    masks[0, 0, :] = masks[0, :, -1] = 1
    return masks


@pytest.mark.parametrize("count, height, width", [(1, 1, 1), (3, 7, 5), (2, 31, 64)])
def test_encoded_masks_decode_back_with_pycocotools(count, height, width):
    masks = random_masks(count * height, count, height, width)
    for given in (masks, torch.from_numpy(masks), torch.from_numpy(masks).bool()):
        rles = encode_masks(given)
        assert len(rles) == count
        for rle, mask in zip(rles, masks):
            assert rle["size"] == [height, width] and isinstance(rle["counts"], str)
            np.testing.assert_array_equal(mask_utils.decode(rle), mask)
            np.testing.assert_array_equal(decode_rle(segmentation_to_rle(rle, height, width)), mask)


def test_instance_annotations_area_and_box_match_the_mask_pixels():
    masks = random_masks(3, 3, 20, 26)
    annotations = instance_annotations(torch.from_numpy(masks), [4, 1, 4], image_id=9, first_id=40)
    assert [a["id"] for a in annotations] == [40, 41, 42] and [a["category_id"] for a in annotations] == [4, 1, 4]
    for annotation, mask in zip(annotations, masks):
        rows, cols = np.nonzero(mask)
        assert annotation["image_id"] == 9 and annotation["iscrowd"] == 0
        assert annotation["area"] == float(mask.sum())
        assert annotation["bbox"] == [cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()]
        np.testing.assert_array_equal(mask_utils.decode(annotation["segmentation"]), mask)
