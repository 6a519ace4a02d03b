"""Streaming STFT analysis and overlap-add synthesis in numpy (the run-time signal path).

Conventions (docs/architecture.md, "Streaming STFT and delay"):

* frame k covers input samples ``[hop*(k+1) - n_fft, hop*(k+1))`` — for n_fft = 2*hop that is
  ``[hop*(k-1), hop*(k+1))``, the frames of a centred offline STFT with zeros instead of
  reflection before the start;
* analysis and synthesis window: periodic sqrt-Hann, so analysis x synthesis = periodic
  Hann, whose overlap-add at 50 % overlap is exactly 1 (no normalisation needed; other
  overlaps that divide n_fft are normalised by the constant overlap-add sum);
* the spectrum handed to the model is float32 (1, F, 1, 2) = [real, imag], F = n_fft/2 + 1;
* after frame k is synthesised, output samples ``[hop*(k+1) - n_fft, hop*(k+2) - n_fft)`` are
  complete. Block latency is therefore n_fft - hop; a sample-level stream (output as long as
  input for every chunk) adds hop - 1 more, for n_fft - 1 in all (511 at 512/256).
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "sqrt_hann",
    "StreamingAnalysis",
    "StreamingSynthesis",
    "analysis_frames",
    "overlap_add",
]


def sqrt_hann(n_fft: int) -> np.ndarray:
    """Square root of the periodic Hann window of length n_fft (float32)."""
    n = np.arange(n_fft, dtype=np.float64)
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)
    return np.sqrt(hann).astype(np.float32)


def _ola_gain(window: np.ndarray, hop: int) -> float:
    n_fft = len(window)
    if n_fft % hop:
        raise ValueError(f"hop {hop} must divide n_fft {n_fft}")
    w2 = window.astype(np.float64) ** 2
    sums = w2.reshape(n_fft // hop, hop).sum(axis=0)
    if not np.allclose(sums, sums[0], rtol=0, atol=1e-6):
        raise ValueError(f"window does not overlap-add to a constant at hop {hop}")
    return float(sums[0])


def _check(n_fft: int, hop: int) -> None:
    if n_fft <= 0 or hop <= 0 or n_fft % 2 or n_fft % hop:
        raise ValueError(f"unsupported STFT n_fft={n_fft}, hop={hop} (need even n_fft divisible by hop)")


class StreamingAnalysis:
    """Hop in, one spectrum frame out: ``analyze(hop_samples) -> (1, F, 1, 2) float32``."""

    def __init__(self, n_fft: int = 512, hop: int = 256):
        _check(n_fft, hop)
        self.n_fft = n_fft
        self.hop = hop
        self.n_freq = n_fft // 2 + 1
        self.window = sqrt_hann(n_fft)
        self._buf = np.zeros(n_fft, dtype=np.float32)
        self._tmp = np.empty(n_fft, dtype=np.float32)

    def reset(self) -> None:
        self._buf.fill(0.0)

    def analyze(self, samples: np.ndarray) -> np.ndarray:
        """Push exactly ``hop`` new samples; return the frame that ends with them.

        The returned array is freshly allocated (a view of the rfft result), shape
        (1, F, 1, 2), float32, C-contiguous.
        """
        buf = self._buf
        hop = self.hop
        buf[:-hop] = buf[hop:]
        buf[-hop:] = samples
        np.multiply(buf, self.window, out=self._tmp)
        spec = np.fft.rfft(self._tmp)
        if spec.dtype != np.complex64:  # numpy < 2 computes in double precision
            spec = spec.astype(np.complex64)
        return spec.view(np.float32).reshape(1, self.n_freq, 1, 2)

    def oldest_hop(self) -> np.ndarray:
        """The first ``hop`` samples of the current frame (unwindowed; a view): the input
        delayed by n_fft - hop, i.e. the content of the hop ``synthesize`` just completed."""
        return self._buf[: self.hop]


class StreamingSynthesis:
    """One spectrum frame in, hop samples out: ``synthesize(spec) -> (hop,) float32``."""

    def __init__(self, n_fft: int = 512, hop: int = 256):
        _check(n_fft, hop)
        self.n_fft = n_fft
        self.hop = hop
        self.n_freq = n_fft // 2 + 1
        gain = _ola_gain(sqrt_hann(n_fft), hop)
        window = sqrt_hann(n_fft)
        if abs(gain - 1.0) > 1e-6:
            window = (window / np.float32(gain)).astype(np.float32)
        self.window = window
        self._ola = np.zeros(n_fft, dtype=np.float32)

    def reset(self) -> None:
        self._ola.fill(0.0)

    def synthesize(self, spec: np.ndarray) -> np.ndarray:
        """Overlap-add one frame ((1, F, 1, 2) or (F, 2) float32, or (F,) complex)."""
        if spec.dtype == np.complex64 or spec.dtype == np.complex128:
            z = spec.reshape(-1)
        else:
            z = np.ascontiguousarray(spec, dtype=np.float32).reshape(self.n_freq, 2).view(np.complex64)[:, 0]
        frame = np.fft.irfft(z, self.n_fft)
        ola = self._ola
        hop = self.hop
        ola += frame * self.window if frame.dtype == np.float32 else (frame * self.window).astype(np.float32)
        out = ola[:hop].copy()
        ola[:-hop] = ola[hop:]
        ola[-hop:] = 0.0
        return out


def analysis_frames(x: np.ndarray, n_fft: int = 512, hop: int = 256) -> np.ndarray:
    """All streaming frames of a whole signal: (1, F, T, 2) float32, T = len(x) // hop.

    Frame k is exactly what :class:`StreamingAnalysis` returns for the k-th hop, so tests and
    the torch side can feed the same frames (upstream's centred STFT gives the same frames
    from frame 1 on; frame 0 differs only by zero instead of reflect padding).
    """
    _check(n_fft, hop)
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    n_frames = len(x) // hop
    padded = np.concatenate([np.zeros(n_fft - hop, dtype=np.float32), x[: n_frames * hop]])
    idx = np.arange(n_frames)[:, None] * hop + np.arange(n_fft)[None, :]
    frames = padded[idx] * sqrt_hann(n_fft)[None, :]
    spec = np.fft.rfft(frames, axis=-1).astype(np.complex64)  # (T, F)
    out = np.stack([spec.real, spec.imag], axis=-1)  # (T, F, 2)
    return np.ascontiguousarray(out.transpose(1, 0, 2)[None], dtype=np.float32)  # (1, F, T, 2)


def overlap_add(spec: np.ndarray, n_fft: int = 512, hop: int = 256) -> np.ndarray:
    """Synthesise frames (1, F, T, 2) the streaming way: T*hop samples whose sample i is
    content for input sample i - (n_fft - hop) (the block latency)."""
    syn = StreamingSynthesis(n_fft, hop)
    spec = np.asarray(spec, dtype=np.float32)
    n_frames = spec.shape[2]
    out = np.empty(n_frames * hop, dtype=np.float32)
    for k in range(n_frames):
        out[k * hop : (k + 1) * hop] = syn.synthesize(np.ascontiguousarray(spec[0, :, k, :]))
    return out
