"""A COCO instances json (+ its images) -> the folder dataset layout (``data/folder.py``) of semantic masks.

Written::

    OUT/images/<file_name>      # the image files, copied (a file_name's folders become part of the stem:
                                # "a/b.jpg" -> "a__b.jpg", so stems stay unique)
    OUT/masks/<stem>.png        # palette PNG (VOC colours): the semantic map of ``COCOInstances.target(i)["mask"]``
    OUT/classes.txt             # "background", then the category names by increasing id

The masks are exactly ``COCOInstances``' semantic ``"mask"``: the label of the instances covering a pixel,
255 (ignore) on crowd regions and where instances of different classes overlap, 0 elsewhere; labels are
the categories' ranks by increasing id (1..C-1), as ``COCOInstances`` numbers them.
"""
from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from seglab.data.coco import COCOInstances
from seglab.data.folder import IMAGE_SUFFIXES


def import_coco(ann_file: str | Path, image_dir: str | Path, out: str | Path) -> dict:
    """Write the folder layout of ``ann_file`` over ``image_dir`` under ``out`` (module docstring).

    Every image is checked (it exists, it is readable, its size is the json's) before anything is written.
    Returns ``{"images": n, "classes": [...], "out": out}``. Errors (naming the file and the value): those of
    ``COCOInstances`` (malformed json, unknown category or image, bad segmentation, missing or mis-sized
    image); an image whose suffix the folder reader does not read; two file_names giving one stem.
    """
    dataset = COCOInstances(image_dir, ann_file)
    out = Path(out)
    stems: dict[str, str] = {}
    plan = []
    for index in range(len(dataset)):
        file_name = dataset.coco.imgs[dataset.ids[index]]["file_name"]
        name = PurePosixPath(file_name.replace("\\", "/"))
        if name.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{dataset.ann_file}: image {file_name!r} has a suffix the folder layout does not read "
                             f"(one of {' '.join(IMAGE_SUFFIXES)})")
        stem = "__".join((*name.parent.parts, name.stem))
        if stem in stems:
            raise ValueError(f"{dataset.ann_file}: images {stems[stem]!r} and {file_name!r} give one stem {stem!r}")
        stems[stem] = file_name
        dataset.load_image(index)  # FileNotFoundError / ValueError (unreadable, not the json's size) name the file
        plan.append((index, stem, dataset.image_path(index)))
    if len(dataset.classes) > 255:
        raise ValueError(f"{dataset.ann_file}: {len(dataset.classes) - 1} categories; a mask PNG holds ids 0..254")

    image_out, mask_out = out / "images", out / "masks"
    for folder in (image_out, mask_out):
        folder.mkdir(parents=True, exist_ok=True)
    palette = [c for colour in dataset.palette for c in colour]
    for index, stem, path in plan:
        shutil.copyfile(path, image_out / f"{stem}{path.suffix.lower()}")
        mask = Image.fromarray(dataset.target(index)["mask"].numpy().astype(np.uint8))
        mask.putpalette(palette)  # "L" -> "P": the pixel values stay the class ids (255 = ignore)
        mask.save(mask_out / f"{stem}.png")
    (out / "classes.txt").write_text("".join(f"{name}\n" for name in dataset.classes))
    return {"images": len(plan), "classes": list(dataset.classes), "out": str(out)}
