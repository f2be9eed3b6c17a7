"""Losses of semantic models: cross-entropy, softmax focal, soft Dice, Lovasz-softmax, their weighted sums,
class weights (explicit or median-frequency balancing), OHEM pixel selection and label smoothing.

Notation: logits ``x`` (N, C, H, W), labels ``y`` (N, H, W) int64 with 255 = ignore; ``p = softmax(x)`` over
the classes; ``V`` the labelled pixels (``y != 255``); ``w_c`` the class weights (1 without them).

- ``ce``: ``sum_{i in V} l_i / Z`` with ``l_i = -(1 - e) w_{y_i} log p_{i,y_i} - (e / C) sum_c w_c log p_{i,c}``
  (``e`` = label smoothing; the same per-pixel term as ``F.cross_entropy(weight=, label_smoothing=)``).
- ``focal`` (Lin et al., "Focal Loss for Dense Object Detection", 2017, eq. 5, softmax form):
  ``sum_{i in V} -w_{y_i} (1 - p_{i,y_i})^gamma log p_{i,y_i} / Z``, ``gamma`` = 2 (the paper's).
- ``focal-sigmoid``: the one-vs-rest sigmoid form (segmentation-models-pytorch's multiclass ``FocalLoss``):
  ``sum_{i in V} w_{y_i} (1/C) sum_c (1 - q_{i,c})^gamma BCE(x_{i,c}, [y_i = c]) / Z``, ``q_{i,c} = exp(-BCE)``.
- ``dice`` (soft Dice over the global batch): ``1 - mean_{c present} 2 I_c / K_c`` with
  ``I_c = sum_{i in V} p_{i,c} [y_i = c]`` and ``K_c = sum_{i in V} (p_{i,c} + [y_i = c])``, the sums over all images
  of the micro-batch and (torchrun) over all processes; "present": the class has a labelled pixel in the target.
- ``lovasz`` (Berman et al., "The Lovasz-Softmax loss", CVPR 2018, eq. 8): ``mean_{c present} <m_c sorted
  descending, grad of the Lovasz extension of the Jaccard loss>`` with ``m_{i,c} = |[y_i = c] - p_{i,c}|`` over the
  labelled pixels of this process's micro-batch.

``Z``, the normaliser of the pixel-wise terms (``ce``, ``focal``), is the labelled pixels of the global batch,
or with class weights the global sum of ``w_{y_i}`` (torch's weighted mean), over the world size (see
``engine.semantic.loss_normalizer``). With OHEM the pixel-wise terms are summed over the kept pixels and divided
by their count (weighted: their weight sum) instead. The set-level terms (``dice``, ``lovasz``) and OHEM's kept-pixel
mean are scaled by the micro-batch's share of ``Z`` (1 with one process and no accumulation), so gradient
accumulation and DDP average them by labelled pixels. Class weights apply to the pixel-wise terms; label smoothing
to ``ce``. A batch without labelled pixels gives 0 (with a gradient of zeros), never NaN.
"""
from __future__ import annotations

import warnings
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from .data.transforms import IGNORE_INDEX

LOSSES = ("ce", "focal", "focal-sigmoid", "dice", "lovasz")
PIXEL_LOSSES = ("ce", "focal", "focal-sigmoid")  # the terms OHEM selects pixels for and class weights weight
AUX_WEIGHT = 0.4  # the auxiliary head's loss weight (PSPNet / torchvision's segmentation references)


# -- options -------------------------------------------------------------------------------------------------
def parse_loss(spec: str) -> list[str]:
    """``"ce+dice"`` → ``["ce", "dice"]``; ValueError naming the option for an unknown or repeated term."""
    terms = [term.strip() for term in str(spec).split("+")]
    for term in terms:
        if term not in LOSSES:
            raise ValueError(f"loss: unknown term {term!r} in {spec!r}; expected {' | '.join(LOSSES)} joined by '+'")
    if len(set(terms)) != len(terms):
        raise ValueError(f"loss: a term is repeated in {spec!r}")
    return terms


def parse_class_weights(value: str | Sequence[float] | None, num_classes: int) -> list[float] | str | None:
    """``None`` | ``"auto"`` | ``"w0,w1,..."`` (one non-negative number per class) → None, "auto" or a list."""
    if value is None or (isinstance(value, str) and value.strip() == "auto"):
        return None if value is None else "auto"
    try:
        weights = [float(w) for w in (value.split(",") if isinstance(value, str) else value)]
    except ValueError:
        raise ValueError(f"class_weights: {value!r} is neither 'auto' nor comma-separated numbers") from None
    if len(weights) != num_classes:
        raise ValueError(f"class_weights: {len(weights)} weights in {value!r}, expected one per class ({num_classes})")
    if any(not w >= 0 or w == float("inf") for w in weights):
        raise ValueError(f"class_weights: {value!r} has a negative or non-finite weight")
    return weights


