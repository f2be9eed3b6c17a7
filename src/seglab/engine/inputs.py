"""The inputs of ``seglab predict``: image files, folders and videos found, each given its output name, checked
before any work (readable, no two writing the same file, already done), then read in batches.

An input's output name mirrors where it came from, relative to ``OUT`` and without the extension: a file
``D/a/b/img.png`` found in a folder input ``D`` is named ``a/b/img``; files given explicitly are named by their
stem when they all lie in one folder, else they keep their parent folder's name (``a/coffee.jpg`` is
``a/coffee``, ``b/coffee.jpg`` is ``b/coffee``), so same-stem inputs of different folders never collide.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
from PIL import Image
from tqdm import tqdm

from ..data.images import read_image
from . import video

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


@dataclasses.dataclass(frozen=True)
class Input:
    """One file to predict: ``path`` read, ``name`` its outputs' path relative to ``OUT`` without extension."""
    path: Path
    name: Path

    @property
    def is_video(self) -> bool:
        return self.path.suffix.lower() in VIDEO_EXTENSIONS


@dataclasses.dataclass
class Written:
    """What a ``predict_files`` run did: ``files`` written, ``inputs`` predicted, ``skipped`` inputs whose outputs
    all existed, ``notes`` for the summary (the video codec, padded sizes)."""
    files: int = 0
    inputs: int = 0
    skipped: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def explicit_inputs(paths: Sequence[Path]) -> list[Input]:
    """Inputs given by their file paths: named ``<stem>`` when they all lie in one folder, else
    ``<parent folder name>/<stem>`` (so that ``a/coffee.jpg`` and ``b/coffee.jpg`` do not collide)."""
    one_folder = len({path.resolve().parent for path in paths}) <= 1
    return [Input(path, Path(path.stem) if one_folder else Path(path.resolve().parent.name) / path.stem)
            for path in paths]


def find_inputs(sources: Iterable[str | Path], pattern: str | None = None, exclude: Path | None = None) -> list[Input]:
    """The inputs of ``sources`` (files and folders), in order, folders searched recursively for ``pattern``
    (a glob such as ``*.jpg``, case-sensitive; default: the image and video extensions, any case), leaving out
    files under ``exclude`` (the output folder, when it lies inside an input folder). A missing source raises
    FileNotFoundError; a folder with no match a ValueError naming it and the pattern."""
    sources = [Path(source) for source in sources]
    files = [source for source in sources if source.is_file()]
    named = dict(zip(files, explicit_inputs(files)))
    found = []
    for source in sources:
        if source.is_dir():
            files = sorted(p for p in source.rglob(pattern or "*") if p.is_file()
                           and (pattern or p.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
                           and not (exclude and p.resolve().is_relative_to(exclude.resolve())))
            if not files:
                wanted = f"--glob {pattern!r}" if pattern else \
                    f"an image or video extension ({' '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)})"
                raise ValueError(f"{source}: no file in this folder matches {wanted}")
            found += [Input(p, p.relative_to(source).with_suffix("")) for p in files]
        elif source in named:
            found.append(named[source])
        else:
            raise FileNotFoundError(f"{source}: no such file or folder")
    return found


def as_inputs(paths: Iterable[Input | str | Path]) -> list[Input]:
    """``paths`` as inputs: an ``Input`` as it is, paths as explicit files (``explicit_inputs``)."""
    paths = list(paths)
    files = [Path(p) for p in paths if not isinstance(p, Input)]
    named = dict(zip(files, explicit_inputs(files)))
    return [p if isinstance(p, Input) else named[Path(p)] for p in paths]


def check_readable(item: Input) -> None:
    """ValueError naming ``item``'s file when it cannot be opened (image header, or video container and stream);
    FileNotFoundError when it is missing."""
    if item.is_video:
        video.probe(item.path)
        return
    try:
        with Image.open(item.path):
            pass
    except FileNotFoundError:
        raise
    except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError ... on non-images
        raise ValueError(f"cannot read {item.path}: {type(error).__name__}: {error}") from error


def plan(items: Sequence[Input], outputs: Callable[[Input], list[Path]], batch_size: int = 1,
         skip_existing: bool = False) -> tuple[list[Input], int]:
    """(inputs to predict, how many were skipped), checked before any work: the batch size, every input readable,
    its ``outputs`` (paths) against every other's; with ``skip_existing`` an input whose outputs all exist is
    skipped. Two inputs writing the same file raise ValueError naming both."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    owner: dict[Path, Input] = {}
    todo = []
    for item in items:
        paths = outputs(item)
        for path in paths:
            other = owner.setdefault(path, item)
            if other is not item:
                raise ValueError(f"{other.path} and {item.path} would both write {path}: rename one or predict "
                                 f"them in separate runs")
        if skip_existing and all(path.exists() for path in paths):
            continue
        check_readable(item)
        todo.append(item)
    return todo, len(items) - len(todo)


def image_batches(items: Sequence[Input], batch_size: int, by_size: bool
                  ) -> Iterator[list[tuple[Input, torch.Tensor]]]:
    """Batches of up to ``batch_size`` (input, uint8 image (3,H,W)), read one at a time, with a progress bar
    (images/s); ``by_size``: a batch holds images of one size only (so they stack). At most ``2 × batch_size``
    images are held between batches: beyond that the oldest partial batch goes out as it is (folders of many
    sizes then run in smaller batches). Batches may come out of input order."""
    pending: dict[tuple, list] = {}  # image size -> partial batch, oldest first
    held = 0
    with tqdm(total=len(items), desc="predict", unit="img", disable=not items) as bar:
        for item in items:
            image = read_image(item.path)
            key = tuple(image.shape) if by_size else ()
            pending.setdefault(key, []).append((item, image))
            held += 1
            full = key if len(pending[key]) == batch_size else next(iter(pending)) if held > 2 * batch_size else None
            if full is not None:
                batch = pending.pop(full)
                held -= len(batch)
                yield batch
                bar.update(len(batch))
        for batch in pending.values():
            yield batch
            bar.update(len(batch))


def video_outputs(base: Path, video_masks: bool) -> list[Path]:
    """What a video input named ``base`` (in the output folder, without extension) gives: ``BASE_overlay.mp4``,
    and with ``video_masks`` the folder ``BASE/`` of its frames' label images."""
    overlay = base.with_name(base.name + "_overlay.mp4")
    return [overlay, base] if video_masks else [overlay]


def predict_videos(items: Sequence[Input], outputs: Callable[[Input], list[Path]], draw: video.Draw, batch_size: int,
                   written: Written) -> None:
    """``video.map_video`` of every video among ``items`` to its first output (the overlay video; a second output
    is the folder of its frames' label images), counted in ``written``."""
    for item in (item for item in items if item.is_video):
        files = outputs(item)
        masks_dir = files[1] if len(files) > 1 else None
        info = video.probe(item.path)
        frames = video.map_video(item.path, files[0], draw, batch_size, masks_dir, info)
        written.files += 1 + (frames if masks_dir else 0)
        written.inputs += 1
        written.note(f"videos encoded with {video.codec()}")
        if video.even_size(info.width, info.height) != (info.width, info.height):
            written.note(f"{item.path}: {info.width}×{info.height} frames padded to "
                         f"{'×'.join(map(str, video.even_size(info.width, info.height)))} (yuv420p needs even sizes)")
