"""The numpy streaming STFT: window, frame placement, perfect reconstruction."""
from __future__ import annotations

import numpy as np
import pytest

from voipfilter.stft import (
    StreamingAnalysis,
    StreamingSynthesis,
    analysis_frames,
    overlap_add,
    sqrt_hann,
)

N_FFT, HOP = 512, 256


def test_window_is_periodic_sqrt_hann_and_overlap_adds_to_one():
    w = sqrt_hann(N_FFT).astype(np.float64)
    n = np.arange(N_FFT)
    np.testing.assert_allclose(w**2, 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT), atol=1e-7)
    assert w[0] == 0.0 and w.dtype == np.float64
    assert not np.allclose(w**2, np.hanning(N_FFT))  # not the symmetric Hann
    ola = (w**2).reshape(2, HOP).sum(axis=0)
    np.testing.assert_allclose(ola, 1.0, atol=1e-6)


def test_frame_k_covers_samples_hop_k_minus_1_to_hop_k_plus_1():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(HOP * 10).astype(np.float32)
    ana = StreamingAnalysis(N_FFT, HOP)
    padded = np.concatenate([np.zeros(HOP, np.float32), x])  # zeros before the start
    w = sqrt_hann(N_FFT)
    for k in range(10):
        spec = ana.analyze(x[k * HOP : (k + 1) * HOP])
        assert spec.shape == (1, N_FFT // 2 + 1, 1, 2) and spec.dtype == np.float32
        seg = padded[k * HOP : k * HOP + N_FFT]  # samples [hop(k-1), hop(k+1))
        ref = np.fft.rfft(seg.astype(np.float64) * w)
        np.testing.assert_allclose(spec[0, :, 0, 0], ref.real, atol=2e-5)
        np.testing.assert_allclose(spec[0, :, 0, 1], ref.imag, atol=2e-5)


def test_batch_frames_equal_streaming_frames():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(HOP * 20 + 100).astype(np.float32)
    frames = analysis_frames(x, N_FFT, HOP)
    assert frames.shape == (1, 257, 20, 2)
    ana = StreamingAnalysis(N_FFT, HOP)
    for k in range(20):
        np.testing.assert_allclose(frames[0, :, k, :], ana.analyze(x[k * HOP : (k + 1) * HOP])[0, :, 0, :], atol=1e-5)


def test_perfect_reconstruction_with_block_delay():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(HOP * 40).astype(np.float32)
    ana, syn = StreamingAnalysis(N_FFT, HOP), StreamingSynthesis(N_FFT, HOP)
    y = np.concatenate([syn.synthesize(ana.analyze(x[k * HOP : (k + 1) * HOP])) for k in range(40)])
    block_delay = N_FFT - HOP
    np.testing.assert_allclose(y[block_delay:], x[: len(x) - block_delay], atol=1e-5)
    np.testing.assert_allclose(y[:block_delay], 0.0, atol=1e-6)
    np.testing.assert_allclose(overlap_add(analysis_frames(x)), y, atol=1e-5)


def test_synthesis_accepts_complex_frames():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(HOP * 4).astype(np.float32)
    ana, syn_a, syn_b = StreamingAnalysis(), StreamingSynthesis(), StreamingSynthesis()
    for k in range(4):
        spec = ana.analyze(x[k * HOP : (k + 1) * HOP])
        z = spec[0, :, 0, 0] + 1j * spec[0, :, 0, 1]
        np.testing.assert_allclose(syn_a.synthesize(spec), syn_b.synthesize(z.astype(np.complex64)), atol=1e-6)


def test_reset_forgets_history():
    ana = StreamingAnalysis()
    ana.analyze(np.ones(HOP, np.float32))
    ana.reset()
    fresh = StreamingAnalysis()
    z = np.zeros(HOP, np.float32)
    np.testing.assert_array_equal(ana.analyze(z), fresh.analyze(z))


@pytest.mark.parametrize("n_fft,hop", [(320, 160), (512, 128)])
def test_other_configurations_reconstruct(n_fft, hop):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(hop * 30).astype(np.float32)
    ana, syn = StreamingAnalysis(n_fft, hop), StreamingSynthesis(n_fft, hop)
    y = np.concatenate([syn.synthesize(ana.analyze(x[k * hop : (k + 1) * hop])) for k in range(30)])
    d = n_fft - hop
    np.testing.assert_allclose(y[d + n_fft :], x[n_fft : len(x) - d], atol=1e-5)


def test_bad_configuration_raises():
    with pytest.raises(ValueError):
        StreamingAnalysis(512, 300)
    with pytest.raises(ValueError):
        StreamingSynthesis(511, 256)
