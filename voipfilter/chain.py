"""The filter of one sample rate inside the aiortc track: a Denoiser beside a dry delay
line of exactly its delay, with the state the track's wet/dry mixer keeps (crossfade weight,
splice dips, de-click ramps, fail-open and retry after an error). docs/track.md explains the
design.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

DIP_MS = 5.0  # fade out / fade in around a splice (pts jump, dropped frames)
DECLICK_MS = 5.0  # ramp that removes a step when the output path changes abruptly
XFADE_MS = 20.0  # wet/dry crossfade (enabled, atten_lim_db, reset, error recovery)
RETRY_FIRST_S = 1.0  # after a processing error, try the model again after this much audio
RETRY_MAX_S = 30.0  # ... doubling up to this


class DenoiserLike(Protocol):
    """What the track needs of a filter (Denoiser, AnyRateDenoiser, or a test's own)."""

    delay_samples: int

    def process(self, x: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...


class Chain:
    """The filter for one sample rate: a Denoiser, a dry delay line of exactly the same
    delay, the wet/dry mixer and the envelopes that keep the output free of clicks.

    Stream coordinates: sample k of the chain's input stream (pts gaps closed). The output of
    a frame covering input [p, p+n) is the mix for input [p-D, p+n-D).
    """

    def __init__(self, rate: int, den: DenoiserLike | None, delay: int, *, fresh_start: bool):
        self.rate = rate
        self.den = den
        self.delay = int(delay)
        self.dry_hist = np.zeros(self.delay, np.float32)
        self.pos = 0
        self.w = 0.0  # current wet weight
        self.den_active = den is not None
        self.den_start = 0  # stream index from which the current denoiser state was fed
        # At the very start of a chain wet and dry are both D samples of silence, so the wet
        # path may be used at once; after a mid-stream restart it must warm up first.
        self.start_ok = fresh_start
        self.dips: list[int] = []
        self.dip_len = max(1, round(rate * DIP_MS / 1000))
        self.declick_len = max(1, round(rate * DECLICK_MS / 1000))
        self.xfade_step = 1.0 / max(1.0, rate * XFADE_MS / 1000)
        self.retry_at: int | None = None
        self.retry_s = RETRY_FIRST_S
        self.last_error_pos: int | None = None
        self.failing = den is None  # fail-open: passing dry audio because of an error
        self.den_failed = False  # the current model state failed; restart before reuse
        self.reset_pending = False

    def warm(self) -> bool:
        return self.den_active and (self.start_ok or self.pos - self.den_start >= self.delay)

    def restart_den(self) -> None:
        """Fresh model state, fed from now on; used only once the output is dry (w == 0)."""
        self.den.reset()
        self.den_failed = False
        self.den_active = True
        self.den_start = self.pos
        self.start_ok = False

    def dip_gain(self, n: int) -> np.ndarray | None:
        """Gain for the output samples of this frame (input coords [pos-D, pos-D+n))."""
        q0 = self.pos - self.delay
        self.dips = [a for a in self.dips if a + self.dip_len > q0]
        if not self.dips:
            return None
        q = np.arange(q0, q0 + n, dtype=np.float64) + 0.5
        g = np.ones(n, np.float64)
        for a in self.dips:
            g = np.minimum(g, np.clip(np.abs(q - a) / self.dip_len, 0.0, 1.0))
        return g.astype(np.float32)
