"""One uploaded image through the model: the bytes decoded within the server's limits, then the task's answer as
JSON (with the PNG inline, base64) and as the PNG that ``seglab predict`` writes for the same image."""
from __future__ import annotations

import base64
import io
import time
from typing import Callable

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from .. import viz
from ..data.coco_format import encode_masks
from ..data.images import image_tensor
from ..engine import instance
from ..engine.inference import predict_labels

# raster formats Pillow decodes itself; others it can open (EPS through Ghostscript, ...) are refused
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


class BadImage(ValueError):
    """An upload that is not a usable image; ``status`` is the HTTP status that answers it."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def decode_image(data: bytes, max_pixels: int) -> torch.Tensor:
    """uint8 (3, H, W) RGB of the image file ``data``, turned to its EXIF orientation as ``data.images.read_image``
    does. The size is read from the header and checked against ``max_pixels`` before the pixels are decoded.
    Raises ``BadImage``: 415 not an image of ``FORMATS``, 413 too many pixels, 400 truncated or corrupt."""
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as error:  # Pillow's own (global) limit, far above ours by default
        raise BadImage(413, f"image too large: {error}") from error
    except UnidentifiedImageError as error:
        raise BadImage(415, f"not an image in a supported format ({', '.join(FORMATS)})") from error
    except Exception as error:  # a recognised format whose header is corrupt
        raise BadImage(400, f"corrupt image header: {type(error).__name__}: {error}") from error
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise BadImage(413, f"image of {width}×{height} = {width * height} pixels is over the server's limit of "
                                f"{max_pixels:.0f} pixels (--max-pixels)")
        try:
            image.load()
            shown = ImageOps.exif_transpose(image)
        except Exception as error:  # Pillow raises OSError, SyntaxError, zlib.error ... on bad data
            raise BadImage(400, f"truncated or corrupt {image.format} image: {type(error).__name__}: {error}") \
                from error
    return image_tensor(shown).as_subclass(torch.Tensor)


def png_bytes(image: Image.Image) -> bytes:
    """``image`` as PNG file bytes: the same bytes as ``image.save("x.png")``."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def semantic(model: nn.Module, image: torch.Tensor, meta: dict, score_threshold: float | None = None
             ) -> tuple[dict, bytes]:
    """The label map of ``image`` (3, H, W) uint8 as ``seglab predict`` computes it: JSON of the classes present
    (id, name, colour, fraction of the pixels, most first) and ``mask_png`` (base64), and that palette PNG.
    ``score_threshold`` is the instance models' option (``create_app`` refuses it for a semantic model)."""
    pred = predict_labels(model, image[None], meta["mean"], meta["std"])[0].cpu()
    png = png_bytes(viz.colorize(pred, meta["palette"]))
    classes = [{"id": int(label), "name": name, "color": [int(c) for c in meta["palette"][label]],
                "fraction": round(float(share), 6)} for label, name, share in viz.legend_entries(pred, meta["classes"])]
    return {"classes": classes, "mask_png": _b64(png)}, png


def instances(model: nn.Module, image: torch.Tensor, meta: dict, score_threshold: float | None = None
              ) -> tuple[dict, bytes]:
    """The detections of ``image`` (3, H, W) uint8 scoring >= ``score_threshold`` (default 0.5), as
    ``seglab predict`` keeps them: JSON records (box xyxy pixels, label, class, score, ``mask`` compressed COCO
    RLE) and ``drawing_png`` (base64), and that drawing as PNG (predict's ``<stem>_instances.png``)."""
    with torch.no_grad():
        shown = instance.shown_detections(instance.detect(model, image), meta, score_threshold)
    records = instance.detection_records(shown, meta)
    for record, rle in zip(records, encode_masks(shown["masks"]) if len(records) else []):
        record["mask"] = rle
    drawing = png_bytes(instance.drawing(image, shown, meta))
    return {"detections": records, "drawing_png": _b64(drawing)}, drawing


ANSWERS: dict[str, Callable] = {"semantic": semantic, "instance": instances}


def answer(model: nn.Module, task: str, data: bytes, *, max_pixels: int, score_threshold: float | None
           ) -> tuple[dict, bytes]:
    """``data`` decoded (``decode_image``) and answered by the ``task``'s function: (JSON body, PNG bytes). The
    JSON also holds the task, the image's width and height and ``time_ms``, the milliseconds this took."""
    start = time.perf_counter()
    image = decode_image(data, max_pixels)
    body, png = ANSWERS[task](model, image, model.meta, score_threshold)
    return {"task": task, "width": int(image.shape[2]), "height": int(image.shape[1]), **body,
            "time_ms": round(1000 * (time.perf_counter() - start), 1)}, png
