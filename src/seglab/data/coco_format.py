"""COCO instances json: reading, validation, RLE encoding and decoding (through ``pycocotools.mask``).

Segmentations may be polygons (a list of ``[x1, y1, x2, y2, ...]`` lists, one per part), uncompressed RLE
(``{"size": [h, w], "counts": [int, ...]}``) or compressed RLE (``counts`` a string); all are decoded
with ``pycocotools.mask`` exactly as ``COCO.annToMask`` does. Boxes in the json are XYWH in pixels.

``load_coco`` checks a file before pycocotools indexes it, so a malformed entry raises an error naming the
file and the entry instead of a KeyError deep inside training or evaluation. The dataset
(``data/coco.py``), the COCO export (``data/export.py``) and the COCO metrics (``metrics/coco.py``) share
this module.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pycocotools.mask as mask_utils
import torch
from pycocotools.coco import COCO

from seglab.data.paths import check_entry


def decode_rle(rle: dict) -> np.ndarray:
    """(H, W) uint8 mask of one compressed RLE. pycocotools' decode trips a NumPy 2 copy-keyword DeprecationWarning
    on every call; it is harmless and would flood a training log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode(rle)


def segmentation_to_rle(segmentation: list | dict, height: int, width: int) -> dict:
    """Compressed RLE of a COCO segmentation (polygons, uncompressed or compressed RLE) on an
    ``height`` x ``width`` image; the same steps as ``COCO.annToRLE``."""
    if isinstance(segmentation, list):  # polygons of one object: one RLE per part, merged
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):  # uncompressed RLE
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_segmentation(segmentation: Any, height: int, width: int, where: str) -> None:
    """Raise ValueError (``where`` names the file and annotation) unless ``segmentation`` is a well-formed
    polygon list or RLE for an ``height`` x ``width`` image. Polygon numbers are checked when decoded."""
    if isinstance(segmentation, list):
        if not segmentation:
            raise ValueError(f"{where}: segmentation is an empty polygon list")
        for part, polygon in enumerate(segmentation):
            if not isinstance(polygon, list):
                raise ValueError(
                    f"{where}: segmentation must be a list of polygons [[x1, y1, x2, y2, ...], ...], "
                    f"part {part} is {type(polygon).__name__}"
                )
            if len(polygon) < 6 or len(polygon) % 2:
                raise ValueError(
                    f"{where}: polygon {part} has {len(polygon)} numbers; a polygon needs at least 3 points "
                    "(6 numbers, x y pairs)"
                )
        return
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise ValueError(
            f"{where}: segmentation must be polygons (list of lists) or RLE ({{'size': [h, w], 'counts': ...}}), "
            f"got {type(segmentation).__name__}"
        )
    size, counts = segmentation["size"], segmentation["counts"]
    if not isinstance(size, list) or size != [height, width]:
        raise ValueError(f"{where}: RLE size {size!r} (h, w) differs from its image's [{height}, {width}]")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
            raise ValueError(
                f"{where}: uncompressed RLE counts must be non-negative integers summing to h*w = "
                f"{height * width}, got {len(counts)} counts summing to {sum(c for c in counts if _is_number(c))}"
            )
    elif not isinstance(counts, str):
        raise ValueError(f"{where}: RLE counts must be a list of ints or a string, got {type(counts).__name__}")


