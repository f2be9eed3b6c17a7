import copy
import itertools
import json
import re

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from seglab.data import COCOInstances, Shapes, export_shapes, train_transforms, validate_dataset
from seglab.engine.sampler import EpochBatchSampler, SeededTransforms, aspect_ratio_groups

# pycocotools' own decode() (inside annToMask) trips a NumPy 2 copy-keyword DeprecationWarning
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# Non-contiguous ids listed out of order: labels must follow increasing id (1 -> 1, 5 -> 2, 17 -> 3).
CATEGORIES = [{"id": 17, "name": "kite"}, {"id": 1, "name": "person"}, {"id": 5, "name": "airplane"}]
WIDE, TALL, EMPTY, CROWD_ONLY = 7, 3, 12, 20  # image ids
SIZES = {WIDE: (30, 50), TALL: (50, 30), EMPTY: (40, 40), CROWD_ONLY: (32, 32)}  # (H, W)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE of a binary (H, W) mask: column-major run lengths, starting with a 0-run."""
    flat = np.asarray(mask, dtype=np.uint8).ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": [0] + counts if flat[0] else counts}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def box_mask(height, width, rows, cols) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return mask


# Region masks written as RLE, kept here as the independent truth for their decoded masks
CROWD_REGION = box_mask(30, 50, (20, 28), (0, 15))  # uncompressed RLE, iscrowd=1, on WIDE
COMPRESSED_REGION = box_mask(30, 50, (10, 16), (12, 30))  # compressed RLE on WIDE, overlaps the triangle
TALL_REGION = box_mask(50, 30, (5, 25), (2, 12))  # uncompressed RLE, iscrowd=0, on TALL, no "area"
CROWD_ONLY_REGION = box_mask(32, 32, (0, 10), (0, 32))


def annotations() -> list[dict]:
    """Every segmentation kind: polygon, multi-polygon, uncompressed RLE (crowd and not), compressed RLE."""
    return [
        {"id": 101, "image_id": WIDE, "category_id": 5, "segmentation": [[5, 5, 20, 5, 12, 18]],
         "bbox": [5, 5, 15, 13], "area": 97.5, "iscrowd": 0},
        {"id": 102, "image_id": WIDE, "category_id": 17,
         "segmentation": [[25, 2, 35, 2, 35, 10, 25, 10], [38, 12, 46, 12, 46, 20, 38, 20]],
         "bbox": [25, 2, 21, 18], "area": 144.0, "iscrowd": 0},
        {"id": 103, "image_id": WIDE, "category_id": 1, "segmentation": uncompressed_rle(CROWD_REGION),
         "bbox": [0, 20, 15, 8], "area": 120.0, "iscrowd": 1},
        {"id": 104, "image_id": WIDE, "category_id": 1, "segmentation": compressed_rle(COMPRESSED_REGION),
         "bbox": [12, 10, 18, 6], "area": 108.0, "iscrowd": 0},
        {"id": 105, "image_id": TALL, "category_id": 17, "segmentation": [[20, 40, 40, 40, 40, 60, 20, 60]],
         "bbox": [20, 40, 20, 20], "area": 100.0, "iscrowd": 0},  # reaches outside the 30x50 image
        {"id": 106, "image_id": TALL, "category_id": 5, "segmentation": uncompressed_rle(TALL_REGION),
         "bbox": [2, 5, 10, 20]},  # no "area", no "iscrowd"
        {"id": 108, "image_id": CROWD_ONLY, "category_id": 1, "segmentation": compressed_rle(CROWD_ONLY_REGION),
         "bbox": [0, 0, 32, 10], "area": 320.0, "iscrowd": 1},
    ]


def coco_dict() -> dict:
    images = [{"id": i, "file_name": f"image_{i}.png", "height": h, "width": w} for i, (h, w) in SIZES.items()]
    return {"images": images, "annotations": annotations(), "categories": copy.deepcopy(CATEGORIES)}


def write_images(image_dir, sizes=SIZES) -> dict:
    """Seeded noise PNGs (lossless, so the dataset must return them exactly); returns id -> (H, W, 3) array."""
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = {}
    for image_id, (h, w) in sizes.items():
        pixels[image_id] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels[image_id]).save(image_dir / f"image_{image_id}.png")
    return pixels


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
    root = tmp_path_factory.mktemp("handmade")
    pixels = write_images(root / "images")
    (root / "instances.json").write_text(json.dumps(coco_dict()))
    return root, pixels


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_coco")
    return export_shapes(root, "coco", {"train": 6, "val": 4}, image_size=64, seed=0, progress=False)


