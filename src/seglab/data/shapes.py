"""Shapes: deterministic synthetic scenes of circles, squares, triangles and stars.

Every item is generated on the fly from ``np.random.default_rng([seed, split_code, index])``, so
the same ``(seed, split, index)`` always gives the same scene and the splits never overlap.
A scene is a gradient + stripes background with 1-6 objects of random colour, size and rotation;
later objects paint over earlier ones, so classes can be told apart by shape only.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes

from seglab.data.palette import voc_palette

CLASSES = ("background", "circle", "square", "triangle", "star")
CIRCLE, SQUARE, TRIANGLE, STAR = 1, 2, 3, 4
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
DEFAULT_NUM_IMAGES = {"train": 1000, "val": 200, "test": 200}
MIN_VISIBLE_AREA = 20  # px; occluded slivers smaller than this are removed from the scene
MAX_OBJECTS = 6
RADIUS_RANGE = (0.10, 0.25)  # circumradius, fraction of the image size
SPACING = 0.75  # centres are drawn (up to PLACEMENT_TRIES times) at least SPACING·(r_i + r_j) apart,
PLACEMENT_TRIES = 20  # so objects overlap partly (occlusion) but are rarely hidden behind each other


def _polygon(num_vertices: int, radii: tuple[float, ...]) -> np.ndarray:
    """(num_vertices, 2) xy vertices on circles of the given radii (cycled), first one pointing up."""
    angles = -np.pi / 2 + 2 * np.pi * np.arange(num_vertices) / num_vertices
    r = np.resize(np.asarray(radii, dtype=np.float64), num_vertices)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


# Unit-circumradius outlines; each object rotates and scales one of them.
_POLYGONS = {
    SQUARE: _polygon(4, (1.0,)),
    TRIANGLE: _polygon(3, (1.0,)),
    STAR: _polygon(10, (1.0, 0.5)),  # five points, inner radius half the outer
}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 in [0, 255]-ish: a linear colour gradient plus sinusoidal stripes."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta, phi = rng.uniform(0, 2 * np.pi, 2)
    ramp = xx * np.cos(theta) + yy * np.sin(theta)
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    start, end = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    period, amplitude = rng.uniform(4, 16), rng.uniform(0, 25)
    stripes = amplitude * np.sin(2 * np.pi / period * (xx * np.cos(phi) + yy * np.sin(phi)))
    return start + ramp[..., None] * (end - start) + stripes[..., None]


def _draw_instance_ids(objects: list[tuple[int, np.ndarray]], size: int) -> np.ndarray:
    """(size, size) uint8 map: k + 1 where object k is visible (drawn in order, no anti-aliasing), 0 elsewhere.

    ``objects``: (class id, outline) with outline the (V, 2) xy polygon, or the
    (2, 2) corner box of the ellipse for a circle, in pixels.
    """
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for k, (label, outline) in enumerate(objects):
        points = [tuple(p) for p in outline.tolist()]
        if label == CIRCLE:
            draw.ellipse(points, fill=k + 1)
        else:
            draw.polygon(points, fill=k + 1)
    return np.array(canvas)


def _place(rng: np.random.Generator, radii: np.ndarray, size: int) -> np.ndarray:
    """(N, 2) object centres in pixels, each drawn until it keeps SPACING·(r_i + r_j) from the earlier
    ones (the last try is kept when none does)."""
    centres = np.empty((len(radii), 2))
    for i, r in enumerate(radii):
        for _ in range(PLACEMENT_TRIES):
            centres[i] = rng.uniform(0.1, 0.9, 2) * size
            gaps = np.linalg.norm(centres[:i] - centres[i], axis=1) - SPACING * (radii[:i] + r)
            if (gaps >= 0).all():
                break
    return centres


def render_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one scene.

    Returns ``image`` (size, size, 3) uint8, ``instance_ids`` (size, size) uint8 (0 background,
    k + 1 for object k) and ``labels`` (N,) int64 class ids, with every kept object visible on at
    least ``MIN_VISIBLE_AREA`` pixels and N in 1..6.
    """
    background = _background(rng, size)
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    labels = rng.integers(1, len(CLASSES), n)
    radii = rng.uniform(*RADIUS_RANGE, n) * size
    centres = _place(rng, radii, size)
    angles = rng.uniform(0, 2 * np.pi, n)
    colours = rng.integers(0, 256, (n, 3)).astype(np.float32)
    noise = rng.normal(0, rng.uniform(2, 10), (size, size, 3)).astype(np.float32)

    objects = []
    for label, r, centre, angle in zip(labels, radii, centres, angles):
        if label == CIRCLE:
            outline = np.stack([centre - r, centre + r])
        else:
            c, s = np.cos(angle), np.sin(angle)
            outline = _POLYGONS[label] @ np.array([[c, s], [-s, c]]) * r + centre
        objects.append((int(label), outline))

    # Removing an occluder only grows the others' visible areas, so this ends after one redraw at most;
    # the topmost object (centre inside, radius >= 10% of the image) is always kept.
    keep = np.ones(n, dtype=bool)
    while True:
        instance_ids = _draw_instance_ids([o for o, k in zip(objects, keep) if k], size)
        kept = np.flatnonzero(keep)
        visible = np.bincount(instance_ids.ravel(), minlength=len(kept) + 1)[1:] >= MIN_VISIBLE_AREA
        if visible.all():
            break
        keep[kept[~visible]] = False

    fills = np.concatenate([np.zeros((1, 3), np.float32), colours[keep]])
    image = np.where(instance_ids[..., None] > 0, fills[instance_ids], background) + noise
    return np.clip(image, 0, 255).astype(np.uint8), instance_ids, labels[keep].astype(np.int64)


