"""COCO instances json -> folder layout of semantic masks, against masks built from pycocotools' annToMask."""
import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image
from pycocotools.coco import COCO

from seglab.cli import main
from seglab.data import FolderSegmentation, export_shapes
from seglab.data.import_coco import import_coco

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CATEGORIES = [{"id": 9, "name": "kite"}, {"id": 2, "name": "person"}, {"id": 4, "name": "boat"}]  # ranks 3, 1, 2
SIZES = {3: (30, 44), 8: (36, 25), 11: (20, 20)}  # image id: (H, W); 11 has no annotations


def rle(mask, compressed):
    if compressed:
        encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}
    flat = mask.astype(np.uint8).ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": [0] + counts if flat[0] else counts}


def region(shape, rows, cols):
    mask = np.zeros(shape, bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def coco_dict():
    annotations = [  # polygons, a multi-polygon, RLE both ways, a crowd, overlaps of one and of two classes
        (3, 2, [[2, 2, 20, 3, 10, 18]], 0), (3, 4, [[15, 5, 30, 5, 30, 15, 15, 15], [35, 20, 42, 20, 40, 28]], 0),
        (3, 2, [[5, 10, 14, 10, 14, 16]], 0), (3, 9, rle(region((30, 44), (20, 29), (0, 12)), False), 1),
        (8, 9, rle(region((36, 25), (3, 20), (4, 15)), True), 0),
        (8, 4, rle(region((36, 25), (15, 30), (10, 24)), False), 0),
    ]
    images = [{"id": i, "file_name": f"sub/img_{i}.png", "height": h, "width": w} for i, (h, w) in SIZES.items()]
    return {"images": images, "categories": CATEGORIES,
            "annotations": [{"id": k, "image_id": i, "category_id": c, "segmentation": s, "iscrowd": crowd,
                             "bbox": bbox(s, *SIZES[i])} for k, (i, c, s, crowd) in enumerate(annotations, start=1)]}


def bbox(segmentation, height, width):
    if isinstance(segmentation, list):
        encoded = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        encoded = mask_utils.frPyObjects(segmentation, height, width)
    else:
        encoded = segmentation
    return mask_utils.toBbox(encoded).tolist()


def reference_masks(ann_file):
    """{image id: (H, W) uint8} from annToMask: label = rank of the category id, 255 where two classes meet
    or on crowds."""
    coco = COCO(str(ann_file))
    rank = {c: r for r, c in enumerate(sorted(coco.getCatIds()), start=1)}
    masks = {}
    for image_id, info in coco.imgs.items():
        labels = np.zeros((info["height"], info["width"]), np.int64)
        seen = [set() for _ in range(labels.size)]
        crowd = np.zeros(labels.shape, bool)
        for annotation in coco.imgToAnns[image_id]:
            pixels = coco.annToMask(annotation) > 0
            if annotation["iscrowd"]:
                crowd |= pixels
                continue
            for flat in np.flatnonzero(pixels):
                seen[flat].add(rank[annotation["category_id"]])
        for flat, classes in enumerate(seen):
            if classes:
                labels.flat[flat] = classes.pop() if len(classes) == 1 else 255
        labels[crowd] = 255
        masks[image_id] = labels.astype(np.uint8)
    return masks


@pytest.fixture
def coco_tree(tmp_path):
    ann_file = tmp_path / "instances_default.json"
    ann_file.write_text(json.dumps(coco_dict()))
    for image_id, (h, w) in SIZES.items():
        (tmp_path / "images" / "sub").mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(image_id).integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "images" / "sub" / f"img_{image_id}.png")
    return ann_file, tmp_path / "images"


def test_masks_match_pycocotools_ann_to_mask(coco_tree, tmp_path, capsys):
    ann_file, images = coco_tree
    out = tmp_path / "out"
    main(["data", "import", "coco", str(ann_file), str(images), "--out", str(out)])
    assert (out / "classes.txt").read_text().splitlines() == ["background", "person", "boat", "kite"]
    expected = reference_masks(ann_file)
    assert all(len(np.unique(expected[i])) > 2 for i in (3, 8)) and (expected[3] == 255).any()
    for image_id in SIZES:
        mask = Image.open(out / "masks" / f"sub__img_{image_id}.png")
        assert mask.mode == "P"
        np.testing.assert_array_equal(np.array(mask), expected[image_id], err_msg=str(image_id))
        assert ((out / "images" / f"sub__img_{image_id}.png").read_bytes()
                == (images / "sub" / f"img_{image_id}.png").read_bytes())
    main(["data", "check", str(out), "--format", "folder"])
    assert "3 images, no " in capsys.readouterr().out
    assert FolderSegmentation(out).classes == ("background", "person", "boat", "kite")


def test_shapes_export_round_trip(tmp_path):
    root = export_shapes(tmp_path / "coco", "coco", {"val": 3}, image_size=48, seed=5, progress=False)
    ann_file = root / "annotations" / "instances_val2017.json"
    import_coco(ann_file, root / "val2017", tmp_path / "out")
    expected = reference_masks(ann_file)
    coco = json.loads(ann_file.read_text())
    for image in coco["images"]:
        stem = image["file_name"].rsplit(".", 1)[0]
        np.testing.assert_array_equal(np.array(Image.open(tmp_path / "out" / "masks" / f"{stem}.png")),
                                      expected[image["id"]])


def test_missing_image_names_the_file_and_writes_nothing(coco_tree, tmp_path):
    ann_file, images = coco_tree
    (images / "sub" / "img_8.png").unlink()
    with pytest.raises(FileNotFoundError, match="img_8.png"):
        import_coco(ann_file, images, tmp_path / "out")
    assert not (tmp_path / "out").exists()
