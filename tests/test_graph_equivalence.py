"""The fast streaming graph (``export_onnx``'s default) is the previous graph's function:
same I/O contract and metadata, same enhanced frames and next states to float32 rounding,
hop after hop with the state carried, at batch 1 and above, on both framings (hop 256
sqrt-Hann and the low-delay hop 128 asymmetric windows) and on the shipped checkpoint."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import require_module

require_module("torch", "train")

import onnx  # noqa: E402
import torch  # noqa: E402

from voipfilter import Model  # noqa: E402
from voipfilter.nn.checkpoint import load_checkpoint  # noqa: E402
from voipfilter.nn.config import GTCRNConfig  # noqa: E402
from voipfilter.nn.export import export_onnx  # noqa: E402
from voipfilter.nn.gtcrn import GTCRN  # noqa: E402
from voipfilter.nn.streaming import StreamingGTCRN  # noqa: E402
from voipfilter.stft import ASYMMETRIC, analysis_frames  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CKPT = REPO / "runs/gtcrn-v7/checkpoints/last.pt"
HOPS = 150
FRAMINGS = {"hop256": GTCRNConfig(), "lowdelay": GTCRNConfig(hop=128, window=ASYMMETRIC)}


def _random_model(cfg: GTCRNConfig, seed: int) -> GTCRN:
    """Random weights and random BN statistics (every layer does something), eval mode."""
    torch.manual_seed(seed)
    net = GTCRN(cfg)
    with torch.no_grad():
        _randomise(net)
    return net.eval()


def _randomise(net: GTCRN) -> None:
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
        if isinstance(m, torch.nn.PReLU):
            m.weight.uniform_(-0.3, 0.5)  # slopes away from the 0.25 default, some negative


def _streams(cfg: GTCRNConfig, batch: int) -> np.ndarray:
    """(HOPS, batch, F, 1, 2): the STFT frames of ``batch`` different noisy signals."""
    n = cfg.hop * (HOPS + 4)
    t = np.arange(n) / cfg.sample_rate
    out = []
    for b in range(batch):
        rng = np.random.default_rng(b)
        level = 10.0 ** rng.uniform(-2.5, 0)  # quiet to near full scale
        x = np.sin(2 * np.pi * (120 + 90 * b) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
        x = level * (x + 0.4 * rng.standard_normal(n))
        frames = analysis_frames(x.astype(np.float32), cfg.n_fft, cfg.hop, cfg.window_pair())[0]
        out.append(np.moveaxis(frames[:, :HOPS], 1, 0)[:, :, None])  # (HOPS, F, 1, 2)
    return np.ascontiguousarray(np.stack(out, axis=1), dtype=np.float32)


def _run(model: Model, frames: np.ndarray) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    state = model.initial_state(frames.shape[1])
    enh, states = [], []
    for spec in frames:
        e, state = model.step(spec, state)
        enh.append(e)
        states.append(state)
    return np.stack(enh), states


def _assert_same(fast: tuple, ref: tuple, frames: np.ndarray) -> None:
    """Enhanced frames equal to float32 rounding, relative to the bin's magnitude above 1
    (as tests/test_gtcrn.py compares ONNX with torch), and every state at every hop, to
    1e-5 of its size above 1 (the caches hold conv outputs of size ~60)."""
    (e1, s1), (e2, s2) = fast, ref
    noisy = np.sqrt((frames**2).sum(axis=-1, keepdims=True))
    assert float((np.abs(e1 - e2) / np.maximum(noisy, 1.0)).max()) <= 1e-5
    for t, (a, b) in enumerate(zip(s1, s2)):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5, err_msg=f"{name} at hop {t}")


@pytest.fixture(scope="module", params=[*FRAMINGS, "shipped"])
def pair(request, tmp_path_factory) -> tuple[str, GTCRN, Model, Model]:
    """(name, torch model, fast ONNX, previous-graph ONNX) for one framing."""
    if request.param == "shipped":
        if not SHIPPED_CKPT.is_file():
            pytest.skip(f"{SHIPPED_CKPT} is not in this checkout")
        model = load_checkpoint(SHIPPED_CKPT)[0]
    else:
        model = _random_model(FRAMINGS[request.param], seed=len(request.param))
    d = tmp_path_factory.mktemp(f"graph-{request.param}")
    fast = export_onnx(model, d / "fast.onnx", model_name="m", model_card="card", extra_metadata={"weights": "raw"})
    prev = export_onnx(model, d / "prev.onnx", model_name="m", model_card="card", extra_metadata={"weights": "raw"},
                       fast=False)
    return request.param, model, Model(fast), Model(prev)


def test_the_contract_is_unchanged(pair):
    _, _, fast, prev = pair
    assert fast.metadata == prev.metadata
    p1, p2 = onnx.load(str(fast.path)), onnx.load(str(prev.path))
    for a, b in ((p1.graph.input, p2.graph.input), (p1.graph.output, p2.graph.output)):
        assert [(v.name, str(v.type)) for v in a] == [(v.name, str(v.type)) for v in b]
    assert p1.opset_import == p2.opset_import
    declared = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in p1.graph.output}
    assert declared["enh"] == ["batch", fast.n_freq, 1, 2]
    for name, shape in zip(fast.state_names, json.loads(fast.metadata["state_shapes"])):
        assert declared[f"{name}_out"] == ["batch" if d == -1 else d for d in shape]
    ops = Counter(n.op_type for n in p1.graph.node)
    # the fast form is the one exported: LeakyRelu for every PReLU, the two one-step GRUs as MatMuls
    assert ops["PRelu"] == 0 and ops["LeakyRelu"] == 15
    assert ops["GRU"] == Counter(n.op_type for n in p2.graph.node)["GRU"] - 2


@pytest.mark.parametrize("batch", [1, 5])
def test_fast_graph_equals_previous_graph(pair, batch):
    _, model, fast, prev = pair
    frames = _streams(model.cfg, batch)
    _assert_same(_run(fast, frames), _run(prev, frames), frames)


def test_a_batch_is_its_streams_run_alone(pair):
    """Each of 5 batched streams of the fast graph = that stream alone at batch 1."""
    _, model, fast, _ = pair
    frames = _streams(model.cfg, 5)
    batched_enh, batched_states = _run(fast, frames)
    for b in (0, 2, 4):
        alone_enh, alone_states = _run(fast, frames[:, b : b + 1])
        picked = [{k: np.take(v, [b], axis=fast.state_batch_axes[i]) for i, (k, v) in enumerate(s.items())}
                  for s in batched_states]
        _assert_same((batched_enh[:, b : b + 1], picked), (alone_enh, alone_states), frames[:, b : b + 1])


def test_torch_fast_form_equals_previous_form(pair):
    """The two torch streaming forms agree too (so the fast graph is the torch function)."""
    _, model, _, _ = pair
    frames = torch.from_numpy(_streams(model.cfg, 3)[:40])
    outs = []
    for fast in (True, False):
        stream = StreamingGTCRN.from_model(model, fast=fast)
        states = stream.initial_states(3)
        enh = []
        with torch.no_grad():
            for spec in frames:
                e, *states = stream(spec, *states)
                enh.append(e)
        outs.append((torch.stack(enh).numpy(), [s.numpy() for s in states]))
    (e1, s1), (e2, s2) = outs
    noisy = np.sqrt((frames.numpy() ** 2).sum(axis=-1, keepdims=True))
    assert float((np.abs(e1 - e2) / np.maximum(noisy, 1.0)).max()) <= 1e-5
    for a, b in zip(s1, s2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
