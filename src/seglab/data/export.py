"""Write Shapes to disk in the PASCAL VOC or COCO layout, so the file readers can be exercised on it.

VOC (``fmt="voc"``), all splits in one root as in VOCdevkit/VOC2012::

    root/JPEGImages/<id>.jpg                    # quality 95
    root/SegmentationClass/<id>.png             # palette ("P") PNG, VOC palette, pixel = class id
    root/ImageSets/Segmentation/<split>.txt     # one id per line
    root/labels.txt                             # class names, one per line (seglab's addition, not VOC's)

COCO (``fmt="coco"``)::

    root/<split>2017/<id>.jpg
    root/annotations/instances_<split>2017.json # RLE segmentations, bbox XYWH, category ids 1..4

Ids are ``shapes_<split>_<index:06d>`` with ``index`` the Shapes index (0-based).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image
from tqdm import tqdm

from seglab.data.coco_format import instance_annotations
from seglab.data.shapes import CLASSES, DEFAULT_NUM_IMAGES, Shapes
from seglab.data.palette import voc_palette

JPEG_QUALITY = 95


def _items(split: str, num_images: int, image_size: int, seed: int, progress: bool):
    """Yield ``(id, image (H, W, 3) uint8 ndarray, target)`` for one split, with a progress bar."""
    dataset = Shapes(split, num_images, image_size=image_size, seed=seed)
    for index in tqdm(range(num_images), desc=f"export {split}", disable=not progress):
        image, target = dataset[index]
        yield f"shapes_{split}_{index:06d}", image.permute(1, 2, 0).numpy(), target


def _export_voc(root: Path, splits: Mapping[str, int], image_size: int, seed: int, progress: bool) -> None:
    image_dir, mask_dir = root / "JPEGImages", root / "SegmentationClass"
    list_dir = root / "ImageSets" / "Segmentation"
    for folder in (image_dir, mask_dir, list_dir):
        folder.mkdir(parents=True, exist_ok=True)
    palette = [channel for colour in voc_palette() for channel in colour]
    for split, num_images in splits.items():
        ids = []
        for image_id, image, target in _items(split, num_images, image_size, seed, progress):
            Image.fromarray(image).save(image_dir / f"{image_id}.jpg", quality=JPEG_QUALITY)
            mask = Image.fromarray(target["mask"].numpy().astype(np.uint8))
            mask.putpalette(palette)  # "L" -> "P": pixel values stay the class ids
            mask.save(mask_dir / f"{image_id}.png")
            ids.append(image_id)
        (list_dir / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (root / "labels.txt").write_text("".join(f"{name}\n" for name in CLASSES))


def _export_coco(root: Path, splits: Mapping[str, int], image_size: int, seed: int, progress: bool) -> None:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES) if i > 0]
    for split, num_images in splits.items():
        image_dir = root / f"{split}2017"
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_number, (image_id, image, target) in enumerate(
            _items(split, num_images, image_size, seed, progress), start=1
        ):
            file_name = f"{image_id}.jpg"
            Image.fromarray(image).save(image_dir / file_name, quality=JPEG_QUALITY)
            images.append({"id": image_number, "file_name": file_name, "height": image_size, "width": image_size})
            annotations += instance_annotations(target["masks"], target["labels"].tolist(), image_number,
                                                len(annotations) + 1)
        dataset = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(dataset))


_EXPORTERS = {"voc": _export_voc, "coco": _export_coco}


def export_shapes(
    root: str | Path,
    fmt: str,
    splits: Mapping[str, int] | None = None,
    image_size: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write ``Shapes(split, n, image_size, seed)`` for each ``split: n`` in ``splits`` (default
    train 1000, val 200) under ``root`` in the ``fmt`` ("voc" or "coco") layout; returns ``root``."""
    if fmt not in _EXPORTERS:
        raise ValueError(f"export format must be one of {sorted(_EXPORTERS)}, got {fmt!r}")
    root = Path(root)
    splits = {s: DEFAULT_NUM_IMAGES[s] for s in ("train", "val")} if splits is None else dict(splits)
    _EXPORTERS[fmt](root, splits, image_size, seed, progress)
    return root
