"""Overlays, image grids and plots: training curves, per-class IoU, confusion matrix, precision-recall
(Pillow / matplotlib)."""
from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .data.palette import voc_palette  # noqa: F401  (seglab.viz.voc_palette: kept as an alias for one release)


def _palette_array(palette) -> np.ndarray:
    """(256, 3) uint8 lookup table from a list of (r, g, b); missing entries are black."""
    colors = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(colors)] = colors
    return table


def _mask_array(mask) -> np.ndarray:
    """(H, W) uint8 class ids from an int tensor / ndarray with values in 0..255."""
    mask = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if mask.ndim != 2 or mask.dtype.kind not in "biu":
        raise ValueError(f"mask must be integer (H, W), got {mask.dtype} {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"mask values must lie in 0..255, got {mask.min()}..{mask.max()}")
    return mask.astype(np.uint8)


def colorize(mask, palette) -> Image.Image:
    """Mode "P" image of a (H, W) int mask (tensor or ndarray) whose palette is ``palette``.

    Pixel values are the class ids themselves (255 = ignore stays 255), so ``np.array(img)``
    returns the mask and saving gives a VOC-style indexed PNG.
    """
    img = Image.fromarray(_mask_array(mask))  # mode "L"; putpalette turns it into "P"
    img.putpalette(_palette_array(palette).tobytes())
    return img


def overlay(image, mask, palette, alpha: float = 0.5) -> Image.Image:
    """RGB image blending ``image`` with the palette colours of ``mask``.

    image: uint8 (3, H, W) tensor, (H, W, 3) ndarray or PIL image; mask: (H, W) class ids.
    Each pixel is ``(1 - alpha) * image + alpha * palette[mask]``; ignore pixels (255) keep the
    image.
    """
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensor must be uint8 (3, H, W), got {image.dtype} "
                             f"{tuple(image.shape)}")
        image = image.permute(1, 2, 0).cpu().numpy()
    elif isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    mask = _mask_array(mask)
    if image.dtype != np.uint8 or image.shape != (*mask.shape, 3):
        raise ValueError(f"image must be uint8 (H, W, 3) matching mask {mask.shape}, got "
                         f"{image.dtype} {image.shape}")
    blended = (1 - alpha) * image.astype(np.float32) + alpha * _palette_array(palette)[mask]
    labelled = (mask != 255)[..., None]
    out = np.where(labelled, np.clip(np.rint(blended), 0, 255).astype(np.uint8), image)
    return Image.fromarray(out)


UNNAMED = "N/A"  # COCO's unused category ids: never named in a legend or a detection list


def legend_entries(mask, classes) -> list[tuple[int, str, float]]:
    """(class id, name, share of the labelled pixels) of every class present in ``mask`` (H, W), most pixels
    first; ignore (255) and unnamed ("N/A") classes are left out."""
    mask = _mask_array(mask)
    counts = np.bincount(mask[mask != 255].ravel(), minlength=len(classes))
    total = max(int(counts.sum()), 1)
    return [(label, classes[label], counts[label] / total) for label in np.argsort(-counts, kind="stable")
            if counts[label] and label < len(classes) and classes[label] != UNNAMED]


