"""``voipfilter enhance``: alignment, delay, chunk independence, causality, errors, quality.

The first half uses the synthetic identity model (tests/modelfactory.py); the second uses
the ``upstream_onnx`` fixture (our export of upstream's DNS3 checkpoint, needs torch and
../shared) on a VoiceBank-DEMAND dev pair.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import require_module
from voipfilter.anyrate import AnyRateDenoiser
from voipfilter.cli import main
from voipfilter.denoiser import Denoiser
from voipfilter.enhance import enhance_array
from voipfilter.model import Model
from voipfilter.resample import StreamingResampler

DEV_PAIR = "p232_001.flac"


@pytest.fixture(scope="module")
def identity_path(tmp_path_factory) -> Path:
    require_module("onnx", "train")
    from modelfactory import make_identity_model

    return make_identity_model(tmp_path_factory.mktemp("enh-models") / "identity.onnx")


def write(path: Path, x: np.ndarray, rate: int, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), x, rate, subtype=subtype)
    return path


def noise16(n: int, seed: int = 0) -> np.ndarray:
    """Noise exactly representable in 16-bit so a wav round trip is lossless."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-8000, 8000, n) / 32768.0).astype(np.float32)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Offline resampling with the run-time resampler (zero content delay; tail flushed)."""
    y = StreamingResampler(rate_in, rate_out).process(np.concatenate([x, np.zeros(rate_in // 20, np.float32)]))
    return y[: int(round(len(x) * rate_out / rate_in))]


def lag_of(y: np.ndarray, x: np.ndarray, max_lag: int) -> int:
    """Lag (in samples, y behind x) of the cross-correlation peak, over [-max_lag, max_lag]."""
    n = min(len(x), len(y))
    size = 1 << int(np.ceil(np.log2(2 * n)))
    spec = np.fft.rfft(y[:n].astype(np.float64), size) * np.conj(np.fft.rfft(x[:n].astype(np.float64), size))
    xc = np.fft.irfft(spec, size)  # xc[k] = sum_i y[i + k] x[i], negative k wrapped to the end
    lags = np.arange(-max_lag, max_lag + 1)
    return int(lags[np.argmax(xc[lags % size])])


# ---------------------------------------------------------------------------- identity model
@pytest.mark.parametrize("rate", [16000, 48000])
def test_default_output_is_aligned_and_as_long_as_input(tmp_path, identity_path, rate):
    x = noise16(rate, seed=rate) if rate == 16000 else resample(noise16(16000), 16000, rate)
    src = write(tmp_path / "in.wav", x, rate)
    assert main(["enhance", str(src), "-o", str(tmp_path / "out.wav"), "--model", str(identity_path)]) == 0
    y, r = sf.read(str(tmp_path / "out.wav"), dtype="float32")
    info = sf.info(str(tmp_path / "out.wav"))
    assert r == rate and info.subtype == "PCM_16" and info.channels == 1 and len(y) == len(x)
    x_read, _ = sf.read(str(src), dtype="float32")
    assert lag_of(y, x_read, 3000) == 0
    if rate == 16000:  # the identity model at the model rate is lossless (to one LSB)
        assert np.abs(y - x_read).max() <= 1.5 / 32768


@pytest.mark.parametrize("rate", [16000, 48000])
def test_keep_delay_lags_by_exactly_delay_samples(tmp_path, identity_path, rate):
    x = noise16(rate, seed=1) if rate == 16000 else resample(noise16(16000, seed=1), 16000, rate)
    src = write(tmp_path / "in.wav", x, rate)
    assert main(["enhance", str(src), "-o", str(tmp_path / "aligned.wav"), "--model", str(identity_path)]) == 0
    assert main(["enhance", str(src), "-o", str(tmp_path / "live.wav"), "--model", str(identity_path),
                 "--keep-delay"]) == 0
    aligned, _ = sf.read(str(tmp_path / "aligned.wav"), dtype="int16")
    live, _ = sf.read(str(tmp_path / "live.wav"), dtype="int16")
    d = Denoiser(identity_path, rate).delay_samples
    assert len(live) == len(aligned) == len(x)
    np.testing.assert_array_equal(live[d:], aligned[:-d])
    assert lag_of(live.astype(np.float32), x, d + 500) == d


@pytest.mark.parametrize("rate", [22050, 11025])
def test_other_rates_are_resampled_with_the_delay_exact(tmp_path, identity_path, capsys, rate):
    """A rate Denoiser does not take goes to 16 kHz and back: with the identity model the
    aligned output is the input (band-limited below 4 kHz, so the resamplers keep all of it),
    and --keep-delay lags it by exactly the reported delay, one sample either way far worse."""
    x = 0.5 * resample(noise16(8000, seed=5), 8000, rate)  # content below 4 kHz
    src = write(tmp_path / "in.wav", x, rate, subtype="FLOAT")
    model = ["--model", str(identity_path)]
    assert main(["enhance", str(src), "-o", str(tmp_path / "a.wav"), *model]) == 0
    d = AnyRateDenoiser(identity_path, rate).delay_samples
    assert f"{rate} Hz, filtered at 16000 Hz" in capsys.readouterr().err
    assert main(["enhance", str(src), "-o", str(tmp_path / "l.wav"), *model, "--keep-delay"]) == 0
    assert f"delayed by the filter's {d} samples" in capsys.readouterr().err
    aligned, r1 = sf.read(str(tmp_path / "a.wav"), dtype="float32")
    live, r2 = sf.read(str(tmp_path / "l.wav"), dtype="float32")
    assert r1 == r2 == rate and len(aligned) == len(live) == len(x)
    settled = slice(rate // 10, -rate // 10)  # away from the start-up and the end
    assert np.abs(aligned - x)[settled].max() < 1e-3
    np.testing.assert_array_equal(live[d:], aligned[:-d])
    for lag, bound in ((d, 1e-3), (d - 1, None), (d + 1, None)):
        err = np.abs(live[lag:] - x[: len(x) - lag])[settled].max()
        assert err < 1e-3 if bound else err > 0.05, (lag, err)


@pytest.mark.parametrize("rate", [44100, 22050])
def test_chunk_size_does_not_change_the_file(tmp_path, identity_path, rate):
    x = resample(noise16(8000, seed=2), 16000, rate)
    src = write(tmp_path / "in.wav", x, rate)
    outs = []
    for ms in ("0.5", "20", "93"):
        out = tmp_path / f"out-{ms}.wav"
        assert main(["enhance", str(src), "-o", str(out), "--model", str(identity_path), "--chunk-ms", ms]) == 0
        outs.append(sf.read(str(out), dtype="int16")[0])
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def test_many_inputs_to_a_folder_and_positional_output(tmp_path, identity_path, capsys):
    srcs = [write(tmp_path / f"in{i}.flac", noise16(4000 + i, seed=i), rate)
            for i, rate in enumerate([8000, 16000, 24000, 32000])]
    out_dir = tmp_path / "out"
    assert main(["enhance", *map(str, srcs), "-o", str(out_dir), "--model", str(identity_path)]) == 0
    for i, src in enumerate(srcs):
        y, r = sf.read(str(out_dir / f"in{i}.wav"), dtype="int16")
        assert r == sf.info(str(src)).samplerate and len(y) == sf.info(str(src)).frames
    assert "enhance" in capsys.readouterr().err  # the progress bar
    single = tmp_path / "single.wav"
    assert main(["enhance", str(srcs[1]), str(single), "--model", str(identity_path)]) == 0
    assert single.exists()


def test_stereo_input_is_downmixed_with_a_warning(tmp_path, identity_path, capsys):
    left = noise16(16000, seed=3)
    stereo = np.stack([left, left], axis=1)
    src = write(tmp_path / "stereo.wav", stereo, 16000)
    assert main(["enhance", str(src), "-o", str(tmp_path / "o.wav"), "--model", str(identity_path)]) == 0
    assert "downmixing to mono" in capsys.readouterr().err
    y, _ = sf.read(str(tmp_path / "o.wav"), dtype="float32")
    assert y.ndim == 1 and np.abs(y - left).max() <= 1.5 / 32768


def _no_outputs(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


def test_errors_exit_2_and_write_nothing(tmp_path, identity_path, capsys):
    good = write(tmp_path / "good.wav", noise16(16000), 16000)
    bad_rate = write(tmp_path / "rate.wav", noise16(500), 500)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF....not really a wav")
    out = tmp_path / "out"
    cases = [
        ([str(good), str(tmp_path / "missing.wav")], "no such file"),
        ([str(good), str(bad_rate)], "unsupported sample rate 500"),
        ([str(good), str(junk)], "cannot read audio"),
    ]
    for inputs, message in cases:
        rc = main(["enhance", *inputs, "-o", str(out), "--model", str(identity_path)])
        err = capsys.readouterr().err
        assert rc == 2 and message in err, err
        assert _no_outputs(out)
    # A missing model, and a missing default model, are exit 2 as well.
    rc = main(["enhance", str(good), "-o", str(out), "--model", str(tmp_path / "nomodel.onnx")])
    assert rc == 2 and "nomodel.onnx" in capsys.readouterr().err and _no_outputs(out)
    # Several inputs into one .wav; no output at all; output over its input.
    assert main(["enhance", str(good), str(good), "-o", str(tmp_path / "x.wav"), "--model", str(identity_path)]) == 2
    assert main(["enhance", str(good), "--model", str(identity_path)]) == 2
    assert main(["enhance", str(good), "-o", str(good), "--model", str(identity_path)]) == 2
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("rate", [16000, 22050])
def test_any_length_comes_back_as_long(identity_path, rate):
    """Shorter than the delay, exactly it, longer: the output is as long as the input."""
    x = noise16(3000, seed=6)
    for n in (0, 1, 255, 511, 512, 881, 882, 883, 3000):
        for keep in (False, True):
            assert len(enhance_array(x[:n], rate, model=identity_path, keep_delay=keep)) == n, (n, keep)


def test_enhance_array_matches_the_streaming_denoiser(identity_path):
    x = noise16(20000, seed=4)
    den = Denoiser(identity_path, 16000)
    live = np.concatenate([den.process(x[i : i + 320]) for i in range(0, len(x), 320)])
    np.testing.assert_array_equal(enhance_array(x, 16000, model=identity_path, keep_delay=True), live)


# ---------------------------------------------------------------------------- real model
@pytest.fixture(scope="module")
def gtcrn(upstream_onnx) -> Model:
    return Model.load(upstream_onnx)


@pytest.fixture(scope="module")
def dev_pair(data_dir) -> tuple[np.ndarray, np.ndarray]:
    noisy, r1 = sf.read(str(data_dir / "dev" / "vbd" / "noisy" / DEV_PAIR), dtype="float32")
    clean, r2 = sf.read(str(data_dir / "dev" / "vbd" / "clean" / DEV_PAIR), dtype="float32")
    assert r1 == r2 == 16000
    return noisy, clean


@pytest.mark.shared
@pytest.mark.torch
@pytest.mark.parametrize("rate", [16000, 48000])
def test_gtcrn_enhance_is_aligned_and_keep_delay_lags_exactly(tmp_path, gtcrn, dev_pair, rate):
    noisy = dev_pair[0] if rate == 16000 else resample(dev_pair[0], 16000, rate)
    src = write(tmp_path / "noisy.wav", noisy, rate, subtype="FLOAT")
    model = str(gtcrn.path)
    assert main(["enhance", str(src), "-o", str(tmp_path / "a.wav"), "--model", model]) == 0
    assert main(["enhance", str(src), "-o", str(tmp_path / "l.wav"), "--model", model, "--keep-delay"]) == 0
    aligned, _ = sf.read(str(tmp_path / "a.wav"), dtype="int16")
    live, _ = sf.read(str(tmp_path / "l.wav"), dtype="int16")
    d = Denoiser(gtcrn, rate).delay_samples
    assert len(aligned) == len(live) == len(noisy)
    assert lag_of(aligned.astype(np.float32), noisy, 2 * d) == 0
    assert lag_of(live.astype(np.float32), noisy, 2 * d) == d
    np.testing.assert_array_equal(live[d:], aligned[:-d])


@pytest.mark.shared
@pytest.mark.torch
@pytest.mark.parametrize("rate", [16000, 48000])
def test_gtcrn_chunk_independence(gtcrn, dev_pair, rate):
    x = dev_pair[0][:16000] if rate == 16000 else resample(dev_pair[0][:16000], 16000, rate)
    ref = enhance_array(x, rate, model=gtcrn, chunk=len(x))
    for chunk in (1, 7, 160, 480, 960, 4096):
        np.testing.assert_array_equal(enhance_array(x, rate, model=gtcrn, chunk=chunk), ref, err_msg=f"chunk {chunk}")


@pytest.mark.shared
@pytest.mark.torch
def test_gtcrn_causality_and_no_hidden_delay_at_16k(gtcrn, dev_pair):
    """With --keep-delay, changing the input from sample n on changes no output before n.

    At the model rate the first output to change is exactly the last sample of n's hop
    (n_fft - 1 = 511 samples of delay, nothing more): the window is all the latency. It is
    one sample later than n itself when n is the last sample of its hop, because the
    sqrt-Hann window is exactly 0 at a frame's first sample.
    """
    x = dev_pair[0][:16000]
    hop = gtcrn.hop
    base = enhance_array(x, 16000, model=gtcrn, keep_delay=True)
    rng = np.random.default_rng(0)
    for n in (8192, 8192 + 1, 8192 + 100, 8192 + 254, 8192 + 255, 9000):
        x2 = x.copy()
        x2[n:] += (0.1 * rng.standard_normal(len(x) - n)).astype(np.float32)
        y2 = enhance_array(x2, 16000, model=gtcrn, keep_delay=True)
        first = int(np.flatnonzero(y2 != base)[0])
        assert first >= n
        assert first == n + hop - (n % hop), n


@pytest.mark.shared
@pytest.mark.torch
@pytest.mark.parametrize("rate", [48000, 44100])
def test_gtcrn_causality_with_resampling(gtcrn, dev_pair, rate):
    """At other rates the delay is the window plus the resamplers' buffering (libswresample
    holds back about 1 ms per direction): outputs never depend on future input, and the
    reported delay exceeds the window by no more than 2.5 ms."""
    x = resample(dev_pair[0][:16000], 16000, rate)
    den = Denoiser(gtcrn, rate)
    window = gtcrn.n_fft * rate / gtcrn.sample_rate
    assert window - 1 <= den.delay_samples <= window + 0.0025 * rate
    base = enhance_array(x, rate, model=gtcrn, keep_delay=True)
    rng = np.random.default_rng(1)
    for n in range(rate // 2, rate // 2 + 3 * 768, 97):
        x2 = x.copy()
        x2[n:] = (0.3 * rng.standard_normal(len(x) - n)).astype(np.float32)
        y2 = enhance_array(x2, rate, model=gtcrn, keep_delay=True)
        np.testing.assert_array_equal(y2[:n], base[:n])


@pytest.mark.shared
@pytest.mark.torch
def test_gtcrn_at_48k_improves_pesq_wb(gtcrn, dev_pair):
    require_module("pesq", "eval")
    from pesq import pesq

    noisy, clean = dev_pair
    enhanced48 = enhance_array(resample(noisy, 16000, 48000), 48000, model=gtcrn)
    enhanced = resample(enhanced48, 48000, 16000)
    assert len(enhanced) == len(clean)
    before = pesq(16000, clean, noisy, "wb")
    after = pesq(16000, clean, enhanced, "wb")
    assert after > before + 0.1, (before, after)
