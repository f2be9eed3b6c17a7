"""Semantic Boundaries Dataset (Hariharan et al., ICCV 2011), the "augmented" PASCAL VOC annotations::

    root/img/<id>.jpg
    root/cls/<id>.mat      # struct GTcls: Segmentation (H, W) uint8 class ids 0..20, Boundaries, ...
    root/train.txt, root/val.txt

(``root`` is ``benchmark_RELEASE/dataset`` of the SBD download.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import scipy.io

from seglab.data.paths import read_split_list
from seglab.data.semantic import SemanticFiles
from seglab.data.voc import VOC_CLASSES, voc_pair, voc_split
from seglab.data.palette import voc_palette


def read_cls_mat(path: Path) -> np.ndarray:
    """(H, W) class ids: the ``GTcls.Segmentation`` field of an SBD ``cls/<id>.mat``. Missing ->
    FileNotFoundError; unreadable or without that field -> ValueError naming the file."""
    if not path.is_file():  # scipy reports a missing file as OSError
        raise FileNotFoundError(f"SBD class file {path} does not exist")
    try:
        segmentation = scipy.io.loadmat(path)["GTcls"]["Segmentation"][0, 0]
    except Exception as error:  # scipy raises ValueError, TypeError, MatReadError ...; KeyError/IndexError: no field
        raise ValueError(f"cannot read {path} as an SBD class file (struct GTcls with field Segmentation): "
                         f"{type(error).__name__}: {error}") from error
    if segmentation.ndim != 2 or segmentation.dtype.kind not in "iu":
        raise ValueError(f"{path}: GTcls.Segmentation must be (H, W) integer class ids, got "
                         f"{segmentation.dtype} {segmentation.shape}")
    return segmentation


def sbd_pair(root: Path, image_id: str) -> tuple[Path, Path]:
    """``(img/<id>.jpg, cls/<id>.mat)`` under ``root``."""
    return root / "img" / f"{image_id}.jpg", root / "cls" / f"{image_id}.mat"


def train_aug_files(root: Path, voc_root: Path) -> tuple[list[str], list[tuple[Path, Path]]]:
    """Ids and files of ``train_aug`` (see ``SBD``)."""
    voc_train = voc_split(voc_root, "train")
    voc_val = set(voc_split(voc_root, "val"))
    listed = [*read_split_list(root / "train.txt"), *read_split_list(root / "val.txt"), *voc_train]
    ids = [i for i in dict.fromkeys(listed) if i not in voc_val]
    from_voc = set(voc_train)
    files = [voc_pair(voc_root, i) if i in from_voc else sbd_pair(root, i) for i in ids]
    return ids, files


class SBD(SemanticFiles):
    """SBD reader, items in seglab's convention: ``(tv_tensors.Image uint8 (3, H, W),
    {"mask": tv_tensors.Mask (H, W) int64})``, the 21 VOC classes, 255 = ignore; ``transforms(image,
    target)`` is applied when given.

    ``split``: "train", "val" (or any ``root/<split>.txt``), or "train_aug", the usual augmented
    training set, which needs ``voc_root`` (VOC2012, holding ``ImageSets/Segmentation/{train,val}.txt``,
    ``JPEGImages/``, ``SegmentationClass/``). Its rule:

    - ids = (SBD train ∪ SBD val ∪ VOC2012 train) − VOC2012 val, in that order, each id once;
    - an id listed in VOC2012's train list is read from ``voc_root`` (``JPEGImages/<id>.jpg``,
      ``SegmentationClass/<id>.png``: VOC's own mask, with its 255 borders), every other id from ``root``
      (``img/<id>.jpg``, ``cls/<id>.mat``: SBD's mask, without borders).

    ``ids`` lists the item ids.
    """

    def __init__(self, root: str | Path, split: str, transforms: Callable | None = None,
                 voc_root: str | Path | None = None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"SBD root {root} does not exist")
        if split == "train_aug":
            if voc_root is None:
                raise ValueError("SBD split 'train_aug' needs voc_root (the VOC2012 folder holding "
                                 "ImageSets/Segmentation/train.txt and val.txt, JPEGImages/, SegmentationClass/)")
            self.ids, files = train_aug_files(root, Path(voc_root))
        elif voc_root is not None:
            raise ValueError(f"voc_root only applies to SBD split 'train_aug', not {split!r}")
        else:
            self.ids = read_split_list(root / f"{split}.txt")
            files = [sbd_pair(root, i) for i in self.ids]
        super().__init__(root, split, transforms, files, VOC_CLASSES, voc_palette())

    def read_mask(self, path: Path) -> np.ndarray:
        return read_cls_mat(path) if path.suffix == ".mat" else super().read_mask(path)