def dataset(root, **options):
    return COCOInstances(root / "images", root / "instances.json", **options)


def index_of(ds, image_id):
    return ds.ids.index(image_id)


def test_shapes_coco_export_reads_back_as_the_shapes_items(shapes_root):
    for split, count in (("train", 6), ("val", 4)):
        ds = COCOInstances(shapes_root / f"{split}2017", shapes_root / "annotations" / f"instances_{split}2017.json")
        shapes = Shapes(split, count, image_size=64, seed=0)
        assert len(ds) == count and ds.classes == shapes.classes and ds.ids == list(range(1, count + 1))
        for index in range(count):
            image, target = ds[index]
            expected_image, expected = shapes[index]
            assert type(image) is tv_tensors.Image and image.dtype == torch.uint8 and image.shape == (3, 64, 64)
            with Image.open(ds.image_path(index)) as jpeg:
                assert torch.equal(image, torch.from_numpy(np.array(jpeg)).permute(2, 0, 1))
            assert (image.float() - expected_image.float()).abs().mean() < 10  # noisy scenes, JPEG quality 95
            assert torch.equal(target["masks"], expected["masks"]) and torch.equal(target["labels"], expected["labels"])
            assert torch.equal(target["boxes"], expected["boxes"])  # Shapes' boxes are exclusive xyxy, as COCO's
            assert torch.equal(target["mask"], expected["mask"])  # visible parts are disjoint: no ignore
            assert target["image_id"] == index + 1


