"""Streaming STFT analysis and overlap-add synthesis in numpy (the run-time signal path).

The framing is data: a :class:`WindowPair` (kind, n_fft K, hop M, analysis and synthesis
windows) built by :func:`window_pair`. Two kinds are known:

* ``sqrt_hann_periodic``: periodic sqrt-Hann for analysis and synthesis (upstream GTCRN's,
  K = 2M, analysis x synthesis = periodic Hann, whose overlap-add at 50 % overlap is exactly 1;
  other overlaps that divide K are normalised by the constant overlap-add sum). The
  synthesis window spans the whole frame.
* ``asymmetric_sqrt_hann`` (Mauler & Martin 2007; docs in ``../shared/docs/low-delay.md``):
  a long analysis window (the K-point spectrum's resolution) and a synthesis window that is
  zero except for the last 2M samples; analysis x synthesis is a Hann of length 2M at the end
  of the frame, which overlap-adds to 1 at hop M.

Conventions (docs/architecture.md, "Streaming STFT and delay"):

* frame k covers input samples ``[M*(k+1) - K, M*(k+1))`` with zeros before the start (for
  K = 2M: ``[M*(k-1), M*(k+1))``, the frames of a centred offline STFT);
* the spectrum handed to the model is float32 (1, F, 1, 2) = [real, imag], F = K/2 + 1;
* with L the synthesis window's length (K, or 2M for the asymmetric pair), after frame k is
  synthesised the output samples ``[M*(k+1) - L, M*(k+2) - L)`` are complete. Block latency
  is therefore L - M; a sample-level stream (output as long as input for every chunk) adds
  M - 1 more, for L - 1 in all (511 at 512/256 sqrt-Hann, 255 for the asymmetric 512/256 pair
  at hop 128).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

import numpy as np

__all__ = [
    "SYMMETRIC",
    "ASYMMETRIC",
    "WINDOW_KINDS",
    "WindowPair",
    "window_pair",
    "window_pair_from_metadata",
    "sqrt_hann",
    "StreamingAnalysis",
    "StreamingSynthesis",
    "analysis_frames",
    "overlap_add",
    "rfft_frames",
    "irfft_frames",
]

SYMMETRIC = "sqrt_hann_periodic"
ASYMMETRIC = "asymmetric_sqrt_hann"
WINDOW_KINDS = (SYMMETRIC, ASYMMETRIC)


def sqrt_hann(n_fft: int) -> np.ndarray:
    """Square root of the periodic Hann window of length n_fft (float32)."""
    n = np.arange(n_fft, dtype=np.float64)
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)
    return np.sqrt(hann).astype(np.float32)


@dataclass(frozen=True, eq=False)
class WindowPair:
    """An STFT framing: analysis/synthesis windows (float32, length ``n_fft``) at ``hop``.

    ``synthesis_length`` is how many trailing samples of a frame the synthesis window may
    be non-zero on (its support); it alone sets the delay.
    """

    kind: str
    n_fft: int
    hop: int
    analysis: np.ndarray
    synthesis: np.ndarray
    synthesis_length: int

    @property
    def n_freq(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def block_delay(self) -> int:
        """Delay of the hop-synchronous output: synthesis_length - hop samples."""
        return self.synthesis_length - self.hop

    @property
    def delay_samples(self) -> int:
        """Delay of a sample-level stream: synthesis_length - 1 samples."""
        return self.synthesis_length - 1

    @property
    def params(self) -> dict[str, int]:
        """The window kind's parameters beyond n_fft and hop (stored in model metadata)."""
        if self.kind == ASYMMETRIC:
            return {"analysis_length": self.n_fft, "synthesis_length": self.synthesis_length}
        return {}

    def metadata(self) -> dict[str, str]:
        """Model metadata entries that describe this framing."""
        return {
            "n_fft": str(self.n_fft),
            "hop": str(self.hop),
            "window": self.kind,
            "window_params": json.dumps(self.params),
        }

    def same_as(self, other: "WindowPair") -> bool:
        return (self.kind, self.n_fft, self.hop) == (other.kind, other.n_fft, other.hop)


def _check(n_fft: int, hop: int) -> None:
    if n_fft <= 0 or hop <= 0 or n_fft % 2 or n_fft % hop:
        raise ValueError(f"unsupported STFT n_fft={n_fft}, hop={hop} (need even n_fft divisible by hop)")


