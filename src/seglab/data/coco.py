"""COCO instance segmentation: ``instances_<split>2017.json`` read through pycocotools, images from a folder.

The json is read, checked and decoded by ``data/coco_format.py`` (polygons, uncompressed and compressed
RLE, decoded exactly as ``COCO.annToMask`` does); boxes in the json are XYWH in pixels.

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

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from seglab.data.coco_format import decode_rle, load_coco, segmentation_to_rle
from seglab.data.images import image_tensor, load_image
from seglab.data.palette import voc_palette
from seglab.data.transforms import IGNORE_INDEX


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
                masks[k] = decode_rle(segmentation_to_rle(annotation["segmentation"], height, width))
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

    def load_image(self, index: int) -> Image.Image:
        """The decoded image of item ``index``; missing -> FileNotFoundError, unreadable or of another size than
        the json's -> ValueError, naming the file."""
        path = self.image_path(index)
        height, width = self.get_height_and_width(index)
        image = load_image(path)
        if image.size != (width, height):
            raise ValueError(f"{path} is {image.width}x{image.height} (WxH) but {self.ann_file} says "
                             f"{width}x{height} for image id {self.ids[index]}")
        return image

    def __getitem__(self, index: int):
        image, target = image_tensor(self.load_image(index)), self.target(index)
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return (f"COCOInstances(image_dir={str(self.image_dir)!r}, ann_file={str(self.ann_file)!r}, "
                f"{len(self)} images, {len(self.classes) - 1} categories)")