class Shapes(torch.utils.data.Dataset):
    """Synthetic scenes with semantic and instance targets, generated on the fly (a few ms per 128x128 item).

    Objects are drawn without anti-aliasing, so image, masks and boxes agree pixel for pixel; an object
    left with fewer than ``MIN_VISIBLE_AREA`` visible pixels is removed from the scene (image and targets).

    ``ds[i]`` -> ``(image, target)``: image ``tv_tensors.Image`` uint8 (3, H, W); target
    ``{"mask": tv_tensors.Mask (H, W) int64 class ids (no ignore pixels), "boxes": tv_tensors.BoundingBoxes
    XYXY (N, 4) float32 in pixels (x2, y2 exclusive: last pixel + 1), "labels": (N,) int64 in 1..4,
    "masks": tv_tensors.Mask (N, H, W) uint8 visible part of each object}``; ``transforms(image, target)``
    is applied when given. ``cache=True`` keeps rendered scenes in memory (training re-reads every epoch).
    """

    classes = CLASSES

    def __init__(
        self,
        split: str,
        num_images: int,
        image_size: int = 128,
        seed: int = 0,
        transforms: Callable | None = None,
        cache: bool = False,
    ):
        if split not in SPLIT_CODES:
            raise ValueError(f"Shapes split must be one of {sorted(SPLIT_CODES)}, got {split!r}")
        if num_images < 0 or image_size < 16:
            raise ValueError(f"Shapes needs num_images >= 0 and image_size >= 16, got {num_images}, {image_size}")
        self.split = split
        self.num_images = num_images
        self.image_size = image_size
        self.seed = seed
        self.transforms = transforms
        self.palette = voc_palette()
        self._cache: dict[int, tuple] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_images:
            raise IndexError(f"Shapes index {index} out of range for {self.num_images} images")
        image, instance_ids, labels = self._render(index)

        ids = torch.from_numpy(instance_ids)
        masks = ids[None] == torch.arange(1, len(labels) + 1, dtype=ids.dtype)[:, None, None]
        boxes = masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])
        labels = torch.from_numpy(labels)
        target = {
            "mask": tv_tensors.Mask(torch.cat([torch.zeros(1, dtype=torch.int64), labels])[ids.long()]),
            "boxes": tv_tensors.BoundingBoxes(
                boxes, format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(self.image_size,) * 2
            ),
            "labels": labels,
            "masks": tv_tensors.Mask(masks.to(torch.uint8)),
        }
        image = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target

    def _render(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``render_scene`` of item ``index``, kept in memory when ``cache`` (about 65 kB per 128² scene)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        scene = render_scene(np.random.default_rng([self.seed, SPLIT_CODES[self.split], index]), self.image_size)
        if self._cache is not None:
            self._cache[index] = scene
        return scene

    def __repr__(self) -> str:
        return (
            f"Shapes(split={self.split!r}, num_images={self.num_images}, "
            f"image_size={self.image_size}, seed={self.seed})"
        )
