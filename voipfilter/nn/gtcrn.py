"""GTCRN in PyTorch: the offline (whole-utterance) network.

Module and parameter names follow upstream's state_dict so its checkpoints load with
``strict=True``; the architecture facts are in ``docs/architecture.md`` and the shared
GTCRN notes. Tensors inside are (B, C, T, F); time is causal everywhere (zero padding at
the front of time only), so output frame t depends on input frames <= t.
"""
from __future__ import annotations


import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .config import GTCRNConfig


def erb_scale(hz: np.ndarray) -> np.ndarray:
    return 21.4 * np.log10(1.0 + 0.00437 * hz)


def erb_scale_inverse(erb: np.ndarray) -> np.ndarray:
    return (10 ** (erb / 21.4) - 1.0) / 0.00437


def erb_filterbank(cfg: GTCRNConfig) -> np.ndarray:
    """Triangular ERB filters (n_erb_bands, n_freqs - n_low_bins), rows not normalised.

    Centres are linear on the ERB scale from the first compressed bin to Nyquist,
    rounded to FFT bins; the first band is a half triangle and the last band is the
    complement of the one before it, so the filters sum to one per bin.
    """
    n_bands, n_freqs = cfg.n_erb_bands, cfg.n_freqs
    low_hz = cfg.n_low_bins / cfg.n_fft * cfg.sample_rate
    centres_erb = np.linspace(erb_scale(np.array(low_hz)), erb_scale(np.array(cfg.sample_rate / 2)), n_bands)
    bins = np.round(erb_scale_inverse(centres_erb) / cfg.sample_rate * cfg.n_fft).astype(np.int64)
    eps = 1e-12
    fb = np.zeros((n_bands, n_freqs), dtype=np.float32)

    def rising(a: int, b: int) -> np.ndarray:
        return (np.arange(a, b) - a + eps) / (b - a + eps)

    def falling(a: int, b: int) -> np.ndarray:
        return (b - np.arange(a, b) + eps) / (b - a + eps)

    fb[0, bins[0] : bins[1]] = falling(bins[0], bins[1])
    for i in range(1, n_bands - 1):
        fb[i, bins[i - 1] : bins[i]] = rising(bins[i - 1], bins[i])
        fb[i, bins[i] : bins[i + 1]] = falling(bins[i], bins[i + 1])
    fb[-1, bins[-2] : bins[-1] + 1] = 1.0 - fb[-2, bins[-2] : bins[-1] + 1]
    return np.abs(fb[:, cfg.n_low_bins :])


class ERB(nn.Module):
    """Frozen band compression (bm) and expansion (bs) of the bins above n_low_bins."""

    def __init__(self, cfg: GTCRNConfig):
        super().__init__()
        self.n_low = cfg.n_low_bins
        fb = torch.from_numpy(erb_filterbank(cfg))
        self.erb_fc = nn.Linear(fb.shape[1], fb.shape[0], bias=False)
        self.ierb_fc = nn.Linear(fb.shape[0], fb.shape[1], bias=False)
        self.erb_fc.weight = nn.Parameter(fb, requires_grad=False)
        self.ierb_fc.weight = nn.Parameter(fb.T.contiguous(), requires_grad=False)

    def bm(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[..., : self.n_low], self.erb_fc(x[..., self.n_low :])], dim=-1)

    def bs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[..., : self.n_low], self.ierb_fc(x[..., self.n_low :])], dim=-1)


