"""Full-band output at 24-48 kHz (voipfilter/highband.py): the band split loses nothing, the
band above the model's follows the model's own suppression in its top bins, and bypass,
atten_lim_db, reset() and fail-open cover both bands. Synthetic models from
tests/modelfactory.py; the shipped model for one end-to-end check."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import require_module
from voipfilter import Denoiser, Model, ModelStepError
from voipfilter.highband import HighBandConfig

FULLBAND_RATES = [24000, 32000, 44100, 48000]
CHUNKS = [1, 7, 160, 480, 960, 4096]
N_FREQ = 257
HZ_PER_BIN = 16000 / 512


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    require_module("onnx", "train")
    return tmp_path_factory.mktemp("fullband-models")


def _masked(model_dir: Path, name: str, gains: np.ndarray) -> Model:
    from modelfactory import make_identity_model

    return Model.load(make_identity_model(model_dir / f"{name}.onnx", bin_gains=gains, model_name=name))


def _bins_from(hz: float) -> np.ndarray:
    return np.arange(N_FREQ) * HZ_PER_BIN >= hz


@pytest.fixture(scope="module")
def identity(model_dir) -> Model:
    from modelfactory import make_identity_model

    return Model.load(make_identity_model(model_dir / "identity.onnx"))


@pytest.fixture(scope="module")
def top_attenuated(model_dir) -> Model:
    """Passes 0-4 kHz, attenuates 4-8 kHz (its top bins) by 20 dB."""
    return _masked(model_dir, "top-minus-20db", np.where(_bins_from(4000), 0.1, 1.0))


@pytest.fixture(scope="module")
def top_passed(model_dir) -> Model:
    """Attenuates 0-4 kHz by 20 dB, passes its top bins (4-8 kHz)."""
    return _masked(model_dir, "top-passed", np.where(_bins_from(4000), 1.0, 0.1))


def run_chunked(den: Denoiser, x: np.ndarray, chunk: int) -> np.ndarray:
    return np.concatenate([den.process(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def noise(n: int, seed: int = 0, amp: float = 0.1) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def band_gain_db(x: np.ndarray, y: np.ndarray, delay: int, rate: int, lo: float, hi: float) -> float:
    """Output/input power ratio (dB) in [lo, hi) Hz, delay removed, first 100 ms skipped."""
    settle = rate // 10
    a, b = x[settle : len(x) - delay], y[delay + settle :]
    f = np.fft.rfftfreq(len(a), 1 / rate)
    band = (f >= lo) & (f < hi)
    pa = np.sum(np.abs(np.fft.rfft(a)[band]) ** 2)
    pb = np.sum(np.abs(np.fft.rfft(b)[band]) ** 2)
    return float(10 * np.log10(pb / pa))


# ---------------------------------------------------------------------------- reconstruction
@pytest.mark.parametrize("rate", [16000] + FULLBAND_RATES)
def test_identity_model_gives_the_input_delayed_by_delay_samples(identity, rate):
    """Gain 1 (the identity model's top bins are passed): the band split loses nothing."""
    x = noise(rate // 2, seed=rate, amp=0.3)
    for chunk in CHUNKS:
        den = Denoiser(identity, rate)
        assert den.fullband == (rate > 16000)
        y = run_chunked(den, x, chunk)
        d = den.delay_samples
        np.testing.assert_allclose(y[d:], x[:-d], atol=3e-7, rtol=0, err_msg=f"{rate} Hz, chunk {chunk}")
        np.testing.assert_allclose(y[:d], 0.0, atol=1e-7)


@pytest.mark.parametrize("rate", [8000, 16000] + FULLBAND_RATES)
def test_delay_does_not_depend_on_fullband(identity, rate):
    assert Denoiser(identity, rate).delay_samples == Denoiser(identity, rate, fullband=False).delay_samples


@pytest.mark.parametrize("rate", [8000, 16000])
def test_8_and_16_khz_are_unchanged(top_attenuated, rate):
    x = noise(rate, seed=3)
    a = Denoiser(top_attenuated, rate).process(x)
    b = Denoiser(top_attenuated, rate, fullband=False).process(x)
    np.testing.assert_array_equal(a, b)
    assert not Denoiser(top_attenuated, rate).fullband


def test_band_limited_output_has_nothing_above_the_model_band(identity):
    x = noise(48000, seed=4)
    den = Denoiser(identity, 48000, fullband=False)
    assert not den.fullband
    y = den.process(x)
    assert band_gain_db(x, y, den.delay_samples, 48000, 10000, 24000) < -40
    den = Denoiser(identity, 48000)
    y = den.process(x)
    assert abs(band_gain_db(x, y, den.delay_samples, 48000, 10000, 24000)) < 1e-3


@pytest.mark.parametrize("rate", [44100, 48000])
def test_chunk_independence_with_a_varying_gain_is_bit_exact(model_dir, rate):
    """A mask that falls across the top bins makes the gain follow the input's spectrum
    from hop to hop; however the stream is cut, the output is the same."""
    ramp = np.where(_bins_from(4000), np.linspace(1.0, 0.05, N_FREQ), 1.0)
    model = _masked(model_dir, "top-ramp", ramp)
    t = np.arange(rate) / rate
    x = noise(rate, seed=5) * (0.2 + np.sin(2 * np.pi * 3 * t) ** 2).astype(np.float32)
    x += (0.1 * np.sin(2 * np.pi * (4000 + 3000 * t) * t)).astype(np.float32)
    den = Denoiser(model, rate)
    ref = den.process(x)
    gains = set()
    for chunk in CHUNKS:
        den.reset()
        np.testing.assert_array_equal(run_chunked(den, x, chunk), ref, err_msg=f"chunk {chunk}")
        gains.add(round(den._highband.gain, 6))
    assert len(gains) == 1
    den.reset()
    first = den.process(x[: rate // 4])
    g1 = den._highband.gain
    den.process(x[rate // 4 :])
    assert g1 != den._highband.gain  # the gain does vary in this stream
    np.testing.assert_array_equal(first, ref[: rate // 4])


# ---------------------------------------------------------------------------- the high band follows the model
def high_and_low_db(model: Model, rate: int, seed: int) -> tuple[float, float]:
    """Gain (dB) of white noise through the Denoiser above 9 kHz and in 0.5-3.5 kHz."""
    x = noise(rate, seed=seed)
    den = Denoiser(model, rate)
    y = run_chunked(den, x, rate // 50)
    d = den.delay_samples
    return band_gain_db(x, y, d, rate, 9000, 0.475 * rate), band_gain_db(x, y, d, rate, 500, 3500)


@pytest.mark.parametrize("rate", FULLBAND_RATES)
def test_high_band_is_attenuated_like_the_top_bins(top_attenuated, rate):
    high, low = high_and_low_db(top_attenuated, rate, seed=6)
    assert high <= -15, f"high band only {high:.1f} dB down"
    assert abs(low) < 0.5  # low band passed


@pytest.mark.parametrize("rate", FULLBAND_RATES)
def test_high_band_is_kept_where_the_top_bins_are_passed(top_passed, rate):
    high, low = high_and_low_db(top_passed, rate, seed=7)
    assert abs(high) <= 1, f"high band changed by {high:.1f} dB"
    assert low < -19  # low band attenuated


def test_model_gain_above_one_does_not_boost_the_high_band(model_dir):
    loud = _masked(model_dir, "gain4", np.full(N_FREQ, 4.0))
    x = noise(48000, seed=8)
    den = Denoiser(loud, 48000)
    y = den.process(x)
    assert abs(band_gain_db(x, y, den.delay_samples, 48000, 9000, 22000)) < 0.1
    assert abs(band_gain_db(x, y, den.delay_samples, 48000, 500, 3500) - 20 * np.log10(4)) < 0.1


def test_shipped_model_suppresses_white_noise_above_8khz():
    """48 kHz white noise with nothing below 8 kHz comes out at least 10 dB quieter."""
    rate, n = 48000, 48000 * 3
    w = np.random.default_rng(9).standard_normal(n)
    spec = np.fft.rfft(w)
    spec[np.fft.rfftfreq(n, 1 / rate) < 8000] = 0
    hf = np.fft.irfft(spec, n)
    x = (0.05 * hf / hf.std()).astype(np.float32)
    den = Denoiser(None, rate)
    assert den.fullband
    y = run_chunked(den, x, 960)
    d, settle = den.delay_samples, rate // 2
    ratio = 10 * np.log10(np.mean(y[d + settle :] ** 2) / np.mean(x[settle : n - d] ** 2))
    assert ratio <= -10, f"only {ratio:.1f} dB quieter"


# ---------------------------------------------------------------------------- bypass, limit, reset, failures
def test_bypass_is_the_full_band_input(top_attenuated):
    x = noise(48000, seed=10)
    den = Denoiser(top_attenuated, 48000, enabled=False)
    y = run_chunked(den, x, 480)
    d = den.delay_samples
    np.testing.assert_array_equal(y[d:], x[:-d])


def test_atten_lim_db_limits_both_bands(model_dir):
    """A model that attenuates every bin by 20 dB, limited to 6 dB: y = x (0.1 (1 - a) + a)
    in the low and the high band alike."""
    quiet = _masked(model_dir, "all-minus-20db", np.full(N_FREQ, 0.1))
    x = noise(48000, seed=11)
    for lim in (None, 6.0, 12.0):
        den = Denoiser(quiet, 48000, atten_lim_db=lim)
        y = run_chunked(den, x, 960)
        a = 0.0 if lim is None else 10 ** (-lim / 20)
        want = 20 * np.log10(0.1 * (1 - a) + a)
        for lo, hi in ((500, 3500), (9000, 22000)):
            got = band_gain_db(x, y, den.delay_samples, 48000, lo, hi)
            assert abs(got - want) < 0.2, f"limit {lim}, {lo}-{hi} Hz: {got:.2f} dB, want {want:.2f}"


def test_reset_restarts_the_gain(top_attenuated):
    x = noise(48000, seed=12)
    den = Denoiser(top_attenuated, 48000)
    a = run_chunked(den, x, 960)
    assert den._highband.gain < 0.2
    den.reset()
    assert den._highband.gain == 1.0
    np.testing.assert_array_equal(run_chunked(den, x, 960), a)


def test_failing_model_passes_both_bands_through(model_dir):
    """Fails from hop 3 on: failed hops pass through unprocessed, the high band too."""
    from modelfactory import make_identity_model

    failing = Model.load(make_identity_model(model_dir / "fail-after-3.onnx", fail_after=3))
    den = Denoiser(failing, 48000)
    x = noise(24000, seed=13, amp=0.3)
    out, errors = [], 0
    for i in range(0, len(x), 960):
        try:
            out.append(den.process(x[i : i + 960]))
        except ModelStepError as exc:
            errors += 1
            out.append(exc.output)
    assert errors > 0
    y = np.concatenate(out)
    d = den.delay_samples
    np.testing.assert_allclose(y[d:], x[:-d], atol=3e-7)


def test_bad_fullband_argument(identity):
    with pytest.raises(ValueError, match="fullband"):
        Denoiser(identity, 48000, fullband="yes")
    with pytest.raises(ValueError, match="band_hz"):
        HighBandConfig((8000.0, 5000.0))
    with pytest.raises(ValueError, match="attack_ms"):
        HighBandConfig(attack_ms=-1.0)


# ---------------------------------------------------------------------------- the track and enhance get it
def test_enhance_is_full_band_by_default(top_attenuated):
    from voipfilter.enhance import enhance_array

    x = noise(48000, seed=14)
    y = enhance_array(x, 48000, model=top_attenuated)  # delay removed
    high = band_gain_db(x, y, 0, 48000, 9000, 22000)
    assert -25 < high <= -15, f"high band {high:.1f} dB"


async def test_track_is_full_band_by_default(top_attenuated):
    pytest.importorskip("aiortc")
    from trackutil import FakeSource, drain, frames_of, out_mono
    from voipfilter.track import NoiseSuppressionTrack

    x = noise(48000, seed=15, amp=0.2)
    track = NoiseSuppressionTrack(FakeSource(frames_of(x, 48000, 960)), model=top_attenuated)
    y = out_mono(await drain(track))
    d = round(track.delay_ms * 48)
    assert d == Denoiser(top_attenuated, 48000).delay_samples
    n = min(len(x), len(y))
    high = band_gain_db(x[:n], y[:n], d, 48000, 9000, 22000)
    assert -25 < high <= -15, f"high band {high:.1f} dB"  # band-limited would be < -40 dB
    assert abs(band_gain_db(x[:n], y[:n], d, 48000, 500, 3500)) < 0.5


@pytest.mark.parametrize("name", ["gtcrn-voipfilter", "gtcrn-voipfilter-ll"])
def test_native_rate_path_matches_the_resampled_one(name):
    """At 48 kHz the model runs on the stream's own STFT (no resamplers, a 2 ms shorter
    delay); its output is the resampled path's to within what the two paths' band edges
    differ by (dev/vbd48: benchmarks/fullband.py, docs/benchmarks.md)."""
    rate = 48000
    t = np.arange(rate) / rate
    rng = np.random.default_rng(3)
    voice = sum(np.sin(2 * np.pi * 140 * k * t + k) / k for k in range(1, 30)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    x = (0.1 * voice + 0.02 * rng.standard_normal(rate)).astype(np.float32)
    native = Denoiser(name, sample_rate=rate)
    resampled = Denoiser(name, sample_rate=rate, native_rate=False)
    assert type(native._core).__name__ == "NativeRateCore" and native._down is None
    assert resampled.delay_samples - native.delay_samples == 96  # 2 ms
    ya = np.concatenate([native.process(x[i : i + 960]) for i in range(0, rate, 960)])[native.delay_samples :]
    yb = np.concatenate([resampled.process(x[i : i + 960]) for i in range(0, rate, 960)])[resampled.delay_samples :]
    n = min(len(ya), len(yb))
    a, b = ya[rate // 4 : n], yb[rate // 4 : n]
    snr = 10 * np.log10(np.sum(b**2) / np.sum((a - b) ** 2))
    assert snr > 35.0, snr  # 50 dB when written
