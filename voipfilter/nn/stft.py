"""Torch STFT/iSTFT with exactly the framing of the streaming run-time path.

Frame t covers samples ``[hop*(t+1) - n_fft, hop*(t+1))`` with **zeros** before the start,
so frame t of training is frame t of a live stream, and there are ``N // hop + 1`` frames.
The window pair is the config's (:meth:`GTCRNConfig.window_pair`): for the periodic
sqrt-Hann at hop n_fft/2 this is torch's centred STFT (frame t covers
``[hop*(t-1), hop*(t+1))``), computed by ``torch.stft``/``torch.istft`` exactly as before;
for the asymmetric pair the frames are cut the same way and synthesised by overlap-add of
``irfft(frame) * synthesis`` (analysis x synthesis overlap-adds to 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from voipfilter.stft import SYMMETRIC

from .config import GTCRNConfig


def window(cfg: GTCRNConfig, device: torch.device | None = None) -> torch.Tensor:
    """The periodic sqrt-Hann window (the symmetric framing's analysis and synthesis)."""
    return torch.hann_window(cfg.n_fft, periodic=True, device=device).sqrt()


def _pair(cfg: GTCRNConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(analysis, synthesis) windows of the config's framing as tensors."""
    pair = cfg.window_pair()
    return torch.from_numpy(pair.analysis).to(device), torch.from_numpy(pair.synthesis).to(device)


def stft(x: torch.Tensor, cfg: GTCRNConfig, pad_mode: str = "constant") -> torch.Tensor:
    """(B, N) waveform -> (B, F, T, 2) spectrum, T = N // hop + 1.

    ``pad_mode="reflect"`` reproduces upstream's offline inference (symmetric framing only);
    training and streaming use zeros ("constant").
    """
    if cfg.window == SYMMETRIC:
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
    if pad_mode != "constant":
        raise ValueError(f"pad_mode {pad_mode!r} needs the {SYMMETRIC} framing")
    analysis, _ = _pair(cfg, x.device)
    padded = F.pad(x, (cfg.n_fft - cfg.hop, cfg.hop))
    spec = torch.stft(padded, cfg.n_fft, cfg.hop, cfg.n_fft, analysis, center=False, return_complex=True)
    return torch.view_as_real(spec)


def istft(spec: torch.Tensor, cfg: GTCRNConfig, length: int | None = None) -> torch.Tensor:
    """(B, F, T, 2) spectrum -> (B, N) waveform; N = ``length`` or hop * (T - 1)."""
    if cfg.window == SYMMETRIC:
        return torch.istft(
            torch.view_as_complex(spec.contiguous()),
            cfg.n_fft,
            cfg.hop,
            cfg.n_fft,
            window(cfg, spec.device),
            center=True,
            length=length,
        )
    analysis, synthesis = _pair(cfg, spec.device)
    n_fft, hop = cfg.n_fft, cfg.hop
    batch, _, n_frames, _ = spec.shape
    frames = torch.fft.irfft(torch.view_as_complex(spec.contiguous()), n=n_fft, dim=1)  # (B, K, T)
    frames = frames * synthesis[None, :, None]
    total = (n_frames - 1) * hop + n_fft
    ola = F.fold(frames, output_size=(1, total), kernel_size=(1, n_fft), stride=(1, hop)).reshape(batch, total)
    # Like torch.istft, divide by the overlap-added analysis x synthesis: 1 (to float
    # rounding) wherever every frame that covers a sample is present, so only the last
    # partial hop (covered by one frame) changes.
    prod = (analysis * synthesis)[None, :, None].expand(1, n_fft, n_frames)
    envelope = F.fold(prod, output_size=(1, total), kernel_size=(1, n_fft), stride=(1, hop)).reshape(1, total)
    ola = torch.where(envelope > 1e-8, ola / envelope.clamp_min(1e-8), ola)
    start = n_fft - hop  # padded index of input sample 0
    n_out = hop * (n_frames - 1) if length is None else length
    out = ola[:, start : start + n_out]
    if out.shape[-1] < n_out:
        out = F.pad(out, (0, n_out - out.shape[-1]))
    return out
