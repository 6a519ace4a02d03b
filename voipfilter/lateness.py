"""How late packets or frames come against their own media clock.

A receiver's jitter buffer sizes itself on how late packets arrive relative to the
earliest packet of the recent past: libwebrtc's NetEQ (Chromium's audio jitter buffer)
takes a packet's arrival time minus its RTP timestamp, subtracts the smallest such
value of the last two seconds, and sets its target delay from a high quantile of that
"relative delay". More exactly, NetEQ's underrun optimiser keeps a histogram, in 20 ms
buckets, of the largest relative delay of each 500 ms, and aims at the top of the bucket
holding its 95th percentile: (1 + bucket) x 20 ms. A single packet 20 ms late in 5 % of
half-seconds is enough for a 40 ms target. :class:`LatenessMeter` measures the same
quantities at any point of a call (packets arriving at the server, frames leaving it), so a
call's stats say which leg makes the far end's jitter buffer grow, and what target the
timing alone would give it.
"""
from __future__ import annotations

import collections
from typing import Any

import numpy as np

__all__ = ["LatenessMeter"]


class LatenessMeter:
    """Relative delay of timestamped events (seconds in, milliseconds out).

    :param window_s: the trailing span whose earliest event is "on time" (NetEQ: 2 s).
    :param keep: how many recent lateness values the quantiles are taken over.
    """

    INTERVAL_S = 0.5  # NetEQ registers the largest relative delay of each 500 ms
    BUCKET_MS = 20.0  # ... in a histogram of 20 ms buckets

    def __init__(self, window_s: float = 2.0, keep: int = 1000, keep_intervals: int = 120) -> None:
        if window_s <= 0 or keep < 1 or keep_intervals < 1:
            raise ValueError("window_s must be > 0, keep and keep_intervals >= 1")
        self.window_s = window_s
        self._interval_start: float | None = None
        self._interval_max = 0.0
        self._maxima: collections.deque[float] = collections.deque(maxlen=keep_intervals)
        self.intervals = 0  # half-seconds closed so far
        self._offsets: collections.deque[tuple[float, float]] = collections.deque()  # (media_s, offset), offset increasing
        self._late: collections.deque[float] = collections.deque(maxlen=keep)
        self.count = 0

    def reset(self) -> None:
        """Forget the timeline (a new stream, or a jump in the media clock)."""
        self._offsets.clear()

    def add(self, now: float, media_s: float) -> float:
        """One event at wall time ``now`` for media time ``media_s``; returns its lateness (s)."""
        offset = now - media_s
        q = self._offsets
        while q and q[-1][1] >= offset:  # sliding minimum: a later, earlier-arriving event wins
            q.pop()
        q.append((media_s, offset))
        while q[0][0] < media_s - self.window_s:
            q.popleft()
        late = offset - q[0][1]
        self._late.append(late)
        if self._interval_start is None:
            self._interval_start = now
        elif now - self._interval_start > self.INTERVAL_S:
            self._maxima.append(self._interval_max)
            self.intervals += 1
            self._interval_start, self._interval_max = now, 0.0
        self._interval_max = max(self._interval_max, late)
        self.count += 1
        return late

    def interval_max_p95(self) -> float | None:
        """95th percentile of the largest lateness of each recent closed half-second (s),
        None before the first half-second closes."""
        if not self._maxima:
            return None
        return float(np.percentile(np.fromiter(self._maxima, dtype=np.float64, count=len(self._maxima)), 95))

    def stats(self) -> dict[str, Any]:
        """p50 / p95 / p99 / max lateness in ms over the recent events and their count; the
        95th percentile of the half-second maxima (``interval_max_p95_ms``) and the target a
        NetEQ receiving this timeline would choose from it (``neteq_target_ms``)."""
        out: dict[str, Any] = {"n": self.count, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None,
                               "interval_max_p95_ms": None, "neteq_target_ms": None}
        if self._late:
            values = 1000.0 * np.fromiter(self._late, dtype=np.float64, count=len(self._late))
            p50, p95, p99 = np.percentile(values, (50, 95, 99))
            out.update(p50_ms=round(float(p50), 2), p95_ms=round(float(p95), 2), p99_ms=round(float(p99), 2),
                       max_ms=round(float(values.max()), 2))
        q95_s = self.interval_max_p95()
        if q95_s is not None:
            q95 = 1000.0 * q95_s
            out.update(interval_max_p95_ms=round(q95, 2),
                       neteq_target_ms=(1 + int(q95 // self.BUCKET_MS)) * self.BUCKET_MS)
        return out
