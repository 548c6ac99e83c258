"""A fixed-size latency histogram over a sliding window: bounded memory, O(1) record.

Latencies fall into logarithmic buckets: bucket ``i`` covers
``[LOW * GAMMA**i, LOW * GAMMA**(i+1))`` milliseconds and is reported as the value that minimises
the worst relative error inside it, so a percentile is off by at most :data:`RELATIVE_ERROR`
(under 2 %) for latencies between :data:`LOW` and :data:`HIGH`; values outside that range are
clamped to its ends.

The window is two epochs of ``window`` samples each: the current epoch fills, then becomes the
previous one and a zeroed epoch starts. A percentile therefore covers the last ``window`` to
``2 * window`` samples, and memory is two arrays of :data:`BUCKETS` counters per histogram whatever
the traffic (under 2 KB with 16-bit counters, which ``window <= 65535`` allows).

Pure data structure, no locking: the caller (:class:`tenantlora.events.StatsCollector`) holds
its lock.
"""

from __future__ import annotations

import math
import operator
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from itertools import accumulate
from typing import TypeAlias

__all__ = [
    "BUCKETS",
    "GAMMA",
    "HIGH",
    "LOW",
    "RELATIVE_ERROR",
    "Epochs",
    "LatencyWindow",
    "merged",
    "percentiles",
]

GAMMA = 1.04
LOW = 0.01  # ms
HIGH = 1_000_000.0  # ms (about 17 minutes)
_LOG_GAMMA = math.log(GAMMA)
BUCKETS = math.ceil(math.log(HIGH / LOW) / _LOG_GAMMA) + 1
RELATIVE_ERROR = (GAMMA - 1) / (GAMMA + 1)
Epochs: TypeAlias = "tuple[array[int], array[int]]"  # the current and the previous epoch
_SMALL_WINDOW = 0xFFFF  # epochs up to this size fit 16-bit counters


def bucket_of(ms: float) -> int:
    """The bucket index of a latency in milliseconds (NaN and values <= LOW go to bucket 0)."""
    if not ms > LOW:  # also catches NaN
        return 0
    if ms >= HIGH:
        return BUCKETS - 1
    return min(int(math.log(ms / LOW) / _LOG_GAMMA), BUCKETS - 1)


def bucket_value(index: int) -> float:
    """The value reported for bucket ``index``: worst relative error :data:`RELATIVE_ERROR`."""
    low = LOW * GAMMA**index
    return 2 * low * GAMMA / (1 + GAMMA)


class LatencyWindow:
    """Counts of the last ``window`` to ``2 * window`` latencies, by bucket."""

    __slots__ = ("_current", "_filled", "_peaks", "_previous", "_window")

    def __init__(self, window: int) -> None:
        self._window = window
        code = "H" if window <= _SMALL_WINDOW else "I"
        self._current = array(code, bytes(BUCKETS * array(code).itemsize))
        self._previous = array(code, self._current)
        self._filled = 0
        self._peaks = [0.0, 0.0]  # exact maxima of the current and the previous epoch

    @property
    def peak(self) -> float | None:
        """The largest latency in the window (exact, not bucketed), or None when empty."""
        return max(self._peaks) if self._filled or any(self._previous) else None

    def add(self, ms: float) -> None:
        if self._filled >= self._window:
            self._previous, self._current = self._current, self._previous
            for i in range(BUCKETS):
                self._current[i] = 0
            self._filled = 0
            self._peaks = [0.0, self._peaks[0]]
        self._current[bucket_of(ms)] += 1
        self._filled += 1
        if ms > self._peaks[0]:
            self._peaks[0] = ms

    def counts(self) -> list[int]:
        """Per-bucket counts over both epochs."""
        return merged(self.copy())

    def copy(self) -> Epochs:
        """Both epochs' counters, copied (a memcpy: cheap enough to run under the caller's lock)."""
        current, previous = self._current, self._previous
        return array(current.typecode, current), array(previous.typecode, previous)

    def clear(self) -> None:
        for i in range(BUCKETS):
            self._current[i] = 0
            self._previous[i] = 0
        self._filled = 0
        self._peaks = [0.0, 0.0]


def merged(epochs: Epochs) -> list[int]:
    """Per-bucket counts of both epochs added together."""
    current, previous = epochs
    return list(map(operator.add, current, previous))


def percentiles(counts: Iterable[int], qs: tuple[float, ...]) -> tuple[float | None, ...]:
    """Nearest-rank percentiles ``qs`` (each in (0, 1]) of bucket ``counts``."""
    running = list(accumulate(counts))
    total = running[-1] if running else 0
    if not total:
        return tuple(None for _ in qs)
    return tuple(bucket_value(bisect_left(running, max(1, math.ceil(q * total)))) for q in qs)
