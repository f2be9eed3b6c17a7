"""The semantic task in the engine: training data and loss, evaluation (confusion-matrix metrics), pictures,
the report and prediction on image files.

``engine.semantic`` and ``engine.instance`` expose the same names (the task seam, ``engine.tasks``):
``DEFAULT_METRIC``, ``REPORT_FILES``, ``PREDICTION_FILES``, ``model_options``, ``train_transforms``, ``collate``,
``batch_groups``, ``criterion``, ``loss_normalizer``, ``loss``, ``evaluate``, ``summary``, ``pictures``,
``write_report``, ``predict_files``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms.functional import resize as tv_resize
from tqdm import tqdm

from .. import data, losses, report, viz
from ..data import cityscapes
from ..data.transforms import IGNORE_INDEX
from ..io import save_image, save_npz, write_json
from ..metrics import SegmentationMetrics, format_table
from ..metrics.boundary import BoundaryBandMetrics
from ..metrics.semantic import image_miou
from . import distributed, inputs
from .inference import Size, crf_refine, infer_logits, inference_context

DEFAULT_METRIC = "miou"
METRICS = tuple(report.SEMANTIC_METRICS)  # what summary() gives, the names --best-metric may take
BAND_METRICS = ("miou", "pixel_acc")  # of a boundary band, in summary() as band_miou, band_pixel_acc
REPORT_FILES = ("metrics.json", "per_class_iou.png", "overlays.png", "report.html")
PREDICTION_FILES = "masks (<stem>.png) and overlays (<stem>_overlay.png)"
FORMATS = ("palette", "cityscapes")
PLAIN_CE = losses.SegmentationLoss()  # the default criterion: cross-entropy, aux head at 0.4


def model_options(config, classes: Sequence[str]) -> dict:
    """Model options that depend on the task and the data: none for semantic models."""
    if config.mask_classes is not None:
        raise ValueError("mask_classes (partial mask supervision) applies to instance models only")
    return {}


def train_transforms(config, meta: dict):
    """Random scale, rotation (``config.rotate``; the mask filled with 255), crop to ``crop_size`` (default
    ``image_size``), flip and colour jitter (``config.color_jitter``, the image only); float images normalised
    with the model's ``meta`` mean/std (those its weights expect)."""
    return data.train_transforms(config.crop_size or config.image_size, scale_range=config.scale_range,
                                 mean=meta["mean"], std=meta["std"], hflip=config.hflip, rotate=config.rotate,
                                 color_jitter=config.color_jitter)


def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """[(image (3,H,W) float, {"mask": (H,W)})] → images (N,3,H,W), masks (N,H,W) int64."""
    images = torch.stack([image for image, _ in batch])
    masks = torch.stack([target["mask"] for _, target in batch]).long()
    return images, masks


def synthetic_batch(meta: dict, batch: int, size: tuple[int, int],
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random normalised images (N,3,H,W) and masks (N,H,W) of ``meta``'s classes, as ``collate`` gives them (for
    ``engine.benchmark``)."""
    images = torch.randn(batch, 3, *size, generator=generator)
    return images, torch.randint(0, meta["num_classes"], (batch, *size), generator=generator)


def model_inputs(images: torch.Tensor, device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """What the model's forward takes for a ``collate``-d batch of images: the tensor on ``device``."""
    return images.to(device, memory_format=memory_format)


def batch_groups(dataset) -> None:
    """Semantic batches mix any images (they are cropped to one size): no grouping."""
    return None


