"""GTCRN hyper-parameters: one dataclass shared by the network, training and export."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class GTCRNConfig:
    """Signal and band-split settings of a GTCRN variant.

    The defaults are upstream's 16 kHz model: STFT 512/256 with a periodic sqrt-Hann
    window (``window``: a kind of :mod:`voipfilter.stft`; ``asymmetric_sqrt_hann`` with hop
    128 is the low-delay framing, the same 257 bins at half the delay), bins below
    ``n_low_bins`` kept as they are and the rest compressed to ``n_erb_bands`` ERB bands.
    """

    sample_rate: int = 16000
    n_fft: int = 512
    hop: int = 256
    n_low_bins: int = 65
    n_erb_bands: int = 64
    channels: int = 16
    rnn_hidden: int = 16
    window: str = "sqrt_hann_periodic"

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def n_bands(self) -> int:
        return self.n_low_bins + self.n_erb_bands

    @property
    def width(self) -> int:
        """Band count after the two stride-2 encoder convolutions (33 upstream)."""
        w = self.n_bands
        for _ in range(2):
            w = (w + 2 * 2 - 5) // 2 + 1
        return w

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GTCRNConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown GTCRN config keys {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**d)

    def window_pair(self):
        """The STFT framing as numpy windows (:func:`voipfilter.stft.window_pair`)."""
        from voipfilter.stft import window_pair

        return window_pair(self.window, self.n_fft, self.hop)

    def validate(self) -> None:
        from voipfilter.stft import SYMMETRIC

        if self.window == SYMMETRIC and self.hop * 2 != self.n_fft:
            raise ValueError(f"hop must be n_fft/2 for sqrt-Hann overlap-add (got n_fft={self.n_fft}, hop={self.hop})")
        self.window_pair()  # raises for an unknown kind or a framing it cannot build
        if not 0 < self.n_low_bins < self.n_freqs:
            raise ValueError(f"n_low_bins must be in 1..{self.n_freqs - 1}, got {self.n_low_bins}")
