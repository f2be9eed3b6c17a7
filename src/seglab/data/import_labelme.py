"""labelme JSON files -> the folder dataset layout (``data/folder.py``) and, optionally, a COCO instances json.

One ``<stem>.json`` per image in a folder (not its subfolders), as labelme saves them. The image is the
json's ``imageData`` (base64 image file) when present, else ``imagePath`` relative to the json's folder
(``\\`` separators, as labelme writes on Windows, are accepted). Written::

    OUT/images/<stem>.<ext>     # the image file as it was (re-encoded only to apply an EXIF rotation)
    OUT/masks/<stem>.png        # palette PNG (VOC colours), pixel = class id, 0 = background
    OUT/classes.txt             # line i = class id i; line 0 the background

and with ``instances=True``::

    OUT/<split>2017/<stem>.<ext>                 # the same images (hard links where the disk allows)
    OUT/annotations/instances_<split>2017.json   # RLE segmentations, category id = class id

which ``build_dataset("coco", split, root=OUT)`` (``--data coco``) reads.

Rasterising follows labelme's ``labelme/utils/shape.py`` (``shape_to_mask`` and ``shapes_to_label``):
Pillow ``ImageDraw`` with outline and fill; ``polygon`` (``shape_type`` null too) needs >= 3 points;
``rectangle`` from two corners (any order); ``circle`` from its centre and a point on it; ``line`` (2
points) and ``linestrip`` drawn ``LINE_WIDTH`` = 10 pixels wide; ``point`` a disc of radius
``POINT_SIZE`` = 5; ``mask`` a base64 PNG of the box ``[[x1, y1], [x2, y2]]`` (inclusive integer
corners) pasted there. In the semantic mask later shapes paint over earlier ones (labelme's order).
Instances follow labelme's ``examples/instance_segmentation/labelme2coco.py``: the shapes sharing a
``(label, group_id)`` form one instance, a shape without ``group_id`` is one instance, and an instance
mask is the union of its shapes' (instances may overlap; nothing is painted over).

labelme saves the image's EXIF orientation applied (it annotates what it shows), so an image with an
EXIF rotation is written rotated, its mask then matches it.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import os
import shutil
from pathlib import Path, PureWindowsPath
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

from seglab.data.coco_format import instance_annotations
from seglab.data.folder import IMAGE_SUFFIXES
from seglab.data.images import EXIF_ORIENTATION
from seglab.data.palette import voc_palette

logger = logging.getLogger("seglab")

LINE_WIDTH = 10  # labelme shape_to_mask(line_width=10)
POINT_SIZE = 5  # labelme shape_to_mask(point_size=5): the disc's radius in pixels
SHAPE_TYPES = ("polygon", "rectangle", "circle", "line", "linestrip", "point", "mask")
BACKGROUND_LABEL = "_background_"  # labelme2voc's name of class 0
# points each shape type takes, (fewest, most): labelme's shape_to_mask asserts the same counts
_POINT_COUNTS = {"rectangle": (2, 2), "circle": (2, 2), "line": (2, 2), "point": (1, 1), "mask": (2, 2),
                 "polygon": (3, None), "linestrip": (2, None)}
_FORMAT_SUFFIX = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


def _points(shape: dict, shape_type: str, where: str) -> list[tuple[float, float]]:
    points = shape.get("points")
    if not isinstance(points, list) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v)
                                                                 for v in p) for p in points):
        raise ValueError(f"{where}: points must be a list of [x, y] number pairs, got {points!r}")
    fewest, most = _POINT_COUNTS[shape_type]
    if len(points) < fewest or (most is not None and len(points) > most):
        need = f"exactly {fewest}" if fewest == most else f"at least {fewest}"
        raise ValueError(f"{where}: {shape_type} has {len(points)} points; a {shape_type} needs {need} points")
    return [(float(x), float(y)) for x, y in points]


def _decode_png(data: str, where: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(base64.b64decode(data, validate=False))) as image:
            image.load()
        return image
    except (binascii.Error, ValueError, OSError) as error:
        raise ValueError(f"{where}: cannot decode the base64 image: {type(error).__name__}: {error}") from error


def shape_mask(shape: dict, height: int, width: int, where: str = "shape") -> np.ndarray:
    """(H, W) bool mask of one labelme ``shape`` dict, rasterised as labelme's ``shape_to_mask`` (module
    docstring); ``where`` (the file and shape) starts the error message of a malformed shape."""
    shape_type = shape.get("shape_type") or "polygon"
    if shape_type not in SHAPE_TYPES:
        raise ValueError(f"{where}: unknown shape_type {shape_type!r}; expected one of {', '.join(SHAPE_TYPES)}")
    xy = _points(shape, shape_type, where)
    if shape_type == "mask":
        mask = np.zeros((height, width), dtype=bool)
        if not isinstance(shape.get("mask"), str):
            raise ValueError(f"{where}: a mask shape needs 'mask', a base64 PNG of its box, got "
                             f"{type(shape.get('mask')).__name__}")
        region = np.array(_decode_png(shape["mask"], where).convert("L")) > 0
        (x1, y1), (x2, y2) = [(int(x), int(y)) for x, y in xy]  # labelme: np.asarray(points).astype(int)
        box = mask[y1:y2 + 1, x1:x2 + 1]
        if min(x1, y1) < 0 or box.shape != region.shape:
            raise ValueError(f"{where}: its mask is {region.shape[1]}x{region.shape[0]} (WxH) but its box "
                             f"{[[x1, y1], [x2, y2]]} covers {box.shape[1]}x{box.shape[0]} pixels of the "
                             f"{width}x{height} image")
        box[...] = region
        return mask
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if shape_type == "circle":
        (cx, cy), (px, py) = xy
        d = math.sqrt((cx - px) ** 2 + (cy - py) ** 2)
        draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=1, fill=1)
    elif shape_type == "rectangle":
        (x0, y0), (x1, y1) = xy
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=1, fill=1)
    elif shape_type in ("line", "linestrip"):
        draw.line(xy, fill=1, width=LINE_WIDTH)
    elif shape_type == "point":
        (cx, cy), = xy
        draw.ellipse([cx - POINT_SIZE, cy - POINT_SIZE, cx + POINT_SIZE, cy + POINT_SIZE], outline=1, fill=1)
    else:
        draw.polygon(xy, outline=1, fill=1)
    return np.array(canvas, dtype=bool)


def read_labelme(path: str | Path) -> dict:
    """The parsed labelme json ``path``, checked: a JSON object with a ``shapes`` list of objects, each with
    a string ``label``; else ValueError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a labelme file: not valid JSON ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: not a labelme file: no 'shapes' list (found {found})")
    for index, shape in enumerate(data["shapes"]):
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
            raise ValueError(f"{path}: shape #{index} needs a string 'label', got {shape!r}"[:300])
    return data


