"""The self-contained HTML report of an evaluation: ``report.html`` holding the metrics, the plots (per-class
IoU, confusion matrix, training curves, precision-recall), an overlay gallery and the run's config, every
picture inlined as a PNG data URI, so the one file opens from disk with no network. Rendered by jinja2 from
``templates/report.html.j2``; plots drawn by ``seglab.viz``."""
from __future__ import annotations

import base64
import functools
import io
import json
import math
from pathlib import Path
from typing import Callable, Sequence

import jinja2
from PIL import Image

from . import viz
from .metrics.coco import STAT_NAMES

SEMANTIC_METRICS = {"pixel_acc": "pixel accuracy", "mean_acc": "mean accuracy", "miou": "mIoU",
                    "fwiou": "frequency-weighted IoU", "mean_dice": "mean Dice/F1",
                    "mean_precision": "mean precision", "mean_recall": "mean recall"}
# per-class lists of SegmentationMetrics.compute() -> column label
SEMANTIC_PER_CLASS = {"iou": "IoU", "acc": "accuracy", "dice": "Dice/F1", "precision": "precision",
                      "recall": "recall"}
SEMANTIC_COLUMNS = ("input", "ground truth", "prediction")
BAND_NOTE = ("the labelled pixels within this many pixels (chessboard distance) of a ground-truth boundary or a "
             "void pixel (DeepLab's trimap), with the CRF where it was applied")
INSTANCE_COLUMNS = ("input", "ground truth", "prediction (score >= 0.5)")
THUMBNAIL = 320  # gallery pictures are shrunk to fit this many pixels (keeps the file small for large images)

Row = tuple[str, list[Image.Image]]  # a gallery row: caption, pictures


def png_uri(write: Callable) -> str:
    """The ``data:image/png;base64,…`` URI of the PNG that ``write(binary_file)`` writes."""
    buffer = io.BytesIO()
    write(buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _picture_uri(image: Image.Image) -> str:
    image = image.copy()
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return png_uri(functools.partial(image.save, format="PNG"))


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}"


def _gallery(heading: str, columns: Sequence[str], groups: Sequence[tuple[str, Sequence[Row]]]) -> dict | None:
    """The gallery section: ``groups`` of captioned rows of pictures (None when there are none)."""
    groups = [(name, [(caption, [_picture_uri(p) for p in pictures]) for caption, pictures in rows])
              for name, rows in groups if rows]
    captioned = any(caption for _, rows in groups for caption, _ in rows)
    return {"heading": heading, "columns": list(columns), "groups": groups, "captioned": captioned} if groups else None


def _curves(run_dir: str | Path | None) -> list[dict]:
    """The training-curves section when ``run_dir`` holds a ``metrics.jsonl``."""
    log = Path(run_dir) / "metrics.jsonl" if run_dir is not None else None
    if log is None or not log.is_file():
        return []
    return [{"heading": "Training curves", "note": f"from {log}",
             "figures": [("", png_uri(functools.partial(viz.plot_curves, log)))]}]


def _render(out_dir: str | Path, title: str, sections: list[dict], gallery: dict | None,
            config: dict | None) -> Path:
    environment = jinja2.Environment(loader=jinja2.PackageLoader("seglab", "templates"), autoescape=True,
                                     trim_blocks=True, lstrip_blocks=True)
    settings = [(key, value if isinstance(value, str) else json.dumps(value)) for key, value in (config or {}).items()]
    html = environment.get_template("report.html.j2").render(title=title, sections=sections, gallery=gallery,
                                                             config=settings)
    path = Path(out_dir) / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def _title(kind: str, config: dict | None, run_dir: str | Path | None) -> str:
    model = f" of {config['model']}" if config and "model" in config else ""
    return f"seglab {kind} evaluation{model}" + (f" — {run_dir}" if run_dir is not None else "")


def _summary_table(settings: list[tuple[str, dict]]) -> dict:
    """The summary metrics table: a row per metric, a column per (name, metrics) setting, in percent."""
    return {"columns": ["metric", *(f"value{name} (%)" for name, _ in settings)],
            "rows": [[label, *(_percent(values[key]) for _, values in settings)]
                     for key, label in SEMANTIC_METRICS.items()]}


