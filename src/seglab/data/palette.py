"""Class colour maps: the PASCAL VOC palette that seglab uses wherever a dataset brings none."""
from __future__ import annotations


def voc_palette(num_colors: int = 256) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map: class id -> (r, g, b), bit-interleaved as in the VOC devkit.

    Index 255 (ignore) is set to white-ish (224, 224, 192) as in VOC's PNGs.
    """
    palette = []
    for label in range(num_colors):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    if num_colors > 255:
        palette[255] = (224, 224, 192)
    return palette
