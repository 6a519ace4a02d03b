"""Torch STFT/iSTFT with exactly the framing of the streaming run-time path.

Frames are centred (frame k covers samples [hop*(k-1), hop*(k+1))) with **zeros** before the
start, so frame t of training is frame t of a live stream. The window is the periodic
sqrt-Hann used for analysis and synthesis.
"""
from __future__ import annotations

import torch

from .config import GTCRNConfig


def window(cfg: GTCRNConfig, device: torch.device | None = None) -> torch.Tensor:
    return torch.hann_window(cfg.n_fft, periodic=True, device=device).sqrt()


def stft(x: torch.Tensor, cfg: GTCRNConfig, pad_mode: str = "constant") -> torch.Tensor:
    """(B, N) waveform -> (B, F, T, 2) spectrum, T = N // hop + 1.

    ``pad_mode="reflect"`` reproduces upstream's offline inference; training and streaming
    use zeros ("constant").
    """
    spec = torch.stft(
        x,
        cfg.n_fft,
        cfg.hop,
        cfg.n_fft,
        window(cfg, x.device),
        center=True,
        pad_mode=pad_mode,
        return_complex=True,
    )
    return torch.view_as_real(spec)


def istft(spec: torch.Tensor, cfg: GTCRNConfig, length: int | None = None) -> torch.Tensor:
    """(B, F, T, 2) spectrum -> (B, N) waveform."""
    return torch.istft(
        torch.view_as_complex(spec.contiguous()),
        cfg.n_fft,
        cfg.hop,
        cfg.n_fft,
        window(cfg, spec.device),
        center=True,
        length=length,
    )
