"""The suppression gain for the band above the model's: full-band output at 24-48 kHz.

The model runs at 16 kHz and so sees 0-8 kHz of a 48 kHz call. The band above is kept,
delayed like the rest, and scaled by one gain per hop
taken from the model's own output in its top bins: the ratio of enhanced to noisy magnitude
there, energy-weighted over the bins of ``HighBandConfig.band_hz`` (for a mask model
``|enh| / |noisy|`` is the mask magnitude, so this is the suppression the model applied just
below the cut), clipped to at most 1 and smoothed over time. Noise above 8 kHz is then
attenuated as much as the noise just below it, and speech that the model passes there
(sibilants reach well above 8 kHz) passes above it too. WebRTC's noise suppressor treats its
upper bands the same way (gains computed on the lower band).

At a native rate (24, 32, 48 kHz: :class:`voipfilter.cores.NativeRateCore`) hop k's gain
scales the bins above 8 kHz of hop k's own spectrum, and overlap-add crossfades it. On the
resampled path (44.1 kHz, or ``native_rate=False``) the gain is a piecewise-linear
function of time: hop k's gain sits at the centre of its analysis frame (model-rate sample
``hop * k``), and samples between two centres interpolate linearly, as the overlap-add of
two windows crossfades the model's masks. The same function is sampled at the model rate
(:meth:`HighBandGain.ramp`) and at the stream rate (:meth:`HighBandGain.gains_at`), so both
halves of that path see one gain.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["HighBandConfig", "HighBandGain"]


@dataclass(frozen=True)
class HighBandConfig:
    """How the high-band gain is taken from the model's output.

    ``band_hz``: the model-rate bins whose enhanced/noisy energy ratio gives the gain.
    ``attack_ms``/``release_ms``: one-pole time constants for a rising/falling gain (0: none).
    The defaults were chosen from the variants measured on VoiceBank-DEMAND at 48 kHz
    (docs/benchmarks.md, "Full-band output"): the lowest LSD above 8 kHz for the least
    change of PESQ-WB.
    """

    band_hz: tuple[float, float] = (5000.0, 8000.0)
    attack_ms: float = 0.0
    release_ms: float = 30.0

    def __post_init__(self):
        lo, hi = self.band_hz
        if not (0 <= lo < hi):
            raise ValueError(f"band_hz must be (low, high) with 0 <= low < high, got {self.band_hz}")
        if self.attack_ms < 0 or self.release_ms < 0:
            raise ValueError("attack_ms and release_ms must be >= 0")


def _pole(tau_ms: float, hop_s: float) -> float:
    return 0.0 if tau_ms <= 0 else math.exp(-hop_s / (tau_ms / 1000.0))


class HighBandGain:
    """Per-hop high-band gain of one stream, and its time line for the stream-rate path."""

    # Top-band noisy energy below this (a float32 spectrum of digital silence) says nothing
    # about the mask: the gain holds.
    SILENCE = 1e-10

    def __init__(self, config: HighBandConfig, model_rate: int, n_fft: int, hop: int):
        self.config = config
        self.hop = hop
        n_freq = n_fft // 2 + 1
        lo, hi = config.band_hz
        hz_per_bin = model_rate / n_fft
        self._lo = min(n_freq - 1, int(math.ceil(lo / hz_per_bin)))
        self._hi = max(self._lo + 1, min(n_freq, int(math.floor(hi / hz_per_bin)) + 1))
        hop_s = hop / model_rate
        self._a_up = _pole(config.attack_ms, hop_s)
        self._a_down = _pole(config.release_ms, hop_s)
        self._frac = (np.arange(hop, dtype=np.float64) / hop).astype(np.float32)
        self.reset()

    def reset(self) -> None:
        self._g = 1.0
        # Knot i: hop index _at[i] (frame centre at model-rate time hop * _at[i]), gain
        # _knots[i]; the stream starts from knot -1 = 1 (pass), before any hop is seen.
        self._at = np.empty(32, dtype=np.float64)
        self._knots = np.empty(32, dtype=np.float64)
        self._at[0], self._knots[0], self._n = -1.0, 1.0, 1
        self._steps = np.zeros(0, dtype=np.float64)

    @property
    def gain(self) -> float:
        """The latest hop's gain."""
        return float(self._knots[self._n - 1])

    def update(self, spec: np.ndarray, enh: np.ndarray, ok: bool = True) -> float:
        """Take the next hop's gain from its noisy and enhanced spectra ((1, F, 1, 2) float32).

        ``ok=False`` (the model step failed and the hop passed through unprocessed): gain 1,
        so the high band also passes unprocessed.
        """
        if not ok:
            g = 1.0
        else:
            s = spec.reshape(-1)[2 * self._lo : 2 * self._hi]
            den = float(np.dot(s, s))
            if den > self.SILENCE:
                e = enh.reshape(-1)[2 * self._lo : 2 * self._hi]
                raw = min(1.0, math.sqrt(float(np.dot(e, e)) / den))
                a = self._a_up if raw > self._g else self._a_down
                g = a * self._g + (1.0 - a) * raw
            else:
                g = self._g
        self._g = g
        n = self._n
        if n == len(self._knots):
            self._at = np.concatenate([self._at, np.empty(n, dtype=np.float64)])
            self._knots = np.concatenate([self._knots, np.empty(n, dtype=np.float64)])
        self._at[n] = self._at[n - 1] + 1.0
        self._knots[n] = g
        self._n = n + 1
        return g

    def ramp(self) -> np.ndarray:
        """Model-rate gains for the content of the hop just updated: ``hop`` samples from the
        previous hop's gain towards this one's (frame centres ``hop`` apart)."""
        g0, g1 = float(self._knots[self._n - 2]), float(self._knots[self._n - 1])
        if g0 == g1:
            return np.full(self.hop, g1, dtype=np.float32)
        return np.float32(g0) + np.float32(g1 - g0) * self._frac

    def gains_at(self, first: int, n: int, scale: float) -> np.ndarray:
        """Gains (float32) for ``n`` stream samples whose model-rate content times are
        ``(first + i) * scale`` (first an integer); knots no later call can need are dropped.

        Times are formed the same way whatever the chunking (an exact integer times one
        constant), so the gains, like the rest of the output, do not depend on it.
        """
        if len(self._steps) != n:
            self._steps = np.arange(n, dtype=np.float64)
        x = (self._steps + float(first)) * (scale / self.hop)  # in hops
        k = self._n
        g = np.interp(x, self._at[:k], self._knots[:k]).astype(np.float32)
        # Keep the last knot at or before x[-1]: the next call's times start after it.
        drop = min(k - 1, int(math.floor(x[-1] - self._at[0])))
        if drop > 0:
            self._at[: k - drop] = self._at[drop:k]
            self._knots[: k - drop] = self._knots[drop:k]
            self._n = k - drop
        return g
