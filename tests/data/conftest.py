"""Small dataset trees written in the real layouts, and the arrays they hold, for the readers' tests
(the Cityscapes tree, shared with the metrics tests, is in tests/conftest.py)."""
from types import SimpleNamespace

import numpy as np
import pytest
from layouts import (FOLDER_PALETTE, random_labels, write_image, write_labels, write_list, write_sbd_mat,
                     write_voc_item)

from seglab.data import export_shapes


@pytest.fixture
def voc_root(tmp_path):
    """A fresh Shapes export in the VOC layout: train 4 and val 2 images of 64x64 pixels."""
    return export_shapes(tmp_path / "voc", "voc", {"train": 4, "val": 2}, image_size=64, seed=3, progress=False)


@pytest.fixture
def sbd_tree(tmp_path):
    """SBD and VOC2012 roots sharing ids: SBD train a b c, SBD val d e; VOC train c f, VOC val e g.

    Returns ``root``, ``voc_root`` and ``masks``: {("sbd" | "voc", id): (H, W) int64 written}."""
    sbd, voc = tmp_path / "benchmark_RELEASE" / "dataset", tmp_path / "VOCdevkit" / "VOC2012"
    masks = {}
    for seed, image_id in enumerate("abcde"):
        height, width = 9 + seed, 12 + 2 * seed
        write_image(sbd / "img" / f"{image_id}.jpg", height, width, seed)
        masks["sbd", image_id] = random_labels(height, width, range(21), seed).astype(np.int64)
        write_sbd_mat(sbd / "cls" / f"{image_id}.mat", masks["sbd", image_id].astype(np.uint8))
    write_list(sbd / "train.txt", "abc")
    write_list(sbd / "val.txt", "de")
    for seed, image_id in enumerate("cefg", start=10):
        masks["voc", image_id] = write_voc_item(voc, image_id, 10, 14, seed)
    write_list(voc / "ImageSets" / "Segmentation" / "train.txt", "cf")
    write_list(voc / "ImageSets" / "Segmentation" / "val.txt", "eg")
    return SimpleNamespace(root=sbd, voc_root=voc, masks=masks)


@pytest.fixture
def folder_tree(tmp_path):
    """root/images (jpg and png), root/masks (palette PNGs, classes 0..3 and 255), classes.txt, train.txt,
    val.txt. Returns ``root``, ``masks``: {stem: (H, W) int64}."""
    root = tmp_path / "mydata"
    palette = [c for colour in FOLDER_PALETTE for c in colour] + [255, 255, 255] * 252
    masks = {}
    for seed, stem in enumerate(["cat_01", "cat_02", "dog_01", "dog_02", "dog_03"]):
        height, width = 33 + seed, 40 - seed
        write_image(root / "images" / f"{stem}.{'png' if seed % 2 else 'jpg'}", height, width, seed)
        masks[stem] = random_labels(height, width, [0, 1, 2, 3, 255], seed).astype(np.int64)
        write_labels(root / "masks" / f"{stem}.png", masks[stem], palette)
    (root / "classes.txt").write_text("background\ncat\ndog\nbird\n")
    write_list(root / "train.txt", ["dog_02", "cat_01", "dog_01"])
    write_list(root / "val.txt", ["cat_02", "dog_03"])
    return SimpleNamespace(root=root, masks=masks)
