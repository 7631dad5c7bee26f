"""The largest batch for which ``fits(batch)`` holds: doubling from a start, then bisecting.

    largest_fitting(fits, start=64, limit=40_000)   # e.g. 1536, after about 2 log2(1536/64) probes

``fits`` must be monotone (a batch that fits means every smaller one fits), as GPU memory is for a
fixed model. ``engine.find_batch_size`` probes with real training steps.
"""
from __future__ import annotations

from typing import Callable

__all__ = ["largest_fitting"]


def largest_fitting(fits: Callable[[int], bool], *, start: int, limit: int, multiple: int = 8) -> int:
    """The largest ``b <= limit`` with ``fits(b)``, rounded down to a multiple of ``multiple`` when it is
    at least that (tensor cores prefer it); 0 when not even a batch of 1 fits. Doubles from ``start``
    (halves while it does not fit), then bisects over the multiples between the last size that fit
    and the first that did not."""
    if limit < 1:
        return 0
    size = max(1, min(start, limit))
    if fits(size):
        good = size
        while good < limit:
            size = min(2 * good, limit)
            if not fits(size):
                bad = size
                break
            good = size
        else:
            return _round(good, multiple, limit)
    else:
        bad = size
        while True:
            size = bad // 2
            if size < 1:
                return 0
            if fits(size):
                good = size
                break
            bad = size
    # bisect over the multiples of `step` between the two: k * step fits for k <= low, not for k >= high
    step = multiple if good >= multiple else 1
    low, high = good // step, -(-bad // step)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle * step):
            low = middle
        else:
            high = middle
    return _round(low * step, multiple, limit)


def _round(size: int, multiple: int, limit: int) -> int:
    return size - size % multiple if size >= multiple and size != limit else size