def parse_ohem(values: Sequence[str] | None) -> tuple[float | None, int] | None:
    """``["0.7", "100000"]`` → (0.7, 100000); ``["none", "K"]`` → (None, K) (top-k by loss)."""
    if values is None:
        return None
    if len(values) != 2:
        raise ValueError(f"ohem: expected THRESH MIN_KEPT (THRESH may be 'none'), got {' '.join(map(str, values))!r}")
    thresh, min_kept = values
    try:
        thresh = None if str(thresh).lower() == "none" else float(thresh)
        min_kept = int(min_kept)
    except ValueError:
        raise ValueError(f"ohem: expected THRESH MIN_KEPT, got {' '.join(map(str, values))!r}") from None
    if thresh is not None and not 0 < thresh <= 1:
        raise ValueError(f"ohem: THRESH {thresh} is a probability of the true class, expected in (0, 1]")
    if min_kept < 1:
        raise ValueError(f"ohem: MIN_KEPT {min_kept} must be >= 1")
    return thresh, min_kept


# -- class weights -------------------------------------------------------------------------------------------
def class_pixel_counts(masks: Iterable[torch.Tensor], num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels per class, labelled pixels of the images that contain the class), both (C,) int64, over ``masks``
    (each (H, W) int, 255 ignored): what median-frequency balancing needs."""
    pixels = torch.zeros(num_classes, dtype=torch.int64)
    image_pixels = torch.zeros(num_classes, dtype=torch.int64)
    for mask in masks:
        labels = torch.as_tensor(mask).reshape(-1).long()
        labels = labels[labels != IGNORE_INDEX]
        counts = torch.bincount(labels, minlength=num_classes)[:num_classes]
        pixels += counts
        image_pixels += (counts > 0).long() * labels.numel()
    return pixels, image_pixels


def median_frequency_weights(pixels: Sequence[int] | torch.Tensor, image_pixels: Sequence[int] | torch.Tensor,
                             classes: Sequence[str] | None = None) -> list[float]:
    """Median-frequency balancing (Eigen & Fergus, ICCV 2015, sec. 4.1): ``freq(c) = pixels of c / labelled
    pixels of the images containing c``, ``w_c = median_c freq(c) / freq(c)`` (the median over the classes with
    pixels, the mean of the middle two for an even count); a class without pixels gets 0 and a warning."""
    pixels = torch.as_tensor(pixels, dtype=torch.float64)
    image_pixels = torch.as_tensor(image_pixels, dtype=torch.float64)
    present = pixels > 0
    if not present.any():
        raise ValueError("class_weights auto: the training split has no labelled pixel")
    freq = torch.where(present, pixels / image_pixels.clamp_min(1), torch.zeros_like(pixels))
    median = torch.quantile(freq[present], 0.5)
    weights = torch.where(present, median / freq.where(present, torch.ones_like(freq)), torch.zeros_like(freq))
    absent = [(classes[c] if classes is not None else str(c)) for c in torch.nonzero(~present).flatten().tolist()]
    if absent:
        warnings.warn(f"class_weights auto: no pixels of class(es) {', '.join(absent)} in the training split; "
                      f"their weight is 0", stacklevel=2)
    return weights.tolist()


# -- the terms -----------------------------------------------------------------------------------------------
def _gathered(values: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``values[n, labels[n, h, w], h, w]`` (N, H, W), with ignored pixels read at class 0."""
    return values.gather(1, torch.where(valid, labels, 0)[:, None])[:, 0]


