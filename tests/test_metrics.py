"""Metrics and ``voipfilter eval``: aligned streaming output, baselines in the same run."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")
pytest.importorskip("pesq")
pytest.importorskip("pystoi")

from voipfilter.evaluate import metrics  # noqa: E402
from voipfilter.evaluate.cli import enhance_aligned  # noqa: E402
from voipfilter.cli import main  # noqa: E402

SR = 16000


def speech(n, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    f0 = rng.uniform(100, 200) * (1 + 0.3 * np.sin(2 * np.pi * 0.7 * t))
    ph = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * ph) / k for k in range(1, 20)) * (np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 2)
    x = x + 0.01 * rng.standard_normal(n) * (np.sin(2 * np.pi * 2.5 * t) < -0.7)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def test_si_sdr():
    x = speech(SR)
    assert metrics.si_sdr(x, 0.5 * x) > 100
    rng = np.random.default_rng(1)
    n = rng.standard_normal(SR)
    n *= np.sqrt(np.sum(x.astype(np.float64) ** 2) / np.sum(n ** 2)) / np.sqrt(10)  # 10 dB
    assert abs(metrics.si_sdr(x, x + n) - 10.0) < 0.3


def test_pesq_stoi_ranges_and_alignment_sensitivity():
    x = speech(3 * SR)
    rng = np.random.default_rng(2)
    noisy = x + 0.03 * rng.standard_normal(len(x)).astype(np.float32)
    m = metrics.intrusive(x, noisy)
    assert 1.0 < m["pesq"] < 4.7 and 0.5 < m["stoi"] <= 1.0
    assert metrics.pesq_wb(x, x) > 4.4
    # a 256-sample (16 ms) offset costs SI-SDR heavily: metrics need aligned signals
    shifted = np.concatenate([np.zeros(256, np.float32), x[:-256]])
    assert metrics.si_sdr(x, shifted) < 0


def test_pesq_nan_on_silence():
    z = np.zeros(SR, np.float32)
    assert math.isnan(metrics.pesq_wb(z, z))


@pytest.fixture()
def identity_model(tmp_path):
    pytest.importorskip("onnx")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from modelfactory import make_identity_model

    return make_identity_model(tmp_path / "identity.onnx")


@pytest.mark.parametrize("rate", [16000, 48000])
def test_enhance_aligned_returns_input_for_identity_model(identity_model, rate):
    x = speech(rate)  # any signal
    y = enhance_aligned(x, rate, str(identity_model))
    assert len(y) == len(x)
    if rate == 16000:
        np.testing.assert_allclose(y, x, atol=1e-5)
    else:  # through the resamplers: aligned up to their band limit
        assert metrics.si_sdr(x, y) > 20


def test_eval_cli_identity_equals_unprocessed(tmp_path, identity_model, capsys):
    (tmp_path / "noisy").mkdir()
    (tmp_path / "clean").mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):
        c = speech(2 * SR, i)
        sf.write(tmp_path / "clean" / f"a{i}.wav", c, SR)
        sf.write(tmp_path / "noisy" / f"a{i}.wav", c + 0.02 * rng.standard_normal(len(c)).astype(np.float32), SR)
    tsv = tmp_path / "out.tsv"
    rc = main(["eval", "--noisy", str(tmp_path / "noisy"), "--clean", str(tmp_path / "clean"), "--model", "none",
               "--model", str(identity_model), "--no-dnsmos", "--tsv", str(tsv)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "PESQ-WB" in out and "none" in out
    rows = list(csv.DictReader(open(tsv), delimiter="\t"))
    by = {(r["model"], r["file"]): r for r in rows}
    for f in ("a0.wav", "a1.wav"):
        a, b = by[("none", f)], by[(str(identity_model), f)]
        assert abs(float(a["pesq"]) - float(b["pesq"])) < 0.02
        assert abs(float(a["si_sdr"]) - float(b["si_sdr"])) < 0.05
    assert ("none", "MEAN") in by


def test_eval_cli_errors(tmp_path):
    (tmp_path / "noisy").mkdir()
    assert main(["eval", "--noisy", str(tmp_path / "noisy"), "--model", "none", "--no-dnsmos"]) == 2


def _pairs(root, snrs_db):
    """noisy/ + clean/ folders, one pair per input SNR."""
    (root / "noisy").mkdir()
    (root / "clean").mkdir()
    rng = np.random.default_rng(5)
    for i, snr in enumerate(snrs_db):
        c = speech(2 * SR, i)
        n = rng.standard_normal(len(c)).astype(np.float32)
        n *= np.sqrt(np.sum(c.astype(np.float64) ** 2) / np.sum(n.astype(np.float64) ** 2) / 10 ** (snr / 10))
        sf.write(root / "clean" / f"a{i}.wav", c, SR)
        sf.write(root / "noisy" / f"a{i}.wav", c + n, SR)


def test_eval_paired_differences_and_snr_bands(tmp_path, identity_model, capsys):
    _pairs(tmp_path, [0.0, 1.0, 16.0])
    tsv = tmp_path / "out.tsv"
    rc = main(["eval", "--noisy", str(tmp_path / "noisy"), "--clean", str(tmp_path / "clean"), "--model", "none",
               "--model", str(identity_model), "--no-dnsmos", "--by-snr", "--tsv", str(tsv)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "minus none" in out  # the paired table, against the first model
    assert "input SNR < 4 dB: 2 files" in out and "input SNR >= 14 dB: 1 files" in out
    rows = [r for r in csv.DictReader(open(tsv), delimiter="\t") if r["file"] != "MEAN"]
    snr = {r["file"]: float(r["snr_in"]) for r in rows if r["model"] == "none"}
    assert snr["a0.wav"] == pytest.approx(0.0, abs=0.01) and snr["a2.wav"] == pytest.approx(16.0, abs=0.01)


def test_eval_by_snr_needs_clean_and_ref_must_be_a_model(tmp_path, identity_model):
    _pairs(tmp_path, [5.0])
    noisy = str(tmp_path / "noisy")
    assert main(["eval", "--noisy", noisy, "--model", "none", "--no-dnsmos", "--by-snr"]) == 2
    assert main(["eval", "--noisy", noisy, "--model", "none", "--no-dnsmos", "--ref", "other.onnx"]) == 2


def test_evaluate_takes_any_enhance_function(tmp_path):
    """Other enhancers (benchmarks/peers.py) are scored by the same code; a wrong length is refused."""
    from voipfilter.evaluate.cli import evaluate, paired_table

    _pairs(tmp_path, [5.0, 10.0])
    rows = evaluate(tmp_path / "noisy", tmp_path / "clean", ["none", ("half", lambda x, sr: 0.5 * x)],
                    use_dnsmos=False, progress=False)
    by = {(r["model"], r["file"]): r for r in rows}
    for f in ("a0.wav", "a1.wav"):  # SI-SDR is scale-invariant: halving changes nothing
        assert by[("half", f)]["si_sdr"] == pytest.approx(by[("none", f)]["si_sdr"], abs=1e-6)
    half = [line for line in paired_table(rows, "none").splitlines() if line.startswith("half")]
    assert len(half) == 1 and half[0].split()[-3:] in (["+0.000", "±", "0.000"], ["-0.000", "±", "0.000"])
    with pytest.raises(ValueError, match="returned 10 samples"):
        evaluate(tmp_path / "noisy", None, [("short", lambda x, sr: x[:10])], use_dnsmos=False, progress=False)


def test_dnsmos_offline():
    pytest.importorskip("speechmos")
    from voipfilter.evaluate.dnsmos import dnsmos, melspec_db

    x = speech(2 * SR)
    rng = np.random.default_rng(0)
    clean = dnsmos(x)
    noisy = dnsmos(np.clip(x + 0.1 * rng.standard_normal(len(x)), -1, 1))
    for k in ("ovrl", "sig", "bak", "p808"):
        assert 1.0 <= clean[k] <= 5.0
    assert clean["bak"] > noisy["bak"]
    try:
        import librosa  # noqa: F401
    except ImportError:
        return
    from speechmos.dnsmos import DNSMOS

    seg = np.concatenate([x] * 5)[: int(9.01 * SR) - 160].astype(np.float64)
    ref = DNSMOS.audio_melspec(None, seg)
    np.testing.assert_allclose(melspec_db(seg), ref, atol=1e-5)
