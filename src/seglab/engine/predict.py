"""Prediction on image files: a palette PNG of class ids and an overlay per image (and, for Cityscapes
models, the label-id PNG the official evaluation reads)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from .. import viz
from ..data import cityscapes
from ..data.images import image_tensor, load_image
from .inference import Size, predict_labels

FORMATS = ("palette", "cityscapes")


def read_image(path: str | Path) -> torch.Tensor:
    """An image file as uint8 (3,H,W); a missing or unreadable file raises an error naming it."""
    return image_tensor(load_image(Path(path))).as_subclass(torch.Tensor)


def _cityscapes_names(model: nn.Module, paths: list) -> list[str]:
    """``cityscapes.result_name`` of every path, after checking that ``model`` predicts the 19 train ids."""
    if model.meta["num_classes"] != len(cityscapes.CLASSES):
        raise ValueError(f"format 'cityscapes' needs a model of the {len(cityscapes.CLASSES)} Cityscapes train ids, "
                         f"this one has {model.meta['num_classes']} classes")
    return [cityscapes.result_name(path) for path in paths]


def predict_files(model: nn.Module, paths: Iterable[str | Path], out_dir: str | Path, *, crop: Size | None = None,
                  stride: Size | None = None, scales: Sequence[float] = (1.0,), flip: bool = False,
                  crf: dict | None = None, fmt: str = "palette") -> list[Path]:
    """For each image: ``<stem>.png`` (palette PNG of class ids) and ``<stem>_overlay.png`` in ``out_dir``;
    with ``fmt="cityscapes"`` also ``out_dir/labelIds/<city>_<seq>_<frame>_labelIds.png``, the train ids
    mapped to Cityscapes label ids, named as ``evalPixelLevelSemanticLabeling`` expects (point its
    ``CITYSCAPES_RESULTS`` at ``out_dir/labelIds``; the images must have Cityscapes names).

    ``model.meta`` (from ``seglab.models.load``) supplies mean/std and the palette. ``crop``, ``stride``,
    ``scales`` and ``flip`` choose the inference mode (see ``infer_logits``); default: whole image.
    ``crf``: ``seglab.crf.dense_crf`` keywords to refine each prediction with the dense CRF.
    """
    if fmt not in FORMATS:
        raise ValueError(f"prediction format must be one of {FORMATS}, got {fmt!r}")
    paths = list(paths)
    result_names = _cityscapes_names(model, paths) if fmt == "cityscapes" else None
    meta = model.meta
    out = Path(out_dir)
    (out / "labelIds" if result_names else out).mkdir(parents=True, exist_ok=True)
    written = []
    for index, path in enumerate(tqdm(paths, desc="predict", unit="img")):
        image = read_image(path)
        pred = predict_labels(model, image[None], meta["mean"], meta["std"], crop=crop, stride=stride,
                              scales=scales, flip=flip, crf=crf)[0].cpu()
        stem = Path(path).stem
        viz.colorize(pred, meta["palette"]).save(out / f"{stem}.png")
        viz.overlay(image, pred, meta["palette"]).save(out / f"{stem}_overlay.png")
        if result_names:
            Image.fromarray(cityscapes.label_ids(pred.numpy())).save(out / "labelIds" / result_names[index])
        written.append(out / f"{stem}.png")
    return written