def with_legend(image: Image.Image, mask, classes, palette) -> Image.Image:
    """``image`` with a panel on its right listing the classes present in ``mask``: a swatch of the palette
    colour, the class name and its share of the labelled pixels (``legend_entries``)."""
    entries = legend_entries(mask, classes)
    font = ImageFont.load_default()
    lines = [f"{name} {100 * share:.1f}%" for _, name, share in entries]
    line_h = max([font.getbbox(line)[3] for line in lines] + [10]) + 4
    width = 8 + line_h + 4 + int(max([font.getlength(line) for line in lines] + [0])) + 8
    canvas = Image.new("RGB", (image.width + width, max(image.height, 8 + line_h * len(lines))), "white")
    canvas.paste(image.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, ((label, _, _), line) in enumerate(zip(entries, lines)):
        x, y = image.width + 8, 4 + row * line_h
        draw.rectangle([x, y, x + line_h - 4, y + line_h - 4], fill=tuple(int(c) for c in palette[label]),
                       outline="black")
        draw.text((x + line_h + 2, y), line, fill="black", font=font)
    return canvas


def grid(rows: list[list[Image.Image]], titles: list[str] | None = None,
         pad: int = 2) -> Image.Image:
    """RGB grid of images, e.g. one row per sample: [input, ground-truth overlay, prediction overlay].

    Every cell is resized to the first cell's (w, h) (nearest for mode "P" masks, bilinear
    otherwise) and separated by ``pad`` white pixels; the size is
    ``(cols * w + (cols + 1) * pad, title_h + rows * h + (rows + 1) * pad)``, where ``title_h``
    is 0 without ``titles`` (one per column, drawn with Pillow's default font).
    """
    if not rows or not rows[0]:
        raise ValueError("grid needs at least one row with one image")
    cols = max(len(row) for row in rows)
    if titles is not None and len(titles) != cols:
        raise ValueError(f"{len(titles)} titles for {cols} columns")
    w, h = rows[0][0].size
    font = ImageFont.load_default()
    title_h = 0
    if titles:
        title_h = max(font.getbbox(title)[3] for title in titles) + pad
    canvas = Image.new("RGB", (cols * w + (cols + 1) * pad, title_h + len(rows) * h
                               + (len(rows) + 1) * pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles or []):
        text_w = draw.textlength(title, font=font)
        draw.text((pad + c * (w + pad) + (w - text_w) / 2, pad), title, fill="black", font=font)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            resample = Image.NEAREST if cell.mode == "P" else Image.BILINEAR
            cell = cell.resize((w, h), resample).convert("RGB")
            canvas.paste(cell, (pad + c * (w + pad), title_h + pad + r * (h + pad)))
    return canvas


def _read_jsonl(path) -> list[dict]:
    """The JSON objects of a metrics.jsonl file, each with a "step"; blank lines skipped."""
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not JSON ({err})") from None
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError(f"{path}:{number}: expected a JSON object with a 'step' key, "
                                 f"got {line.strip()}")
            records.append(record)
    return records


def _agg_figure(width: float, height: float):
    """A matplotlib Figure rendered by Agg, without pyplot (no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_curves(metrics_jsonl, out_png) -> None:
    """Write a PNG of training curves from a run's ``metrics.jsonl`` to ``out_png`` (a path or a binary file).

    Lines are JSON dicts with a ``step``: training ones carry ``loss`` and ``lr``, validation ones
    ``val/<metric>`` keys. Panels: loss (log y) vs step, learning rate vs step, and the ``val/``
    metrics vs step when any are present (of COCO's stats only AP and AP50).
    """
    records = _read_jsonl(metrics_jsonl)
    series: dict[str, tuple[list, list]] = {}
    for record in records:
        for key, value in record.items():
            if value is not None and (key in ("loss", "lr") or key.startswith("val/")):  # null: a NaN not drawn
                steps, values = series.setdefault(key, ([], []))
                steps.append(record["step"])
                values.append(value)
    # COCO's 12 stats per IoU type would swamp the legend: keep AP and AP50
    detail = ("AR", "APs", "APm", "APl", "AP75")
    val_keys = sorted(k for k in series if k.startswith("val/") and not k.rsplit("_", 1)[-1].startswith(detail))
    panels = [("training loss", ["loss"], "log"), ("learning rate", ["lr"], "linear")]
    if val_keys:
        panels.append(("validation", val_keys, "linear"))

    fig = _agg_figure(4.5 * len(panels), 3.5)
    for ax, (title, keys, yscale) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for key in keys:
            if key in series:
                ax.plot(*series[key], label=key, marker="o" if key.startswith("val/") else None)
        ax.set(title=title, xlabel="step", yscale=yscale)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend()
    fig.savefig(out_png, dpi=100, format="png")


def plot_per_class_iou(iou: list[float], class_names: list[str], out_png) -> None:
    """Write a horizontal bar chart PNG of per-class IoU (fractions in [0, 1]; nan shown as n/a) to
    ``out_png`` (a path or a binary file)."""
    if len(iou) != len(class_names):
        raise ValueError(f"{len(iou)} IoU values for {len(class_names)} class names")
    values = np.nan_to_num(np.asarray(iou, dtype=np.float64), nan=0.0)
    fig = _agg_figure(6.0, 1.0 + 0.3 * len(iou))
    ax = fig.subplots()
    positions = np.arange(len(iou))
    ax.barh(positions, values, color="tab:blue")
    for y, value in zip(positions, values):
        ax.text(value + 0.01, y, f"{value:.3f}" if np.isfinite(iou[y]) else "n/a",
                va="center", fontsize=8)
    ax.set(yticks=positions, yticklabels=class_names, xlim=(0, 1.12), xlabel="IoU",
           title="per-class IoU")
    ax.invert_yaxis()
    fig.savefig(out_png, dpi=100, format="png")


def plot_experiment(values: dict[str, list[float]], metric: str, title: str, out_png) -> None:
    """Write a PNG of an experiment's ``metric`` per variant (``{variant: [one value per seed]}``, fractions,
    shown in points): one dot per seed, the mean as a bar across them with ± one standard deviation, the
    variants left to right in the given order, the axis fitted to the values (differences of a point show),
    to ``out_png`` (a path or a binary file)."""
    fig = _agg_figure(1.8 + 1.1 * len(values), 3.6)
    ax = fig.subplots()
    for x, seeds in enumerate(values.values()):
        points = 100 * np.asarray(seeds, dtype=np.float64)
        finite = points[np.isfinite(points)]
        if not finite.size:
            continue
        mean, std = finite.mean(), finite.std(ddof=1) if finite.size > 1 else 0.0
        ax.errorbar(x, mean, yerr=std, fmt="_", markersize=28, color="tab:orange", capsize=6, zorder=2)
        ax.scatter(np.full(finite.size, x) + np.linspace(-0.1, 0.1, finite.size), finite, color="tab:blue",
                   s=18, zorder=3)
        ax.annotate(f"{mean:.1f}", (x, mean), xytext=(18, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set(xticks=range(len(values)), xlim=(-0.6, len(values) - 0.2), ylabel=f"{metric} (points)", title=title)
    ax.set_xticklabels(list(values), rotation=20 if len(values) > 4 else 0)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(out_png, dpi=100, format="png")


def plot_confusion(confusion, class_names: list[str], out_png) -> None:
    """Write a heat map PNG of a (C, C) confusion matrix (rows = target, columns = prediction) with each
    row normalised to sum 1 (rows without pixels stay 0), the fractions printed in the cells for up to
    25 classes, to ``out_png`` (a path or a binary file)."""
    counts = np.asarray(confusion, dtype=np.float64)
    if counts.shape != (len(class_names),) * 2:
        raise ValueError(f"confusion matrix of shape {counts.shape} for {len(class_names)} class names")
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 2.2 + 0.42 * len(class_names)
    fig = _agg_figure(size + 0.6, size)
    ax = fig.subplots()
    shown = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, shrink=0.8, label="fraction of the target class")
    positions = np.arange(len(class_names))
    ax.set(xticks=positions, yticks=positions, xlabel="prediction", ylabel="ground truth",
           title="confusion matrix (rows normalised)")
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    if len(class_names) <= 25:
        for (row, col), rate in np.ndenumerate(rates):
            ax.text(col, row, f"{rate:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if rate > 0.5 else "black")
    fig.savefig(out_png, dpi=100, format="png")


def plot_precision_recall(curves: dict[str, dict[str, list[float]]], out_png) -> None:
    """Write a PNG of precision-recall curves, one panel per IoU type, to ``out_png`` (a path or a binary file).

    ``curves``: ``{iou_type: {label: precision at recall 0, 0.01, …, 1}}`` as ``metrics.coco.precision_recall``
    gives; NaN points (no ground truth) are left out of the lines.
    """
    fig = _agg_figure(4.5 * len(curves), 3.8)
    for ax, (iou_type, lines) in zip(fig.subplots(1, len(curves), squeeze=False)[0], curves.items()):
        for label, precision in lines.items():
            ax.plot(np.linspace(0, 1, len(precision)), precision, label=label)
        ax.set(title=f"{iou_type} precision-recall", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    fig.savefig(out_png, dpi=100, format="png")


def draw_instances(image, boxes, labels, masks, classes, palette, scores=None, alpha: float = 0.5) -> Image.Image:
    """RGB image with instance masks filled (alpha), boxes outlined and "class score" captions, each in
    its class's palette colour (torchvision.utils' drawing).

    image: uint8 (3, H, W); boxes (N, 4) xyxy pixels; labels (N,) class ids; masks (N, H, W) bool.
    """
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    image = image.cpu()
    if len(boxes) == 0:
        return Image.fromarray(image.permute(1, 2, 0).numpy())
    colors = [tuple(int(c) for c in palette[int(label)]) for label in labels]
    drawn = draw_segmentation_masks(image, masks.cpu().bool(), alpha=alpha, colors=colors)
    captions = [classes[int(label)] for label in labels]
    if scores is not None:
        captions = [f"{caption} {float(score):.2f}" for caption, score in zip(captions, scores)]
    drawn = draw_bounding_boxes(drawn, boxes.cpu().float(), labels=captions, colors=colors, width=1)
    return Image.fromarray(drawn.permute(1, 2, 0).numpy())
