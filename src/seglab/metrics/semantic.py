"""Confusion-matrix metrics for semantic segmentation (FCN, arXiv:1411.4038 §5; Dice/F1, precision, recall)."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist


class SegmentationMetrics:
    """Accumulates a (C, C) int64 confusion matrix and derives the four FCN metrics, and per-class
    Dice/F1, precision and recall with their means, from it.

    With ``n_ij`` the number of pixels of target class ``i`` predicted as class ``j`` (row = target,
    column = prediction), ``t_i = Σ_j n_ij`` the target pixels of class ``i`` and ``n_cl`` the number
    of classes kept by the rule of each metric (FCN §5)::

        pixel_acc = Σ_i n_ii / Σ_i t_i
        mean_acc  = (1/n_cl) Σ_i n_ii / t_i
        miou      = (1/n_cl) Σ_i n_ii / (t_i + Σ_j n_ji − n_ii)
        fwiou     = (Σ_k t_k)^-1 Σ_i t_i n_ii / (t_i + Σ_j n_ji − n_ii)

    Exclusion rules: a class with no target pixels (``t_i = 0``) is left out of ``mean_acc``; a class
    absent from both target and prediction (``t_i + Σ_j n_ji = 0``) is left out of ``miou``. The
    per-class lists ``acc`` and ``iou`` hold ``nan`` for the excluded classes. Pixels whose target is
    ``ignore_index`` are not counted at all.

    From the same matrix, with ``p_i = Σ_j n_ji`` the pixels predicted as class ``i``, the per-class
    Dice/F1 score, precision and recall and their unweighted means over the classes::

        dice_i      = 2 n_ii / (t_i + p_i)        (= F1 = 2 iou_i / (1 + iou_i))
        precision_i = n_ii / p_i                   (0 when p_i = 0 < t_i)
        recall_i    = n_ii / t_i                   (0 when t_i = 0 < p_i)
        mean_dice, mean_precision, mean_recall = (1/n_cl) Σ_i dice_i, precision_i, recall_i

    All three follow the IoU rule: a class absent from both target and prediction is ``nan`` and left
    out of the means (n_cl = the classes in ``miou``); a 0/0 precision or recall of a class that is
    present on the other side counts as 0. This is torchmetrics' ``MulticlassF1Score`` /
    ``MulticlassPrecision`` / ``MulticlassRecall`` with ``ignore_index``, ``multidim_average="global"``
    and ``zero_division=0``: its ``average=None`` gives the same values where seglab's are defined (and 0
    for the absent classes) and its ``average="macro"`` drops the classes with ``tp + fp + fn = 0``, so
    the means agree. ``recall`` is ``acc`` except for a class predicted but not in the target (recall 0,
    acc ``nan``), hence ``mean_recall`` may differ from ``mean_acc``, which leaves such classes out.

    The matrix lives on the device of the tensors given to :meth:`update`; under
    ``torch.distributed`` :meth:`compute` first sums it over all ranks (a collective: every rank
    must call it); every metric is then derived from the summed matrix.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far (on this rank and from past reductions)."""
        shape = (self.num_classes, self.num_classes)
        # Counts already summed over ranks, and counts of this rank not yet reduced: keeping them
        # apart lets compute() be called repeatedly, between updates, without double counting.
        self._reduced = torch.zeros(shape, dtype=torch.int64)
        self._local = torch.zeros(shape, dtype=torch.int64)

    @property
    def confusion(self) -> torch.Tensor:
        """(C, C) int64 pixel counts, rows = target class, columns = predicted class."""
        return self._reduced + self._local

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch.

        pred: class ids (N, H, W) or (H, W), or logits (N, C, H, W) (argmax over dim 1).
        target: class ids with pred's spatial shape, ``ignore_index`` for unlabelled pixels.
        """
        C = self.num_classes
        if pred.dim() == 4:
            if pred.shape[1] != C:
                raise ValueError(f"logits have {pred.shape[1]} channels, expected num_classes={C}")
            pred = pred.argmax(dim=1)
        elif pred.is_floating_point():
            raise ValueError(f"pred must be integer class ids or (N, C, H, W) logits, got "
                             f"{pred.dtype} of shape {tuple(pred.shape)}")
        if target.is_floating_point():
            raise ValueError(f"target must hold integer class ids, got {target.dtype}")
        if pred.shape != target.shape:
            raise ValueError(f"pred has shape {tuple(pred.shape)} but target has shape "
                             f"{tuple(target.shape)}")

        target = target.reshape(-1).long()
        pred = pred.reshape(-1).to(device=target.device, dtype=torch.long)
        keep = target != self.ignore_index
        target, pred = target[keep], pred[keep]
        if ((target < 0) | (target >= C) | (pred < 0) | (pred >= C)).any():
            self._raise_out_of_range(pred, target)

        counts = torch.bincount(target * C + pred, minlength=C * C).reshape(C, C)
        if self._local.device != counts.device:
            self._reduced = self._reduced.to(counts.device)
            self._local = self._local.to(counts.device)
        self._local += counts

    def _raise_out_of_range(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        C = self.num_classes
        for name, values in (("target", target), ("pred", pred)):
            bad = values[(values < 0) | (values >= C)].unique()
            if bad.numel():
                allowed = f"0..{C - 1}" + (" or ignore_index" if name == "target" else "")
                raise ValueError(f"{name} has values {bad.tolist()} outside {allowed} "
                                 f"(num_classes={C}, ignore_index={self.ignore_index})")

    def all_reduce(self) -> None:
        """Sum this rank's new counts over all ranks (no-op unless torch.distributed is initialised)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        local = self._local
        if dist.get_backend() == "nccl":  # NCCL reduces CUDA tensors only
            local = local.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(local, op=dist.ReduceOp.SUM)
        self._reduced += local.to(self._reduced.device)
        self._local.zero_()

    def compute(self) -> dict:
        """Reduce over ranks, then return python floats ``pixel_acc``, ``mean_acc``, ``miou``,
        ``fwiou``, ``mean_dice``, ``mean_precision``, ``mean_recall`` (fractions in [0, 1], ``nan`` when
        nothing was counted) and per-class lists ``acc``, ``iou``, ``dice``, ``precision`` and ``recall``
        of length C (``nan`` for excluded classes)."""
        self.all_reduce()
        n = self.confusion.double()
        hits = n.diagonal()
        target_px = n.sum(dim=1)
        pred_px = n.sum(dim=0)
        union = target_px + pred_px - hits
        present = union > 0
        nan = torch.tensor(math.nan, dtype=n.dtype, device=n.device)
        zero = torch.zeros((), dtype=n.dtype, device=n.device)

        def ratio(denominator: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
            # 0/0 is 0 for a class present on the other side, nan for a class absent from both
            value = torch.where(denominator > 0, factor * hits / denominator.clamp_min(1), zero)
            return torch.where(present, value, nan)

        acc = torch.where(target_px > 0, hits / target_px, nan)
        iou = torch.where(present, hits / union, nan)
        dice, precision, recall = ratio(target_px + pred_px, 2.0), ratio(pred_px), ratio(target_px)
        total = target_px.sum()
        return {
            "pixel_acc": (hits.sum() / total).item(),
            "mean_acc": acc.nanmean().item(),
            "miou": iou.nanmean().item(),
            "fwiou": ((target_px * iou.nan_to_num(0.0)).sum() / total).item(),
            "mean_dice": dice.nanmean().item(),
            "mean_precision": precision.nanmean().item(),
            "mean_recall": recall.nanmean().item(),
            "iou": iou.tolist(),
            "acc": acc.tolist(),
            "dice": dice.tolist(),
            "precision": precision.tolist(),
            "recall": recall.tolist(),
        }


def image_miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> float:
    """Mean IoU of one image (H, W) over the classes in its labelled target or prediction pixels; nan when
    no pixel is labelled."""
    keep = target != ignore_index
    pred, target = pred[keep].long(), target[keep].long()
    hits = torch.bincount(target[pred == target], minlength=num_classes)
    union = torch.bincount(target, minlength=num_classes) + torch.bincount(pred, minlength=num_classes) - hits
    present = union > 0
    return (hits[present] / union[present]).mean().item()


def format_table(result: dict, class_names: list[str]) -> str:
    """Markdown table of a :meth:`SegmentationMetrics.compute` result, values in percent.

    One row per class (IoU, accuracy, Dice/F1, precision, recall), then the means (``miou``,
    ``mean_acc``, ``mean_dice``, ``mean_precision``, ``mean_recall``) and the frequency-weighted means
    (``fwiou``, ``pixel_acc`` — pixel accuracy is per-class accuracy weighted by target frequency).
    Excluded classes show ``n/a``.
    """
    if len(class_names) != len(result["iou"]):
        raise ValueError(f"{len(class_names)} class names for {len(result['iou'])} classes")

    def pct(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{100 * x:.2f}"

    per_class = ("iou", "acc", "dice", "precision", "recall")
    means = ("miou", "mean_acc", "mean_dice", "mean_precision", "mean_recall")
    lines = ["| class | IoU (%) | accuracy (%) | Dice/F1 (%) | precision (%) | recall (%) |",
             "|:---|---:|---:|---:|---:|---:|"]
    for index, name in enumerate(class_names):
        cells = " | ".join(pct(result[key][index]) for key in per_class)
        lines.append(f"| {str(name).replace('|', '&#124;')} | {cells} |")
    lines.append(f"| **mean** ({', '.join(means)}) | {' | '.join(pct(result[key]) for key in means)} |")
    lines.append(f"| **frequency-weighted** (fwiou, pixel_acc) | {pct(result['fwiou'])} "
                 f"| {pct(result['pixel_acc'])} | | | |")
    return "\n".join(lines)