def _check_dataset(data: Any, ann_file: Path) -> None:
    """Validate (and normalise in place: missing ``iscrowd`` -> 0, missing ``area`` -> mask area) the
    COCO dict of ``ann_file``; raise ValueError naming the file and the offending entry."""
    if not isinstance(data, dict):
        raise ValueError(f"{ann_file}: expected a JSON object with images, annotations, categories, "
                         f"got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{ann_file}: missing or non-list {key!r} (a COCO instances file has images, "
                             "annotations and categories)")
    category_ids = set()
    for category in data["categories"]:
        if not isinstance(category, dict) or not isinstance(category.get("id"), int) or "name" not in category:
            raise ValueError(f"{ann_file}: category {category!r} needs an integer 'id' and a 'name'")
        if category["id"] in category_ids:
            raise ValueError(f"{ann_file}: category id {category['id']} appears twice")
        category_ids.add(category["id"])
    images = {}
    for image in data["images"]:
        if not isinstance(image, dict) or not all(k in image for k in ("id", "file_name", "height", "width")):
            raise ValueError(f"{ann_file}: image {image!r} needs 'id', 'file_name', 'height' and 'width'")
        if image["id"] in images:
            raise ValueError(f"{ann_file}: image id {image['id']} appears twice")
        check_entry(image["file_name"], ann_file)
        if not (isinstance(image["height"], int) and isinstance(image["width"], int)
                and image["height"] > 0 and image["width"] > 0):
            raise ValueError(f"{ann_file}: image id {image['id']} has height {image['height']!r} and width "
                             f"{image['width']!r}; expected positive integers")
        images[image["id"]] = image
    annotation_ids = set()
    for index, annotation in enumerate(data["annotations"]):
        if not isinstance(annotation, dict):
            raise ValueError(f"{ann_file}: annotation {index} is a {type(annotation).__name__}, not an object")
        where = f"{ann_file}: annotation id {annotation.get('id')!r} (#{index})"
        missing = [k for k in ("id", "image_id", "category_id", "bbox", "segmentation") if k not in annotation]
        if missing:
            raise ValueError(f"{where} lacks {missing}")
        if annotation["id"] in annotation_ids:
            raise ValueError(f"{where}: annotation id appears twice")
        annotation_ids.add(annotation["id"])
        image = images.get(annotation["image_id"])
        if image is None:
            raise ValueError(f"{where} refers to image_id {annotation['image_id']!r}, not among the images")
        if annotation["category_id"] not in category_ids:
            raise ValueError(f"{where} has category_id {annotation['category_id']!r}, not among the categories "
                             f"{sorted(category_ids)}")
        box = annotation["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise ValueError(f"{where}: bbox must be 4 numbers [x, y, width, height], got {box!r}")
        if box[2] < 0 or box[3] < 0:
            raise ValueError(f"{where}: bbox {box} has a negative width or height (COCO boxes are "
                             "[x, y, width, height])")
        annotation.setdefault("iscrowd", 0)
        if annotation["iscrowd"] not in (0, 1):
            raise ValueError(f"{where}: iscrowd must be 0 or 1, got {annotation['iscrowd']!r}")
        _check_segmentation(annotation["segmentation"], image["height"], image["width"], where)
        if "area" not in annotation:  # COCOeval needs it for its small/medium/large ranges
            rle = segmentation_to_rle(annotation["segmentation"], image["height"], image["width"])
            annotation["area"] = float(mask_utils.area(rle))


def read_json(path: str | Path, what: str) -> Any:
    """The parsed JSON file ``path``; a missing file or invalid JSON raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from error


def encode_masks(masks: torch.Tensor | np.ndarray) -> list[dict]:
    """Compressed RLEs ``{"size": [h, w], "counts": str}`` (JSON-ready) of (K, H, W) binary masks (bool or
    0/1 integers), one per mask, as ``pycocotools.mask.encode`` computes them."""
    masks = masks.numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    # pycocotools wants (H, W, K) Fortran-ordered uint8
    rles = mask_utils.encode(np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0)))
    return [{"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")} for rle in rles]


def instance_annotations(masks: torch.Tensor, labels: Sequence[int], image_id: int, first_id: int) -> list[dict]:
    """COCO annotations (compressed RLE, area, xywh bbox, not crowd) of one image's (K, H, W) binary masks,
    with ids ``first_id, first_id + 1, …``; category id = label."""
    rles = encode_masks(masks)
    return [{"id": first_id + i, "image_id": image_id, "category_id": int(label), "segmentation": rle,
             "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0}
            for i, (rle, label) in enumerate(zip(rles, labels))]


def load_coco(ann_file: str | Path) -> COCO:
    """A pycocotools ``COCO`` index of ``ann_file`` after checking it (see ``COCOInstances`` for the
    errors; missing ``iscrowd`` becomes 0, missing ``area`` the mask area); pycocotools' progress prints
    are silenced."""
    ann_file = Path(ann_file)
    data = read_json(ann_file, "COCO annotation file")
    _check_dataset(data, ann_file)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
