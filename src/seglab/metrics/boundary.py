"""Segmentation metrics restricted to a narrow band around object boundaries: the "trimap" evaluation of
DeepLab v1 (Chen et al., "Semantic Image Segmentation with Deep Convolutional Nets and Fully Connected
CRFs", arXiv:1412.7062, §5 / Fig. 5).

Definition used here. A pixel is a *boundary pixel* when

* its label differs from the label of one of its 4-neighbours (up, down, left, right; the image border
  is not a boundary, pixels outside the image are not neighbours), or
* it is an ignore pixel itself (``ignore_index``: on PASCAL VOC the 'void' label marks a ~5 px band on
  object boundaries, and DeepLab measured the band around those void pixels).

Both rules apply together, so a labelled pixel next to a void pixel is a boundary pixel too. The *band*
of width ``w`` (pixels, ``w >= 0``) is the set of pixels at chessboard distance ``<= w`` from a boundary
pixel, i.e. the boundary dilated by a ``(2w+1) x (2w+1)`` square; ``w = 0`` is the boundary itself. An
image without any boundary pixel has an empty band. The band is computed per image.

:class:`BoundaryBandMetrics` counts only the band pixels (ignore pixels in the band stay uncounted) and
derives :class:`~seglab.metrics.SegmentationMetrics`' metrics from them.
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from seglab.metrics.semantic import SegmentationMetrics


def _check_width(width) -> int:
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 0:
        raise ValueError(f"width must be an int >= 0 (pixels), got {width!r}")
    return int(width)


@torch.no_grad()
def boundary_band(target: torch.Tensor, width: int, ignore_index: int = 255) -> torch.Tensor:
    """Bool mask of the pixels within ``width`` pixels (chessboard distance) of a boundary pixel.

    target: class ids (H, W) or (N, H, W), integer dtype, ``ignore_index`` for void pixels (which are
    boundary pixels). width: int >= 0, in pixels. Returns a bool tensor of target's shape and device.
    See the module docstring for the definition.
    """
    width = _check_width(width)
    if target.dim() not in (2, 3):
        raise ValueError(f"target must have shape (H, W) or (N, H, W), got {tuple(target.shape)}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class ids, got {target.dtype}")
    shape = target.shape
    if target.numel() == 0:
        return torch.zeros(shape, dtype=torch.bool, device=target.device)
    t = target.reshape(-1, *shape[-2:]).long()  # (N, H, W)

    boundary = t == ignore_index
    vertical = t[:, 1:, :] != t[:, :-1, :]  # (N, H-1, W): pixel (y, x) vs (y+1, x)
    boundary[:, 1:, :] |= vertical
    boundary[:, :-1, :] |= vertical
    horizontal = t[:, :, 1:] != t[:, :, :-1]  # (N, H, W-1): pixel (y, x) vs (y, x+1)
    boundary[:, :, 1:] |= horizontal
    boundary[:, :, :-1] |= horizontal

    # no chessboard distance inside an H x W image exceeds max(H, W) - 1: a wider kernel changes nothing
    width = min(width, max(shape[-2:]) - 1)
    if width > 0:
        # each image is its own (1, H, W) sample; max_pool2d pads with -inf, so the border adds nothing
        dilated = F.max_pool2d(boundary.unsqueeze(1).float(), kernel_size=2 * width + 1, stride=1,
                               padding=width)
        boundary = dilated.squeeze(1) > 0
    return boundary.reshape(shape)


class BoundaryBandMetrics:
    """:class:`~seglab.metrics.SegmentationMetrics` restricted to the boundary band of width ``width``
    pixels (DeepLab v1's trimap evaluation, arXiv:1412.7062 Fig. 5; see the module docstring).

    Each :meth:`update` sets the target to ``ignore_index`` outside :func:`boundary_band` of the target
    and delegates to the wrapped ``SegmentationMetrics`` (attribute ``metrics``), so :meth:`compute`
    returns its dict (``miou``, ``pixel_acc``, ... over the band pixels only) and sums over
    ``torch.distributed`` ranks the same way (a collective: every rank must call it).
    """

    def __init__(self, num_classes: int, width: int, ignore_index: int = 255):
        self.width = _check_width(width)
        self.ignore_index = ignore_index
        self.metrics = SegmentationMetrics(num_classes, ignore_index=ignore_index)

    @property
    def num_classes(self) -> int:
        return self.metrics.num_classes

    @property
    def confusion(self) -> torch.Tensor:
        """(C, C) int64 counts of the band pixels, rows = target class, columns = predicted class."""
        return self.metrics.confusion

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.metrics.reset()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch, counting only the pixels in the target's boundary band.

        pred: class ids (N, H, W) or (H, W), or logits (N, C, H, W) (argmax over dim 1).
        target: class ids with pred's spatial shape, ``ignore_index`` for void pixels.
        """
        band = boundary_band(target, self.width, self.ignore_index)
        target = target.long().masked_fill(~band, self.ignore_index)
        self.metrics.update(pred, target)

    def compute(self) -> dict:
        """:meth:`SegmentationMetrics.compute` of the band pixels (fractions in [0, 1], ``nan`` when
        no band pixel was counted)."""
        return self.metrics.compute()
