"""Multiply-accumulates of seglab's own RoI ops, which ``torch.utils.flop_counter`` cannot see (they are
``embedding_bag`` gathers, for which it counts nothing).

Inside ``with counting() as total:`` every RoIAlign / PSRoIAlign / RoIPool call adds to ``total.macs``: one MAC
per gathered feature value and channel, i.e. 4 per bilinear sample for RoIAlign (the taps' weighted sum) and
one per compared value for RoIPool (a max, counted like a MAC). Outside such a block nothing is counted and
the ops pay nothing for it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

from torch import Tensor

_totals: list["OpCount"] = []


@dataclass
class OpCount:
    macs: int = 0


@contextlib.contextmanager
def counting() -> Iterator[OpCount]:
    """The RoI-op MACs of the block, in the returned ``OpCount`` (nested blocks all count)."""
    total = OpCount()
    _totals.append(total)
    try:
        yield total
    finally:
        _totals.pop()  # blocks nest: the innermost ends first


def add_gathered(entries: Tensor, channels: int) -> None:
    """Count ``entries.sum()`` gathered values (per RoI) of ``channels`` channels each, where a block counts."""
    if _totals:
        macs = int(entries.sum()) * channels
        for total in _totals:
            total.macs += macs
