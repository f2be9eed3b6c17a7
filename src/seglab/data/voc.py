"""PASCAL VOC semantic segmentation: ``ImageSets/Segmentation/<split>.txt``, ``JPEGImages/<id>.jpg``,
``SegmentationClass/<id>.png`` (palette PNGs whose pixel values are class ids, 255 = ignore)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from seglab.viz import voc_palette

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def load_image(path: Path) -> Image.Image:
    """Open and fully decode ``path`` (any mode). Missing -> FileNotFoundError; corrupt -> ValueError naming it."""
    try:
        with Image.open(path) as image:
            image.load()
        return image
    except FileNotFoundError:
        raise
    except Exception as error:  # PIL raises OSError, SyntaxError, struct.error, zlib.error ... on corrupt data
        raise ValueError(f"cannot read {path}: {type(error).__name__}: {error}") from error


class VOCSegmentation(torch.utils.data.Dataset):
    """PASCAL VOC layout reader.

    ``ds[i]`` -> ``(tv_tensors.Image uint8 (3, H, W), {"mask": tv_tensors.Mask (H, W) int64})``, mask values
    are class ids and 255 = ignore; ``transforms(image, target)`` is applied when given. ``classes``
    defaults to ``root/labels.txt`` (one name per line, written by seglab's export) if present, else
    the 21 VOC classes.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transforms: Callable | None = None,
        classes: Sequence[str] | None = None,
    ):
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        if not self.root.is_dir():
            raise FileNotFoundError(f"VOC root {self.root} does not exist")
        list_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"VOC split list {list_file} does not exist")
        self.ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        labels_file = self.root / "labels.txt"
        if classes is None and labels_file.is_file():
            classes = [name.strip() for name in labels_file.read_text().splitlines() if name.strip()]
        self.classes = tuple(VOC_CLASSES if classes is None else classes)
        self.palette = voc_palette()

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.root / "JPEGImages" / f"{self.ids[index]}.jpg"

    def mask_path(self, index: int) -> Path:
        return self.root / "SegmentationClass" / f"{self.ids[index]}.png"

    def __getitem__(self, index: int):
        image_path, mask_path = self.image_path(index), self.mask_path(index)
        image, mask = load_image(image_path), load_image(mask_path)
        if mask.mode not in ("P", "L"):
            raise ValueError(
                f"{mask_path}: expected a palette (P) or grayscale (L) PNG of class ids, got mode {mask.mode}"
            )
        if mask.size != image.size:
            raise ValueError(
                f"mask {mask_path} is {mask.width}x{mask.height} (WxH) but image {image_path} is "
                f"{image.width}x{image.height}"
            )
        pixels = np.array(image if image.mode == "RGB" else image.convert("RGB"))
        image = tv_tensors.Image(torch.from_numpy(pixels).permute(2, 0, 1).contiguous())
        target = {"mask": tv_tensors.Mask(torch.from_numpy(np.array(mask, dtype=np.int64)))}
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"VOCSegmentation(root={str(self.root)!r}, split={self.split!r}, {len(self)} images)"