def criterion(config, train_set, meta: dict) -> losses.SegmentationLoss:
    """The loss ``config`` chooses (``loss``, ``loss_weights``, ``class_weights``, ``ohem``, ``label_smoothing``;
    ``seglab.losses``), built once before training; a one-line ValueError names a bad option and its value.
    ``class_weights: auto`` is median-frequency balancing over the masks of ``train_set`` (counted by the data
    check that validated it, or here for generated data); explicit or computed, the weights are recorded in ``meta["class_weights"]`` (so in the
    checkpoints' ``"meta"``)."""
    terms = losses.parse_loss(config.loss)
    num_classes = meta["num_classes"]
    weights = losses.parse_class_weights(config.class_weights, num_classes)
    if weights == "auto":
        checked = getattr(train_set, "data_check", None)  # engine.datasets.build_split counted them already
        if checked is not None:
            counts = checked["summary"]["pixels_per_class"], checked["summary"]["image_pixels_per_class"]
        else:  # generated data (Shapes) is not checked: count its masks here
            counts = losses.class_pixel_counts((train_set[i][1]["mask"] for i in range(len(train_set))), num_classes)
        weights = losses.median_frequency_weights(*counts, classes=meta["classes"])
        if distributed.is_main():
            tqdm.write("seglab: class weights (median frequency) "
                       + ", ".join(f"{name} {w:.3g}" for name, w in zip(meta["classes"], weights)))
    built = losses.SegmentationLoss(terms, config.loss_weights, weights, losses.parse_ohem(config.ohem),
                                    float(config.label_smoothing))
    if weights is not None:
        meta["class_weights"] = [float(w) for w in weights]
    return built


def loss_normalizer(micro_batches: list, device: torch.device,
                    criterion: losses.SegmentationLoss | None = None) -> torch.Tensor:
    """The labelled pixels of the global batch (all micro-batches, all processes) over the world size: summed
    per-pixel losses divided by it give the mean over the global batch once DDP averages the gradients. With
    class weights in ``criterion``: the global sum of the labelled pixels' weights instead (a weighted mean)."""
    if criterion is None or criterion.class_weights is None:
        valid = sum((masks != IGNORE_INDEX).sum() for _, masks in micro_batches).to(device, torch.float64)
        return (distributed.all_reduce_sum(valid).clamp_min(1) / distributed.world_size()).float()
    mass = distributed.all_reduce_sum(sum(criterion.mass(masks.to(device)) for _, masks in micro_batches))
    return (torch.where(mass > 0, mass, torch.ones_like(mass)) / distributed.world_size()).float()


def loss(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, device: torch.device,
         normalizer: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format,
         criterion: losses.SegmentationLoss | None = None) -> torch.Tensor:
    """``criterion`` (from :func:`criterion`; default: plain cross-entropy) of ``model`` on one micro-batch
    (images (N,3,H,W), masks (N,H,W))."""
    images = images.to(device, memory_format=memory_format, non_blocking=True)
    masks = masks.to(device, non_blocking=True)
    return (criterion or PLAIN_CE)(model(images), masks, normalizer)


