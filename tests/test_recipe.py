"""The recipe of the shipped model (docs/training.md): its stage configs, the states kept in
runs/, and that the last stage's weights are the shipped ONNX."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# (config, first step, last step, state kept in runs/ at the last step or None)
STAGES = [
    ("default.yaml", 0, 9000, "gtcrn-v1/checkpoints/decay_start_9000.pt"),
    ("gtcrn-v2.yaml", 9000, 18750, None),
    ("gtcrn-v4.yaml", 18750, 26038, "gtcrn-v4/checkpoints/last.pt"),
    ("gtcrn-v6.yaml", 26038, 30818, "gtcrn-v6/checkpoints/last.pt"),
    ("gtcrn-v7.yaml", 30818, 35318, "gtcrn-v7/checkpoints/last.pt"),
]


def test_stage_configs_chain_and_keep_the_rate_until_the_cool_down(torch_available):
    from voipfilter.train.config import load_config

    cfgs = [load_config(REPO / "configs" / name) for name, *_ in STAGES]
    for (name, start, end, _), cfg in zip(STAGES[:-1], cfgs[:-1]):
        assert cfg.optim.schedule == "wsd" and cfg.optim.decay_start >= end, f"{name} must not cool down before {end}"
    last = cfgs[-1].optim
    assert (last.decay_start, last.total_steps) == (30820, 35300)
    assert cfgs[0].train.batch_size == 8 and cfgs[3].train.batch_size == 16
    assert cfgs[1].optim.ema_decay == 0.999 and cfgs[2].augment.p_speed > 0 and cfgs[0].augment.p_speed == 0
    assert len({(c.seed, c.data.val_fraction_speech, c.data.val_items) for c in cfgs}) == 1  # one split, one set


def test_kept_states_are_where_the_recipe_says(torch_available):
    import torch

    for name, _, end, state in STAGES:
        if state is None:
            continue
        ckpt = torch.load(REPO / "runs" / state, map_location="cpu", weights_only=False)
        assert ckpt["step"] == end, f"runs/{state} is at step {ckpt['step']}, the recipe says {end}"
        for key in ("optimizer", "schedule", "rng", "data_position"):
            assert key in ckpt, f"runs/{state} cannot be resumed: no {key}"


def test_the_last_stage_is_the_shipped_model(torch_available, tmp_path):
    pytest.importorskip("onnx")
    from voipfilter import Denoiser, default_model_path
    from voipfilter.nn.checkpoint import load_checkpoint
    from voipfilter.nn.export import export_onnx

    model, _, _ = load_checkpoint(REPO / "runs/gtcrn-v7/checkpoints/last.pt")
    out = export_onnx(model, tmp_path / "v7.onnx")
    x = (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
    np.testing.assert_allclose(Denoiser(str(out)).process(x), Denoiser(str(default_model_path())).process(x),
                               atol=1e-5)
