"""Window grids along one axis, shared by tiling (``rsseg.data.core.tiling``) and sliding-window inference
(``rsseg.models.sliding_window``): the same arithmetic, below both layers."""

from __future__ import annotations


def axis_starts(length: int, size: int, stride: int) -> list[int]:
    """Window starts along one axis: 0, stride, 2·stride, … up to the first window reaching ``length``."""
    starts = [0]
    while starts[-1] + size < length:
        starts.append(starts[-1] + stride)
    return starts


def axis_starts_aligned(length: int, size: int, stride: int) -> list[int]:
    """Like :func:`axis_starts`, but the last window ends exactly at ``length`` (when ``length`` ≥ ``size``)."""
    starts = axis_starts(length, size, stride)
    if length >= size:
        starts[-1] = length - size
        if len(starts) > 1 and starts[-1] == starts[-2]:
            starts.pop()
    return starts