def _reduce(losses: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, weight: torch.Tensor | None,
            reduction: str) -> torch.Tensor:
    """Per-pixel ``losses`` (N, H, W) times ``w_y`` (with ``weight``), 0 at ignored pixels; summed for "sum"."""
    if weight is not None:
        losses = losses * weight.to(losses)[torch.where(valid, labels, 0)]
    losses = torch.where(valid, losses, torch.zeros_like(losses))
    return losses.sum() if reduction == "sum" else losses


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0, weight: torch.Tensor | None = None,
               reduction: str = "sum") -> torch.Tensor:
    """Softmax focal loss ``-w_y (1 - p_y)^gamma log p_y`` per pixel (N, H, W), 0 at ignored pixels;
    ``reduction`` "sum" or "none". logits (N, C, H, W), labels (N, H, W)."""
    valid = labels != IGNORE_INDEX
    log_p = _gathered(F.log_softmax(logits, 1), labels, valid)
    losses = -(1 - log_p.exp()).clamp_min(0) ** gamma * log_p
    return _reduce(losses, labels, valid, weight, reduction)


def sigmoid_focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0,
                       weight: torch.Tensor | None = None, reduction: str = "sum") -> torch.Tensor:
    """One-vs-rest sigmoid focal loss, ``(1/C) sum_c (1 - q_c)^gamma BCE(x_c, [y = c])`` per pixel (N, H, W),
    ``q_c = exp(-BCE)``, times ``w_y``; 0 at ignored pixels; ``reduction`` "sum" or "none"."""
    num_classes = logits.shape[1]
    valid = labels != IGNORE_INDEX
    target = F.one_hot(torch.where(valid, labels, 0), num_classes).permute(0, 3, 1, 2).to(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    losses = ((1 - torch.exp(-bce)) ** gamma * bce).mean(1)
    return _reduce(losses, labels, valid, weight, reduction)


def _world_size() -> int:
    """The torchrun world size, 1 outside a process group (``engine.distributed.world_size``, which this layer
    may not import)."""
    return (torch.distributed.get_world_size()
            if torch.distributed.is_available() and torch.distributed.is_initialized() else 1)


def _all_reduce(values: torch.Tensor, differentiable: bool) -> torch.Tensor:
    """Sum over the processes under torchrun (``differentiable``: its backward sums the gradients too, so each
    process's own pixels get the gradient of the global quantity times the world size, which DDP's mean undoes)."""
    if _world_size() == 1:
        return values
    if differentiable:
        return _AllReduceSum.apply(values)
    values = values.clone()
    torch.distributed.all_reduce(values)
    return values


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes, whose backward sums the incoming gradients over the processes as well."""

    @staticmethod
    def forward(ctx, values: torch.Tensor) -> torch.Tensor:
        values = values.clone()
        torch.distributed.all_reduce(values)
        return values

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)
        return grad


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, absent: str = "skip") -> torch.Tensor:
    """Soft Dice loss ``1 - mean_c 2 I_c / K_c`` of the whole batch (and under torchrun all processes' batches:
    the intersections and cardinalities are all-reduced). ``absent="skip"``: the mean over the classes present in
    the target (0 when none is); ``"count"``: classes absent from the target count as loss 0 in a mean over all C
    (segmentation-models-pytorch's ``DiceLoss(mode="multiclass")`` convention)."""
    num_classes = logits.shape[1]
    valid = labels != IGNORE_INDEX
    probs = F.softmax(logits, 1) * valid[:, None]
    target = F.one_hot(torch.where(valid, labels, 0), num_classes).permute(0, 3, 1, 2).to(probs) * valid[:, None]
    dims = (0, 2, 3)
    intersection = _all_reduce((probs * target).sum(dims), True)
    cardinality = _all_reduce((probs + target).sum(dims), True)
    present = _all_reduce(target.sum(dims).detach(), False) > 0
    per_class = 1 - 2 * intersection / cardinality.where(present, torch.ones_like(cardinality))
    per_class = torch.where(present, per_class, torch.zeros_like(per_class))
    count = present.sum() if absent == "skip" else torch.tensor(num_classes, device=logits.device)
    return per_class.sum() / count.clamp_min(1)


def _lovasz_grad(sorted_truth: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss at the sorted errors (Berman et al., Alg. 1)."""
    total = sorted_truth.sum()
    intersection = total - sorted_truth.cumsum(0)
    union = total + (1 - sorted_truth).cumsum(0)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lovasz-softmax loss over the labelled pixels of the batch, averaged over the classes present in it
    (0 when none is). logits (N, C, H, W), labels (N, H, W)."""
    num_classes = logits.shape[1]
    probs = F.softmax(logits, 1).permute(0, 2, 3, 1).reshape(-1, num_classes)
    flat = labels.reshape(-1)
    valid = flat != IGNORE_INDEX
    probs, flat = probs[valid], flat[valid]
    losses = []
    for c in torch.unique(flat).tolist():
        truth = (flat == c).to(probs)
        errors, order = (truth - probs[:, c]).abs().sort(descending=True)
        losses.append(torch.dot(errors, _lovasz_grad(truth[order])))
    return torch.stack(losses).mean() if losses else logits.sum() * 0


def ohem_kept(logits: torch.Tensor, labels: torch.Tensor, thresh: float | None, min_kept: int,
              pixel_losses: torch.Tensor | None = None) -> torch.Tensor:
    """mmsegmentation's ``OHEMPixelSampler``: the (N, H, W) bool mask of the pixels kept. ``k = min_kept × N``.
    With ``thresh``: ``p_gt`` = softmax probability of the true class; keep labelled pixels with
    ``p_gt < max(thresh, s[min(k, V - 1)])``, ``s`` the labelled pixels' ``p_gt`` sorted ascending (0-based).
    Without: the ``k`` labelled pixels of largest ``pixel_losses``."""
    with torch.no_grad():
        valid = labels != IGNORE_INDEX
        kept = torch.zeros_like(valid)
        batch_kept = min_kept * labels.shape[0]
        if thresh is not None:
            p_gt = _gathered(F.softmax(logits.float(), 1), labels, valid)
            ranked = p_gt[valid].sort().values
            threshold = max(float(ranked[min(batch_kept, ranked.numel() - 1)]) if ranked.numel() else 0.0, thresh)
            kept[valid] = p_gt[valid] < threshold
        else:
            order = pixel_losses[valid].sort(descending=True).indices[:batch_kept]
            chosen = torch.zeros(int(valid.sum()), dtype=torch.bool, device=labels.device)
            chosen[order] = True
            kept[valid] = chosen
    return kept


# -- the criterion -------------------------------------------------------------------------------------------
def cross_entropy(outputs: dict, masks: torch.Tensor, aux_weight: float = AUX_WEIGHT,
                  normalizer: torch.Tensor | float | None = None) -> torch.Tensor:
    """Pixel-wise cross-entropy ignoring label 255, plus ``aux_weight`` × the auxiliary head's loss:
    the per-pixel losses summed and divided by ``normalizer`` (default: this batch's labelled pixels,
    i.e. the mean; data parallelism and accumulation pass the count over all their batches)."""
    if normalizer is None:
        normalizer = (masks != IGNORE_INDEX).sum().clamp_min(1)

    def summed(logits):
        if logits.dtype in (torch.float16, torch.bfloat16):  # autocast: the loss in float32
            logits = logits.float()
        return F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, reduction="sum")

    total = summed(outputs["out"])
    if "aux" in outputs:
        total = total + aux_weight * summed(outputs["aux"])
    return total / normalizer


class SegmentationLoss:
    """``sum_t loss_weights[t] × term_t``, on the main head plus ``aux_weight`` × the same on ``outputs["aux"]``.

    ``terms``: names from :data:`LOSSES`; ``class_weights`` (C,) for the pixel-wise terms; ``ohem`` (thresh or None,
    min_kept); ``label_smoothing`` for ``ce``; ``gamma`` of ``focal``. Called as ``loss(outputs, masks, normalizer)``
    with outputs ``{"out": (N, C, H, W), "aux": optional}``, masks (N, H, W) and ``normalizer`` ``Z`` (default: this
    batch's :meth:`mass`, i.e. a mean over the batch).
    """

    def __init__(self, terms: Sequence[str] = ("ce",), loss_weights: Sequence[float] | None = None,
                 class_weights: Sequence[float] | None = None, ohem: tuple[float | None, int] | None = None,
                 label_smoothing: float = 0.0, gamma: float = 2.0, aux_weight: float = AUX_WEIGHT):
        self.terms = list(terms)
        for term in self.terms:
            if term not in LOSSES:
                raise ValueError(f"loss: unknown term {term!r}; expected one of {LOSSES}")
        weights = [1.0] * len(self.terms) if loss_weights is None else [float(w) for w in loss_weights]
        if len(weights) != len(self.terms):
            raise ValueError(f"loss_weights: {len(weights)} weights {list(loss_weights)} for {len(self.terms)} "
                             f"loss terms {'+'.join(self.terms)}")
        self.loss_weights = weights
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing: {label_smoothing} is outside [0, 1)")
        pixel_terms = [t for t in self.terms if t in PIXEL_LOSSES]
        if label_smoothing and "ce" not in self.terms:
            raise ValueError(f"label_smoothing applies to the ce term, which loss {'+'.join(self.terms)} lacks")
        if class_weights is not None and not pixel_terms:
            raise ValueError(f"class_weights apply to the pixel-wise terms {PIXEL_LOSSES}, which loss "
                             f"{'+'.join(self.terms)} lacks")
        if ohem is not None and not pixel_terms:
            raise ValueError(f"ohem selects pixels for the pixel-wise terms {PIXEL_LOSSES}, which loss "
                             f"{'+'.join(self.terms)} lacks")
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float64)
        self.ohem, self.label_smoothing, self.gamma, self.aux_weight = ohem, float(label_smoothing), gamma, aux_weight

    @property
    def plain_ce(self) -> bool:
        """Unweighted cross-entropy alone (the engine's historical loss, computed exactly as before)."""
        return (self.terms == ["ce"] and self.loss_weights == [1.0] and self.class_weights is None
                and self.ohem is None and self.label_smoothing == 0)

    def mass(self, masks: torch.Tensor) -> torch.Tensor:
        """What ``Z`` counts in ``masks``: labelled pixels, or with class weights the sum of their weights (float64)."""
        valid = masks != IGNORE_INDEX
        if self.class_weights is None:
            return valid.sum().to(torch.float64)
        weights = self.class_weights.to(masks.device, torch.float64)
        return weights[masks[valid]].sum()

    def _pixel_losses(self, logits: torch.Tensor, masks: torch.Tensor, reduction: str) -> torch.Tensor:
        """``sum_t w_t l_{t,i}`` of the pixel-wise terms: summed, or per pixel (N, H, W) with zeros at ignored ones."""
        weight = None if self.class_weights is None else self.class_weights.to(logits)
        total = 0
        for term, w in zip(self.terms, self.loss_weights):
            if term == "ce":
                value = F.cross_entropy(logits, masks, weight=weight, ignore_index=IGNORE_INDEX, reduction=reduction,
                                        label_smoothing=self.label_smoothing)
            elif term == "focal":
                value = focal_loss(logits, masks, self.gamma, weight, reduction)
            elif term == "focal-sigmoid":
                value = sigmoid_focal_loss(logits, masks, self.gamma, weight, reduction)
            else:
                continue
            total = total + w * value
        return total

    def head(self, logits: torch.Tensor, masks: torch.Tensor, normalizer: torch.Tensor) -> torch.Tensor:
        """The loss of one head's logits (N, C, H, W)."""
        if logits.dtype in (torch.float16, torch.bfloat16):  # autocast: the loss in float32
            logits = logits.float()
        total = logits.sum() * 0  # keeps the graph (and a zero gradient) when no term contributes
        share = self.mass(masks).to(logits) / normalizer  # this micro-batch's (and process's) share of Z
        if any(term in PIXEL_LOSSES for term in self.terms):
            if self.ohem is None:
                total = total + self._pixel_losses(logits, masks, "sum") / normalizer
            else:
                losses = self._pixel_losses(logits, masks, "none")
                kept = ohem_kept(logits, masks, *self.ohem, pixel_losses=losses.detach())
                kept_mass = self.mass(torch.where(kept, masks, IGNORE_INDEX)).to(logits)
                mean = torch.where(kept, losses, torch.zeros_like(losses)).sum() / kept_mass.clamp_min(1e-12)
                total = total + torch.where(kept_mass > 0, mean, torch.zeros_like(mean)) * share
        for term, w in zip(self.terms, self.loss_weights):
            if term == "dice":
                global_share = _all_reduce(self.mass(masks), False).to(logits) / (normalizer * _world_size())
                total = total + w * dice_loss(logits, masks) * global_share
            elif term == "lovasz":
                total = total + w * lovasz_softmax(logits, masks) * share
        return total

    def __call__(self, outputs: dict, masks: torch.Tensor,
                 normalizer: torch.Tensor | float | None = None) -> torch.Tensor:
        if self.plain_ce:  # the engine's historical loss, computed exactly as it always was
            return cross_entropy(outputs, masks, aux_weight=self.aux_weight, normalizer=normalizer)
        if normalizer is None:
            mass = self.mass(masks)
            normalizer = torch.where(mass > 0, mass, torch.ones_like(mass))
        normalizer = torch.as_tensor(normalizer, dtype=torch.float32, device=masks.device)
        total = self.head(outputs["out"], masks, normalizer)
        if "aux" in outputs:
            total = total + self.aux_weight * self.head(outputs["aux"], masks, normalizer)
        return total
