"""The hybrid loss of GTCRN, frame t against frame t, on the streaming STFT.

With c = 0.3 and compressed spectra S_c = |S|^c * S / |S|:

    loss = 30 * (MSE(Re Ŝ_c, Re S_c) + MSE(Im Ŝ_c, Im S_c))
         + 70 * MSE(|Ŝ|^c, |S|^c)
         + (cap - min(SI-SNR(ŝ, s), cap)) / 10          (SI-SNR in dB)

ŝ and s are the iSTFT of the enhanced and the clean spectrum (same framing as the live
path). The spectral terms are computed on the model's own spectra by default. With
``spectra`` set to another framing (``loss.spectra: standard`` in a config: the 512/256
periodic sqrt-Hann STFT), they are computed on that framing's STFT of ŝ and s instead: what
is heard. For the low-delay framing this matters: its synthesis window keeps only the last
256 samples of each 512-sample frame, so its own spectra score content that is never played. The SI-SNR term is upstream's -SI-SNR/10 shifted by the constant cap/10 (cap = 60 dB)
and floored at 0, so a perfect output gives exactly 0 and any error gives more; below
60 dB SI-SNR (every real output) its gradient is exactly that of -SI-SNR/10.

Both spectra are (B, F, T, 2) and are compared frame by frame with **no shift**: output
frame t is scored against clean frame t. A clean signal one sample (or one frame) late or
early makes a perfect-for-t output score worse; ``tests/test_train_loss.py`` checks it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from voipfilter.nn.config import GTCRNConfig
from voipfilter.nn.stft import istft, stft

EPS = 1e-12


@dataclass
class LossParts:
    total: torch.Tensor
    complex: torch.Tensor
    mag: torch.Tensor
    sisnr_db: torch.Tensor  # mean SI-SNR of the batch, dB (for logging)


def si_snr_db(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """SI-SNR in dB per batch item, (B, N) x (B, N) -> (B,). No mean removal (as upstream)."""
    dot = torch.sum(est * ref, dim=-1, keepdim=True)
    s_target = dot * ref / (torch.sum(ref * ref, dim=-1, keepdim=True) + eps * 1e-6)
    e_noise = est - s_target
    ps = torch.sum(s_target ** 2, dim=-1)
    pe = torch.sum(e_noise ** 2, dim=-1)
    # the 1e-9 * ps floor bounds a perfect estimate at 90 dB whatever the signal level
    return 10.0 * torch.log10((ps + eps) / (pe + 1e-9 * ps + eps))


def loss_spectra(name: str) -> GTCRNConfig | None:
    """The framing a config's ``loss.spectra`` names: "model" (None) or "standard"."""
    if name == "model":
        return None
    if name == "standard":
        return GTCRNConfig()
    raise ValueError(f"loss.spectra must be 'model' or 'standard', not {name!r}")


def hybrid_loss(model_cfg: GTCRNConfig, l) -> "HybridLoss":
    """The :class:`HybridLoss` of a config's ``loss`` section for a model of ``model_cfg``."""
    return HybridLoss(model_cfg, l.compress, l.w_complex, l.w_mag, l.w_sisnr, l.sisnr_cap_db,
                      loss_spectra(l.spectra))


class HybridLoss(torch.nn.Module):
    def __init__(self, cfg: GTCRNConfig | None = None, compress: float = 0.3, w_complex: float = 30.0,
                 w_mag: float = 70.0, w_sisnr: float = 0.1, sisnr_cap_db: float = 60.0,
                 spectra: GTCRNConfig | None = None):
        super().__init__()
        self.cfg = cfg or GTCRNConfig()
        self.spectra = spectra  # None: the spectral terms on the model's own spectra
        self.c = compress
        self.w_complex = w_complex
        self.w_mag = w_mag
        self.w_sisnr = w_sisnr
        self.cap = sisnr_cap_db

    def parts(self, enh: torch.Tensor, clean: torch.Tensor, length: int | None = None) -> LossParts:
        """enh, clean: (B, F, T, 2). ``length``: waveform length for the SI-SNR term."""
        if enh.shape != clean.shape:
            raise ValueError(f"enhanced {tuple(enh.shape)} and clean {tuple(clean.shape)} spectra differ in shape")
        est = istft(enh, self.cfg, length)
        ref = istft(clean, self.cfg, length)
        if self.spectra is not None:  # score the synthesised waveforms, re-analysed
            enh, clean = stft(est, self.spectra), stft(ref, self.spectra)
        er, ei = enh[..., 0], enh[..., 1]
        cr, ci = clean[..., 0], clean[..., 1]
        e_mag = torch.sqrt(er * er + ei * ei + EPS)
        c_mag = torch.sqrt(cr * cr + ci * ci + EPS)
        # |S|^c * S/|S| = S * |S|^(c-1)
        e_scale = e_mag ** (self.c - 1.0)
        c_scale = c_mag ** (self.c - 1.0)
        loss_complex = torch.mean((er * e_scale - cr * c_scale) ** 2) + torch.mean((ei * e_scale - ci * c_scale) ** 2)
        loss_mag = torch.mean((e_mag ** self.c - c_mag ** self.c) ** 2)
        snr = si_snr_db(est, ref)
        loss_sisnr = torch.mean(self.cap - torch.clamp(snr, max=self.cap))
        total = self.w_complex * loss_complex + self.w_mag * loss_mag + self.w_sisnr * loss_sisnr
        return LossParts(total, loss_complex.detach(), loss_mag.detach(), snr.detach().mean())

    def forward(self, enh: torch.Tensor, clean: torch.Tensor, length: int | None = None) -> torch.Tensor:
        return self.parts(enh, clean, length).total
