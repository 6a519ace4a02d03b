"""AnyRateDenoiser (voipfilter/anyrate.py): the streaming filter at rates Denoiser does not
take, with the synthetic identity model (tests/modelfactory.py): exact delay, chunk
independence, int16, failing model steps, and use as a track's ``denoiser_factory``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import require_module
from voipfilter.anyrate import AnyRateDenoiser, check_any_rate, denoiser_for
from voipfilter.denoiser import Denoiser, ModelStepError
from voipfilter.resample import StreamingResampler


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    require_module("onnx", "train")
    from modelfactory import make_identity_model

    d = tmp_path_factory.mktemp("anyrate-models")
    return {"identity": make_identity_model(d / "identity.onnx"),
            "fail_after": make_identity_model(d / "fail_after.onnx", fail_after=20)}


def band_limited(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Noise with no content above 4 kHz (made at 8 kHz, resampled up)."""
    base = (0.1 * np.random.default_rng(seed).standard_normal(int(8000 * seconds))).astype(np.float32)
    y = StreamingResampler(8000, rate).process(np.concatenate([base, np.zeros(400, np.float32)]))
    return y[: int(rate * seconds)]


def run(den, x: np.ndarray, chunks) -> np.ndarray:
    out, i, k = [], 0, 0
    while i < len(x):
        n = chunks[k % len(chunks)]
        out.append(den.process(x[i : i + n]))
        i, k = i + n, k + 1
    return np.concatenate(out)


@pytest.mark.parametrize("rate, delay", [(11025, 441), (22050, 882), (12000, 432), (96000, 3357)])
def test_delay_is_exact(models, rate, delay):
    den = AnyRateDenoiser(models["identity"], rate)
    assert den.delay_samples == delay and den.inner_rate == 16000
    x = band_limited(rate, 1.0)
    y = run(den, x, [333])
    settled = slice(rate // 10, None)
    errs = {lag: np.abs(y[lag:] - x[: len(x) - lag])[settled].max() for lag in (delay - 1, delay, delay + 1)}
    assert errs[delay] < 1e-4 and errs[delay - 1] > 0.01 and errs[delay + 1] > 0.01, errs


def test_output_does_not_depend_on_chunking(models):
    x = band_limited(22050, 1.0, seed=1)
    ref = run(AnyRateDenoiser(models["identity"], 22050), x, [len(x)])
    for chunks in ([1], [7], [441], [4096], [1, 300, 17, 2000]):
        np.testing.assert_array_equal(run(AnyRateDenoiser(models["identity"], 22050), x, chunks), ref)


def test_int16_in_int16_out_and_reset_starts_over(models):
    den = AnyRateDenoiser(models["identity"], 11025)
    x = np.rint(band_limited(11025, 0.5, seed=2) * 32767).astype(np.int16)
    y = run(den, x, [220])
    assert y.dtype == np.int16 and len(y) == len(x)
    den.reset()
    np.testing.assert_array_equal(run(den, x, [220]), y)


def test_a_failing_model_step_keeps_the_audio_and_reports(models):
    den = AnyRateDenoiser(models["fail_after"], 22050)
    x = band_limited(22050, 1.0, seed=3)
    out, failures = [], 0
    for i in range(0, len(x), 441):
        try:
            out.append(den.process(x[i : i + 441]))
        except ModelStepError as exc:  # failed hops pass through: the output is still there
            failures += 1
            out.append(exc.output)
    y = np.concatenate(out)
    d = den.delay_samples
    assert failures > 0 and den.model_failures > 0
    assert np.abs(y[d:] - x[:-d])[2205:].max() < 1e-4


def test_denoiser_for_and_the_rate_check(models):
    assert type(denoiser_for(models["identity"], 16000)) is Denoiser
    assert type(denoiser_for(models["identity"], 22050)) is AnyRateDenoiser
    for bad in (0, 999, 384001, 22050.5, "22050", None):
        with pytest.raises(ValueError, match="unsupported sample rate"):
            check_any_rate(bad)


async def test_a_track_filters_any_rate_with_it_as_factory(models):
    """The track passes rates Denoiser does not take through unfiltered; with the factory
    docs/track.md shows it filters them, the delay exact."""
    pytest.importorskip("aiortc")
    from trackutil import FakeSource, drain, frames_of, out_mono
    from voipfilter.track import NoiseSuppressionTrack

    rate = 22050
    x = band_limited(rate, 1.0, seed=4)
    track = NoiseSuppressionTrack(FakeSource(frames_of(x, rate, 441)),
                                  denoiser_factory=lambda r: denoiser_for(models["identity"], r))
    y = out_mono(await drain(track))
    st = track.stats()
    d = track.delay_samples
    assert d == 882 and st["mode"] == "filtering" and st["errors"] == 0, st
    assert np.abs(y[d:] - x[: len(y) - d])[rate // 2 :].max() < 2e-3  # s16 output frames