def _image_source(data: dict, json_path: Path) -> tuple[bytes, str, Path | None]:
    """(image file bytes, where it came from, its path or None when embedded) of one labelme file."""
    if data.get("imageData"):
        try:
            return base64.b64decode(data["imageData"]), f"{json_path} (imageData)", None
        except (binascii.Error, ValueError, TypeError) as error:
            raise ValueError(f"{json_path}: imageData is not base64: {error}") from error
    name = data.get("imagePath")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{json_path}: neither imageData nor imagePath names its image (imagePath {name!r})")
    parts = PureWindowsPath(name)  # splits "..\\img\\a.jpg" and "img/a.jpg" alike
    path = json_path.parent / Path(*parts.parts)
    if not path.is_file() and (json_path.parent / parts.name).is_file():  # annotated elsewhere, copied beside
        path = json_path.parent / parts.name
    if not path.is_file():
        raise ValueError(f"{json_path}: imagePath {name!r} names a missing image {path}")
    return path.read_bytes(), str(path), path


def _open_image(raw: bytes, where: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
        return image
    except Exception as error:  # PIL raises OSError, SyntaxError, ... on corrupt data
        raise ValueError(f"cannot read the image {where}: {type(error).__name__}: {error}") from error


def _rotated(image: Image.Image) -> bool:
    """Whether ``image`` carries an EXIF orientation other than "as stored"."""
    return image.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1)


def _write_image(raw: bytes, image: Image.Image, stem: str, image_dir: Path, source: Path | None) -> Path:
    """Write the image under ``image_dir`` (bytes copied, or re-encoded with its EXIF rotation applied);
    returns the file."""
    suffix = _FORMAT_SUFFIX.get(image.format or "")
    if source is not None and source.suffix.lower() in IMAGE_SUFFIXES:
        suffix = source.suffix.lower()
    if not _rotated(image) and suffix is not None:
        out = image_dir / f"{stem}{suffix}"
        out.write_bytes(raw)
        return out
    shown = ImageOps.exif_transpose(image)
    out = image_dir / f"{stem}{'.jpg' if image.format in ('JPEG', 'MPO') else '.png'}"
    shown = shown.convert("RGB") if shown.mode not in ("RGB", "L") else shown
    shown.save(out, **({"quality": 95} if out.suffix == ".jpg" else {}))
    return out


