import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from seglab.data import Shapes, export_shapes

# pycocotools' own decode() (inside annToMask) trips a NumPy 2 copy-keyword DeprecationWarning
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    return export_shapes(root, "coco", {"train": 3, "val": 5}, image_size=80, seed=4, progress=False)


@pytest.mark.parametrize("split, count", [("train", 3), ("val", 5)])
def test_annotations_load_in_pycocotools_and_decode_to_the_instance_masks(coco_root, split, count):
    coco = COCO(str(coco_root / "annotations" / f"instances_{split}2017.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["circle", "square", "triangle", "star"]
    assert coco.getCatIds() == [1, 2, 3, 4]
    shapes = Shapes(split, count, image_size=80, seed=4)
    image_ids = sorted(coco.getImgIds())
    assert len(image_ids) == count
    for index, image_id in enumerate(image_ids):
        info = coco.loadImgs(image_id)[0]
        assert info["file_name"] == f"shapes_{split}_{index:06d}.jpg"
        with Image.open(coco_root / f"{split}2017" / info["file_name"]) as jpeg:
            assert jpeg.size == (info["width"], info["height"]) == (80, 80)
        _, target = shapes[index]
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert [a["category_id"] for a in annotations] == target["labels"].tolist()
        for annotation, mask, box in zip(annotations, target["masks"].numpy(), target["boxes"].tolist()):
            np.testing.assert_array_equal(coco.annToMask(annotation), mask)
            assert annotation["area"] == mask.sum() and annotation["iscrowd"] == 0
            assert annotation["bbox"] == [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def test_annotation_ids_are_unique_and_json_is_plain(coco_root):
    data = json.loads((coco_root / "annotations" / "instances_val2017.json").read_text())
    ids = [a["id"] for a in data["annotations"]]
    assert len(ids) == len(set(ids)) and all(isinstance(a["segmentation"]["counts"], str) for a in data["annotations"])


def test_unknown_format_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="coco.*voc"):
        export_shapes(tmp_path, "cityscapes", {"train": 1}, progress=False)