def semantic_report(out_dir: str | Path, result: dict, classes: Sequence[str], ranked: Sequence[Row], *,
                    config: dict | None = None, run_dir: str | Path | None = None) -> Path:
    """Write ``out_dir/report.html`` for ``evaluate``'s ``result``: the summary metrics (FCN's four, mean
    Dice/F1, precision, recall), per-class IoU, accuracy, Dice/F1, precision and recall (table; IoU also as
    a bar chart), the row-normalised confusion matrix — with and without the CRF side by
    side when ``result`` has ``"without_crf"`` — training curves from ``run_dir``, the gallery of ``ranked``
    rows (best first: the first half shown as the best images, the rest as the worst) and ``config``; the
    summary metrics over the boundary band too when ``result`` has ``"boundary_band"``."""
    settings = [(" without CRF", result["without_crf"]), (" with CRF", result)] if "without_crf" in result \
        else [("", result)]
    metrics = _summary_table(settings)
    per_class = {"columns": ["class", *(f"{what}{name} (%)" for what in SEMANTIC_PER_CLASS.values()
                                        for name, _ in settings)],
                 "rows": [[name, *(_percent(values[what][index]) for what in SEMANTIC_PER_CLASS
                                   for _, values in settings)] for index, name in enumerate(classes)]}
    names = list(classes)
    plots = [(name.strip(), png_uri(functools.partial(plot, values[key], names))) for name, values in settings
             for plot, key in ((viz.plot_per_class_iou, "iou"), (viz.plot_confusion, "confusion"))]
    band = result.get("boundary_band")
    band_section = [{"heading": f"Boundary band (±{band['width']} px)", "note": BAND_NOTE,
                     "tables": [_summary_table([("", band)])]}] if band else []
    sections = [
        {"heading": "Metrics", "tables": [metrics, per_class]},
        *band_section,
        {"heading": "Per-class IoU and confusion matrix", "figures": plots,
         "note": "confusion matrix row i: the pixels of ground-truth class i, by predicted class"},
        *_curves(run_dir),
    ]
    half = len(ranked) // 2
    gallery = _gallery("Best and worst images by mIoU", SEMANTIC_COLUMNS,
                       [("best", ranked[:half]), ("worst", ranked[half:])])
    return _render(out_dir, _title("semantic", config, run_dir), sections, gallery, config)


def instance_report(out_dir: str | Path, metrics: dict, classes: Sequence[str], rows: Sequence[Row], *,
                    curves: dict | None = None, config: dict | None = None,
                    run_dir: str | Path | None = None) -> Path:
    """Write ``out_dir/report.html`` for the COCO ``metrics`` of ``engine.instance.evaluate``: the COCO AP/AR table,
    the precision-recall ``curves`` (``metrics.coco.precision_recall`` per IoU type), training curves from
    ``run_dir``, the gallery ``rows`` and ``config``."""
    table = {"columns": ["IoU type", *(f"{name} (%)" for name in STAT_NAMES)],
             "rows": [[iou_type, *(_percent(values[name]) for name in STAT_NAMES)]
                      for iou_type, values in metrics.items()]}
    sections = [{"heading": "COCO metrics", "tables": [table], "note": "classes: " + ", ".join(classes[1:])}]
    if curves:
        sections.append({"heading": "Precision-recall", "note": "all areas, 100 detections per image, mean over the classes",
                         "figures": [("", png_uri(functools.partial(viz.plot_precision_recall, curves)))]})
    sections += _curves(run_dir)
    gallery = _gallery("Examples", INSTANCE_COLUMNS, [("", rows)])
    return _render(out_dir, _title("instance", config, run_dir), sections, gallery, config)


def experiment_report(out_dir: str | Path, title: str, paper: str, machines: Sequence[str], columns: Sequence[str],
                      variants: Sequence[Sequence[str]], claims: Sequence[Sequence[str]], figure: str) -> Path:
    """``out_dir/report.html`` of ``seglab experiment``: the variants' table (``columns``: name, paper, seglab's
    mean ± std, …, seconds) with the paper and the ``machines`` its runs ran on, the figure ``out_dir/figure`` and
    the paper's claims (holds, in how many seeds, Welch p)."""
    note = "; ".join([f"paper: {paper}"] * bool(paper) + [f"measured on: {'; '.join(machines)}"])
    sections = [{"heading": "Variants", "note": note,
                 "tables": [{"columns": list(columns), "rows": variants}],
                 "figures": [("the metric per variant: one dot per seed, the bar their mean",
                              png_uri(lambda file: file.write((Path(out_dir) / figure).read_bytes())))]},
                {"heading": "The paper's direction", "note": "each claim of the paper: the variant it says is better against the other",
                 "tables": [{"columns": ["claim", "holds here", "in seeds", "Welch p"], "rows": claims}],
                 "figures": []}]
    return _render(out_dir, title, sections, None, None)
