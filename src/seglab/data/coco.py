"""COCO instance segmentation: ``instances_<split>2017.json`` read through pycocotools, images from a folder.

Segmentations may be polygons (a list of ``[x1, y1, x2, y2, ...]`` lists, one per part), uncompressed RLE
(``{"size": [h, w], "counts": [int, ...]}``) or compressed RLE (``counts`` a string); all are decoded
with ``pycocotools.mask`` exactly as ``COCO.annToMask`` does. Boxes in the json are XYWH in pixels.

Choices (as torchvision's ``references/detection/coco_utils.py`` and detectron2's ``DatasetMapper``):

- ``iscrowd=1`` regions are left out of the instance targets by default (``remove_crowd_from_targets``);
  they stay available as ``target["crowd_mask"]`` (H, W) uint8 and as 255 (ignore) in the semantic
  ``target["mask"]``. COCO evaluation reads crowd regions from the json itself (``dataset.coco``).
- Boxes are clamped to the image, and instances whose clamped box has no area are dropped from the
  targets (torchvision's reference does the same; Mask R-CNN rejects such boxes).
- Images without annotations are kept, with empty targets of the right shapes, so evaluation sees every
  image and training sees negatives; ``remove_images_without_annotations=True`` drops the images whose
  instance targets would be empty (torchvision and detectron2 do that for training).
"""
from __future__ import annotations

import bisect
import contextlib
import io
import json
import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pycocotools.mask as mask_utils
import torch
from pycocotools.coco import COCO
from torch.utils.data import Sampler
from torchvision import tv_tensors

from seglab.data.images import image_tensor, load_image
from seglab.data.paths import check_entry
from seglab.data.transforms import IGNORE_INDEX
from seglab.data.palette import voc_palette


