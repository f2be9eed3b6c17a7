"""The part every semantic-segmentation file reader shares: items from (image file, mask file) pairs."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torchvision import tv_tensors

from seglab.data.images import image_tensor, load_image, read_label_png


class SemanticFiles(torch.utils.data.Dataset):
    """Items read from ``files``, a list of ``(image path, mask path)``.

    ``ds[i]`` -> ``(tv_tensors.Image uint8 (3, H, W), {"mask": tv_tensors.Mask (H, W) int64})``, mask values
    class ids, 255 = ignore; ``transforms(image, target)`` is applied when given. A reader whose masks are
    not PNGs of class ids overrides ``read_mask``. A missing file raises FileNotFoundError, a corrupt one or
    a mask whose size differs from its image's ValueError, naming the file.
    """

    def __init__(self, root: Path, split: str | None, transforms: Callable | None,
                 files: list[tuple[Path, Path]], classes: Sequence[str], palette: list[tuple[int, int, int]]):
        self.root, self.split, self.transforms = root, split, transforms
        self.files = files
        self.classes = tuple(classes)
        self.palette = palette

    def __len__(self) -> int:
        return len(self.files)

    def image_path(self, index: int) -> Path:
        return self.files[index][0]

    def mask_path(self, index: int) -> Path:
        return self.files[index][1]

    def read_mask(self, path: Path) -> np.ndarray:
        """(H, W) integer class ids of the mask file ``path``."""
        return read_label_png(path)

    def __getitem__(self, index: int):
        image_path, mask_path = self.files[index]
        image, mask = load_image(image_path), self.read_mask(mask_path)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but image {image_path} is "
                             f"{image.width}x{image.height}")
        image, target = image_tensor(image), {"mask": tv_tensors.Mask(torch.from_numpy(mask.astype(np.int64)))}
        return (image, target) if self.transforms is None else self.transforms(image, target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, {len(self)} images)"
