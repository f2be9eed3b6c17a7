"""Cityscapes fine annotations (Cordts et al., CVPR 2016)::

    root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png   # label ids 0..33

Training uses the 19 evaluated classes ("train ids" 0..18); every other label id becomes 255 (ignore).
Predictions go back to label ids for the official evaluation (``label_ids``, ``result_name``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np

from seglab.data.images import read_label_png
from seglab.data.semantic import SemanticFiles
from seglab.data.transforms import IGNORE_INDEX

# (label id, name, colour) of the 19 train ids, in train-id order: cityscapesscripts/helpers/labels.py
TRAIN_LABELS = (
    (7, "road", (128, 64, 128)),
    (8, "sidewalk", (244, 35, 232)),
    (11, "building", (70, 70, 70)),
    (12, "wall", (102, 102, 156)),
    (13, "fence", (190, 153, 153)),
    (17, "pole", (153, 153, 153)),
    (19, "traffic light", (250, 170, 30)),
    (20, "traffic sign", (220, 220, 0)),
    (21, "vegetation", (107, 142, 35)),
    (22, "terrain", (152, 251, 152)),
    (23, "sky", (70, 130, 180)),
    (24, "person", (220, 20, 60)),
    (25, "rider", (255, 0, 0)),
    (26, "car", (0, 0, 142)),
    (27, "truck", (0, 0, 70)),
    (28, "bus", (0, 60, 100)),
    (31, "train", (0, 80, 100)),
    (32, "motorcycle", (0, 0, 230)),
    (33, "bicycle", (119, 11, 32)),
)
CLASSES = tuple(name for _, name, _ in TRAIN_LABELS)
PALETTE = [colour for _, _, colour in TRAIN_LABELS]
MAX_LABEL_ID = 33  # label ids in gtFine run 0..33 (license plate, -1, is not drawn)
IMAGE_SUFFIX, GT_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"

_TRAIN_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)  # label id -> train id
_TRAIN_ID[[label_id for label_id, _, _ in TRAIN_LABELS]] = np.arange(len(TRAIN_LABELS))
_LABEL_ID = np.array([label_id for label_id, _, _ in TRAIN_LABELS], dtype=np.uint8)  # train id -> label id


def train_ids(label_ids: np.ndarray) -> np.ndarray:
    """uint8 train ids (0..18, 255 = not evaluated) of uint8 label ids, same shape."""
    return _TRAIN_ID[label_ids]


def label_ids(train_id_map: np.ndarray) -> np.ndarray:
    """uint8 label ids of train ids 0..18, same shape; other values raise ValueError."""
    train_id_map = np.asarray(train_id_map)
    if train_id_map.size and (train_id_map.min() < 0 or train_id_map.max() >= len(TRAIN_LABELS)):
        raise ValueError(f"train ids must lie in 0..{len(TRAIN_LABELS) - 1}, got "
                         f"{train_id_map.min()}..{train_id_map.max()}")
    return _LABEL_ID[train_id_map]


def read_gt(path: Path) -> np.ndarray:
    """(H, W) uint8 train ids of a ``*_gtFine_labelIds.png``; label ids above 33 raise ValueError naming it."""
    ids = read_label_png(path)
    if ids.size and ids.max() > MAX_LABEL_ID:
        raise ValueError(f"{path}: label ids {np.unique(ids[ids > MAX_LABEL_ID]).tolist()[:10]} outside "
                         f"Cityscapes' 0..{MAX_LABEL_ID}")
    return train_ids(ids)


def frame_prefix(path: str | Path) -> str:
    """``<city>_<seq>_<frame>`` of a Cityscapes file name; ValueError for another name."""
    match = re.match(r"[^_]+_\d+_\d+(?=_|\.|$)", Path(path).name)
    if match is None:
        raise ValueError(f"{path}: not a Cityscapes file name (<city>_<seq>_<frame>_...)")
    return match.group(0)


def result_name(image_path: str | Path) -> str:
    """``<city>_<seq>_<frame>_labelIds.png``: the name under which cityscapesscripts'
    ``evalPixelLevelSemanticLabeling`` (which looks for ``<city>_<seq>_<frame>*.png``) finds the
    prediction for ``image_path``."""
    return f"{frame_prefix(image_path)}_labelIds.png"


class Cityscapes(SemanticFiles):
    """Cityscapes reader: every ``*_leftImg8bit.png`` of ``root/leftImg8bit/<split>/*/`` with its
    ``gtFine`` labelIds mapped to train ids.

    ``ds[i]`` -> ``(tv_tensors.Image uint8 (3, H, W), {"mask": tv_tensors.Mask (H, W) int64})``, mask values
    train ids 0..18, 255 = ignore; ``transforms(image, target)`` is applied when given. ``classes``: the
    19 train-id names; ``palette``: their official colours.
    """

    def __init__(self, root: str | Path, split: str, transforms: Callable | None = None):
        root = Path(root)
        image_dir = root / "leftImg8bit" / split
        images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        if not images:
            raise FileNotFoundError(f"no Cityscapes images <city>/*{IMAGE_SUFFIX} under {image_dir}")
        files = [(image, root / "gtFine" / split / image.parent.name / image.name.replace(IMAGE_SUFFIX, GT_SUFFIX))
                 for image in images]
        super().__init__(root, split, transforms, files, CLASSES, PALETTE)

    def read_mask(self, path: Path) -> np.ndarray:
        return read_gt(path)
