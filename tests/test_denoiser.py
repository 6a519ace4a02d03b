"""Model loading and the Denoiser, proven with synthetic identity models (tests/modelfactory.py)."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import require_module
from voipfilter import Denoiser, Model, ModelNotFoundError, ModelStepError
from voipfilter.model import default_model_path
from voipfilter.resample import SUPPORTED_RATES

CHUNKS = [1, 7, 160, 480, 960, 4096]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    require_module("onnx", "train")
    return tmp_path_factory.mktemp("identity-models")


@pytest.fixture(scope="session")
def identity_path(model_dir) -> Path:
    from modelfactory import make_identity_model

    return make_identity_model(model_dir / "identity.onnx")


@pytest.fixture(scope="session")
def identity(identity_path) -> Model:
    return Model.load(identity_path)


@pytest.fixture(scope="session")
def loud_identity(model_dir) -> Model:
    from modelfactory import make_identity_model

    return Model.load(make_identity_model(model_dir / "gain4.onnx", gain=4.0))


def tones(n: int, rate: int, freqs=(300.0, 1234.0, 3100.0, 5000.0), amp=0.2) -> np.ndarray:
    """Band-limited test signal (below the resamplers' pass band edge at every rate)."""
    t = np.arange(n) / rate
    freqs = [f for f in freqs if f < 0.4 * min(rate, 16000)]
    return (amp * sum(np.sin(2 * np.pi * f * t + i) for i, f in enumerate(freqs))).astype(np.float32)


def run_chunked(den: Denoiser, x: np.ndarray, chunk: int) -> np.ndarray:
    return np.concatenate([den.process(x[i : i + chunk]) for i in range(0, len(x), chunk)])


# ---------------------------------------------------------------------------- Model
def test_model_metadata_and_state(identity):
    assert (identity.sample_rate, identity.n_fft, identity.hop) == (16000, 512, 256)
    assert identity.state_names == ["h"] and identity.state_shapes == [(1, 4)]
    assert identity.model_name == "identity" and "Synthetic" in identity.model_card
    state = identity.initial_state(batch=3)
    assert state["h"].shape == (3, 4) and not state["h"].any()
    spec = np.ones((3, 257, 1, 2), np.float32)
    enh, state = identity.step(spec, state)
    enh, state = identity.step(spec, state)
    np.testing.assert_array_equal(enh, spec)
    np.testing.assert_array_equal(state["h"], 2.0)


def test_model_load_is_cached_per_path(identity_path):
    a = Model.load(identity_path)
    b = Model.load(str(identity_path))
    assert a is b
    assert Model.load(a) is a
    results = []
    threads = [threading.Thread(target=lambda: results.append(Model.load(identity_path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(m is a for m in results)


GOOD_METADATA = {
    "voipfilter.format": "1", "sample_rate": "16000", "n_fft": "512", "hop": "256",
    "window": "sqrt_hann_periodic", "state_names": '["h"]', "state_shapes": "[[-1, 4]]",
    "model_name": "x",
}


@pytest.mark.parametrize(
    "metadata,match",
    [
        (None, "metadata lacks"),
        ({"voipfilter.format": "1"}, "metadata lacks"),
        ({**GOOD_METADATA, "voipfilter.format": "2"}, "voipfilter.format"),
        ({**GOOD_METADATA, "sample_rate": "16k"}, "integers"),
        ({**GOOD_METADATA, "window": "hann"}, "window"),
        ({**GOOD_METADATA, "state_names": '["g"]'}, "inputs are"),
        ({**GOOD_METADATA, "state_shapes": "[[-1, 5]]"}, "metadata says"),
        ({**GOOD_METADATA, "state_names": "h"}, "JSON"),
    ],
)
def test_bad_metadata_raises_value_error_naming_the_file(model_dir, metadata, match):
    from modelfactory import write_model_with_metadata

    path = write_model_with_metadata(model_dir / f"bad-{abs(hash(str(metadata)))}.onnx", metadata)
    with pytest.raises(ValueError, match=match) as info:
        Model(path)
    assert str(path.name) in str(info.value)


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.onnx"):
        Model(path)


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="nope.onnx"):
        Model.load(tmp_path / "nope.onnx")
    with pytest.raises(FileNotFoundError):
        Denoiser(tmp_path / "nope.onnx")


def test_default_model_path_and_how_to_get_one(monkeypatch, tmp_path):
    path = default_model_path()
    assert path.name == "gtcrn-voipfilter.onnx" and path.parent.name == "models"
    # without the shipped file, the error says how to get a model (tests/test_shipped_model.py
    # checks the shipped one)
    from voipfilter import model as model_mod

    monkeypatch.setattr(model_mod, "default_model_path", lambda: tmp_path / "gtcrn-voipfilter.onnx")
    with pytest.raises(ModelNotFoundError, match="voipfilter export --checkpoint"):
        Denoiser()
    with pytest.raises(ModelNotFoundError, match="model="):
        Model.load(None)


# ---------------------------------------------------------------------------- delay and chunking
def test_identity_at_16k_is_input_delayed_by_exactly_delay_samples(identity):
    den = Denoiser(identity, 16000)
    assert den.delay_samples == 511
    x = (0.3 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
    y = run_chunked(den, x, 480)
    assert y.shape == x.shape and y.dtype == np.float32
    d = den.delay_samples
    np.testing.assert_allclose(y[d:], x[:-d], atol=2e-6)
    np.testing.assert_allclose(y[:d], 0.0, atol=1e-7)


@pytest.mark.parametrize("rate", [r for r in SUPPORTED_RATES if r != 16000])
def test_identity_at_other_rates_lags_by_delay_samples(identity, rate):
    den = Denoiser(identity, rate)
    x = tones(rate, rate)
    y = run_chunked(den, x, rate // 50)
    d = den.delay_samples
    xc = np.correlate(y, x[: len(x) - d], mode="valid")  # lags 0 .. d
    assert int(np.argmax(xc)) == d
    # Band-limited content comes through the down → model → up chain intact, at exactly d.
    settle = rate // 20
    assert np.abs(y[d + settle :] - x[settle : len(x) - d]).max() < 1e-3


@pytest.mark.parametrize("rate", [16000, 48000, 44100, 8000])
def test_chunk_independence_is_bit_exact(identity, rate):
    x = (0.3 * np.random.default_rng(rate).standard_normal(rate)).astype(np.float32)
    den = Denoiser(identity, rate)
    ref = run_chunked(den, x, len(x))
    for chunk in CHUNKS:
        den.reset()
        np.testing.assert_array_equal(run_chunked(den, x, chunk), ref, err_msg=f"chunk {chunk}")
    rng = np.random.default_rng(1)
    den.reset()
    out, pos = [], 0
    while pos < len(x):
        n = int(rng.integers(0, 1500))
        out.append(den.process(x[pos : pos + n]))
        pos += n
    np.testing.assert_array_equal(np.concatenate(out), ref)


def test_state_is_carried_from_hop_to_hop(identity):
    den = Denoiser(identity, 16000)
    den.process(np.zeros(256 * 5 + 10, np.float32))
    np.testing.assert_array_equal(den._core._states[0], 5.0)
    den.reset()
    np.testing.assert_array_equal(den._core._states[0], 0.0)


# ---------------------------------------------------------------------------- lengths and dtypes
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_zero_and_one_sample_inputs(identity, dtype):
    den = Denoiser(identity, 48000)
    y = den.process(np.zeros(0, dtype))
    assert y.shape == (0,) and y.dtype == dtype
    y = den.process(np.ones(1, dtype))
    assert y.shape == (1,) and y.dtype == dtype


def test_int16_round_trip_is_delayed_input(identity):
    den = Denoiser(identity, 16000)
    x = np.random.default_rng(2).integers(-20000, 20000, 8000).astype(np.int16)
    y = run_chunked(den, x, 160)
    assert y.dtype == np.int16 and y.shape == x.shape
    d = den.delay_samples
    assert np.abs(y[d:].astype(int) - x[:-d].astype(int)).max() <= 1


def test_int16_output_is_clipped_not_wrapped(loud_identity):
    den = Denoiser(loud_identity, 16000)
    n = 16000
    x = (32767 * np.sin(2 * np.pi * 440 * np.arange(n) / 16000)).astype(np.int16)
    y = den.process(x)
    d = den.delay_samples
    expected = np.clip(4.0 * x[:-d].astype(np.float64), -32768, 32767)
    assert y.max() == 32767 and y.min() == -32768
    assert np.abs(y[d:].astype(np.float64) - expected).max() <= 4
    # Wrapping would flip signs at the peaks.
    assert np.all(np.sign(y[d:][np.abs(x[:-d]) > 16000]) == np.sign(x[:-d][np.abs(x[:-d]) > 16000]))


def test_float_output_is_not_clipped(loud_identity):
    den = Denoiser(loud_identity, 16000)
    y = den.process(np.full(2048, 0.5, np.float32))
    assert y.max() > 1.5


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.array([0.0, np.nan], np.float32), "NaN"),
        (np.array([np.inf, 0.0], np.float32), "NaN or infinite"),
        (np.zeros((2, 480), np.float32), "1-D"),
        (np.zeros((480, 2), np.float32), "1-D"),
        (np.zeros((480, 1), np.float32), "1-D"),
        (np.zeros(480, np.float64), "float32 or int16"),
        (np.zeros(480, np.int32), "float32 or int16"),
        (np.zeros(480, np.uint8), "float32 or int16"),
        ([0.0] * 10, "numpy array"),
    ],
)
def test_bad_input_raises_value_error_and_leaves_stream_intact(identity, bad, match):
    den = Denoiser(identity, 16000)
    x = (0.3 * np.random.default_rng(3).standard_normal(4000)).astype(np.float32)
    y1 = den.process(x[:1000])
    with pytest.raises(ValueError, match=match):
        den.process(bad)
    y2 = den.process(x[1000:])
    ref = Denoiser(identity, 16000).process(x)
    np.testing.assert_array_equal(np.concatenate([y1, y2]), ref)


@pytest.mark.parametrize("rate", [0, 11025, 22050, 96000, 44100.5])
def test_unsupported_rate(identity, rate):
    with pytest.raises(ValueError, match="unsupported sample rate"):
        Denoiser(identity, rate)


# ---------------------------------------------------------------------------- bypass and mixing
@pytest.mark.parametrize("rate", [16000, 48000])
def test_bypass_is_the_delay_aligned_input(identity, rate):
    den = Denoiser(identity, rate, enabled=False)
    x = (0.3 * np.random.default_rng(4).standard_normal(rate // 2)).astype(np.float32)
    y = run_chunked(den, x, 333)
    d = den.delay_samples
    np.testing.assert_array_equal(y[d:], x[:-d])
    np.testing.assert_array_equal(y[:d], 0.0)


@pytest.mark.parametrize("rate", [16000, 48000])
def test_toggling_enabled_keeps_alignment(identity, rate):
    x = tones(2 * rate, rate)
    den = Denoiser(identity, rate)
    d = den.delay_samples
    frame = rate // 50
    out = []
    for i, start in enumerate(range(0, len(x), frame)):
        if i % 10 == 0:
            den.enabled = not den.enabled if i else True
        out.append(den.process(x[start : start + frame]))
    y = np.concatenate(out)
    settle = rate // 20
    # Wet (identity) and dry are the same signal at the same delay: toggling never shifts it.
    assert np.abs(y[d + settle :] - x[settle : len(x) - d]).max() < 1e-3


def test_atten_lim_db_mixes_the_delayed_input(loud_identity):
    """With a gain-4 'model', y = 4x(1-a) + x a, a = 10^(-lim/20), at the same delay."""
    x = (0.1 * np.random.default_rng(5).standard_normal(8000)).astype(np.float32)
    for lim in (0.0, 6.0, 12.0, 40.0):
        den = Denoiser(loud_identity, 16000, atten_lim_db=lim)
        y = run_chunked(den, x, 480)
        a = 10 ** (-lim / 20)
        d = den.delay_samples
        np.testing.assert_allclose(y[d:], x[:-d] * (4 * (1 - a) + a), atol=1e-5)
    den = Denoiser(loud_identity, 16000, atten_lim_db=None)
    np.testing.assert_allclose(den.process(x)[d:], 4 * x[:-d], atol=1e-5)


def test_atten_lim_change_ramps_then_holds(loud_identity):
    den = Denoiser(loud_identity, 16000)
    x = np.full(16000, 0.1, np.float32)
    den.process(x[:4000])
    den.atten_lim_db = 0.0  # a = 1: all dry
    y = den.process(x[4000:])
    ramp = int(0.010 * 16000)
    assert np.all(np.diff(y[:ramp]) <= 1e-7)  # from 0.4 down to 0.1, smoothly
    np.testing.assert_array_equal(y[ramp:], np.float32(0.1))


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "loud"])
def test_bad_atten_lim(identity, bad):
    with pytest.raises(ValueError, match="atten_lim_db"):
        Denoiser(identity, 16000, atten_lim_db=bad)
    den = Denoiser(identity, 16000)
    with pytest.raises(ValueError, match="atten_lim_db"):
        den.atten_lim_db = bad


# ---------------------------------------------------------------------------- streams and failures
def test_reset_restarts_the_stream(identity):
    x = (0.3 * np.random.default_rng(6).standard_normal(10000)).astype(np.float32)
    for rate in (16000, 48000):
        den = Denoiser(identity, rate)
        a = run_chunked(den, x, 960)
        den.reset()
        b = run_chunked(den, x, 960)
        np.testing.assert_array_equal(a, b)


def test_denoisers_sharing_a_model_have_independent_state(identity):
    a, b = Denoiser(identity, 16000), Denoiser(identity, 16000)
    assert a.model is b.model
    a.process(np.zeros(256 * 7, np.float32))
    b.process(np.zeros(256 * 2, np.float32))
    np.testing.assert_array_equal(a._core._states[0], 7.0)
    np.testing.assert_array_equal(b._core._states[0], 2.0)
    rng = np.random.default_rng(7)
    x1 = rng.standard_normal(9000).astype(np.float32)
    x2 = rng.standard_normal(9000).astype(np.float32)
    a.reset()
    b.reset()
    ya, yb = [], []
    for i in range(0, 9000, 480):  # interleaved calls on one shared session
        ya.append(a.process(x1[i : i + 480]))
        yb.append(b.process(x2[i : i + 480]))
    np.testing.assert_array_equal(np.concatenate(ya), Denoiser(identity, 16000).process(x1))
    np.testing.assert_array_equal(np.concatenate(yb), Denoiser(identity, 16000).process(x2))


def test_denoisers_in_threads_share_one_session(identity):
    x = (0.3 * np.random.default_rng(8).standard_normal(48000)).astype(np.float32)
    ref = Denoiser(identity, 48000).process(x)
    results: dict[int, np.ndarray] = {}

    def work(i):
        den = Denoiser(identity, 48000)
        results[i] = run_chunked(den, x, 960)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for y in results.values():
        np.testing.assert_array_equal(y, ref)


def test_failing_model_step_loses_no_audio(model_dir):
    """A model that fails from hop 3 on: every call raises ModelStepError whose output is
    the stream, still aligned (failed hops pass the noisy spectrum through)."""
    from modelfactory import make_identity_model

    failing = Model.load(make_identity_model(model_dir / "fail-after-3.onnx", fail_after=3))
    den = Denoiser(failing, 16000)
    x = (0.3 * np.random.default_rng(9).standard_normal(8000)).astype(np.float32)
    out, errors = [], 0
    for i in range(0, len(x), 480):
        try:
            out.append(den.process(x[i : i + 480]))
        except ModelStepError as exc:
            errors += 1
            assert exc.output.shape == (len(x[i : i + 480]),)
            out.append(exc.output)
    assert errors > 0 and den.model_failures == len(x) // 256 - 3
    y = np.concatenate(out)
    d = den.delay_samples
    np.testing.assert_allclose(y[d:], x[:-d], atol=2e-6)


def test_always_failing_model_raises_with_int16_output(model_dir):
    from modelfactory import make_identity_model

    failing = Model.load(make_identity_model(model_dir / "fail.onnx", fail=True))
    den = Denoiser(failing, 48000)
    with pytest.raises(ModelStepError) as info:
        den.process(np.zeros(4800, np.int16))
    assert info.value.output.dtype == np.int16 and info.value.output.shape == (4800,)
    assert info.value.n_failed >= 1


def test_repr_and_delay_seconds(identity):
    den = Denoiser(identity, 48000)
    assert "delay_samples=" in repr(den)
    assert den.delay_seconds == pytest.approx(den.delay_samples / 48000)
    assert 0.0319 <= den.delay_seconds <= 0.036


def test_bench_runs_and_reports(identity_path, tmp_path, capsys):
    """`voipfilter bench` smoke test: both rows and the full path (identity models, short)."""
    import json

    from voipfilter.cli import main

    out = tmp_path / "bench.json"
    rc = main(["bench", "--model", str(identity_path), "--reference", str(identity_path),
               "--seconds", "0.5", "--rounds", "1", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "ms/hop" in text and "Denoiser.process at 48000 Hz" in text
    res = json.loads(out.read_text())
    assert res["ours"]["ms_per_hop"] > 0 and res["reference"]["ms_per_hop"] > 0
    assert 1535 <= res["full_path"]["delay_samples"] <= 1536 + 120 and res["threads"] == 1
    assert "band-limited (fullband=False)" in text
    assert res["full_path"]["band_limited"]["cpu_rtf"] > 0 and res["full_path"]["cpu_ratio_fullband_to_band_limited"] > 0
    assert "resampled (native_rate=False)" in text
    assert res["full_path"]["resampled"]["cpu_rtf"] > 0 and res["full_path"]["cpu_ratio_native_to_resampled"] > 0
    assert main(["bench", "--model", str(identity_path), "--reference", str(tmp_path / "none.onnx")]) == 2


def test_bench_times_several_models_in_one_run(identity_path, tmp_path, capsys):
    """`voipfilter bench --model A --model B`: each timed, then compared per second of audio
    (a low-delay model's hops are half as long)."""
    import json

    from modelfactory import make_identity_model
    from voipfilter.cli import main

    ll = make_identity_model(tmp_path / "ll.onnx", hop=128, window="asymmetric_sqrt_hann", model_name="identity-ll")
    out = tmp_path / "bench.json"
    rc = main(["bench", "--model", str(identity_path), "--model", str(ll), "--reference", str(identity_path),
               "--seconds", "0.5", "--rounds", "1", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "x first" in text and "identity-ll" in text
    first, second = json.loads(out.read_text())["models"]
    assert first["ours"]["hop_ms_audio"] == 16.0 and second["ours"]["hop_ms_audio"] == 8.0
    assert second["full_path"]["delay_samples"] < first["full_path"]["delay_samples"]
