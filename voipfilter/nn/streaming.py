"""GTCRN as a frame-by-frame function with explicit state, shaped for a lean ONNX graph.

``StreamingGTCRN.from_model(gtcrn)`` rewrites a trained (eval-mode) GTCRN into an
equivalent network that takes one STFT frame and the previous states and returns the
enhanced frame and the next states. The rewrite is exact algebra, chosen so the exported
graph has few nodes (onnxruntime's cost at this size is mostly per node):

- BatchNorm is folded into the convolution before it;
- transposed convolutions of the decoder become ordinary convolutions (a stride-1 causal
  transposed conv is a conv with time- and frequency-flipped weights);
- ERB compression of the features is one matrix product, the first SFE a fixed conv;
  each GTConv block's SFE + pointwise conv become one (1, 3) convolution;
- the two grouped GRUs of every GRNN become one GRU with block-diagonal weights;
- the mean over bands in TRA is folded into its GRU's input weights;
- every cache is its own tensor (no in-place slice writes, so no ScatterND).

``fast=True`` (the default) also shapes the graph for onnxruntime's kernels, by what its
profiler showed (docs/benchmarks.md, "Graph form"); every change is exact algebra (the same
function; outputs differ by float32 rounding only, tests/test_graph_equivalence.py):

- a PReLU with one slope is a LeakyRelu, which onnxruntime fuses into the Conv before it;
- the one-step GRU of each DPGRNN (across frames) is MatMul/Sigmoid/Tanh nodes on its
  (B*F, C) rows, not a GRU node on a (1, B*F, C) sequence (onnxruntime's GRU kernel is
  slow for many short rows); the TRA GRUs (batch B) stay GRU nodes;
- a sum of squares is one ReduceSumSquare node (``export.square_sums``);
- the grouped (2 groups) encoder conv is the dense conv with zeros between the groups,
  which onnxruntime runs in its blocked (NCHWc) layout like the other convs;
- the complex mask is applied as re/im products of (B, F, 1, 1) tensors: no transpose of
  the mask and no broadcast over the length-2 [re, im] axis (a slow broadcast in
  onnxruntime).

``fast=False`` builds the previous graph (kept to compare and benchmark against).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .config import GTCRNConfig
from .gtcrn import DPGRNN, GTCRN, ConvBlock, GTConvBlock, GRNN, TRA, block_diag_gru_weights, transposed_as_conv


@dataclass(frozen=True)
class StateSpec:
    name: str
    shape: tuple[int, ...]  # -1 marks the batch axis


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _fold_conv(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold BN into a Conv2d weight (C_out, C_in/g, kT, kF)."""
    scale, shift = _bn_scale_shift(bn)
    b = bias if bias is not None else torch.zeros_like(scale)
    return weight * scale[:, None, None, None], b * scale + shift


