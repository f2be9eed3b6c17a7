"""Check a segmentation dataset before training: every image readable and 3-channel, every mask the
image's size with values in {0..C-1, 255} (errors); warn about the common traps that pass those checks
(0/255 binary masks, classes with no pixels, masks without an image, EXIF-rotated photos); summarise the
class frequencies with the imbalance ratio (and, on request, every problem)."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from tqdm import tqdm

from seglab.data.transforms import IGNORE_INDEX


def _item_name(dataset: Any, index: int, kind: str) -> str:
    """The file behind item ``index`` (``dataset.<kind>_path(index)``) if the dataset says, else ``Type[index]``."""
    path_of = getattr(dataset, f"{kind}_path", None)
    return str(path_of(index)) if path_of is not None else f"{type(dataset).__name__}[{index}]"


def _checked_mask(dataset: Any, index: int, num_classes: int) -> torch.Tensor:
    """Item ``index``'s (H, W) mask after checking the item; ValueError naming the file otherwise."""
    image, target = dataset[index]
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(
            f"{_item_name(dataset, index, 'image')}: expected a 3-channel image (3, H, W), "
            f"got shape {tuple(image.shape)}"
        )
    mask = torch.as_tensor(target["mask"])
    if mask.shape != image.shape[-2:]:
        raise ValueError(
            f"{_item_name(dataset, index, 'mask')}: mask is {tuple(mask.shape)} (H, W) but its image is "
            f"{tuple(image.shape[-2:])}"
        )
    if mask.is_floating_point() or mask.dtype == torch.bool:
        raise ValueError(
            f"{_item_name(dataset, index, 'mask')}: expected a mask of integer class ids, got {mask.dtype}"
        )
    bad = (mask != IGNORE_INDEX) & ((mask < 0) | (mask >= num_classes))
    if bad.any():
        values = torch.unique(mask[bad]).tolist()
        raise ValueError(
            f"{_item_name(dataset, index, 'mask')}: mask values {values[:10]} outside the class ids "
            f"0..{num_classes - 1} and {IGNORE_INDEX} (ignore)"
        )
    return mask


def _binary_warning(path: str, fraction: float) -> str:
    return (f"{path}: a binary mask saved as 0/255 ({IGNORE_INDEX} on {fraction:.1%} of its pixels): {IGNORE_INDEX} "
            f"means ignore, so its foreground would be dropped; if {IGNORE_INDEX} is your object, read it as class 1 "
            "with --data-option 'mask_map={255: 1}'")


