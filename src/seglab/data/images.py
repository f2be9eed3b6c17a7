"""Reading image and label files with Pillow; errors name the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors


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


def image_tensor(image: Image.Image) -> tv_tensors.Image:
    """A Pillow image as tv_tensors.Image uint8 (3, H, W), RGB."""
    pixels = np.array(image if image.mode == "RGB" else image.convert("RGB"))
    return tv_tensors.Image(torch.from_numpy(pixels).permute(2, 0, 1).contiguous())


def read_image(path: str | Path) -> torch.Tensor:
    """An image file as a plain uint8 tensor (3, H, W), RGB; a missing or unreadable file raises an error naming it."""
    return image_tensor(load_image(Path(path))).as_subclass(torch.Tensor)


def read_label_png(path: Path) -> np.ndarray:
    """(H, W) uint8 pixel values of a palette ("P") or grayscale ("L") PNG, without palette lookup: the
    values are the labels. Another mode (e.g. an RGB colour mask) raises ValueError naming the file."""
    mask = load_image(path)
    if mask.mode not in ("P", "L"):
        raise ValueError(f"{path}: expected a palette (P) or grayscale (L) PNG of class ids, got mode {mask.mode}")
    return np.array(mask)
