"""Prediction on image files: a palette PNG of class ids and an overlay per image."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .. import viz
from ..data.voc import load_image
from .inference import Size, predict_labels


def read_image(path: str | Path) -> torch.Tensor:
    """An image file as uint8 (3,H,W); a missing or unreadable file raises an error naming it."""
    array = np.array(load_image(Path(path)).convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1)


def predict_files(model: nn.Module, paths: Iterable[str | Path], out_dir: str | Path, *, crop: Size | None = None,
                  stride: Size | None = None, scales: Sequence[float] = (1.0,), flip: bool = False,
                  crf: dict | None = None) -> list[Path]:
    """For each image: ``<stem>.png`` (palette PNG of class ids) and ``<stem>_overlay.png`` in ``out_dir``.

    ``model.meta`` (from ``seglab.models.load``) supplies mean/std and the palette. ``crop``, ``stride``,
    ``scales`` and ``flip`` choose the inference mode (see ``infer_logits``); default: whole image.
    ``crf``: ``seglab.crf.dense_crf`` keywords to refine each prediction with the dense CRF.
    """
    meta = model.meta
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in tqdm(list(paths), desc="predict", unit="img"):
        image = read_image(path)
        pred = predict_labels(model, image[None], meta["mean"], meta["std"], crop=crop, stride=stride,
                              scales=scales, flip=flip, crf=crf)[0].cpu()
        stem = Path(path).stem
        viz.colorize(pred, meta["palette"]).save(out / f"{stem}.png")
        viz.overlay(image, pred, meta["palette"]).save(out / f"{stem}_overlay.png")
        written.append(out / f"{stem}.png")
    return written
