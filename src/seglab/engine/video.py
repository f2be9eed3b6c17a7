"""Video files in and out with PyAV (the optional ``seglab[video]`` extra): a video's frames decoded, drawn on in
batches and encoded again, streaming, so memory holds about one batch of frames whatever the video's length."""
from __future__ import annotations

import dataclasses
import os
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

MISSING = "video prediction needs PyAV: pip install 'seglab[video]'"

# frame -> (drawn frame, label image or None), for a batch of uint8 frames (3,H,W)
Draw = Callable[[list[torch.Tensor]], list[tuple[Image.Image, Image.Image | None]]]


def _av():
    try:
        import av
    except ImportError as error:
        raise ValueError(MISSING) from error
    return av


def codec() -> str:
    """The encoder written videos use: libx264 (H.264) where this PyAV build has it, else mpeg4."""
    return "libx264" if "libx264" in _av().codecs_available else "mpeg4"


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """A video's first video stream: ``fps`` frames per second, ``width``×``height`` pixels, ``frames`` as its
    header says (0: unknown)."""
    fps: Fraction
    width: int
    height: int
    frames: int


def probe(path: Path) -> VideoInfo:
    """The ``VideoInfo`` of ``path``; ValueError naming it when it cannot be opened or has no video stream."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video stream in this file")
            stream = container.streams.video[0]
            fps = stream.average_rate or stream.guessed_rate
            if not fps:
                raise ValueError(f"{path}: the video stream has no frame rate")
            return VideoInfo(Fraction(fps), stream.codec_context.width, stream.codec_context.height, stream.frames)
    except av.FFmpegError as error:
        raise ValueError(f"cannot open video {path}: {error}") from error


def even_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) rounded up to even numbers: yuv420p (what players expect) halves both for the colour."""
    return width + width % 2, height + height % 2


def map_video(source: Path, target: Path, draw: Draw, batch_size: int, masks_dir: Path | None = None,
              info: VideoInfo | None = None) -> int:
    """Decode ``source``, ``draw`` its frames ``batch_size`` at a time and encode the drawn frames to ``target``
    (MP4, ``codec()``, yuv420p, the source's frame rate and size; an odd width or height is padded with one black
    column or row, see ``even_size``). With ``masks_dir`` the label images go to
    ``masks_dir/frame_000000.png`` .... ``target`` is written under a temporary name and renamed when complete,
    so an interrupted run leaves none. ``info``: ``probe(source)``, when the caller has it. Returns the number of
    frames."""
    av, info = _av(), info or probe(source)
    width, height = even_size(info.width, info.height)
    partial = target.with_name(f".{target.stem}.partial{target.suffix}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if masks_dir is not None:
        masks_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    with av.open(str(source)) as reader, av.open(str(partial), "w", format="mp4") as writer:
        stream = writer.add_stream(codec(), rate=info.fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        batch: list[torch.Tensor] = []

        def flush() -> None:
            nonlocal count
            for drawn, mask in draw(batch):
                if drawn.size != (width, height):
                    padded = Image.new("RGB", (width, height))
                    padded.paste(drawn)
                    drawn = padded
                writer.mux(stream.encode(av.VideoFrame.from_image(drawn)))
                if mask is not None:
                    mask.save(masks_dir / f"frame_{count:06d}.png")
                count += 1
            batch.clear()

        with tqdm(total=info.frames or None, desc=source.name, unit="frame") as bar:
            for frame in reader.decode(video=0):
                batch.append(torch.from_numpy(np.ascontiguousarray(frame.to_ndarray(format="rgb24"))).permute(2, 0, 1))
                if len(batch) == batch_size:
                    flush()
                    bar.update(batch_size)
            done = len(batch)
            if batch:
                flush()
            bar.update(done)
        writer.mux(stream.encode(None))
    os.replace(partial, target)
    return count