def validate_dataset(dataset: Any, num_classes: int | None = None, progress: bool = True,
                     keep_going: bool = False) -> dict:
    """Read every raw item of ``dataset`` once (its ``transforms`` attribute is set to None meanwhile,
    so wrappers without one, e.g. ``Subset``, are checked after their transforms) and check it.

    ``num_classes`` defaults to ``len(dataset.classes)``. Errors, each naming the file (or
    ``Type[index]``): a dataset without images (naming its root), a missing file (FileNotFoundError), an
    unreadable one, an image that is not (3, H, W), a mask whose (H, W) differs from the image's, a non-integer mask, an RGB colour mask read
    without a palette, mask values outside 0..C-1 and 255 (ignore) (ValueError). The first error is
    raised, or with ``keep_going`` every error is collected and its item left out of the counts.
    Warnings (never raised), one line each naming the file or split and the value: the dataset's own
    (``dataset.warnings``, e.g. a mask without an image), each item's (``dataset.item_warnings(i)``, e.g. a
    photo stored EXIF-rotated), each mask holding only 0 and 255 when no pixel of any class >= 1 exists
    and there are >= 2 classes (the 0/255 binary-mask trap, with its ``mask_map`` fix), and each class
    with no pixels.
    Returns ``{"images" (items checked), "problems" (error messages), "warnings" (messages),
    "total_pixels", "ignore_pixels", "unlabelled_images" (masks entirely 255: they add nothing to a
    loss), "pixels_per_class" (list of C ints), "images_per_class" (list of C ints: images containing the
    class), "image_pixels_per_class" (list of C ints: the labelled pixels of the images containing the class,
    what median-frequency balancing divides by), "imbalance_ratio" (max / min pixel share over the classes with pixels; None without any),
    "min_size", "max_size" ([H, W])}``.
    """
    if len(dataset) == 0:
        root, split = getattr(dataset, "root", None), getattr(dataset, "split", None)
        raise ValueError(f"{root or type(dataset).__name__}: no images" + (f" in split {split!r}" if split else "")
                         + "; nothing to check, train on or score")
    num_classes = len(dataset.classes) if num_classes is None else num_classes
    pixels_per_class = torch.zeros(num_classes, dtype=torch.int64)
    images_per_class = torch.zeros(num_classes, dtype=torch.int64)
    image_pixels_per_class = torch.zeros(num_classes, dtype=torch.int64)  # labelled pixels of the images with c
    ignore_pixels = total_pixels = unlabelled_images = 0
    sizes, problems = [], []
    warnings = list(getattr(dataset, "warnings", None) or [])
    item_warnings = getattr(dataset, "item_warnings", None)
    binary = []  # (mask name, fraction of 255) of masks holding exactly 0 and 255

    saved_transforms = getattr(dataset, "transforms", None)
    if saved_transforms is not None:
        dataset.transforms = None
    try:
        for index in tqdm(range(len(dataset)), desc="validate", disable=not progress):
            try:
                mask = _checked_mask(dataset, index, num_classes)
            except (ValueError, FileNotFoundError) as error:
                if not keep_going:
                    raise
                problems.append(str(error))
                continue
            if item_warnings is not None:
                warnings += item_warnings(index)
            ignored = mask == IGNORE_INDEX
            counts = torch.bincount(mask[~ignored], minlength=num_classes)
            pixels_per_class += counts
            images_per_class += counts > 0
            image_pixels_per_class += (counts > 0) * int(counts.sum())
            ignore_pixels += int(ignored.sum())
            unlabelled_images += bool(ignored.all())
            total_pixels += mask.numel()
            sizes.append(tuple(mask.shape))
            if ignored.any() and counts[0] > 0 and int(counts.sum()) == int(counts[0]):
                binary.append((_item_name(dataset, index, "mask"), float(ignored.float().mean())))
    finally:
        if saved_transforms is not None:
            dataset.transforms = saved_transforms

    if num_classes >= 2 and binary and int(pixels_per_class[1:].sum()) == 0:
        warnings += [_binary_warning(name, fraction) for name, fraction in binary]
    checked = len(dataset) - len(problems)
    if checked:
        split = getattr(dataset, "split", None)
        where = f"split {split!r}" if split else "the dataset"
        classes = list(getattr(dataset, "classes", ()))
        for label in torch.nonzero(pixels_per_class == 0).flatten().tolist():
            name = f" {classes[label]!r}" if label < len(classes) else ""
            warnings.append(f"class {label}{name} has no pixels in {where} ({checked} images checked"
                            f"{', under ' + str(dataset.root) if getattr(dataset, 'root', None) else ''})")
    present = pixels_per_class[pixels_per_class > 0]
    return {
        "images": len(dataset),
        "problems": problems,
        "warnings": warnings,
        "total_pixels": total_pixels,
        "ignore_pixels": ignore_pixels,
        "unlabelled_images": unlabelled_images,
        "pixels_per_class": pixels_per_class.tolist(),
        "images_per_class": images_per_class.tolist(),
        "image_pixels_per_class": image_pixels_per_class.tolist(),
        "imbalance_ratio": float(present.max() / present.min()) if len(present) else None,
        "min_size": [min(s) for s in zip(*sizes)] if sizes else [0, 0],
        "max_size": [max(s) for s in zip(*sizes)] if sizes else [0, 0],
    }


def format_summary(summary: dict, classes: Sequence[str]) -> str:
    """A Markdown table of ``validate_dataset``'s summary: class, pixels, fraction of all pixels, images; then
    the imbalance ratio (max / min pixel share over the classes present) and the classes with no pixels."""
    total = max(summary["total_pixels"], 1)
    problems = f", {len(summary['problems'])} with problems (not counted below)" if summary["problems"] else ""
    if summary["unlabelled_images"]:
        problems += f", {summary['unlabelled_images']} with no labelled pixel (all {IGNORE_INDEX})"
    lines = [
        f"{summary['images']} images{problems}, sizes (H, W) {tuple(summary['min_size'])} to "
        f"{tuple(summary['max_size'])}",
        "",
        "| class | pixels | fraction | images |",
        "|---|---:|---:|---:|",
    ]
    rows = list(zip(classes, summary["pixels_per_class"], summary["images_per_class"]))
    lines += [f"| {name} | {pixels} | {pixels / total:.2%} | {images} |" for name, pixels, images in rows]
    ignore = summary["ignore_pixels"]
    lines.append(f"| ignore ({IGNORE_INDEX}) | {ignore} | {ignore / total:.2%} | |")
    present = [(pixels, name) for name, pixels, _ in rows if pixels > 0]
    lines.append("")
    if present:
        (most, most_name), (least, least_name) = max(present), min(present)
        lines.append(f"imbalance ratio (max / min pixel share over the {len(present)} classes present): "
                     f"{most / least:.1f} (most: {most_name} {most / total:.2%}, least: {least_name} "
                     f"{least / total:.2%})")
    else:
        lines.append("imbalance ratio: n/a (no class has pixels)")
    absent = [name for name, pixels, _ in rows if pixels == 0]
    if absent:
        lines.append(f"classes with no pixels: {', '.join(absent)}")
    return "\n".join(lines)
