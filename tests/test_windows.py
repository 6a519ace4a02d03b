"""Windows as data: the asymmetric low-delay pair, perfect reconstruction, exact delay."""
from __future__ import annotations

import json

import numpy as np
import pytest

from voipfilter import Denoiser, Model
from voipfilter.resample import SUPPORTED_RATES
from voipfilter.stft import (
    ASYMMETRIC,
    SYMMETRIC,
    StreamingAnalysis,
    StreamingSynthesis,
    analysis_frames,
    overlap_add,
    window_pair,
    window_pair_from_metadata,
)

K, M = 512, 128
FRAMINGS = {"symmetric": (SYMMETRIC, 512, 256), "low-delay": (ASYMMETRIC, 512, 128)}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from modelfactory import make_identity_model

    d = tmp_path_factory.mktemp("framings")
    return {
        name: make_identity_model(d / f"{name}.onnx", n_fft=n_fft, hop=hop, window=kind)
        for name, (kind, n_fft, hop) in FRAMINGS.items()
    }


def test_asymmetric_pair_follows_the_formulas():
    w = window_pair(ASYMMETRIC, K, M)
    a, s = w.analysis.astype(np.float64), w.synthesis.astype(np.float64)
    n = np.arange(K)
    # analysis: rising half of a periodic sqrt-Hann of length 2(K - M), then falls over M
    np.testing.assert_allclose(a[: K - M], np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * n[: K - M] / (2 * (K - M)))), atol=1e-7)
    assert a[K - M] == pytest.approx(1.0) and a[-1] < 0.03
    # synthesis: zero before K - 2M; a*s is a Hann of length 2M at the end of the frame
    assert not s[: K - 2 * M].any()
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(2 * M) / (2 * M))
    np.testing.assert_allclose((a * s)[K - 2 * M :], hann, atol=1e-6)
    np.testing.assert_allclose((a * s).reshape(K // M, M).sum(axis=0), 1.0, atol=1e-6)
    assert (w.synthesis_length, w.block_delay, w.delay_samples) == (256, 128, 255)


def test_symmetric_pair_is_the_old_window_bit_for_bit():
    from voipfilter.stft import sqrt_hann

    w = window_pair()
    np.testing.assert_array_equal(w.analysis, sqrt_hann(512))
    np.testing.assert_array_equal(w.synthesis, sqrt_hann(512))
    assert (w.synthesis_length, w.block_delay, w.delay_samples) == (512, 256, 511)


@pytest.mark.parametrize("framing", FRAMINGS)
def test_streaming_stft_reconstructs_with_block_delay(framing):
    kind, n_fft, hop = FRAMINGS[framing]
    w = window_pair(kind, n_fft, hop)
    x = np.random.default_rng(0).standard_normal(hop * 60).astype(np.float32)
    ana, syn = StreamingAnalysis(windows=w), StreamingSynthesis(windows=w)
    y = np.concatenate([syn.synthesize(ana.analyze(x[k * hop : (k + 1) * hop])) for k in range(60)])
    d = w.block_delay
    np.testing.assert_allclose(y[d:], x[:-d], atol=2e-6)
    np.testing.assert_array_equal(overlap_add(analysis_frames(x, windows=w), windows=w), y)


def test_oldest_hop_is_the_input_delayed_by_the_block_delay():
    w = window_pair(ASYMMETRIC, K, M)
    x = np.arange(M * 8, dtype=np.float32)
    ana = StreamingAnalysis(windows=w)
    for k in range(8):
        ana.analyze(x[k * M : (k + 1) * M])
        lo = (k + 1) * M - M - w.block_delay  # content of output hop k
        want = np.concatenate([np.zeros(max(0, -lo), np.float32), x[max(0, lo) : lo + M]])
        np.testing.assert_array_equal(ana.oldest_hop(), want)


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("chunk", [1, 7, 127, 128, 160, 256, 333, 960])
def test_identity_model_output_is_input_delayed_exactly(models, framing, chunk):
    """Perfect reconstruction through the whole Denoiser at the model rate, any chunk size."""
    den = Denoiser(models[framing], 16000)
    d = den.delay_samples
    assert d == window_pair(*FRAMINGS[framing]).delay_samples
    x = (0.3 * np.random.default_rng(chunk).standard_normal(6000)).astype(np.float32)
    y = np.concatenate([den.process(x[i : i + chunk]) for i in range(0, len(x), chunk)])
    assert len(y) == len(x)
    np.testing.assert_allclose(y[d:], x[:-d], atol=1e-6)
    np.testing.assert_allclose(y[:d], 0.0, atol=1e-7)


EXPECTED_DELAY = {  # samples at each rate: symmetric 512/256, asymmetric 512/256 at hop 128
    # 24, 32 and 48 kHz run the model on the stream's own STFT: the window's delay alone
    "symmetric": {8000: 287, 16000: 511, 24000: 767, 32000: 1023, 44100: 1498, 48000: 1535},
    "low-delay": {8000: 159, 16000: 255, 24000: 383, 32000: 511, 44100: 837, 48000: 767},
}
EXPECTED_DELAY_RESAMPLED = {  # native_rate=False: through the resamplers, as at 8 and 44.1 kHz
    "symmetric": {24000: 815, 32000: 1087, 48000: 1631},
    "low-delay": {24000: 431, 32000: 575, 48000: 863},
}
PATHS = [(rate, True) for rate in SUPPORTED_RATES] + [(rate, False) for rate in (24000, 32000, 48000)]


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("rate,native", PATHS)
def test_delay_is_exact_at_every_rate(models, framing, rate, native):
    """delay_samples is where the input comes out: full-band identity model, odd chunks."""
    den = Denoiser(models[framing], rate, native_rate=native)
    d = den.delay_samples
    assert d == (EXPECTED_DELAY if native else EXPECTED_DELAY_RESAMPLED)[framing][rate]
    x = (0.1 * np.random.default_rng(rate).standard_normal(rate // 2)).astype(np.float32)
    y = np.concatenate([den.process(c) for c in np.array_split(x, 23)])
    if rate >= 16000:
        np.testing.assert_allclose(y[d:], x[:-d], atol=1e-6)
    else:  # 8 kHz: up to the resamplers' band limit; the delay is where correlation peaks
        lags = np.arange(d - 5, d + 6)
        corr = [float(np.dot(y[lag:], x[: len(x) - lag])) for lag in lags]
        assert lags[int(np.argmax(corr))] == d


def test_low_delay_at_48k_is_at_most_18_ms(models):
    den = Denoiser(models["low-delay"], 48000)
    assert 1000 * den.delay_samples / 48000 <= 18.0
    assert 1000 * Denoiser(models["symmetric"], 48000).delay_samples / 48000 > 31.9


def test_track_reports_the_framing_delay(models):
    from aiortc.mediastreams import AudioStreamTrack

    from voipfilter.track import NoiseSuppressionTrack

    for framing in FRAMINGS:
        track = NoiseSuppressionTrack(AudioStreamTrack(), model=models[framing])
        assert track.delay_ms == pytest.approx(1000 * EXPECTED_DELAY[framing][48000] / 48000)


def test_metadata_carries_window_kind_and_parameters(models):
    m = Model(models["low-delay"])
    assert m.metadata["window"] == ASYMMETRIC
    assert json.loads(m.metadata["window_params"]) == {"analysis_length": 512, "synthesis_length": 256}
    assert m.windows.kind == ASYMMETRIC and m.delay_samples == 255
    old = Model(models["symmetric"])
    assert old.windows.kind == SYMMETRIC and old.delay_samples == 511


BASE = {
    "voipfilter.format": "1", "sample_rate": "16000", "n_fft": "512", "hop": "128",
    "state_names": '["h"]', "state_shapes": "[[-1, 4]]", "model_name": "x",
}


@pytest.mark.parametrize(
    "window,match",
    [
        ({"window": "kaiser"}, "'kaiser' is not a window kind"),
        ({"window": ASYMMETRIC}, "needs window_params"),
        ({"window": ASYMMETRIC, "window_params": '{"analysis_length": 512, "synthesis_length": 128}'}, "not one this version knows"),
        ({"window": ASYMMETRIC, "window_params": "{"}, "not JSON"),
    ],
)
def test_model_refuses_windows_it_does_not_know(tmp_path, window, match):
    from modelfactory import write_model_with_metadata

    path = write_model_with_metadata(tmp_path / "w.onnx", {**BASE, **window}, hop=128)
    with pytest.raises(ValueError, match=match) as info:
        Model(path)
    msg = str(info.value)
    assert "w.onnx" in msg and SYMMETRIC in msg and ASYMMETRIC in msg


def test_window_pair_errors_name_the_known_kinds():
    with pytest.raises(ValueError, match=SYMMETRIC):
        window_pair("hamming")
    with pytest.raises(ValueError, match="n_fft >= 3"):
        window_pair(ASYMMETRIC, 512, 256)
    with pytest.raises(ValueError, match="integers"):
        window_pair_from_metadata({"window": SYMMETRIC, "n_fft": "x", "hop": "1"})