def _fold_conv_transpose(conv: nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold BN into a ConvTranspose2d weight (C_in, C_out/g, kT, kF)."""
    scale, shift = _bn_scale_shift(bn)
    c_in, c_out_g = conv.weight.shape[:2]
    in_per_group = c_in // conv.groups
    out_index = (torch.arange(c_in)[:, None] // in_per_group) * c_out_g + torch.arange(c_out_g)[None, :]
    w = conv.weight * scale[out_index][:, :, None, None]
    return w, conv.bias * scale + shift


def _prelu(act: nn.PReLU) -> torch.Tensor:
    return act.weight.detach().clone()


def _act(x: torch.Tensor, slope: torch.Tensor, fast: bool) -> torch.Tensor:
    """PReLU; as LeakyRelu (the same function) when the slope is one number and ``fast``."""
    if fast and slope.numel() == 1:
        return F.leaky_relu(x, float(slope.reshape(()).item()))
    return F.prelu(x, slope)


def _ungrouped(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped Conv2d weight (C_out, C_in/g, kT, kF) as the equal dense conv's
    (C_out, C_in, kT, kF): block diagonal, zeros between the groups."""
    rows, cols = weight.shape[:2]
    dense = weight.new_zeros((rows, cols * groups, *weight.shape[2:]))
    per = rows // groups
    for g in range(groups):
        dense[g * per : (g + 1) * per, g * cols : (g + 1) * cols] = weight[g * per : (g + 1) * per]
    return dense


def _gru_step(x: torch.Tensor, h: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
              b_ih: torch.Tensor, b_hh: torch.Tensor, hidden: int) -> torch.Tensor:
    """One step of torch's GRU (gate order r, z, n) on (..., C) and (..., H) tensors.

    ``w_ih`` is (C, 3H) and ``w_hh`` (H, 3H): weights already transposed for MatMul.
    """
    gi = torch.matmul(x, w_ih) + b_ih
    gh = torch.matmul(h, w_hh) + b_hh
    gi_rz, gi_n = torch.split(gi, [2 * hidden, hidden], dim=-1)
    gh_rz, gh_n = torch.split(gh, [2 * hidden, hidden], dim=-1)
    r, z = torch.split(torch.sigmoid(gi_rz + gh_rz), hidden, dim=-1)
    n = torch.tanh(gi_n + r * gh_n)
    return n + z * (h - n)  # = (1 - z) * n + z * h


def _block_diag_gru(grnn: GRNN) -> nn.GRU:
    """One GRU equal to GRNN's two group GRUs run side by side (hidden = [g1, g2])."""
    r1 = grnn.rnn1
    gru = nn.GRU(2 * r1.input_size, 2 * r1.hidden_size, 1, bidirectional=r1.bidirectional)
    with torch.no_grad():
        for name, w in zip(gru._flat_weights_names, block_diag_gru_weights(grnn.rnn1, grnn.rnn2)):
            getattr(gru, name).copy_(w)
    return gru


class StreamTRA(nn.Module):
    def __init__(self, tra: TRA, n_bands: int):
        super().__init__()
        self.gru = nn.GRU(tra.att_gru.input_size, tra.att_gru.hidden_size, 1)
        self.gru.load_state_dict(tra.att_gru.state_dict())
        with torch.no_grad():
            self.gru.weight_ih_l0.div_(n_bands)  # mean over bands = sum / n_bands
        self.channels = tra.att_gru.input_size
        self.fc_w = nn.Parameter(tra.att_fc.weight.detach().T.contiguous())
        self.fc_b = nn.Parameter(tra.att_fc.bias.detach().clone())

    def forward(self, h: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # h (B, C, 1, F); state (1, B, 2C)
        energy = (h * h).sum(dim=-1).reshape(1, -1, self.channels)  # (1, B, C)
        _, new_state = self.gru(energy, state)
        gate = torch.sigmoid(torch.matmul(new_state, self.fc_w) + self.fc_b)  # (1, B, C)
        return h * gate.reshape(-1, self.channels, 1, 1), new_state


class StreamGTConv(nn.Module):
    """A GTConv block for one frame; its cache holds the last 2*dilation frames."""

    def __init__(self, block: GTConvBlock, transposed: bool, n_bands: int, fast: bool = False):
        super().__init__()
        self.fast = fast
        self.dilation = block.dilation
        w1 = block.point_conv1.weight
        w1 = transposed_as_conv(w1, 1) if transposed else w1  # (hidden, 3*half, 1, 1)
        hidden = w1.shape[0]
        half = w1.shape[1] // 3
        w1 = w1.reshape(hidden, half, 3).unsqueeze(2)  # SFE + pointwise = (1, 3) conv
        self.w1, self.b1 = map(nn.Parameter, _fold_conv(w1, block.point_conv1.bias, block.point_bn1))
        self.a1 = nn.Parameter(_prelu(block.point_act))
        wd = block.depth_conv.weight
        wd = transposed_as_conv(wd, block.depth_conv.groups) if transposed else wd
        self.wd, self.bd = map(nn.Parameter, _fold_conv(wd, block.depth_conv.bias, block.depth_bn))
        self.ad = nn.Parameter(_prelu(block.depth_act))
        w2 = block.point_conv2.weight
        w2 = transposed_as_conv(w2, 1) if transposed else w2
        self.w2, self.b2 = map(nn.Parameter, _fold_conv(w2, block.point_conv2.bias, block.point_bn2))
        self.tra = StreamTRA(block.tra, n_bands)
        self.groups = hidden
        self.half = half
        self.n_bands = n_bands

    def forward(self, x: torch.Tensor, cache: torch.Tensor, tra_state: torch.Tensor):
        x1, x2 = torch.split(x, self.half, dim=1)
        h = _act(F.conv2d(x1, self.w1, self.b1, padding=(0, 1)), self.a1, self.fast)
        h = torch.cat([cache, h], dim=2)  # (B, hidden, 2d + 1, F)
        new_cache = h[:, :, 1:]
        h = F.conv2d(h, self.wd, self.bd, padding=(0, 1), dilation=(self.dilation, 1), groups=self.groups)
        h = _act(h, self.ad, self.fast)
        h = F.conv2d(h, self.w2, self.b2)
        h, tra_state = self.tra(h, tra_state)
        # channel shuffle [h0, x0, h1, x1, ...]: concat on the (length 1) time axis, then fold
        y = torch.cat([h, x2], dim=2).reshape(-1, 2 * self.half, 1, self.n_bands)
        return y, new_cache, tra_state


class StreamConvBlock(nn.Module):
    """A stateless (1, 5) stride-2 frequency conv block (BN folded)."""

    def __init__(self, block: ConvBlock, fast: bool = False):
        super().__init__()
        self.fast = fast
        conv = block.conv
        self.transposed = isinstance(conv, nn.ConvTranspose2d)
        fold = _fold_conv_transpose if self.transposed else (lambda c, bn: _fold_conv(c.weight, c.bias, bn))
        self.w, self.b = map(nn.Parameter, fold(conv, block.bn))
        self.stride, self.padding, self.groups = conv.stride, conv.padding, conv.groups
        if fast and not self.transposed and 1 < conv.groups < conv.in_channels:
            # onnxruntime's NCHWc convs take dense and depthwise convs, not 2 groups
            self.w = nn.Parameter(_ungrouped(self.w.detach(), conv.groups))
            self.groups = 1
        self.a = nn.Parameter(_prelu(block.act)) if isinstance(block.act, nn.PReLU) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            y = F.conv_transpose2d(x, self.w, self.b, self.stride, self.padding, groups=self.groups)
        else:
            y = F.conv2d(x, self.w, self.b, self.stride, self.padding, groups=self.groups)
        return _act(y, self.a, self.fast) if self.a is not None else torch.tanh(y)


class StreamDPGRNN(nn.Module):
    """DPGRNN for one frame in (B, F, C) layout; its state is the inter GRU hidden (B, F, C)."""

    def __init__(self, m: DPGRNN, fast: bool = False):
        super().__init__()
        self.fast = fast
        self.width, self.hidden = m.width, m.hidden
        self.intra = _block_diag_gru(m.intra_rnn)
        # the merged biGRU emits [g1 fwd, g2 fwd, g1 bwd, g2 bwd]; upstream's order is
        # [g1 fwd, g1 bwd, g2 fwd, g2 bwd]: permute the Linear's input columns to match
        q = m.hidden // 4
        order = torch.cat([torch.arange(q) + off for off in (0, 2 * q, q, 3 * q)])
        self.intra_w = nn.Parameter(m.intra_fc.weight.detach()[:, order].T.contiguous())
        self.intra_b = nn.Parameter(m.intra_fc.bias.detach().clone())
        self.intra_ln = m.intra_ln
        self.inter = _block_diag_gru(m.inter_rnn)
        self.inter_w = nn.Parameter(m.inter_fc.weight.detach().T.contiguous())
        self.inter_b = nn.Parameter(m.inter_fc.bias.detach().clone())
        self.inter_ln = m.inter_ln
        g = self.inter
        self.inter_wih = nn.Parameter(g.weight_ih_l0.detach().T.contiguous())
        self.inter_whh = nn.Parameter(g.weight_hh_l0.detach().T.contiguous())
        self.inter_bih = nn.Parameter(g.bias_ih_l0.detach().clone())
        self.inter_bhh = nn.Parameter(g.bias_hh_l0.detach().clone())

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x (B, F, C); state (B, F, H)
        intra, _ = self.intra(x.transpose(0, 1))  # bands are the sequence: (F, B, 2H')
        intra = torch.matmul(intra.transpose(0, 1), self.intra_w) + self.intra_b
        x = x + self.intra_ln(intra)
        if self.fast:
            # on (B*F, C) rows: 2-D MatMul + bias, which onnxruntime fuses into one Gemm
            inter = _gru_step(x.reshape(-1, self.hidden), state.reshape(-1, self.hidden), self.inter_wih,
                              self.inter_whh, self.inter_bih, self.inter_bhh, self.hidden)
            inter = inter.reshape(-1, self.width, self.hidden)
        else:
            inter, _ = self.inter(x.reshape(1, -1, self.hidden), state.reshape(1, -1, self.hidden))
            inter = inter.reshape(-1, self.width, self.hidden)
        new_state = inter
        inter = torch.matmul(inter, self.inter_w) + self.inter_b
        return x + self.inter_ln(inter), new_state


class StreamingGTCRN(nn.Module):
    """One STFT frame (B, F, 1, 2) + states -> enhanced frame + next states."""

    def __init__(self, model: GTCRN, fast: bool = True):
        super().__init__()
        model = model.eval()
        self.fast = fast
        cfg: GTCRNConfig = model.cfg
        self.cfg = cfg
        n_low, n_bands, n_freqs = cfg.n_low_bins, cfg.n_bands, cfg.n_freqs
        with torch.no_grad():
            bm = torch.zeros(n_freqs, n_bands)
            bm[:n_low, :n_low] = torch.eye(n_low)
            bm[n_low:, n_low:] = model.erb.erb_fc.weight.T
            self.analysis = nn.Parameter(bm)
            sfe_w = torch.zeros(9, 3, 1, 3)  # SFE as a conv: channel c*3 + k reads band f + k - 1
            for c in range(3):
                for k in range(3):
                    sfe_w[c * 3 + k, c, 0, k] = 1.0
            self.sfe_w = nn.Parameter(sfe_w)
            bs = torch.zeros(n_bands, n_freqs)
            bs[:n_low, :n_low] = torch.eye(n_low)
            bs[n_low:, n_low:] = model.erb.ierb_fc.weight.T
            self.synthesis = nn.Parameter(bs)
            self.rotate = nn.Parameter(torch.tensor([[0.0, 1.0], [-1.0, 0.0]]))  # [re, im] -> [-im, re]
            enc, dec = model.encoder.en_convs, model.decoder.de_convs
            self.enc_front = nn.ModuleList([StreamConvBlock(enc[0], fast), StreamConvBlock(enc[1], fast)])
            self.enc_gt = nn.ModuleList([StreamGTConv(b, False, cfg.width, fast) for b in enc[2:]])
            self.dp = nn.ModuleList([StreamDPGRNN(model.dpgrnn1, fast), StreamDPGRNN(model.dpgrnn2, fast)])
            self.dec_gt = nn.ModuleList([StreamGTConv(b, True, cfg.width, fast) for b in dec[:3]])
            self.dec_back = nn.ModuleList([StreamConvBlock(dec[3], fast), StreamConvBlock(dec[4], fast)])
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def state_specs(self) -> list[StateSpec]:
        c, w = self.cfg.channels, self.cfg.width
        specs = []
        for side, blocks in (("enc", self.enc_gt), ("dec", self.dec_gt)):
            for i, b in enumerate(blocks):
                specs.append(StateSpec(f"{side}_conv{i}", (-1, b.groups, 2 * b.dilation, w)))
        for side in ("enc", "dec"):
            for i in range(3):
                specs.append(StateSpec(f"{side}_tra{i}", (1, -1, c)))
        for i in range(2):
            specs.append(StateSpec(f"inter{i}", (-1, w, self.cfg.rnn_hidden)))
        return specs

    def initial_states(self, batch: int = 1) -> list[torch.Tensor]:
        return [torch.zeros([batch if d == -1 else d for d in s.shape]) for s in self.state_specs()]

    def forward(self, spec: torch.Tensor, *states: torch.Tensor):
        enc_conv, dec_conv = states[0:3], states[3:6]
        enc_tra, dec_tra = states[6:9], states[9:12]
        inter = states[12:14]
        new_states: dict[str, list[torch.Tensor]] = {"ec": [], "dc": [], "et": [], "dt": [], "in": []}

        ri = spec.permute(0, 3, 2, 1)  # (B, 2, 1, F)
        mag = torch.sqrt((ri * ri).sum(dim=1, keepdim=True) + 1e-12)
        feat = torch.matmul(torch.cat([mag, ri], dim=1), self.analysis)  # (B, 3, 1, bands)
        x = F.conv2d(feat, self.sfe_w, padding=(0, 1))  # (B, 9, 1, bands)
        skips = []
        for layer in self.enc_front:
            x = layer(x)
            skips.append(x)
        for layer, cache, tra in zip(self.enc_gt, enc_conv, enc_tra):
            x, cache, tra = layer(x, cache, tra)
            new_states["ec"].append(cache)
            new_states["et"].append(tra)
            skips.append(x)

        c, w, n_freqs = self.cfg.channels, self.cfg.width, self.cfg.n_freqs
        y = x.reshape(-1, c, w).transpose(1, 2)  # (B, F, C)
        for layer, st in zip(self.dp, inter):
            y, st = layer(y, st)
            new_states["in"].append(st)
        x = y.transpose(1, 2).reshape(-1, c, 1, w)

        for layer, cache, tra, skip in zip(self.dec_gt, dec_conv, dec_tra, reversed(skips[2:])):
            x, cache, tra = layer(x + skip, cache, tra)
            new_states["dc"].append(cache)
            new_states["dt"].append(tra)
        for layer, skip in zip(self.dec_back, reversed(skips[:2])):
            x = layer(x + skip)

        if self.fast:
            # (B, 1, 1, F) is (B, F, 1, 1) in memory: reshape, not transpose, and multiply
            # tensors of one shape (a broadcast over the length-2 axis is slow in onnxruntime)
            m_re, m_im = torch.split(torch.matmul(x, self.synthesis), 1, dim=1)  # (B, 1, 1, F) each
            m_re, m_im = m_re.reshape(-1, n_freqs, 1, 1), m_im.reshape(-1, n_freqs, 1, 1)
            s_re, s_im = torch.split(spec, 1, dim=3)
            enh = torch.cat([s_re * m_re - s_im * m_im, s_re * m_im + s_im * m_re], dim=3)
        else:
            mask = torch.matmul(x, self.synthesis).permute(0, 3, 2, 1)  # (B, F, 1, 2)
            m_re, m_im = torch.split(mask, 1, dim=3)
            enh = spec * m_re + torch.matmul(spec, self.rotate) * m_im
        return (enh, *new_states["ec"], *new_states["dc"], *new_states["et"], *new_states["dt"], *new_states["in"])

    @classmethod
    def from_model(cls, model: GTCRN, fast: bool = True) -> "StreamingGTCRN":
        return cls(model, fast)