def _decode(rle: dict) -> np.ndarray:
    """(H, W) uint8 mask of one RLE. pycocotools' decode trips a NumPy 2 copy-keyword DeprecationWarning
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


def instance_annotations(masks: torch.Tensor, labels: Sequence[int], image_id: int, first_id: int) -> list[dict]:
    """COCO annotations (compressed RLE, area, xywh bbox, not crowd) of one image's (K, H, W) binary masks,
    with ids ``first_id, first_id + 1, …``; category id = label."""
    rles = mask_utils.encode(np.asfortranarray(masks.numpy().astype(np.uint8).transpose(1, 2, 0)))
    return [{"id": first_id + i, "image_id": image_id, "category_id": int(label),
             "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
             "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0}
            for i, (rle, label) in enumerate(zip(rles, labels))]


def load_coco(ann_file: str | Path) -> COCO:
    """A pycocotools ``COCO`` index of ``ann_file`` after checking it (see ``COCOInstances`` for the
    errors); pycocotools' progress prints are silenced."""
    ann_file = Path(ann_file)
    data = read_json(ann_file, "COCO annotation file")
    _check_dataset(data, ann_file)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class COCOInstances(torch.utils.data.Dataset):
    """COCO instance annotations (``ann_file``) over the images in ``image_dir``.

    ``ds[i]`` -> ``(image, target)``: image ``tv_tensors.Image`` uint8 (3, H, W) (RGB); target::

        "boxes":      tv_tensors.BoundingBoxes XYXY (K, 4) float32, pixels, clamped to the image
        "labels":     (K,) int64, contiguous 1..C-1 (``category_id_to_label``), 0 is background
        "masks":      tv_tensors.Mask (K, H, W) uint8, as pycocotools' annToMask
        "area":       (K,) float32, the json's ``area`` (mask pixels at the original size)
        "iscrowd":    (K,) int64, all 0 unless ``remove_crowd_from_targets=False``
        "image_id":   int, the COCO image id
        "crowd_mask": tv_tensors.Mask (H, W) uint8, 1 on iscrowd=1 regions (ignore them in training)
        "mask":       tv_tensors.Mask (H, W) int64 semantic labels (seglab's dataset convention): the
                      label of the instances covering a pixel, 255 (ignore) where instances of different
                      classes overlap (as torchvision's segmentation reference) or on crowd regions

    Instances are in the json's order; items are in increasing image id. ``transforms(image, target)`` is
    applied when given. Attributes: ``classes`` ("background", then category names by increasing id),
    ``label_to_category_id``, ``category_id_to_label``, ``coco`` (the pycocotools index, for evaluation),
    ``ids`` (image ids in item order), ``palette``.

    Errors name the file: a missing ``ann_file`` or image raises FileNotFoundError; malformed JSON, an
    annotation whose category or image is not listed, a polygon with fewer than 3 points, an RLE of the
    wrong size, a box with negative width/height, a ``file_name`` that is absolute or holds ``..``, an
    unreadable image or one whose size differs from the json's raise ValueError. The json is checked
    when the dataset is built, images when read.
    """

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path,
        transforms: Callable | None = None,
        *,
        remove_crowd_from_targets: bool = True,
        remove_images_without_annotations: bool = False,
    ):
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.transforms = transforms
        self.remove_crowd_from_targets = remove_crowd_from_targets
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder {self.image_dir} does not exist")
        self.coco = load_coco(self.ann_file)
        categories = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        self.category_id_to_label = {c["id"]: label for label, c in enumerate(categories, start=1)}
        self.label_to_category_id = {label: c for c, label in self.category_id_to_label.items()}
        self.classes = ("background", *(str(c["name"]) for c in categories))
        self.palette = voc_palette()
        self.ids = sorted(self.coco.imgs)
        if remove_images_without_annotations:
            self.ids = [i for i in self.ids if any(self._is_target(a, i) for a in self.coco.imgToAnns[i])]

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def get_height_and_width(self, index: int) -> tuple[int, int]:
        """(H, W) of item ``index`` from the json, without reading the image (torchvision's convention,
        used by ``aspect_ratio_groups``)."""
        info = self.coco.imgs[self.ids[index]]
        return info["height"], info["width"]

    def _is_target(self, annotation: dict, image_id: int) -> bool:
        """Whether ``annotation`` becomes an instance of the target: not crowd (unless crowds are kept)
        and a box with area after clamping to the image."""
        if annotation["iscrowd"] and self.remove_crowd_from_targets:
            return False
        info = self.coco.imgs[image_id]
        x, y, w, h = annotation["bbox"]
        return min(x + w, info["width"]) > max(x, 0) and min(y + h, info["height"]) > max(y, 0)

    def _masks(self, annotations: list[dict], height: int, width: int) -> np.ndarray:
        """(K, H, W) uint8 masks of ``annotations``; a segmentation pycocotools cannot decode raises
        ValueError naming the file and annotation."""
        masks = np.zeros((len(annotations), height, width), dtype=np.uint8)
        for k, annotation in enumerate(annotations):
            try:
                masks[k] = _decode(segmentation_to_rle(annotation["segmentation"], height, width))
            except Exception as error:  # pycocotools raises TypeError / ValueError on bad numbers or strings
                raise ValueError(f"{self.ann_file}: annotation id {annotation['id']}: cannot decode its "
                                 f"segmentation: {type(error).__name__}: {error}") from error
        return masks

    def target(self, index: int) -> dict:
        """The target of item ``index`` (before ``transforms``), without reading the image."""
        image_id = self.ids[index]
        height, width = self.get_height_and_width(index)
        annotations = self.coco.imgToAnns[image_id]
        instances = [a for a in annotations if self._is_target(a, image_id)]
        crowds = [a for a in annotations if a["iscrowd"]]

        boxes = torch.tensor([a["bbox"] for a in instances], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes[:, 0::2].clamp_(min=0, max=width)
        boxes[:, 1::2].clamp_(min=0, max=height)
        labels = torch.tensor([self.category_id_to_label[a["category_id"]] for a in instances], dtype=torch.int64)
        masks = self._masks(instances, height, width)
        crowd_mask = self._masks(crowds, height, width).any(axis=0) if crowds else np.zeros((height, width), bool)

        # Semantic map from the non-crowd instances: pixels claimed by two classes are ambiguous -> ignore.
        top = np.zeros((height, width), dtype=np.int64)
        bottom = np.full((height, width), np.iinfo(np.int64).max)
        for mask, label, annotation in zip(masks, labels.tolist(), instances):
            if not annotation["iscrowd"]:
                np.maximum(top, mask * label, out=top)
                np.minimum(bottom, np.where(mask > 0, label, bottom), out=bottom)
        semantic = np.where((top > 0) & (top != bottom), IGNORE_INDEX, top)
        semantic[crowd_mask] = IGNORE_INDEX

        return {
            "boxes": tv_tensors.BoundingBoxes(boxes, format=tv_tensors.BoundingBoxFormat.XYXY,
                                              canvas_size=(height, width)),
            "labels": labels,
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "area": torch.tensor([float(a["area"]) for a in instances], dtype=torch.float32),
            "iscrowd": torch.tensor([int(a["iscrowd"]) for a in instances], dtype=torch.int64),
            "image_id": image_id,
            "crowd_mask": tv_tensors.Mask(torch.from_numpy(crowd_mask.astype(np.uint8))),
            "mask": tv_tensors.Mask(torch.from_numpy(semantic)),
        }

    def __getitem__(self, index: int):
        path = self.image_path(index)
        height, width = self.get_height_and_width(index)
        image = load_image(path)
        if image.size != (width, height):
            raise ValueError(f"{path} is {image.width}x{image.height} (WxH) but {self.ann_file} says "
                             f"{width}x{height} for image id {self.ids[index]}")
        image, target = image_tensor(image), self.target(index)
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return (f"COCOInstances(image_dir={str(self.image_dir)!r}, ann_file={str(self.ann_file)!r}, "
                f"{len(self)} images, {len(self.classes) - 1} categories)")


def collate_instances(batch: Sequence[tuple[Any, dict]]) -> tuple[list, list[dict]]:
    """DataLoader ``collate_fn`` for instance data: ``[(image, target), ...]`` -> ``([images], [targets])``,
    images kept apart since their sizes differ (the model batches them itself)."""
    return [item[0] for item in batch], [item[1] for item in batch]


def _height_and_width(dataset: Any, index: int) -> tuple[int, int]:
    if isinstance(dataset, torch.utils.data.Subset):
        return _height_and_width(dataset.dataset, dataset.indices[index])
    if hasattr(dataset, "get_height_and_width"):
        return dataset.get_height_and_width(index)
    image = dataset[index][0]  # fallback: read the item (slow: decodes the image)
    return tuple(image.shape[-2:])


def aspect_ratio_groups(dataset: Any, k: int = 0) -> list[int]:
    """Group id of every item by its aspect ratio width / height (torchvision's reference
    ``create_aspect_ratio_groups``): bin edges ``2 ** linspace(-1, 1, 2k + 1)`` (``[1.0]`` for k = 0, i.e.
    tall < 1 <= wide), group = number of edges <= the ratio, so ids run 0..2k+1 (0..1 for k = 0).

    Sizes come from ``dataset.get_height_and_width(i)`` when it exists (through ``Subset``), else
    from reading each item.
    """
    if k < 0:
        raise ValueError(f"aspect ratio group factor k must be >= 0, got {k}")
    edges = (2 ** np.linspace(-1, 1, 2 * k + 1)).tolist() if k > 0 else [1.0]
    groups = []
    for index in range(len(dataset)):
        height, width = _height_and_width(dataset, index)
        groups.append(bisect.bisect_right(edges, width / height))
    return groups


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` indices from ``sampler``, each batch from one group (torchvision's
    reference ``GroupedBatchSampler``): indices are buffered per ``group_ids[index]`` and a batch is
    yielded when its group's buffer is full. ``len(sampler) // batch_size`` batches per pass; when the
    sampler runs out, the fullest leftover buffers are completed with earlier indices of their group.
    """

    def __init__(self, sampler: Sampler[int] | Sequence[int], group_ids: Sequence[int], batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = defaultdict(list)
        seen: dict[int, list[int]] = defaultdict(list)
        emitted = 0
        for index in self.sampler:
            group = self.group_ids[index]
            buffers[group].append(index)
            seen[group].append(index)
            if len(buffers[group]) == self.batch_size:
                yield buffers.pop(group)
                emitted += 1
        remaining = len(self) - emitted
        for group, buffer in sorted(buffers.items(), key=lambda item: len(item[1]), reverse=True):
            if remaining <= 0:
                break
            pool = seen[group]
            needed = self.batch_size - len(buffer)
            yield buffer + (pool * (needed // len(pool) + 1))[:needed]
            remaining -= 1

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size
