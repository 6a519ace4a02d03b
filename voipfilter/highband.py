"""The suppression gain for the band above the model's: full-band output at 24-48 kHz.

The model runs at 16 kHz and so sees 0-8 kHz of a 48 kHz call. The band above (what the
down-resampler removes) is added back, delayed like the rest, and scaled by one gain per hop
taken from the model's own output in its top bins: the ratio of enhanced to noisy magnitude
there, energy-weighted over the bins of ``HighBandConfig.band_hz`` (for a mask model
``|enh| / |noisy|`` is the mask magnitude, so this is the suppression the model applied just
below the cut), clipped to at most 1 and smoothed over time. Noise above 8 kHz is then
attenuated as much as the noise just below it, and speech that the model passes there
(sibilants reach well above 8 kHz) passes above it too. WebRTC's noise suppressor treats its
upper bands the same way (gains computed on the lower band).

The gain is a piecewise-linear function of time: hop k's gain sits at the centre of its
analysis frame (model-rate sample ``hop * k``), and samples between two centres interpolate
linearly, as the overlap-add of two windows crossfades the model's masks. The same function
is sampled at the model rate (:meth:`HighBandGain.ramp`) and at the stream rate
(:meth:`HighBandGain.gains_at`), so both paths of :class:`voipfilter.denoiser.Denoiser` see
one gain.
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
    The defaults are the ones measured best on VoiceBank-DEMAND at 48 kHz (docs/benchmarks.md,
    "Full-band output").
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
        # Knot i is hop (self._k0 + i)'s gain at model-rate time hop * (self._k0 + i); the
        # stream starts from knot -1 = 1 (pass), before any hop has been seen.
        self._k0 = -1
        self._knots = [1.0]

    @property
    def gain(self) -> float:
        """The latest hop's gain."""
        return self._knots[-1]

    def update(self, spec: np.ndarray, enh: np.ndarray, ok: bool = True) -> float:
        """Take hop k's gain from its noisy and enhanced spectra ((1, F, 1, 2) float32).

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
        self._knots.append(g)
        return g

    def ramp(self) -> np.ndarray:
        """Model-rate gains for the content of the hop just updated: ``hop`` samples from the
        previous hop's gain towards this one's (frame centres ``hop`` apart)."""
        g0, g1 = self._knots[-2], self._knots[-1]
        if g0 == g1:
            return np.full(self.hop, g1, dtype=np.float32)
        return np.float32(g0) + np.float32(g1 - g0) * self._frac

    def gains_at(self, t: np.ndarray) -> np.ndarray:
        """Gains at model-rate content times ``t`` (ascending float64), as float32; knots
        before ``t[0]`` that no later call can need are dropped."""
        knots = np.asarray(self._knots)
        times = self.hop * np.arange(self._k0, self._k0 + len(knots), dtype=np.float64)
        g = np.interp(t, times, knots).astype(np.float32)
        # Keep the last knot at or before t[-1]: the next call's times start after it.
        drop = int(np.searchsorted(times, t[-1], side="right")) - 1
        if drop > 0:
            del self._knots[:drop]
            self._k0 += drop
        return g
