"""A user's own data in one folder::

    root/images/<stem>.jpg        # or .jpeg .png .bmp .tif .tiff .webp; other files are not read
    root/masks/<stem>.png         # class ids, 255 = ignore: grayscale (L) PNG, or palette (P) PNG
                                  # whose indices are the ids, or RGB colours with ``palette=``
    root/classes.txt              # class names, line i = class id i (unless given as ``classes``)
    root/<split>.txt              # optional: the stems of a split, one per line
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from seglab.data.images import load_image
from seglab.data.paths import read_lines, read_split_list
from seglab.data.semantic import SemanticFiles, read_palette, shown_palette
from seglab.data.palette import voc_palette

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def files_by_stem(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """``{stem: path}`` of the files in ``folder`` whose suffix (any case) is in ``suffixes``; two files with
    one stem raise ValueError naming both."""
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in suffixes:
            if path.stem in found:
                raise ValueError(f"{found[path.stem]} and {path} have the same stem; keep one")
            found[path.stem] = path
    return found


def mask_palette(path: Path) -> list[tuple[int, int, int]]:
    """The colours of the palette PNG ``path`` (index = class id), else the VOC palette."""
    mask = load_image(path)
    if mask.mode != "P":
        return voc_palette()
    colours = mask.getpalette()
    return [tuple(colours[i:i + 3]) for i in range(0, len(colours), 3)]


def select_stems(root: Path, split: str | None, images: dict, masks: dict) -> tuple[list[str], list[str]]:
    """(stems, warnings): the stems of ``split`` (``root/<split>.txt``; None: every image), each with an
    image and a mask, else ValueError naming every offender; with split None, a warning (one line each)
    for each mask without an image (it is not read)."""
    warnings = []
    if split is None:
        stems = sorted(images)
        warnings = [f"{masks[s]}: a mask without an image {s}.* in {root / 'images'}; it is not read"
                    for s in sorted(masks) if s not in images]
    else:
        split_file = root / f"{split}.txt"
        stems = read_split_list(split_file)
        unknown = [s for s in stems if s not in images]
        if unknown:
            raise ValueError(f"{split_file}: {len(unknown)} stems without an image in {root / 'images'}: "
                             f"{', '.join(unknown)}")
    unlabelled = [str(images[s]) for s in stems if s not in masks]
    if unlabelled:
        raise ValueError(f"{len(unlabelled)} images without a mask <stem>.png in {root / 'masks'}: "
                         f"{', '.join(unlabelled)}")
    return stems, warnings


class FolderSegmentation(SemanticFiles):
    """Images and masks matched by file stem (layout in the module docstring).

    ``ds[i]`` -> ``(tv_tensors.Image uint8 (3, H, W), {"mask": tv_tensors.Mask (H, W) int64})``, 255 =
    ignore; ``transforms(image, target)`` is applied when given. ``split``: None uses every image, a name
    the stems of ``root/<split>.txt``. ``classes``: the argument, else ``root/classes.txt``; ``palette``:
    the first mask's if it is a palette PNG, else the VOC palette. ``stems`` lists the items.

    Reader options: ``mask_map`` ({stored value: class id}, e.g. ``{255: 1}`` for 0/255 binary masks),
    ``palette`` ("voc" or a text file of ``r g b`` lines, line i = class id i: RGB colour masks are
    converted colour -> id, and it becomes the dataset's palette), ``exif_transpose`` (default True:
    photos in their displayed orientation).

    Errors (raised here, naming the files): an image without a mask, a split-file stem without an image or
    with ``..``/an absolute path, two images with one stem, no class names. A mask without an image (split
    None) is a warning in ``warnings``.
    """

    def __init__(self, root: str | Path, classes: Sequence[str] | None = None, split: str | None = None,
                 transforms: Callable | None = None, mask_map: dict | None = None, palette: str | None = None,
                 exif_transpose: bool = True):
        root = Path(root)
        images = files_by_stem(root / "images", IMAGE_SUFFIXES)
        masks = files_by_stem(root / "masks", (".png",))
        self.stems, warnings = select_stems(root, split, images, masks)
        if classes is None:
            if not (root / "classes.txt").is_file():
                raise ValueError(f"no class names for {root}: pass classes= or write {root / 'classes.txt'} "
                                 "(one name per line, line i = class id i)")
            classes = read_lines(root / "classes.txt", "class list")
        colours = None if palette is None else read_palette(palette, len(classes))
        if colours is not None:
            shown = shown_palette(colours)
        else:
            shown = mask_palette(masks[self.stems[0]]) if self.stems else voc_palette()
        super().__init__(root, split, transforms, [(images[s], masks[s]) for s in self.stems], classes, shown,
                         mask_map=mask_map, mask_colours=colours, exif_transpose=exif_transpose)
        self.warnings = warnings
