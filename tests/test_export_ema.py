"""``voipfilter export --ema``: the trainer's moving average of the weights, and a card that
says which weights a file holds."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import require_module

require_module("torch", "train")

import torch  # noqa: E402
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn  # noqa: E402

from voipfilter import Model  # noqa: E402
from voipfilter.cli import main  # noqa: E402
from voipfilter.nn import stft as S  # noqa: E402
from voipfilter.nn.checkpoint import load_checkpoint, save_model  # noqa: E402
from voipfilter.nn.config import GTCRNConfig  # noqa: E402
from voipfilter.nn.gtcrn import GTCRN  # noqa: E402


@pytest.fixture(scope="module")
def run_checkpoint(tmp_path_factory):
    """A last.pt as the trainer writes it: raw weights in 'model', the AveragedModel's
    state_dict in 'ema', the decay in train_config; raw and average differ."""
    torch.manual_seed(0)
    model = GTCRN(GTCRNConfig())
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    with torch.no_grad():
        for _ in range(3):
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
            ema.update_parameters(model)
    path = tmp_path_factory.mktemp("ema") / "last.pt"
    save_model(path, model, {"source": "voipfilter train", "step": 3}, ema=ema.state_dict(),
               train_config={"optim": {"ema_decay": 0.9}})
    return path, model.eval(), ema.module.eval()


def _offline(model: GTCRN, frames: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(frames).numpy()


def _onnx(path, frames: torch.Tensor) -> np.ndarray:
    m = Model(path)
    state, out = m.initial_state(1), []
    for t in range(frames.shape[2]):
        enh, state = m.step(np.ascontiguousarray(frames[:, :, t : t + 1].numpy()), state)
        out.append(enh)
    return np.concatenate(out, axis=2)


def test_load_checkpoint_ema_gives_the_average(run_checkpoint):
    path, raw, avg = run_checkpoint
    model, _, meta = load_checkpoint(path, ema=True)
    for (name, a), b in zip(model.state_dict().items(), avg.state_dict().values()):
        assert torch.equal(a, b), name
    assert meta["weights"] == "EMA (decay 0.9, 3 updates)"
    assert load_checkpoint(path)[2]["weights"] == "raw"


def test_export_ema_exports_the_average_and_says_so(run_checkpoint, tmp_path, capsys):
    path, raw, avg = run_checkpoint
    frames = S.stft(torch.randn(1, 8000) * 0.1, GTCRNConfig())
    assert main(["export", "--checkpoint", str(path), "-o", str(tmp_path / "ema.onnx"), "--ema"]) == 0
    assert "weights: EMA (decay 0.9, 3 updates)" in capsys.readouterr().out
    assert main(["export", "--checkpoint", str(path), "-o", str(tmp_path / "raw.onnx")]) == 0
    ema_out, raw_out = _onnx(tmp_path / "ema.onnx", frames), _onnx(tmp_path / "raw.onnx", frames)
    assert np.abs(ema_out - _offline(avg, frames)).max() <= 1e-4
    assert np.abs(raw_out - _offline(raw, frames)).max() <= 1e-4
    assert np.abs(ema_out - raw_out).max() > 1e-2  # really different weights
    ema_model, raw_model = Model(tmp_path / "ema.onnx"), Model(tmp_path / "raw.onnx")
    assert ema_model.metadata["weights"].startswith("EMA") and raw_model.metadata["weights"] == "raw"
    assert "- weights: EMA (decay 0.9, 3 updates)" in ema_model.model_card
    assert "- weights: raw" in raw_model.model_card


def test_a_given_card_gets_the_weights_line(run_checkpoint, tmp_path):
    path, _, _ = run_checkpoint
    card = tmp_path / "card.md"
    card.write_text("# my model\n")
    assert main(["export", "--checkpoint", str(path), "-o", str(tmp_path / "c.onnx"), "--card", str(card), "--ema"]) == 0
    text = Model(tmp_path / "c.onnx").model_card
    assert text.startswith("# my model") and "**Exported weights:** EMA (decay 0.9, 3 updates) of `last.pt`." in text


def test_export_ema_without_an_average_is_a_clear_error(tmp_path, capsys):
    torch.manual_seed(1)
    save_model(tmp_path / "best.pt", GTCRN(GTCRNConfig()), {"weights": "EMA (decay 0.999)"})
    assert main(["export", "--checkpoint", str(tmp_path / "best.pt"), "-o", str(tmp_path / "x.onnx"), "--ema"]) == 2
    out = capsys.readouterr().out
    assert "no moving average" in out and "without --ema" in out
    assert not (tmp_path / "x.onnx").exists()
    # without --ema, a snapshot that holds the average already says so
    assert main(["export", "--checkpoint", str(tmp_path / "best.pt"), "-o", str(tmp_path / "b.onnx")]) == 0
    assert Model(tmp_path / "b.onnx").metadata["weights"] == "EMA (decay 0.999)"