def _ola_sum(product: np.ndarray, hop: int) -> float:
    """The constant overlap-add sum of ``product`` (analysis x synthesis) at ``hop``."""
    n_fft = len(product)
    sums = product.astype(np.float64).reshape(n_fft // hop, hop).sum(axis=0)
    if not np.allclose(sums, sums[0], rtol=0, atol=1e-6):
        raise ValueError(f"window pair does not overlap-add to a constant at hop {hop}")
    return float(sums[0])


def _asymmetric(n_fft: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """The Mauler-Martin pair (float64): analysis rises over K - M samples (half a periodic
    sqrt-Hann of length 2(K - M)) and falls over the last M; synthesis is zero before K - 2M."""
    k, m = n_fft, hop
    n = np.arange(k, dtype=np.float64)

    def h(i: np.ndarray) -> np.ndarray:
        return 0.5 * (1.0 - np.cos(np.pi * i / m))

    a = np.empty(k)
    rise = n < k - m
    a[rise] = np.sqrt(0.5 - 0.5 * np.cos(np.pi * n[rise] / (k - m)))
    a[~rise] = np.sqrt(h(n[~rise] - k + 2 * m))
    s = np.zeros(k)
    mid = (n >= k - 2 * m) & (n < k - m)
    s[mid] = h(n[mid] - k + 2 * m) / np.where(a[mid] > 0, a[mid], 1.0)
    s[~rise] = np.sqrt(h(n[~rise] - k + 2 * m))
    return a, s


def window_pair(kind: str = SYMMETRIC, n_fft: int = 512, hop: int = 256) -> WindowPair:
    """The window pair of ``kind`` at ``n_fft``/``hop``; ValueError names the known kinds."""
    _check(n_fft, hop)
    if kind == SYMMETRIC:
        analysis = sqrt_hann(n_fft)
        synthesis = sqrt_hann(n_fft)
        gain = _ola_sum(analysis.astype(np.float64) ** 2, hop)
        if abs(gain - 1.0) > 1e-6:
            synthesis = (synthesis / np.float32(gain)).astype(np.float32)
        return WindowPair(kind, n_fft, hop, analysis, synthesis, n_fft)
    if kind == ASYMMETRIC:
        if n_fft < 3 * hop:
            raise ValueError(f"{ASYMMETRIC} needs n_fft >= 3 * hop (got n_fft={n_fft}, hop={hop})")
        a, s = _asymmetric(n_fft, hop)
        _ola_sum(a * s, hop)
        return WindowPair(kind, n_fft, hop, a.astype(np.float32), s.astype(np.float32), 2 * hop)
    raise ValueError(f"unknown window kind {kind!r}; known: {', '.join(WINDOW_KINDS)}")


def window_pair_from_metadata(meta: Mapping[str, str]) -> WindowPair:
    """The framing a model file describes (``n_fft``, ``hop``, ``window``, optional
    ``window_params``); ValueError says what is not understood."""
    kind = meta.get("window", "")
    if kind not in WINDOW_KINDS:
        raise ValueError(f"window {kind!r} is not a window kind this version knows ({', '.join(WINDOW_KINDS)})")
    try:
        n_fft, hop = int(meta["n_fft"]), int(meta["hop"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"n_fft/hop must be integers ({exc})") from None
    pair = window_pair(kind, n_fft, hop)
    raw = meta.get("window_params")
    if raw:
        try:
            params = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"window_params is not JSON ({exc})") from None
        if params != pair.params:
            raise ValueError(
                f"window {kind!r} with parameters {params} is not one this version knows "
                f"(at n_fft={n_fft}, hop={hop} it builds {pair.params})"
            )
    elif pair.params:
        raise ValueError(f"window {kind!r} needs window_params {json.dumps(pair.params)}")
    return pair


def rfft_frames(frames: np.ndarray) -> np.ndarray:
    """Windowed frames (B, K) float32 → spectra (B, F, 1, 2) float32 = [real, imag], in one
    FFT call for all B (row k equals the 1-D FFT of row k exactly)."""
    spec = np.fft.rfft(frames, axis=-1)
    if spec.dtype != np.complex64:  # numpy < 2 computes in double precision
        spec = spec.astype(np.complex64)
    return spec.view(np.float32).reshape(frames.shape[0], -1, 1, 2)


def irfft_frames(spec: np.ndarray, n_fft: int) -> np.ndarray:
    """Spectra (B, F, 1, 2) float32 → time frames (B, n_fft), one inverse FFT call for all B."""
    z = np.ascontiguousarray(spec, dtype=np.float32).reshape(spec.shape[0], -1, 2).view(np.complex64)[..., 0]
    return np.fft.irfft(z, n_fft, axis=-1)


def _pair(n_fft: int, hop: int, windows: WindowPair | None) -> WindowPair:
    if windows is None:
        return window_pair(SYMMETRIC, n_fft, hop)
    return windows


class _Framed:
    """A streaming STFT half on one framing: ``windows`` (given, or sqrt-Hann at
    n_fft/hop), ``n_fft``, ``hop``, ``n_freq``."""

    def __init__(self, n_fft: int, hop: int, windows: WindowPair | None):
        self.windows = w = _pair(n_fft, hop, windows)
        self.n_fft, self.hop, self.n_freq = w.n_fft, w.hop, w.n_freq


class StreamingAnalysis(_Framed):
    """Hop in, one spectrum frame out: ``analyze(hop_samples) -> (1, F, 1, 2) float32``."""

    def __init__(self, n_fft: int = 512, hop: int = 256, windows: WindowPair | None = None):
        super().__init__(n_fft, hop, windows)
        w = self.windows
        self.window = w.analysis
        self._oldest = w.n_fft - w.synthesis_length
        self._buf = np.zeros(w.n_fft, dtype=np.float32)

    def reset(self) -> None:
        self._buf.fill(0.0)

    def frame(self, samples: np.ndarray) -> np.ndarray:
        """Push exactly ``hop`` new samples; return the windowed frame that ends with them
        ((n_fft,) float32, fresh): what ``analyze`` transforms (:func:`rfft_frames` does it
        for many streams at once)."""
        buf = self._buf
        hop = self.hop
        buf[:-hop] = buf[hop:]
        buf[-hop:] = samples
        return buf * self.window

    def analyze(self, samples: np.ndarray) -> np.ndarray:
        """Push exactly ``hop`` new samples; return the frame that ends with them.

        The returned array is freshly allocated (a view of the rfft result), shape
        (1, F, 1, 2), float32, C-contiguous.
        """
        return rfft_frames(self.frame(samples)[None, :])

    def oldest_hop(self) -> np.ndarray:
        """The ``hop`` input samples (unwindowed; a view) at frame positions
        ``[n_fft - L, n_fft - L + hop)``: the input delayed by the block delay L - hop, i.e.
        the content of the hop ``synthesize`` just completed."""
        return self._buf[self._oldest : self._oldest + self.hop]


class StreamingSynthesis(_Framed):
    """One spectrum frame in, hop samples out: ``synthesize(spec) -> (hop,) float32``."""

    def __init__(self, n_fft: int = 512, hop: int = 256, windows: WindowPair | None = None):
        super().__init__(n_fft, hop, windows)
        w = self.windows
        self._start = w.n_fft - w.synthesis_length
        self.window = np.ascontiguousarray(w.synthesis[self._start :])
        self._ola = np.zeros(w.synthesis_length, dtype=np.float32)

    def reset(self) -> None:
        self._ola.fill(0.0)

    def synthesize(self, spec: np.ndarray) -> np.ndarray:
        """Overlap-add one frame ((1, F, 1, 2) or (F, 2) float32, or (F,) complex)."""
        if spec.dtype == np.complex64 or spec.dtype == np.complex128:
            z = spec.reshape(-1)
        else:
            z = np.ascontiguousarray(spec, dtype=np.float32).reshape(self.n_freq, 2).view(np.complex64)[:, 0]
        return self.add_frame(np.fft.irfft(z, self.n_fft))

    def add_frame(self, frame: np.ndarray) -> np.ndarray:
        """Overlap-add one inverse-transformed frame ((n_fft,), from :func:`irfft_frames`);
        returns the ``hop`` samples it completes."""
        if self._start:
            frame = frame[self._start :]
        ola = self._ola
        hop = self.hop
        ola += frame * self.window if frame.dtype == np.float32 else (frame * self.window).astype(np.float32)
        out = ola[:hop].copy()
        ola[:-hop] = ola[hop:]
        ola[-hop:] = 0.0
        return out


def analysis_frames(
    x: np.ndarray, n_fft: int = 512, hop: int = 256, windows: WindowPair | None = None
) -> np.ndarray:
    """All streaming frames of a whole signal: (1, F, T, 2) float32, T = len(x) // hop.

    Frame k is exactly what :class:`StreamingAnalysis` returns for the k-th hop, so tests and
    the torch side can feed the same frames (upstream's centred STFT gives the same frames
    from frame 1 on; frame 0 differs only by zero instead of reflect padding).
    """
    w = _pair(n_fft, hop, windows)
    n_fft, hop = w.n_fft, w.hop
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    n_frames = len(x) // hop
    padded = np.concatenate([np.zeros(n_fft - hop, dtype=np.float32), x[: n_frames * hop]])
    idx = np.arange(n_frames)[:, None] * hop + np.arange(n_fft)[None, :]
    frames = padded[idx] * w.analysis[None, :]
    spec = np.fft.rfft(frames, axis=-1).astype(np.complex64)  # (T, F)
    out = np.stack([spec.real, spec.imag], axis=-1)  # (T, F, 2)
    return np.ascontiguousarray(out.transpose(1, 0, 2)[None], dtype=np.float32)  # (1, F, T, 2)


def overlap_add(spec: np.ndarray, n_fft: int = 512, hop: int = 256, windows: WindowPair | None = None) -> np.ndarray:
    """Synthesise frames (1, F, T, 2) the streaming way: T*hop samples whose sample i is
    content for input sample i - block_delay."""
    syn = StreamingSynthesis(n_fft, hop, windows)
    hop = syn.hop
    spec = np.asarray(spec, dtype=np.float32)
    n_frames = spec.shape[2]
    out = np.empty(n_frames * hop, dtype=np.float32)
    for k in range(n_frames):
        out[k * hop : (k + 1) * hop] = syn.synthesize(np.ascontiguousarray(spec[0, :, k, :]))
    return out