def _same_size_groups(items: list) -> list[list]:
    """Split a batch of (image, target) items into runs of equal image size (so they can be stacked)."""
    groups: list[list] = []
    for item in items:
        if groups and groups[-1][0][0].shape == item[0].shape:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _best_and_worst(ranked: list, count: int) -> list:
    """The ``count // 2`` best and the other ``count - count // 2`` worst of (…, iou) tuples, best first."""
    ranked.sort(key=lambda item: -item[-1])
    return ranked if len(ranked) <= count else ranked[: count // 2] + ranked[len(ranked) - (count - count // 2):]


def evaluate(model: nn.Module, dataset: Dataset, meta: dict, *, progress: bool = True, num_visuals: int = 8,
             batch_size: int | None = None, num_workers: int = 0, crop: Size | None = None,
             stride: Size | None = None, scales: Sequence[float] = (1.0,), flip: bool = False,
             crf: dict | None = None, boundary_band: int | None = None):
    """Metrics of ``model`` over ``dataset`` (items as uint8 images, no transforms applied); ``meta`` gives
    ``num_classes`` and the normalisation ``mean``/``std``. ``batch_size`` images per forward pass (default 8).

    ``crop``, ``stride``, ``scales`` and ``flip`` choose the inference mode (see ``infer_logits``);
    the default is whole-image inference. ``crf``: ``dense_crf`` keywords to refine each prediction.
    ``boundary_band``: also score the pixels within this many pixels of a ground-truth boundary only
    (DeepLab's trimap, ``metrics.boundary``).

    Returns ``(result, visuals)``: the ``SegmentationMetrics.compute()`` dict plus ``"confusion"`` (the
    (C, C) pixel counts as lists, rows = target) and, with ``crf``, ``"without_crf"``: the same for the
    unrefined predictions, and with ``boundary_band`` W, ``"boundary_band"``: ``{"width": W}`` and the same
    metrics over the band's pixels; ``visuals``: tuples ``(image uint8 (3,H,W), target (H,W), prediction (H,W),
    image mIoU)`` of the ``num_visuals // 2`` best and the other worst images by ``image_miou``, best first.
    Under torchrun each process evaluates its own shard (and keeps its own visuals) and the confusion
    matrices are summed over the processes.
    """
    num_classes = meta["num_classes"]
    metrics = SegmentationMetrics(num_classes)
    plain = SegmentationMetrics(num_classes) if crf is not None else None
    band = BoundaryBandMetrics(num_classes, boundary_band) if boundary_band is not None else None
    visuals = []
    shard = Subset(dataset, distributed.shard_indices(len(dataset)))
    loader = DataLoader(shard, batch_size=batch_size or 8, num_workers=num_workers, collate_fn=list)
    with inference_context(model):
        for batch in tqdm(loader, desc="eval", disable=not progress, leave=False):
            for group in _same_size_groups(batch):
                images = torch.stack([image for image, _ in group])
                targets = torch.stack([target["mask"] for _, target in group])
                logits = infer_logits(model, images, meta["mean"], meta["std"], crop=crop, stride=stride,
                                      scales=scales, flip=flip)
                if plain is not None:
                    plain.update(logits.argmax(1).cpu(), targets)
                    logits = crf_refine(images, logits, crf)
                preds = logits.argmax(1).cpu()
                metrics.update(preds, targets)
                if band is not None:
                    band.update(preds, targets)
                for image, target, pred in zip(images, targets, preds):
                    iou = image_miou(pred, target, num_classes)
                    if not math.isnan(iou):
                        visuals.append((image, target, pred, iou))
            visuals = _best_and_worst(visuals, num_visuals)
    result = _with_confusion(metrics)
    if plain is not None:
        result["without_crf"] = _with_confusion(plain)
    if band is not None:
        result["boundary_band"] = {"width": boundary_band} | band.compute()
    return result, visuals


def _with_confusion(metrics: SegmentationMetrics) -> dict:
    """``metrics.compute()`` (which sums the confusion matrices of all processes) plus ``"confusion"``."""
    return metrics.compute() | {"confusion": metrics.confusion.tolist()}


def summary(result: dict) -> dict[str, float]:
    """The scalar metrics of :func:`evaluate`'s result, for logs and ``best_metric`` (and ``band_miou``,
    ``band_pixel_acc`` when it scored a boundary band)."""
    band = result.get("boundary_band")
    extra = {f"band_{key}": band[key] for key in BAND_METRICS} if band else {}
    return {key: result[key] for key in METRICS} | extra


def pictures(visuals, meta: dict) -> list[list[Image.Image]]:
    """[input, ground truth overlay, prediction overlay] PIL images of each of :func:`evaluate`'s visuals."""
    palette = meta["palette"]
    return [[viz.overlay(image, torch.full_like(target, 255), palette), viz.overlay(image, target, palette),
             viz.overlay(image, pred, palette)] for image, target, pred, _ in visuals]


def write_report(result: dict, visuals, meta: dict, out_dir: str | Path, *, config: dict | None = None,
                 run_dir: str | Path | None = None) -> str:
    """Write ``metrics.json`` (the summary metrics and per-class IoU, Dice, precision and recall, also without the
    CRF when ``result`` has both, and over the boundary band when it was scored), ``per_class_iou.png``, ``overlays.png`` (rows: input | ground truth | prediction,
    best images first) and ``report.html`` (``seglab.report``: ``config`` is the run's, training curves
    from ``run_dir``) to ``out_dir``; return the Markdown table (and the mIoU without the CRF)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = meta["classes"]

    def scores(values: dict) -> dict:
        per_class = ("iou", "dice", "precision", "recall")  # class name -> value (nan: n/a)
        return {k: values[k] for k in report.SEMANTIC_METRICS} | {k: dict(zip(classes, values[k])) for k in per_class}

    extra = {"without_crf": scores(result["without_crf"])} if "without_crf" in result else {}
    band = result.get("boundary_band")
    if band:
        extra["boundary_band"] = {"width": band["width"]} | scores(band)
    write_json(out / "metrics.json", scores(result) | extra)  # NaN (a class with no pixels) as null
    viz.plot_per_class_iou(result["iou"], classes, out / "per_class_iou.png")
    rows = pictures(visuals, meta)
    if rows:
        viz.grid(rows, titles=list(report.SEMANTIC_COLUMNS)).save(out / "overlays.png")
    ranked = [(f"mIoU {100 * iou:.1f}%", row) for row, (*_, iou) in zip(rows, visuals)]
    report.semantic_report(out, result, classes, ranked, config=config, run_dir=run_dir)
    table = format_table(result, classes)
    if "without_crf" in result:
        table += f"\nwithout the CRF: mIoU {100 * result['without_crf']['miou']:.2f}"
    if band:
        table += (f"\nboundary band (±{band['width']} px of the ground truth's boundaries): mIoU "
                  f"{100 * band['miou']:.2f}, pixel accuracy {100 * band['pixel_acc']:.2f}")
    return table


def _cityscapes_names(meta: dict, paths: list) -> list[str]:
    """``cityscapes.result_name`` of every path, after checking that the model predicts the 19 train ids."""
    if meta["num_classes"] != len(cityscapes.CLASSES):
        raise ValueError(f"format 'cityscapes' needs a model of the {len(cityscapes.CLASSES)} Cityscapes train ids, "
                         f"this one has {meta['num_classes']} classes")
    return [cityscapes.result_name(path) for path in paths]


def _prediction_outputs(item: inputs.Input, out: Path, save_probs: bool, video_masks: bool,
                        result_names: dict | None) -> list[Path]:
    """The files ``predict_files`` writes for ``item`` in ``out`` (a video's mask frames: their folder)."""
    base = out / item.name
    if item.is_video:
        return inputs.video_outputs(base, video_masks)
    files = [base.with_name(base.name + ".png"), base.with_name(base.name + "_overlay.png")]
    if save_probs:
        files.append(base.with_name(base.name + "_probs.npz"))
    if result_names is not None:
        files.append(out / "labelIds" / result_names[item.path])
    return files


def _scores(model: nn.Module, images: list[torch.Tensor], meta: dict, crf: dict | None,
            resize: tuple[int, int] | None, inference: dict) -> list[torch.Tensor]:
    """Class scores (C,H,W) of each uint8 image (3,H,W) at its own size, on the CPU, from one forward pass over
    the stacked batch: logits, or the CRF's probabilities with ``crf`` (their argmax is ``predict_labels``'s).
    ``resize`` (H, W): the images are resized to it first (bilinear, antialiased) and the logits resized back to
    each image's size bilinearly, before the CRF."""
    batch = torch.stack([tv_resize(image, list(resize), antialias=True) if resize else image for image in images])
    logits = infer_logits(model, batch, meta["mean"], meta["std"], **inference)
    scores = []
    for image, logit in zip(images, logits):
        if logit.shape[-2:] != image.shape[-2:]:
            logit = F.interpolate(logit[None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0]
        scores.append((logit[None] if crf is None else crf_refine(image[None], logit[None], crf))[0].cpu())
    return scores


def predict_files(model: nn.Module, paths: Iterable[inputs.Input | str | Path], out_dir: str | Path, *,
                  crop: Size | None = None, stride: Size | None = None, scales: Sequence[float] = (1.0,),
                  flip: bool = False, crf: dict | None = None, fmt: str = "palette",
                  score_threshold: float | None = None, resize_short: int | None = None, batch_size: int = 1,
                  resize: Sequence[int] | None = None, save_probs: bool = False, skip_existing: bool = False,
                  video_masks: bool = False) -> inputs.Written:
    """For each image (an ``engine.inputs.Input`` or a path; ``NAME`` its output name): ``OUT/NAME.png`` (palette
    PNG of class ids) and ``OUT/NAME_overlay.png`` (with a legend of the classes present and their pixel shares);
    with ``save_probs`` also ``OUT/NAME_probs.npz`` (key ``probs``: float16 (C,H,W) softmax probabilities, or the
    CRF's); with ``fmt="cityscapes"`` also ``out_dir/labelIds/<city>_<seq>_<frame>_labelIds.png``, the train ids
    mapped to Cityscapes label ids, named as ``evalPixelLevelSemanticLabeling`` expects (point its
    ``CITYSCAPES_RESULTS`` at ``out_dir/labelIds``; the images must have Cityscapes names).
    For each video: ``OUT/NAME_overlay.mp4`` (``engine.video.map_video``), with ``video_masks`` also the palette
    PNGs ``OUT/NAME/frame_000000.png`` ....

    ``batch_size`` images of one size (or frames) go through the model together; ``resize`` (H, W) brings every
    image to that size first, so any sizes batch (logits resized back bilinearly). ``skip_existing``: inputs whose
    outputs all exist are skipped. ``model.meta`` (from ``seglab.models.load``) supplies mean/std and the palette.
    ``crop``, ``stride``, ``scales`` and ``flip`` choose the inference mode (see ``infer_logits``); default: whole
    image. ``crf``: ``seglab.crf.dense_crf`` keywords to refine each prediction with the dense CRF.
    ``resize_short``: run the model on the image resized to this short side in pixels, as the torchvision
    weights' own transforms do (520 for its segmentation models), the logits resized back to the image
    (``infer_logits``); default: the image's own size. ``score_threshold`` is the instance models' option: an
    error here. Everything is checked (readable inputs, no two writing one file) before the first prediction.
    """
    if score_threshold is not None:
        raise ValueError("a score threshold applies to instance models only")
    if fmt not in FORMATS:
        raise ValueError(f"prediction format must be one of {FORMATS}, got {fmt!r}")
    if resize is not None and (len(resize) != 2 or min(resize) < 1):
        raise ValueError(f"--resize takes a height and a width in pixels, got {' '.join(map(str, resize))}")
    if resize is not None and resize_short is not None:
        raise ValueError("--resize and --resize-short both set the model's input size: give one of them")
    items = inputs.as_inputs(paths)
    meta, out = model.meta, Path(out_dir)
    image_paths = [item.path for item in items if not item.is_video]
    result_names = dict(zip(image_paths, _cityscapes_names(meta, image_paths))) if fmt == "cityscapes" else None

    def outputs(item: inputs.Input) -> list[Path]:
        return _prediction_outputs(item, out, save_probs, video_masks, result_names)

    todo, skipped = inputs.plan(items, outputs, batch_size, skip_existing)
    written = inputs.Written(skipped=skipped)
    inference = {"crop": crop, "stride": stride, "scales": scales, "flip": flip, "resize_short": resize_short}
    palette = meta["palette"]

    def draw_frames(frames: list[torch.Tensor]) -> list:
        preds = [score.argmax(0) for score in _scores(model, frames, meta, crf, resize, inference)]
        return [(viz.overlay(frame, pred, palette), viz.colorize(pred, palette) if video_masks else None)
                for frame, pred in zip(frames, preds)]

    with inference_context(model):
        for batch in inputs.image_batches([i for i in todo if not i.is_video], batch_size, by_size=resize is None):
            for (item, image), score in zip(batch, _scores(model, [image for _, image in batch], meta, crf, resize,
                                                             inference)):
                files = outputs(item)
                pred = score.argmax(0)
                save_image(viz.colorize(pred, palette), files[0])
                save_image(viz.with_legend(viz.overlay(image, pred, palette), pred, meta["classes"], palette), files[1])
                if save_probs:
                    probs = score if crf is not None else score.softmax(0)
                    save_npz(files[2], probs=probs.numpy().astype(np.float16))
                if result_names:
                    save_image(Image.fromarray(cityscapes.label_ids(pred.numpy())), files[-1])
                written.files += len(files)
                written.inputs += 1
        inputs.predict_videos(todo, outputs, draw_frames, batch_size, written)
    return written