def test_item_types_shapes_and_dtypes(handmade):
    root, pixels = handmade
    ds = dataset(root)
    image, target = ds[index_of(ds, WIDE)]
    assert type(image) is tv_tensors.Image and image.dtype == torch.uint8 and image.shape == (3, 30, 50)
    assert torch.equal(image, torch.from_numpy(pixels[WIDE]).permute(2, 0, 1))
    assert set(target) == {"boxes", "labels", "masks", "area", "iscrowd", "image_id", "crowd_mask", "mask"}
    k = len(target["labels"])
    assert type(target["boxes"]) is tv_tensors.BoundingBoxes and target["boxes"].dtype == torch.float32
    assert target["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    assert tuple(target["boxes"].canvas_size) == (30, 50)
    assert target["labels"].dtype == torch.int64 and target["iscrowd"].dtype == torch.int64
    assert type(target["masks"]) is tv_tensors.Mask and target["masks"].dtype == torch.uint8
    assert target["masks"].shape == (k, 30, 50) and target["boxes"].shape == (k, 4) and target["area"].shape == (k,)
    assert target["area"].dtype == torch.float32 and target["image_id"] == WIDE
    assert type(target["crowd_mask"]) is tv_tensors.Mask and target["crowd_mask"].dtype == torch.uint8
    assert type(target["mask"]) is tv_tensors.Mask and target["mask"].dtype == torch.int64
    assert target["mask"].shape == target["crowd_mask"].shape == (30, 50)


def test_masks_equal_pycocotools_annToMask_for_polygons_and_rles(handmade):
    root, _ = handmade
    ds = dataset(root, remove_crowd_from_targets=False)
    reference = COCO(str(root / "instances.json"))
    for index, image_id in enumerate(ds.ids):
        target = ds.target(index)
        expected = [reference.annToMask(a) for a in reference.loadAnns(reference.getAnnIds(imgIds=image_id))]
        assert len(target["masks"]) == len(expected)
        for mask, reference_mask in zip(target["masks"].numpy(), expected):
            np.testing.assert_array_equal(mask, reference_mask)
    # and the RLEs decode to the arrays they were written from
    wide, tall = ds.target(index_of(ds, WIDE)), ds.target(index_of(ds, TALL))
    np.testing.assert_array_equal(wide["masks"][2].numpy(), CROWD_REGION)
    np.testing.assert_array_equal(wide["masks"][3].numpy(), COMPRESSED_REGION)
    np.testing.assert_array_equal(tall["masks"][1].numpy(), TALL_REGION)
    assert wide["masks"][1].sum() > 0 and not (wide["masks"][1, :, 36:38] > 0).any()  # two separate parts


def test_boxes_are_converted_from_xywh_to_xyxy_and_clamped_to_the_image(handmade):
    root, _ = handmade
    ds = dataset(root)
    wide, tall = ds.target(index_of(ds, WIDE)), ds.target(index_of(ds, TALL))
    assert wide["boxes"].tolist() == [[5, 5, 20, 18], [25, 2, 46, 20], [12, 10, 30, 16]]
    assert tall["boxes"].tolist() == [[20, 40, 30, 50], [2, 5, 12, 25]]  # the first reached to (40, 60)
    assert wide["area"].tolist() == [97.5, 144.0, 108.0]  # the json's areas, crowd left out
    assert tall["area"].tolist() == [100.0, TALL_REGION.sum()]  # missing area -> mask area


def test_labels_are_contiguous_and_map_back_to_the_original_category_ids(handmade):
    root, _ = handmade
    ds = dataset(root, remove_crowd_from_targets=False)
    assert ds.classes == ("background", "person", "airplane", "kite")
    assert ds.category_id_to_label == {1: 1, 5: 2, 17: 3} and ds.label_to_category_id == {1: 1, 2: 5, 3: 17}
    for index, image_id in enumerate(ds.ids):
        target = ds.target(index)
        expected = [a["category_id"] for a in annotations() if a["image_id"] == image_id]
        assert [ds.label_to_category_id[label] for label in target["labels"].tolist()] == expected


def test_crowd_regions_leave_the_targets_and_remain_as_ignore(handmade):
    root, _ = handmade
    ds = dataset(root)
    target = ds.target(index_of(ds, WIDE))
    assert target["labels"].tolist() == [2, 3, 1] and target["iscrowd"].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(target["crowd_mask"].numpy(), CROWD_REGION)
    assert (target["mask"][CROWD_REGION.astype(bool)] == 255).all()
    kept = dataset(root, remove_crowd_from_targets=False).target(index_of(ds, WIDE))
    assert kept["labels"].tolist() == [2, 3, 1, 1] and kept["iscrowd"].tolist() == [0, 0, 1, 0]
    np.testing.assert_array_equal(kept["crowd_mask"].numpy(), CROWD_REGION)


def test_semantic_mask_is_ignore_where_classes_overlap_or_crowd(handmade):
    root, _ = handmade
    ds = dataset(root)
    reference = COCO(str(root / "instances.json"))
    expected = np.zeros((30, 50), dtype=np.int64)
    claims = np.zeros((4, 30, 50), dtype=bool)  # which labels cover each pixel, by explicit loops
    for a in reference.loadAnns(reference.getAnnIds(imgIds=WIDE)):
        if not a["iscrowd"]:
            claims[ds.category_id_to_label[a["category_id"]]] |= reference.annToMask(a).astype(bool)
    for y in range(30):
        for x in range(50):
            labels = np.flatnonzero(claims[:, y, x])
            expected[y, x] = 255 if CROWD_REGION[y, x] or len(labels) > 1 else (labels[0] if len(labels) else 0)
    target = ds.target(index_of(ds, WIDE))
    assert (expected == 255).sum() > CROWD_REGION.sum()  # the triangle and the RLE box do overlap
    np.testing.assert_array_equal(target["mask"].numpy(), expected)


def test_images_without_annotations_are_kept_with_empty_targets(handmade):
    root, pixels = handmade
    ds = dataset(root)
    assert ds.ids == [TALL, WIDE, EMPTY, CROWD_ONLY]
    for image_id in (EMPTY, CROWD_ONLY):
        image, target = ds[index_of(ds, image_id)]
        h, w = SIZES[image_id]
        assert torch.equal(image, torch.from_numpy(pixels[image_id]).permute(2, 0, 1))
        assert target["boxes"].shape == (0, 4) and tuple(target["boxes"].canvas_size) == (h, w)
        assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
        assert target["masks"].shape == (0, h, w) and target["masks"].dtype == torch.uint8
        assert target["area"].shape == (0,) and target["iscrowd"].shape == (0,)
        assert target["mask"].shape == (h, w) and target["image_id"] == image_id
    crowd = ds.target(index_of(ds, CROWD_ONLY))
    np.testing.assert_array_equal(crowd["crowd_mask"].numpy(), CROWD_ONLY_REGION)
    assert torch.equal(crowd["mask"], torch.from_numpy(np.where(CROWD_ONLY_REGION > 0, 255, 0)))


def test_remove_images_without_annotations_drops_those_with_empty_targets(handmade):
    root, _ = handmade
    assert dataset(root, remove_images_without_annotations=True).ids == [TALL, WIDE]
    kept = dataset(root, remove_images_without_annotations=True, remove_crowd_from_targets=False)
    assert kept.ids == [TALL, WIDE, CROWD_ONLY]


def test_instances_whose_clamped_box_is_empty_are_dropped(tmp_path):
    data = coco_dict()
    data["annotations"][0]["bbox"] = [5, 5, 0, 13]  # zero width
    data["annotations"][1]["bbox"] = [60, 2, 10, 10]  # right of the 50-pixel-wide image
    write_images(tmp_path / "images")
    (tmp_path / "instances.json").write_text(json.dumps(data))
    ds = dataset(tmp_path)
    target = ds.target(index_of(ds, WIDE))
    assert target["labels"].tolist() == [1] and target["masks"].shape == (1, 30, 50)
    np.testing.assert_array_equal(target["masks"][0].numpy(), COMPRESSED_REGION)


def _set(path, value):
    def mutate(data):
        *keys, last = path
        node = data
        for key in keys:
            node = node[key]
        node[last] = value
    return mutate


# (name, mutation of the good dict, error text); every message must also name the json file
BAD_JSON = [
    ("unknown category", _set(["annotations", 0, "category_id"], 99),
     r"annotation id 101 .*category_id 99.*\[1, 5, 17\]"),
    ("two-point polygon", _set(["annotations", 0, "segmentation"], [[5, 5, 20, 5]]), "at least 3 points"),
    ("odd polygon", _set(["annotations", 1, "segmentation", 1], [38, 12, 46, 12, 46, 20, 38]),
     "annotation id 102.*7 numbers"),
    ("flat polygon", _set(["annotations", 0, "segmentation"], [5, 5, 20, 5, 12, 18]), "list of polygons"),
    ("empty polygon list", _set(["annotations", 0, "segmentation"], []), "empty polygon list"),
    ("negative width", _set(["annotations", 0, "bbox"], [5, 5, -3, 13]), "negative width or height"),
    ("negative height", _set(["annotations", 4, "bbox"], [20, 40, 20, -1]), "annotation id 105.*negative"),
    ("short bbox", _set(["annotations", 0, "bbox"], [5, 5, 15]), "4 numbers"),
    ("rle of another size", _set(["annotations", 3, "segmentation", "size"], [31, 50]), r"RLE size \[31, 50\]"),
    ("rle counts off", _set(["annotations", 2, "segmentation", "counts"], [5, 10, 1]), "summing to h\\*w = 1500"),
    ("segmentation neither", _set(["annotations", 0, "segmentation"], "abc"), "polygons .* or RLE"),
    ("unknown image", _set(["annotations", 0, "image_id"], 999), "image_id 999"),
    ("no segmentation", lambda d: d["annotations"][0].pop("segmentation"), r"lacks \['segmentation'\]"),
    ("bad iscrowd", _set(["annotations", 0, "iscrowd"], 2), "iscrowd must be 0 or 1"),
    ("duplicate annotation id", _set(["annotations", 1, "id"], 101), "appears twice"),
    ("duplicate image id", _set(["images", 0, "id"], TALL), "image id 3 appears twice"),
    ("duplicate category id", _set(["categories", 1, "id"], 17), "category id 17 appears twice"),
    ("image without size", lambda d: d["images"][0].pop("height"), "needs 'id', 'file_name', 'height'"),
    ("no categories", lambda d: d.pop("categories"), "'categories'"),
]


@pytest.mark.parametrize("name, mutate, message", BAD_JSON, ids=[case[0] for case in BAD_JSON])
def test_bad_annotations_raise_naming_the_file(tmp_path, name, mutate, message):
    data = coco_dict()
    mutate(data)
    (tmp_path / "images").mkdir()
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as error:
        dataset(tmp_path)
    assert str(ann_file) in str(error.value)


@pytest.mark.parametrize("text, message", [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object")])
def test_malformed_json_raises_naming_the_file(tmp_path, text, message):
    (tmp_path / "images").mkdir()
    (tmp_path / "instances.json").write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        dataset(tmp_path)
    assert str(tmp_path / "instances.json") in str(error.value)


def test_missing_annotation_file_or_image_folder(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "instances.json"))):
        dataset(tmp_path)
    (tmp_path / "instances.json").write_text(json.dumps(coco_dict()))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        COCOInstances(tmp_path / "nowhere", tmp_path / "instances.json")


def test_bad_images_and_undecodable_rle_raise_naming_the_file(tmp_path):
    data = coco_dict()
    data["annotations"][3]["segmentation"]["counts"] = "garbage!!"
    write_images(tmp_path / "images")
    (tmp_path / "instances.json").write_text(json.dumps(data))
    ds = dataset(tmp_path)
    with pytest.raises(ValueError, match="annotation id 104: cannot decode") as error:
        ds[index_of(ds, WIDE)]
    assert str(tmp_path / "instances.json") in str(error.value)

    missing = tmp_path / "images" / f"image_{TALL}.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        ds[index_of(ds, TALL)]
    corrupt = tmp_path / "images" / f"image_{EMPTY}.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="cannot read " + re.escape(str(corrupt))):
        ds[index_of(ds, EMPTY)]
    resized = tmp_path / "images" / f"image_{CROWD_ONLY}.png"
    Image.new("RGB", (33, 32)).save(resized)
    with pytest.raises(ValueError, match=re.escape(str(resized)) + r" is 33x32 .* says 32x32"):
        ds[index_of(ds, CROWD_ONLY)]


def test_grayscale_images_are_returned_as_rgb(tmp_path):
    write_images(tmp_path / "images")
    Image.new("L", (50, 30), 77).save(tmp_path / "images" / f"image_{WIDE}.png")
    (tmp_path / "instances.json").write_text(json.dumps(coco_dict()))
    ds = dataset(tmp_path)
    image, _ = ds[index_of(ds, WIDE)]
    assert image.shape == (3, 30, 50) and (image == 77).all()


def test_train_transforms_and_validation_accept_the_items(handmade):
    root, _ = handmade
    ds = dataset(root, transforms=train_transforms(24, scale_range=(0.9, 1.1)))
    torch.manual_seed(0)
    for index in range(len(ds)):
        image, target = ds[index]
        k = len(target["labels"])
        assert image.shape == (3, 24, 24) and image.dtype == torch.float32
        assert target["boxes"].shape == (k, 4) and target["masks"].shape == (k, 24, 24)
        assert target["mask"].shape == target["crowd_mask"].shape == (24, 24)
    summary = validate_dataset(dataset(root), progress=False)
    assert summary["images"] == 4 and summary["images_per_class"] == [4, 1, 2, 2]
    assert summary["ignore_pixels"] > CROWD_REGION.sum() + CROWD_ONLY_REGION.sum()


def test_dataloader_batches_of_one_aspect_ratio_group(handmade):
    root, _ = handmade
    ds = dataset(root)  # groups [0, 1, 1, 1]: one tall image, three wide or square
    sampler = EpochBatchSampler(len(ds), 2, seed=0, groups=aspect_ratio_groups(ds))
    loader = DataLoader(SeededTransforms(ds, lambda image, target: (image, target), seed=0),
                        batch_sampler=sampler, collate_fn=lambda batch: tuple(map(list, zip(*batch))))
    batches = list(itertools.islice(loader, 2))  # one batch per epoch: the tall group has too few images
    assert sampler.batches_per_epoch == 1
    for images, targets in batches:
        assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2
        orientations = {image.shape[-1] >= image.shape[-2] for image in images}
        assert orientations == {True}
        assert all(t["masks"].shape[-2:] == i.shape[-2:] for i, t in zip(images, targets))


def test_missing_area_and_iscrowd_are_filled_in_the_pycocotools_index(handmade):
    root, _ = handmade
    ds = dataset(root)  # COCOeval reads both from ds.coco
    assert ds.coco.anns[106]["area"] == TALL_REGION.sum() and ds.coco.anns[106]["iscrowd"] == 0
    assert sorted(ds.coco.getCatIds()) == [1, 5, 17] and sorted(ds.coco.getImgIds()) == ds.ids
