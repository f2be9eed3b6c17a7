"""PASCAL VOC semantic segmentation: ``ImageSets/Segmentation/<split>.txt``, ``JPEGImages/<id>.jpg``,
``SegmentationClass/<id>.png`` (palette PNGs whose pixel values are class ids, 255 = ignore)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from seglab.data.paths import read_lines, read_split_list
from seglab.data.semantic import SemanticFiles, read_palette, shown_palette
from seglab.data.palette import voc_palette

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def voc_split(root: Path, split: str) -> list[str]:
    """The ids of ``root/ImageSets/Segmentation/<split>.txt`` (checked to stay inside ``root``)."""
    return read_split_list(root / "ImageSets" / "Segmentation" / f"{split}.txt")


def voc_pair(root: Path, image_id: str) -> tuple[Path, Path]:
    """``(JPEGImages/<id>.jpg, SegmentationClass/<id>.png)`` under ``root``."""
    return root / "JPEGImages" / f"{image_id}.jpg", root / "SegmentationClass" / f"{image_id}.png"


class VOCSegmentation(SemanticFiles):
    """PASCAL VOC layout reader.

    ``ds[i]`` -> ``(tv_tensors.Image uint8 (3, H, W), {"mask": tv_tensors.Mask (H, W) int64})``, mask values
    are class ids and 255 = ignore; ``transforms(image, target)`` is applied when given. ``classes``
    defaults to ``root/labels.txt`` (one name per line, written by seglab's export) if present, else
    the 21 VOC classes. ``ids`` lists the split's image ids. Reader options: ``mask_map`` ({stored value:
    class id}, applied on read), ``palette`` ("voc" or a file of ``r g b`` lines: RGB colour masks are
    converted colour -> id), ``exif_transpose`` (default True: photos in their displayed orientation).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transforms: Callable | None = None,
        classes: Sequence[str] | None = None,
        mask_map: dict | None = None,
        palette: str | None = None,
        exif_transpose: bool = True,
    ):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"VOC root {root} does not exist")
        self.ids = voc_split(root, split)
        if classes is None and (root / "labels.txt").is_file():
            classes = read_lines(root / "labels.txt", "class list")
        classes = VOC_CLASSES if classes is None else classes
        colours = None if palette is None else read_palette(palette, len(classes))
        shown = voc_palette() if colours is None else shown_palette(colours)
        super().__init__(root, split, transforms, [voc_pair(root, i) for i in self.ids], classes, shown,
                         mask_map=mask_map, mask_colours=colours, exif_transpose=exif_transpose)
