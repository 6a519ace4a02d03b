"""Send pacing for audio a server sends on to a browser: a small hold that saves the far
end's jitter buffer a whole 20 ms step.

The far end's NetEQ (libwebrtc; Chromium) sets its target delay from the 95th percentile
``q`` of the largest relative delay of each half-second, rounded up to a whole 20 ms
bucket: ``20 * (1 + floor(q / 20))`` (see :mod:`voipfilter.lateness`). A server whose
frames leave with ``q`` = 25 ms (the caller's own send jitter plus its processing) costs
the far end 40 ms. Holding every frame until ``D`` ms after the earliest frame of the last
two seconds would have left caps the lateness the far end sees at ``q - D``; with
``D = (q + margin) mod 20`` that lands ``margin`` below a bucket edge and the far end's
target drops by a bucket, for a total of ``q + margin`` instead of the next multiple of 20
above ``q``. When ``q + margin`` is under 20 there is nothing to gain and nothing is held.

:class:`SendPacer` measures ``q`` on the times frames are ready (the sender's own
lateness, not the paced one), re-derives ``D`` each half-second, and lets ``D`` grow by at
most ``ramp_ms`` per half-second (a hold that jumps up would itself look like a late burst
to the far end); it shrinks at once.
"""
from __future__ import annotations

from .lateness import LatenessMeter

__all__ = ["SendPacer"]


class SendPacer:
    """How long to hold each frame before it is sent (seconds; monotonic clock in, too).

    :param margin_ms: how far below a 20 ms bucket edge the far end's measure is aimed
        (room for the network and the far end's own receive jitter).
    :param max_hold_ms: the hold never exceeds this.
    :param history_s: how much of the past ``q`` is taken over (NetEQ forgets over ~30 s).
    :param ramp_ms: the hold grows by at most this much per half-second.
    """

    BUCKET_MS = LatenessMeter.BUCKET_MS

    def __init__(self, margin_ms: float = 4.0, max_hold_ms: float = 19.0, history_s: float = 30.0,
                 ramp_ms: float = 2.0) -> None:
        if not 0 <= margin_ms < self.BUCKET_MS or not 0 <= max_hold_ms or history_s <= 0 or ramp_ms <= 0:
            raise ValueError("give 0 <= margin_ms < 20, max_hold_ms >= 0, history_s > 0 and ramp_ms > 0")
        self.margin_ms = margin_ms
        self.max_hold_ms = max_hold_ms
        self.ramp_ms = ramp_ms
        self.ready = LatenessMeter(keep_intervals=max(1, int(history_s / LatenessMeter.INTERVAL_S)))
        self.hold_ms = 0.0  # D: frames leave D ms after the earliest ready frame's pace
        self.held_ms_total = 0.0
        self.frames = 0
        self._intervals_seen = 0

    def reset(self) -> None:
        """A jump in the media clock (a new stream, a switch of source): start over."""
        self.ready.reset()

    def target_hold_ms(self) -> float:
        """``(q + margin) mod 20`` from the recent half-second maxima, capped; 0 before any."""
        q95_s = self.ready.interval_max_p95()
        if q95_s is None:
            return 0.0
        q = 1000.0 * q95_s + self.margin_ms
        if q < self.BUCKET_MS:
            return 0.0
        return min(self.max_hold_ms, q % self.BUCKET_MS)

    def hold(self, now: float, media_s: float) -> float:
        """A frame for media time ``media_s`` is ready at ``now``: seconds to wait before
        sending it (0: send now)."""
        late = self.ready.add(now, media_s)
        seen = self.ready.intervals
        if seen != self._intervals_seen:  # a half-second closed: re-derive the hold
            self._intervals_seen = seen
            target = self.target_hold_ms()
            self.hold_ms = target if target < self.hold_ms else min(target, self.hold_ms + self.ramp_ms)
        wait = max(0.0, self.hold_ms / 1000.0 - late)
        self.frames += 1
        self.held_ms_total += 1000.0 * wait
        return wait

    def stats(self) -> dict:
        """The hold now, the mean hold per frame, and the ready-time lateness it is based on."""
        return {
            "hold_ms": round(self.hold_ms, 2),
            "held_ms_mean": round(self.held_ms_total / self.frames, 2) if self.frames else 0.0,
            "ready_lateness": self.ready.stats(),
        }
