"""The part every semantic-segmentation file reader shares: items from (image file, mask file) pairs, and
the reader options that fix common mask formats on read (``mask_map``, ``palette``)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torchvision import tv_tensors

from seglab.data.images import ORIENTATIONS, exif_orientation, image_tensor, load_photo, read_label_png
from seglab.data.palette import voc_palette
from seglab.data.transforms import IGNORE_INDEX


def check_mask_map(mask_map, num_classes: int) -> dict[int, int]:
    """``mask_map`` ({stored value: class id}, e.g. ``{255: 1}`` from ``--data-option 'mask_map={255: 1}'``)
    checked: a mapping of ints 0..255 to a class id 0..num_classes-1 or 255 (ignore); ValueError naming
    the value otherwise."""
    if not isinstance(mask_map, dict):
        raise ValueError(f"mask_map must be a mapping {{stored value: class id}} such as {{255: 1}} (on the command "
                         f"line quote it, with a space after the colon: --data-option 'mask_map={{255: 1}}'), got "
                         f"{mask_map!r}")
    checked = {}
    for key, value in mask_map.items():
        for what, number in (("stored value", key), ("class id", value)):
            if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= 255:
                raise ValueError(f"mask_map {mask_map}: {what} {number!r} is not an integer 0..255")
        if value >= num_classes and value != IGNORE_INDEX:
            raise ValueError(f"mask_map {mask_map}: {key} -> {value}, but {value} is not a class id "
                             f"0..{num_classes - 1} "
                             f"or {IGNORE_INDEX} (ignore); there are {num_classes} classes")
        checked[key] = value
    return checked


def read_palette(spec: str | Path | Sequence, num_classes: int) -> list[tuple[int, int, int] | None]:
    """Class colours (id -> (r, g, b), None where an id has none) for converting RGB colour masks.

    ``spec``: "voc" (the VOC colours of ids 0..num_classes-1, and (224, 224, 192) for 255 = ignore), a
    list of [r, g, b] (index = class id), or a text file: one colour per line, ``r g b`` for the next class
    id (from 0) or ``id r g b`` for an explicit one (e.g. ``255 224 224 192`` for ignore); commas may
    separate the numbers; blank lines and ``#`` comments are skipped. Ids must be 0..num_classes-1 or 255;
    errors name the file, the line and the value.
    """
    if isinstance(spec, str) and spec.lower() == "voc":
        voc = voc_palette()
        colours: list = list(voc[:num_classes])
        colours += [None] * (IGNORE_INDEX - len(colours)) + [voc[IGNORE_INDEX]]
        return colours
    entries: list[tuple[str, int, list]] = []
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"palette file {path} does not exist (palette= takes 'voc' or a text file of "
                                    "'r g b' lines, line i = class id i)")
        next_id = 0
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            fields = [f for f in re.split(r"[\s,]+", line.split("#")[0].strip()) if f]
            if not fields:
                continue
            where = f"{path} line {number}"
            try:
                values = [int(f) for f in fields]
            except ValueError:
                raise ValueError(f"{where}: expected 'r g b' or 'id r g b' integers, got {line.strip()!r}") from None
            if len(values) not in (3, 4):
                raise ValueError(f"{where}: expected 'r g b' or 'id r g b', got {line.strip()!r}")
            label = values[0] if len(values) == 4 else next_id
            next_id = label + 1
            entries.append((where, label, values[-3:]))
    else:
        entries = [(f"palette entry {i}", i, list(c)) for i, c in enumerate(spec)]
    colours = [None] * (IGNORE_INDEX + 1)
    for where, label, rgb in entries:
        if not (0 <= label < num_classes or label == IGNORE_INDEX):
            raise ValueError(f"{where}: class id {label} is not 0..{num_classes - 1} or {IGNORE_INDEX} (ignore)")
        if len(rgb) != 3 or any(not 0 <= c <= 255 for c in rgb):
            raise ValueError(f"{where}: colour {rgb} is not three values 0..255")
        colours[label] = tuple(int(c) for c in rgb)
    return colours


def shown_palette(colours: Sequence[tuple[int, int, int] | None]) -> list[tuple[int, int, int]]:
    """The display palette of ``read_palette``'s class colours: each id's colour, the VOC colour where it has none."""
    voc = voc_palette()
    return [c if c is not None else voc[i] for i, c in enumerate(colours)]


class SemanticFiles(torch.utils.data.Dataset):
    """Items read from ``files``, a list of ``(image path, mask path)``.

    ``ds[i]`` -> ``(tv_tensors.Image uint8 (3, H, W), {"mask": tv_tensors.Mask (H, W) int64})``, mask values
    class ids, 255 = ignore; ``transforms(image, target)`` is applied when given. A reader whose masks are
    not PNGs of class ids overrides ``read_mask``. Photos are read in their displayed orientation (EXIF
    rotation applied, ``exif_transpose=False``: as stored). ``mask_colours`` (id -> (r, g, b)) converts
    RGB colour masks to ids; ``mask_map`` ({stored value: class id}) is applied to every mask on read.
    A missing file raises FileNotFoundError, a corrupt one or a mask whose size differs from its image's
    ValueError, naming the file (and saying whether the photo's EXIF rotation explains the difference).
    ``warnings`` lists what the reader noticed while listing the files (one line each).
    """

    def __init__(self, root: Path, split: str | None, transforms: Callable | None,
                 files: list[tuple[Path, Path]], classes: Sequence[str], palette: list[tuple[int, int, int]],
                 mask_map: dict | None = None, mask_colours: Sequence | None = None, exif_transpose: bool = True):
        self.root, self.split, self.transforms = root, split, transforms
        self.files = files
        self.classes = tuple(classes)
        self.palette = palette
        mask_map = None if mask_map is None else check_mask_map(mask_map, len(self.classes))
        self.mask_colours = mask_colours
        self.exif_transpose = exif_transpose
        self.warnings: list[str] = []
        self._lookup = None
        if mask_map:
            self._lookup = np.arange(256, dtype=np.uint8)
            for key, value in mask_map.items():
                self._lookup[key] = value

    def __len__(self) -> int:
        return len(self.files)

    def image_path(self, index: int) -> Path:
        return self.files[index][0]

    def mask_path(self, index: int) -> Path:
        return self.files[index][1]

    def read_mask(self, path: Path) -> np.ndarray:
        """(H, W) integer class ids of the mask file ``path`` (RGB colour masks through ``mask_colours``)."""
        return read_label_png(path, self.mask_colours)

    def labels(self, path: Path) -> np.ndarray:
        """``read_mask(path)`` with ``mask_map`` applied."""
        mask = self.read_mask(path)
        if self._lookup is not None:
            if mask.dtype != np.uint8:
                raise ValueError(f"{path}: mask_map applies to 8-bit masks, this one holds {mask.dtype}")
            mask = self._lookup[mask]
        return mask

    def item_warnings(self, index: int) -> list[str]:
        """Notes on item ``index`` worth a warning (header reads only): a photo stored rotated by EXIF."""
        orientation = exif_orientation(self.image_path(index)) if self.exif_transpose else 1
        if orientation == 1:
            return []
        return [f"{self.image_path(index)}: EXIF orientation {orientation} ({ORIENTATIONS[orientation]}): the photo "
                "is read in its displayed orientation, which its mask matches"]

    def __getitem__(self, index: int):
        image_path, mask_path = self.files[index]
        image, mask = load_photo(image_path, self.exif_transpose), self.labels(mask_path)
        if mask.shape != (image.height, image.width):
            raise ValueError(self._size_message(image_path, mask_path, image, mask.shape))
        image, target = image_tensor(image), {"mask": tv_tensors.Mask(torch.from_numpy(mask.astype(np.int64)))}
        return (image, target) if self.transforms is None else self.transforms(image, target)

    def _size_message(self, image_path: Path, mask_path: Path, image, mask_shape) -> str:
        orientation = exif_orientation(image_path)
        size = f"mask {mask_path} is {mask_shape[1]}x{mask_shape[0]} (WxH) but image {image_path} is " \
               f"{image.width}x{image.height}"
        if orientation == 1:
            return f"{size}; the photo has no EXIF rotation, so that does not explain it"
        other = load_photo(image_path, exif_transpose=not self.exif_transpose)  # ``image`` is the other one
        stored, displayed = (other, image) if self.exif_transpose else (image, other)
        what = f"EXIF orientation {orientation} ({ORIENTATIONS[orientation]})"
        if self.exif_transpose and mask_shape == (stored.height, stored.width):
            return (f"{size} as displayed ({what}); the mask matches the photo as stored, so it was drawn on the "
                    "unrotated pixels: read photos as stored with --data-option exif_transpose=false")
        if not self.exif_transpose and mask_shape == (displayed.height, displayed.width):
            return (f"{size} as stored; its {what} explains it: the mask matches the photo as displayed, so read "
                    "photos rotated (exif_transpose=true, the default)")
        return f"{size}; its {what} does not explain it (displayed {displayed.width}x{displayed.height})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, {len(self)} images)"