def sfe(x: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """Subband feature extraction: stack each band with its neighbours as channels.

    Output channel c*kernel + k holds input channel c at band f + k - kernel//2 (zeros
    outside), the channel order of ``nn.Unfold``.
    """
    pad = kernel // 2
    xp = F.pad(x, (pad, pad))
    n_f = x.shape[-1]
    return torch.stack([xp[..., k : k + n_f] for k in range(kernel)], dim=2).flatten(1, 2)


def transposed_as_conv(w: torch.Tensor, groups: int) -> torch.Tensor:
    """ConvTranspose2d weight (C_in, C_out/g, kT, kF) of stride 1 -> the Conv2d weight
    (C_out, C_in/g, kT, kF) of the same map: per group in and out swapped, taps flipped."""
    c_in, c_out_g, kt, kf = w.shape
    w = w.reshape(groups, c_in // groups, c_out_g, kt, kf).transpose(1, 2)
    return w.reshape(groups * c_out_g, c_in // groups, kt, kf).flip(2, 3)


def conv2d(conv: nn.Conv2d | nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``, with a stride-1 transposed conv computed as the ordinary conv it equals.

    Same parameters, same map, faster to train on a CPU: PyTorch has no oneDNN path for
    transposed convs and falls back to a slow generic kernel. Depthwise convs run
    channels-last, the layout oneDNN's depthwise kernels are fast in
    (``benchmarks/train_step.py``).
    """
    if isinstance(conv, nn.ConvTranspose2d):
        if any(s != 1 for s in conv.stride) or any(p != 0 for p in conv.output_padding):
            return conv(x)
        weight = transposed_as_conv(conv.weight, conv.groups)
        padding = tuple(d * (k - 1) - p for d, k, p in zip(conv.dilation, conv.kernel_size, conv.padding))
    else:
        weight, padding = conv.weight, conv.padding
    if conv.groups > 1 and conv.groups == x.shape[1] and x.device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x, weight, conv.bias, conv.stride, padding, conv.dilation, conv.groups)
        return y.contiguous()
    return F.conv2d(x, weight, conv.bias, conv.stride, padding, conv.dilation, conv.groups)


class ConvBlock(nn.Module):
    """Conv (or transposed conv) + BatchNorm + PReLU (Tanh for the last decoder layer)."""

    def __init__(self, c_in: int, c_out: int, kernel, stride, padding, groups: int = 1,
                 transposed: bool = False, last: bool = False):
        super().__init__()
        conv = nn.ConvTranspose2d if transposed else nn.Conv2d
        self.conv = conv(c_in, c_out, kernel, stride, padding, groups=groups)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.Tanh() if last else nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class TRA(nn.Module):
    """Temporal recurrent attention: a GRU over per-frame channel energy gates the channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.att_gru = nn.GRU(channels, channels * 2, 1, batch_first=True)
        self.att_fc = nn.Linear(channels * 2, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        energy = x.pow(2).mean(dim=-1).transpose(1, 2)  # (B, T, C)
        gate = torch.sigmoid(self.att_fc(self.att_gru(energy)[0]))  # (B, T, C)
        return x * gate.transpose(1, 2).unsqueeze(-1)


def channel_shuffle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Interleave channels: [a0, b0, a1, b1, ...] (upstream's order; weights depend on it)."""
    return torch.stack([a, b], dim=2).flatten(1, 2)


class GTConvBlock(nn.Module):
    """Group temporal convolution: half the channels pass, half go through
    SFE -> pointwise -> causal dilated depthwise -> pointwise -> TRA, then shuffle."""

    def __init__(self, channels: int, hidden: int, dilation: int, transposed: bool = False):
        super().__init__()
        conv = nn.ConvTranspose2d if transposed else nn.Conv2d
        half = channels // 2
        self.dilation = dilation
        self.pad_frames = 2 * dilation  # (kernel_t - 1) * dilation
        # A transposed conv with padding p crops p from both ends of time: with the input
        # front-padded by 2*d frames, cropping 2*d leaves exactly the causal conv.
        t_pad = self.pad_frames if transposed else 0
        self.point_conv1 = conv(half * 3, hidden, 1)
        self.point_bn1 = nn.BatchNorm2d(hidden)
        self.point_act = nn.PReLU()
        self.depth_conv = conv(hidden, hidden, (3, 3), stride=1, padding=(t_pad, 1),
                               dilation=(dilation, 1), groups=hidden)
        self.depth_bn = nn.BatchNorm2d(hidden)
        self.depth_act = nn.PReLU()
        self.point_conv2 = conv(hidden, half, 1)
        self.point_bn2 = nn.BatchNorm2d(half)
        self.tra = TRA(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = torch.chunk(x, 2, dim=1)
        h = self.point_act(self.point_bn1(conv2d(self.point_conv1, sfe(x1))))
        h = F.pad(h, (0, 0, self.pad_frames, 0))
        h = self.depth_act(self.depth_bn(conv2d(self.depth_conv, h)))
        h = self.tra(self.point_bn2(conv2d(self.point_conv2, h)))
        return channel_shuffle(h, x2)


def block_diag_gru_weights(rnn1: nn.GRU, rnn2: nn.GRU) -> list[torch.Tensor]:
    """The flat weights of one GRU equal to ``rnn1`` and ``rnn2`` run side by side on the
    two halves of the input (hidden = [h1, h2]): block-diagonal per gate (r, z, n).

    Built from the two GRUs' parameters with differentiable ops, so training through it
    trains them; in nn.GRU's ``_flat_weights`` order."""
    out = []
    for name in rnn1._flat_weights_names:
        a, b = getattr(rnn1, name), getattr(rnn2, name)
        gates = zip(a.chunk(3, dim=0), b.chunk(3, dim=0))
        if a.dim() == 2:
            out.append(torch.cat([torch.block_diag(ga, gb) for ga, gb in gates], dim=0))
        else:
            out.append(torch.cat([torch.cat([ga, gb]) for ga, gb in gates]))
    return out


class GRNN(nn.Module):
    """Grouped GRU: the feature halves go through two independent GRUs.

    Computed as one GRU with block-diagonal weights (``block_diag_gru_weights``): the same
    map with half the sequential steps, which is what a GRU costs on a CPU.
    """

    def __init__(self, input_size: int, hidden_size: int, bidirectional: bool = False):
        super().__init__()
        self.hidden_size = hidden_size
        self.directions = 2 if bidirectional else 1
        self.rnn1 = nn.GRU(input_size // 2, hidden_size // 2, 1, batch_first=True, bidirectional=bidirectional)
        self.rnn2 = nn.GRU(input_size // 2, hidden_size // 2, 1, batch_first=True, bidirectional=bidirectional)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if h is None:
            h = x.new_zeros(self.directions, x.shape[0], self.hidden_size)
        weights = block_diag_gru_weights(self.rnn1, self.rnn2)
        y, h = torch._VF.gru(x, h.contiguous(), weights, True, 1, 0.0, self.training,
                             self.directions == 2, True)
        if self.directions == 2:
            # one merged biGRU emits [g1 fwd, g2 fwd, g1 bwd, g2 bwd]; the grouped order is
            # [g1 fwd, g1 bwd, g2 fwd, g2 bwd]
            q = self.hidden_size // 2
            y = y.unflatten(-1, (2, 2, q)).transpose(-3, -2).flatten(-3)
        return y, h


class DPGRNN(nn.Module):
    """Dual-path grouped RNN: bidirectional across bands within a frame (causal in time),
    then unidirectional across time per band; each path with Linear + LayerNorm + residual."""

    def __init__(self, channels: int, width: int, hidden: int):
        super().__init__()
        self.width, self.hidden = width, hidden
        self.intra_rnn = GRNN(channels, hidden // 2, bidirectional=True)
        self.intra_fc = nn.Linear(hidden, hidden)
        self.intra_ln = nn.LayerNorm((width, hidden), eps=1e-8)
        self.inter_rnn = GRNN(channels, hidden, bidirectional=False)
        self.inter_fc = nn.Linear(hidden, hidden)
        self.inter_ln = nn.LayerNorm((width, hidden), eps=1e-8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, f = x.shape
        x = x.permute(0, 2, 3, 1)  # (B, T, F, C)
        intra = self.intra_fc(self.intra_rnn(x.reshape(b * t, f, c))[0])
        x = x + self.intra_ln(intra.reshape(b, t, f, self.hidden))
        inter_in = x.permute(0, 2, 1, 3).reshape(b * f, t, c)  # (B*F, T, C)
        inter = self.inter_fc(self.inter_rnn(inter_in)[0])
        inter = inter.reshape(b, f, t, self.hidden).permute(0, 2, 1, 3)
        x = x + self.inter_ln(inter)
        return x.permute(0, 3, 1, 2)


class Encoder(nn.Module):
    def __init__(self, cfg: GTCRNConfig):
        super().__init__()
        c = cfg.channels
        self.en_convs = nn.ModuleList([
            ConvBlock(9, c, (1, 5), (1, 2), (0, 2)),
            ConvBlock(c, c, (1, 5), (1, 2), (0, 2), groups=2),
            GTConvBlock(c, c, dilation=1),
            GTConvBlock(c, c, dilation=2),
            GTConvBlock(c, c, dilation=5),
        ])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for layer in self.en_convs:
            x = layer(x)
            skips.append(x)
        return x, skips


class Decoder(nn.Module):
    def __init__(self, cfg: GTCRNConfig):
        super().__init__()
        c = cfg.channels
        self.de_convs = nn.ModuleList([
            GTConvBlock(c, c, dilation=5, transposed=True),
            GTConvBlock(c, c, dilation=2, transposed=True),
            GTConvBlock(c, c, dilation=1, transposed=True),
            ConvBlock(c, c, (1, 5), (1, 2), (0, 2), groups=2, transposed=True),
            ConvBlock(c, 2, (1, 5), (1, 2), (0, 2), transposed=True, last=True),
        ])

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for layer, skip in zip(self.de_convs, reversed(skips)):
            x = layer(x + skip)
        return x


def features(spec: torch.Tensor) -> torch.Tensor:
    """(B, F, T, 2) spectrum -> (B, 3, T, F) [|X|, Re X, Im X]."""
    re, im = spec[..., 0].transpose(1, 2), spec[..., 1].transpose(1, 2)
    mag = torch.sqrt(re * re + im * im + 1e-12)
    return torch.stack([mag, re, im], dim=1)


def apply_mask(mask: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
    """Complex multiply: mask (B, 2, T, F) x spec (B, F, T, 2) -> (B, F, T, 2)."""
    mr, mi = mask[:, 0].transpose(1, 2), mask[:, 1].transpose(1, 2)
    sr, si = spec[..., 0], spec[..., 1]
    return torch.stack([sr * mr - si * mi, si * mr + sr * mi], dim=-1)


class GTCRN(nn.Module):
    """Whole-utterance GTCRN: noisy spectrum (B, F, T, 2) -> enhanced spectrum (B, F, T, 2)."""

    def __init__(self, cfg: GTCRNConfig | None = None):
        super().__init__()
        self.cfg = cfg or GTCRNConfig()
        self.cfg.validate()
        self.erb = ERB(self.cfg)
        self.encoder = Encoder(self.cfg)
        self.dpgrnn1 = DPGRNN(self.cfg.channels, self.cfg.width, self.cfg.rnn_hidden)
        self.dpgrnn2 = DPGRNN(self.cfg.channels, self.cfg.width, self.cfg.rnn_hidden)
        self.decoder = Decoder(self.cfg)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        feat = sfe(self.erb.bm(features(spec)))  # (B, 9, T, bands)
        feat, skips = self.encoder(feat)
        feat = self.dpgrnn2(self.dpgrnn1(feat))
        mask = self.erb.bs(self.decoder(feat, skips))  # (B, 2, T, F)
        return apply_mask(mask, spec)


def count_parameters(model: nn.Module) -> int:
    """Learnable parameters (the frozen ERB matrices excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["GTCRN", "GTCRNConfig", "count_parameters", "erb_filterbank"]
