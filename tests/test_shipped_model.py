"""The model the package ships: present, small, self-describing, and it enhances."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voipfilter import Denoiser, Model, ModelNotFoundError, default_model_path
from voipfilter.enhance import enhance_array


def test_shipped_model_is_present_small_and_self_describing() -> None:
    path = default_model_path()
    assert path.is_file(), f"the package must ship its default model at {path}"
    assert path.stat().st_size < 1024 * 1024
    model = Model.load(None)
    assert (model.sample_rate, model.n_fft, model.hop) == (16000, 512, 256)
    card = model.model_card
    for fact in ("speech/", "noise/", "PESQ-WB", "licen"):
        assert fact in card, f"model card lacks {fact!r}"
    sidecar = path.with_suffix(".md")
    assert sidecar.is_file(), "the model card ships beside the model"


def test_default_denoiser_uses_the_shipped_model() -> None:
    den = Denoiser()
    assert den.delay_samples == 511
    y = den.process(np.zeros(4000, np.int16))
    assert y.dtype == np.int16 and y.shape == (4000,)


def test_without_a_shipped_model_the_error_says_how_to_get_one(monkeypatch, tmp_path: Path) -> None:
    from voipfilter import model as model_mod

    monkeypatch.setattr(model_mod, "default_model_path", lambda: tmp_path / "gtcrn-voipfilter.onnx")
    with pytest.raises(ModelNotFoundError, match="voipfilter export --checkpoint"):
        Model.load(None)


def _snr(ref: np.ndarray, est: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - est) ** 2)))


def dev_pesq_gains(data_dir: Path, model=None, n: int = 4) -> list[float]:
    """PESQ-WB of ``model``'s output minus the input's, on the first ``n`` dev/vbd pairs."""
    from conftest import require_module

    require_module("pesq", "eval")
    from voipfilter.evaluate.metrics import pesq_wb

    names = sorted(p.name for p in (data_dir / "dev/vbd/noisy").glob("*.flac"))[:n]
    gains = []
    for name in names:
        noisy, sr = sf.read(data_dir / "dev/vbd/noisy" / name, dtype="float32")
        clean, _ = sf.read(data_dir / "dev/vbd/clean" / name, dtype="float32")
        out = enhance_array(noisy, sr, model=model)
        gains.append(pesq_wb(clean, out, sr) - pesq_wb(clean, noisy, sr))
    return gains


def test_shipped_model_enhances_a_dev_pair(data_dir: Path) -> None:
    """On VoiceBank-DEMAND dev pairs (never trained on), output PESQ-WB beats the input's."""
    gains = dev_pesq_gains(data_dir)
    assert np.mean(gains) > 0.1, json.dumps(gains)
