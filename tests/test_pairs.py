"""``voipfilter check-pairs``: alignment, rate, length, clipping, silence, missing files."""
from __future__ import annotations

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")
pytest.importorskip("scipy")

from voipfilter.cli import main  # noqa: E402
from voipfilter.train.pairs import check_dir, estimate_lag  # noqa: E402

SR = 16000


def speech(rng, n):
    t = np.arange(n) / SR
    f0 = rng.uniform(100, 200) * (1 + 0.3 * np.sin(2 * np.pi * t))
    ph = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * ph) / k for k in range(1, 10)) * (np.clip(np.sin(2 * np.pi * 3 * t), 0, None) + 0.1)
    return 0.3 * x / np.abs(x).max()


def write_pairs(root, n_pairs=3, n=SR * 2, snr_noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    (root / "noisy").mkdir(parents=True, exist_ok=True)
    (root / "clean").mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n_pairs):
        c = speech(rng, n)
        noisy = c + snr_noise * rng.standard_normal(n)
        sf.write(root / "clean" / f"f{i}.wav", c.astype(np.float32), SR)
        sf.write(root / "noisy" / f"f{i}.wav", noisy.astype(np.float32), SR)
        out.append((c, noisy))
    return out


def test_good_pairs_pass(tmp_path, capsys):
    write_pairs(tmp_path)
    assert all(r.ok and r.lag == 0 for r in check_dir(tmp_path))
    assert main(["check-pairs", str(tmp_path)]) == 0
    assert "3 pairs checked, 3 ok, 0 with problems" in capsys.readouterr().out


@pytest.mark.parametrize("shift", [1, -1, 256, -37])
def test_offset_is_detected(tmp_path, capsys, shift):
    pairs = write_pairs(tmp_path)
    c, _ = pairs[1]
    sf.write(tmp_path / "clean" / "f1.wav", np.roll(c, shift).astype(np.float32), SR)
    reps = {r.name: r for r in check_dir(tmp_path)}
    assert reps["f1.wav"].lag == -shift and not reps["f1.wav"].ok
    assert reps["f0.wav"].ok and reps["f2.wav"].ok
    assert main(["check-pairs", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL f1.wav" in out and "misaligned" in out


def test_one_sample_offset_at_low_snr(tmp_path):
    rng = np.random.default_rng(4)
    write_pairs(tmp_path, n_pairs=1, snr_noise=0.3)  # about -5 dB
    c, _ = sf.read(tmp_path / "clean" / "f0.wav")
    sf.write(tmp_path / "clean" / "f0.wav", np.roll(c, 1).astype(np.float32), SR)
    assert check_dir(tmp_path)[0].lag == -1
    del rng


def test_rate_length_clipping_silence_missing(tmp_path):
    write_pairs(tmp_path, n_pairs=5)
    x, _ = sf.read(tmp_path / "noisy" / "f0.wav")
    sf.write(tmp_path / "noisy" / "f0.wav", x.astype(np.float32), 8000)  # rate
    sf.write(tmp_path / "noisy" / "f1.wav", x[:-10].astype(np.float32), SR)  # length
    clipped = np.clip(x * 10, -1, 1)
    sf.write(tmp_path / "noisy" / "f2.wav", clipped.astype(np.float32), SR)  # clipping
    sf.write(tmp_path / "clean" / "f3.wav", np.zeros_like(x, dtype=np.float32), SR)  # silent clean
    (tmp_path / "clean" / "f4.wav").unlink()  # missing
    reps = {r.name: r for r in check_dir(tmp_path)}
    text = {k: " ".join(r.problems) for k, r in reps.items()}
    assert "sample rate differs" in text["f0.wav"]
    assert "length differs" in text["f1.wav"]
    assert "clipped" in text["f2.wav"]
    assert "clean: silent" in text["f3.wav"]
    assert "no clean file" in text["f4.wav"]
    assert main(["check-pairs", "-q", str(tmp_path)]) == 1


def test_not_a_pair_folder(tmp_path):
    assert main(["check-pairs", str(tmp_path)]) == 1


def test_estimate_lag_sign():
    rng = np.random.default_rng(0)
    c = speech(rng, SR)
    assert estimate_lag(c, c)[0] == 0
    assert estimate_lag(np.roll(c, 5), c)[0] == 5  # noisy late by 5: clean must be delayed by 5


@pytest.mark.shared
def test_dev_vbd_pairs_are_aligned(data_dir):
    assert main(["check-pairs", "-q", str(data_dir / "dev" / "vbd")]) == 0
