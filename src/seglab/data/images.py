"""Reading image and label files with Pillow; errors name the file."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import tv_tensors

# the EXIF orientation tag (0x0112) and what each value does to the stored pixels to display them
EXIF_ORIENTATION = 0x0112
ORIENTATIONS = {2: "mirrored", 3: "rotated 180°", 4: "flipped", 5: "mirrored and rotated 90°",
                6: "rotated 90° clockwise", 7: "mirrored and rotated 90° clockwise",
                8: "rotated 90° counter-clockwise"}


def load_image(path: Path) -> Image.Image:
    """Open and fully decode ``path`` (any mode), pixels as stored (no EXIF rotation). Missing ->
    FileNotFoundError; corrupt -> ValueError naming it."""
    try:
        with Image.open(path) as image:
            image.load()
        return image
    except FileNotFoundError:
        raise
    except Exception as error:  # PIL raises OSError, SyntaxError, struct.error, zlib.error ... on corrupt data
        raise ValueError(f"cannot read {path}: {type(error).__name__}: {error}") from error


def exif_orientation(path: Path) -> int:
    """The EXIF orientation (1..8; 1 = as stored) of the image file ``path``, read from its header only; 1
    when it has none or cannot be read."""
    try:
        with Image.open(path) as image:
            value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # an unreadable file is reported by load_image
        return 1
    return value if value in ORIENTATIONS else 1


def load_photo(path: Path, exif_transpose: bool = True) -> Image.Image:
    """``load_image`` turned to its displayed orientation (``PIL.ImageOps.exif_transpose``) when its EXIF
    says it is stored rotated or mirrored, as phones save photos; masks carry no EXIF and are drawn on
    the photo as shown, so photos are read that way."""
    image = load_image(path)
    return ImageOps.exif_transpose(image) if exif_transpose else image


def image_tensor(image: Image.Image) -> tv_tensors.Image:
    """A Pillow image as tv_tensors.Image uint8 (3, H, W), RGB."""
    pixels = np.array(image if image.mode == "RGB" else image.convert("RGB"))
    return tv_tensors.Image(torch.from_numpy(pixels).permute(2, 0, 1).contiguous())


def read_image(path: str | Path) -> torch.Tensor:
    """An image file as a plain uint8 tensor (3, H, W), RGB, in its displayed (EXIF) orientation; a missing
    or unreadable file raises an error naming it."""
    return image_tensor(load_photo(Path(path))).as_subclass(torch.Tensor)


def read_label_png(path: Path, colours: Sequence[tuple[int, int, int]] | None = None) -> np.ndarray:
    """(H, W) uint8 labels of a mask file.

    A palette ("P") or grayscale ("L") PNG: its pixel values, without palette lookup (the values are the
    labels); a bilevel ("1") one: 0 and 1. An RGB(A) colour mask: with ``colours`` (class id -> (r, g, b);
    None entries skipped) each colour becomes its id (alpha is ignored), and a colour not in ``colours``
    raises ValueError naming the file and the colour; without ``colours`` it raises ValueError naming
    the file and saying how to convert it (``--data-option palette=voc`` or ``palette=FILE``).
    """
    mask = load_image(path)
    if mask.mode in ("P", "L"):
        return np.array(mask)
    if mask.mode == "1":
        return np.array(mask).astype(np.uint8)
    if mask.mode not in ("RGB", "RGBA"):
        raise ValueError(f"{path}: expected a palette (P), grayscale (L) or RGB colour PNG, got mode {mask.mode}")
    pixels = np.array(mask.convert("RGB")).astype(np.int64)
    if colours is None:
        found = np.unique(pixels.reshape(-1, 3), axis=0)[:4]
        sample = ", ".join(str(tuple(int(c) for c in colour)) for colour in found)
        raise ValueError(f"{path}: expected a palette (P) or grayscale (L) PNG of class ids, got an RGB colour mask "
                         f"(mode {mask.mode}, colours {sample}, ...): convert its colours to ids with --data-option "
                         "palette=voc (the VOC colours) or palette=FILE (one 'r g b' line per class id)")
    return colours_to_ids(path, pixels, colours)


def colours_to_ids(path: Path, pixels: np.ndarray, colours: Sequence[tuple[int, int, int] | None]) -> np.ndarray:
    """(H, W) uint8 class ids of (H, W, 3) ``pixels`` by ``colours`` (id -> (r, g, b)); a colour not among
    them raises ValueError naming ``path``, the colour and its pixel count."""
    packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    lookup = {}
    for label, colour in enumerate(colours):
        if colour is not None:
            lookup.setdefault((colour[0] << 16) | (colour[1] << 8) | colour[2], label)
    values, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
    unknown = [(int(v), int(n)) for v, n in zip(values, counts) if int(v) not in lookup]
    if unknown:
        shown = ", ".join(f"{(v >> 16, (v >> 8) & 255, v & 255)} ({n} pixels)" for v, n in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ValueError(f"{path}: colour {shown}{more} is not in the palette's class colours")
    return np.array([lookup[int(v)] for v in values], dtype=np.uint8)[inverse.reshape(packed.shape)]
