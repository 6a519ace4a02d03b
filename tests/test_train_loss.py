"""Hybrid loss: exactly 0 for a perfect output, frame t against frame t, misalignment costs."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from voipfilter.nn.config import GTCRNConfig  # noqa: E402
from voipfilter.nn.stft import istft, stft  # noqa: E402
from voipfilter.train.loss import HybridLoss, si_snr_db  # noqa: E402

CFG = GTCRNConfig()
LOW_DELAY = GTCRNConfig(hop=128, window="asymmetric_sqrt_hann")
SR = 16000


def speechlike(n: int, seed: int = 0, level: float = 0.1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    f0 = rng.uniform(110, 200)
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 15))
    env = np.clip(np.sin(2 * np.pi * 3 * t), 0, None) ** 2 + 0.05
    x = x * env + 0.01 * rng.standard_normal(n)
    return torch.from_numpy(level * x / np.abs(x).max()).float()


@pytest.mark.parametrize("cfg", [CFG, LOW_DELAY], ids=["sqrt-hann-256", "low-delay-128"])
@pytest.mark.parametrize("level", [0.001, 0.05, 0.5])
def test_perfect_output_gives_exactly_zero(level, cfg):
    x = torch.stack([speechlike(24000, s, level) for s in range(3)])
    spec = stft(x, cfg)
    loss = HybridLoss(cfg)
    parts = loss.parts(spec.clone(), spec, x.shape[-1])
    assert parts.total.item() == 0.0
    assert parts.complex.item() == 0.0 and parts.mag.item() == 0.0


@pytest.mark.parametrize("cfg", [CFG, LOW_DELAY], ids=["sqrt-hann-256", "low-delay-128"])
def test_loss_compares_frame_t_with_frame_t(cfg):
    """A target one sample or one hop late/early makes an otherwise perfect output cost more."""
    n = 32000
    x = speechlike(n + 600, 3)
    clean = x[300 : 300 + n][None]
    enh = stft(clean, cfg)  # perfect for the aligned target
    loss = HybridLoss(cfg)
    base = loss(enh, stft(clean, cfg), n).item()
    assert base == 0.0
    for shift in (1, -1, cfg.hop, -cfg.hop):
        shifted = x[300 + shift : 300 + shift + n][None]
        value = loss(enh, stft(shifted, cfg), n).item()
        assert value > 0.5, (shift, value)  # clearly worse than aligned
    # a one-frame shift of the enhanced spectrum itself (predicting t from t-1) also costs
    lagged = torch.cat([torch.zeros_like(enh[:, :, :1]), enh[:, :, :-1]], dim=2)
    assert loss(lagged, stft(clean, cfg), n).item() > 1.0


def test_every_frame_counts_including_the_first():
    n = 16000
    clean = speechlike(n, 4)[None]
    spec = stft(clean, CFG)
    loss = HybridLoss(CFG)
    for t in (0, spec.shape[2] // 2, spec.shape[2] - 1):
        damaged = spec.clone()
        damaged[:, :, t] *= 0.5
        assert loss(damaged, spec, n).item() > 0.0, t


def test_loss_matches_the_facts_formula():
    torch.manual_seed(0)
    n = 16000
    clean = speechlike(n, 5)[None]
    noisy = clean + 0.05 * torch.randn_like(clean)
    S, E = stft(clean, CFG), stft(noisy, CFG)
    c = 0.3
    mag = lambda z: torch.sqrt(z[..., 0] ** 2 + z[..., 1] ** 2 + 1e-12)  # noqa: E731
    ce = E * (mag(E) ** (c - 1))[..., None]
    cs = S * (mag(S) ** (c - 1))[..., None]
    ref = 30 * (torch.mean((ce[..., 0] - cs[..., 0]) ** 2) + torch.mean((ce[..., 1] - cs[..., 1]) ** 2))
    ref = ref + 70 * torch.mean((mag(E) ** c - mag(S) ** c) ** 2)
    snr = si_snr_db(istft(E, CFG, n), istft(S, CFG, n))
    ref = ref + (60.0 - snr.mean()) / 10.0
    assert torch.allclose(HybridLoss(CFG)(E, S, n), ref, rtol=1e-5)


def test_si_snr_gradient_is_that_of_minus_si_snr_over_10():
    n = 8000
    clean = speechlike(n, 6)[None]
    est = (clean + 0.1 * torch.randn_like(clean)).requires_grad_(True)
    S = stft(clean, CFG)
    E = stft(est, CFG)
    loss = HybridLoss(CFG, w_complex=0.0, w_mag=0.0)
    loss(E, S, n).backward()
    g1 = est.grad.clone()
    est.grad = None
    E = stft(est, CFG)
    (-si_snr_db(istft(E, CFG, n), istft(S, CFG, n)).mean() / 10).backward()
    assert torch.allclose(g1, est.grad, rtol=1e-4, atol=1e-7)


def test_shape_mismatch_refused():
    x = speechlike(16000)[None]
    S = stft(x, CFG)
    with pytest.raises(ValueError):
        HybridLoss(CFG)(S[:, :, :-1], S, 16000)


def test_heard_spectra_score_the_synthesised_output_frame_t_against_frame_t():
    """``loss.spectra: standard``: the spectral terms are the 512/256 STFT's of the played
    waveforms. A perfect output is still exactly 0; a one-hop shift of the target raises
    it; what the low-delay synthesis window never plays costs nothing."""
    from voipfilter.train.config import LossConfig
    from voipfilter.train.loss import hybrid_loss, loss_spectra

    x = torch.stack([speechlike(24000, s, 0.1) for s in range(2)])
    spec = stft(x, LOW_DELAY)
    heard = hybrid_loss(LOW_DELAY, LossConfig(spectra="standard"))
    assert heard.spectra == CFG and hybrid_loss(LOW_DELAY, LossConfig()).spectra is None
    assert heard(spec.clone(), spec, x.shape[-1]).item() == 0.0
    late = stft(torch.nn.functional.pad(x, (LOW_DELAY.hop, 0))[:, : x.shape[-1]], LOW_DELAY)
    assert heard(spec, late, x.shape[-1]).item() > 1.0
    # equal to the default framing's loss on the waveforms each spectrum plays
    enh = spec * (1.0 + 0.2 * torch.randn_like(spec))
    est, ref = istft(enh, LOW_DELAY, x.shape[-1]), istft(spec, LOW_DELAY, x.shape[-1])
    want = HybridLoss(CFG).parts(stft(est, CFG), stft(ref, CFG), x.shape[-1])
    got = heard.parts(enh, spec, x.shape[-1])
    assert got.total.item() == pytest.approx(want.total.item(), rel=1e-5)
    # a change the synthesis window discards: the frame's first 256 samples
    frames = torch.fft.irfft(torch.view_as_complex(spec.contiguous()), n=512, dim=1)
    frames[:, :256] += 0.05 * torch.randn_like(frames[:, :256])
    hidden = torch.view_as_real(torch.fft.rfft(frames, dim=1))
    assert heard(hidden, spec, x.shape[-1]).item() == pytest.approx(0.0, abs=1e-6)
    assert HybridLoss(LOW_DELAY)(hidden, spec, x.shape[-1]).item() > 0.01  # the model's own spectra count it
    with pytest.raises(ValueError, match="loss.spectra"):
        loss_spectra("heard")
