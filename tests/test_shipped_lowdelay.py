"""The low-delay model the package ships beside the default (gtcrn-voipfilter-ll): present,
self-describing, its delay exact and at most 18 ms at 48 kHz, it enhances, and the demo
server runs it by default."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from voipfilter import Denoiser, Model, shipped_models

LL = "gtcrn-voipfilter-ll"


def test_both_models_ship_with_their_cards():
    models = shipped_models()
    assert {"gtcrn-voipfilter", LL} <= set(models), models
    for name in ("gtcrn-voipfilter", LL):
        assert models[name].stat().st_size < 1024 * 1024
        assert models[name].with_suffix(".md").is_file(), f"{name}: the model card ships beside the model"
    model = Model.load(LL)
    assert model.model_name == LL
    assert (model.sample_rate, model.n_fft, model.hop) == (16000, 512, 128)
    assert model.windows.kind == "asymmetric_sqrt_hann" and model.windows.synthesis_length == 256
    card = model.model_card
    for fact in (LL, "speech/", "noise/", "PESQ-WB", "SIG", "licen", "15.98 ms"):
        assert fact in card, f"model card lacks {fact!r}"


def _gliding_voice(rate: int) -> np.ndarray:
    """1 s of a voiced, speech-like signal whose pitch glides (100 to 190 Hz with vibrato),
    so that its autocorrelation has one clear peak (a steady tone's repeats every period)."""
    t = np.arange(rate) / rate
    f0 = 100 + 80 * t + 10 * np.sin(2 * np.pi * 5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k * (k * 190 < 0.45 * rate) for k in range(1, 30))
    x *= 0.15 * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return x.astype(np.float32)


LL_DELAY = {8000: 159, 16000: 255, 24000: 383, 32000: 511, 44100: 837, 48000: 767}  # tests/test_windows.py


@pytest.mark.parametrize("rate", sorted(LL_DELAY))
def test_delay_is_the_framings_at_every_rate_and_at_most_18_ms_at_48k(rate):
    """delay_samples is the low-delay framing's (exact: proven with an identity model in
    tests/test_windows.py), and the trained model adds nothing to it: its output on voiced
    speech-like audio lines up with the input at that lag, to within the phase a learned
    complex mask may give it (a sample or two)."""
    den = Denoiser(model=LL, sample_rate=rate)
    d = den.delay_samples
    assert d == LL_DELAY[rate]
    assert 1000 * LL_DELAY[48000] / 48000 <= 18.0
    x = _gliding_voice(rate)
    y = np.concatenate([den.process(x[i:i + 480]) for i in range(0, len(x), 480)])
    lags = np.arange(d - 40, d + 41)
    a = x[rate // 4: rate // 4 + rate // 2]
    corr = [float(np.dot(a, y[rate // 4 + k: rate // 4 + k + len(a)])) for k in lags]
    assert abs(int(lags[int(np.argmax(corr))]) - d) <= max(1, rate // 16000)


def test_track_reports_the_low_delay_model():
    from aiortc.mediastreams import AudioStreamTrack

    from voipfilter import NoiseSuppressionTrack

    track = NoiseSuppressionTrack(AudioStreamTrack(), model=LL, offload=False)
    assert track.delay_ms == pytest.approx(767 / 48, abs=0.01) and track.delay_ms <= 18.0


def test_low_delay_model_enhances_a_dev_pair(data_dir: Path) -> None:
    """On VoiceBank-DEMAND dev pairs (never trained on), output PESQ-WB beats the input's."""
    from test_shipped_model import dev_pesq_gains

    gains = dev_pesq_gains(data_dir, model=LL)
    assert np.mean(gains) > 0.1, json.dumps(gains)


def test_demo_server_runs_the_low_delay_model_by_default():
    from voipfilter import server_config

    assert server_config.demo_model_name() == LL
    assert server_config.resolve_model(None) is Model.load(LL)
    assert server_config.resolve_model("gtcrn-voipfilter") is Model.load(None)  # the library's default