def _label_ids(json_files: list[Path], documents: list[dict], classes: Sequence[str] | None) -> tuple[list[str], dict]:
    if classes is None:
        found = {s["label"] for d in documents for s in d["shapes"]} - {BACKGROUND_LABEL, "background"}
        classes = ["background", *sorted(found)]
    classes = [str(c) for c in classes]
    if len(set(classes)) != len(classes) or not all(classes):
        raise ValueError(f"class names must be distinct and non-empty, got {classes}")
    if len(classes) > 255:
        raise ValueError(f"{len(classes)} classes; a mask PNG holds ids 0..254 (255 = ignore)")
    ids = {name: i for i, name in enumerate(classes)}
    ids.setdefault(BACKGROUND_LABEL, 0)
    for path, document in zip(json_files, documents):
        for shape in document["shapes"]:
            if shape["label"] not in ids:
                raise ValueError(f"{path}: unknown class {shape['label']!r}; the classes are {', '.join(classes)}")
    return classes, ids


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def import_labelme(directory: str | Path, out: str | Path, classes: Sequence[str] | None = None,
                   instances: bool = False, split: str = "train") -> dict:
    """Convert the labelme files ``directory/*.json`` into the folder layout under ``out`` (and with
    ``instances`` the COCO layout for ``split``; module docstring). ``classes``: the names, line 0 the
    background (a shape labelled with it, or ``_background_``, paints 0); default: "background" then the
    sorted labels found. Every file is read and checked before anything is written.

    Returns ``{"images": n, "classes": [...], "instances": k (with instances), "out": out}``.

    Errors, each naming the file and the value (ValueError): not JSON or no ``shapes``; an unknown class;
    a polygon with fewer than 3 points (and wrong point counts of other types); an unknown
    ``shape_type``; a missing image named by ``imagePath``; an image whose size differs from the json's
    ``imageHeight``/``imageWidth``; a ``mask`` that does not fit its box. ``directory`` missing or without
    json files: FileNotFoundError / ValueError.
    """
    directory, out = Path(directory), Path(out)
    if not directory.is_dir():
        raise FileNotFoundError(f"labelme folder {directory} does not exist")
    json_files = sorted(p for p in directory.iterdir() if p.suffix.lower() == ".json" and p.is_file())
    if not json_files:
        raise ValueError(f"{directory}: no labelme .json files")
    documents = [read_labelme(p) for p in json_files]
    classes, ids = _label_ids(json_files, documents, classes)

    items = []  # (stem, raw bytes, PIL image, source path, semantic (H, W) uint8, [(label id, mask)])
    for path, document in zip(json_files, documents):
        raw, where, source = _image_source(document, path)
        image = _open_image(raw, where)
        width, height = (image.height, image.width) if image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8) else image.size
        declared = (document.get("imageWidth"), document.get("imageHeight"))
        if None not in declared and tuple(declared) != (width, height):
            raise ValueError(f"{path}: imageWidth x imageHeight {declared[0]}x{declared[1]} differs from its image "
                             f"{where}: {width}x{height} (after EXIF rotation)")
        semantic = np.zeros((height, width), dtype=np.uint8)
        groups: dict = {}
        for index, shape in enumerate(document["shapes"]):
            mask = shape_mask(shape, height, width, f"{path}: shape #{index} ({shape['label']!r})")
            semantic[mask] = ids[shape["label"]]
            if ids[shape["label"]] == 0:
                continue
            group = shape.get("group_id")
            key = (shape["label"], ("shape", index) if group is None else ("group", group))
            groups[key] = groups[key] | mask if key in groups else mask
        objects = []
        for (label, _), mask in groups.items():
            if mask.any():
                objects.append((ids[label], mask))
            else:
                logger.warning("%s: instance %r has no pixels inside the image; left out of the COCO json", path, label)
        items.append((path.stem, raw, image, source, semantic, objects))

    image_dir, mask_dir = out / "images", out / "masks"
    for folder in (image_dir, mask_dir):
        folder.mkdir(parents=True, exist_ok=True)
    palette = [c for colour in voc_palette() for c in colour]
    coco_images, annotations = [], []
    coco_dir = out / f"{split}2017"
    if instances:
        (out / "annotations").mkdir(parents=True, exist_ok=True)
        coco_dir.mkdir(parents=True, exist_ok=True)
    for image_id, (stem, raw, image, source, semantic, objects) in enumerate(items, start=1):
        written = _write_image(raw, image, stem, image_dir, source)
        mask = Image.fromarray(semantic)
        mask.putpalette(palette)  # "L" -> "P": the pixel values stay the class ids
        mask.save(mask_dir / f"{stem}.png")
        if instances:
            target = coco_dir / written.name
            target.unlink(missing_ok=True)
            _link_or_copy(written, target)
            height, width = semantic.shape
            coco_images.append({"id": image_id, "file_name": written.name, "height": height, "width": width})
            if objects:
                masks = torch.from_numpy(np.stack([m for _, m in objects]))
                annotations += instance_annotations(masks, [label for label, _ in objects], image_id,
                                                    len(annotations) + 1)
    (out / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    summary = {"images": len(items), "classes": classes, "out": str(out)}
    if instances:
        categories = [{"id": i, "name": name, "supercategory": "object"} for i, name in enumerate(classes) if i]
        coco = {"images": coco_images, "annotations": annotations, "categories": categories}
        (out / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco))
        summary["instances"] = len(annotations)
    return summary
