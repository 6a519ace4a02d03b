"""The network is upstream's function: strict loads, offline output, streaming, ONNX."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import require_module

require_module("torch", "train")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from voipfilter.nn import stft as S  # noqa: E402
from voipfilter.nn.checkpoint import load_checkpoint, save_model  # noqa: E402
from voipfilter.nn.config import GTCRNConfig  # noqa: E402
from voipfilter.nn.export import export_onnx  # noqa: E402
from voipfilter.nn.gtcrn import GTCRN, count_parameters, erb_filterbank  # noqa: E402
from voipfilter.nn.streaming import StreamingGTCRN  # noqa: E402

CHECKPOINTS = ["checkpoint_dns3.tar", "checkpoint_dns3_2024-03.tar", "checkpoint_vctk.tar"]


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def demo(reference_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    noisy, sr = sf.read(reference_dir / "demo_noisy.wav", dtype="float32")
    enhanced, sr2 = sf.read(reference_dir / "demo_enhanced_by_checkpoint_dns3_2024-03.wav", dtype="float32")
    assert sr == sr2 == 16000
    return noisy, enhanced


@pytest.fixture(scope="module")
def upstream_model(upstream_checkpoint: Path) -> GTCRN:
    return load_checkpoint(upstream_checkpoint)[0]


@pytest.fixture(scope="module")
def demo_frames(demo, upstream_model) -> torch.Tensor:
    return S.stft(torch.from_numpy(demo[0])[None], upstream_model.cfg)


def test_parameter_count_and_erb_matrix_match_upstream(upstream_checkpoint: Path) -> None:
    model = GTCRN()
    assert count_parameters(model) == 23669
    state = torch.load(upstream_checkpoint, map_location="cpu", weights_only=False)["model"]
    np.testing.assert_array_equal(erb_filterbank(GTCRNConfig()), state["erb.erb_fc.weight"].numpy())


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_strict_load_of_every_upstream_checkpoint(reference_dir: Path, name: str) -> None:
    model, cfg, meta = load_checkpoint(reference_dir / name)
    assert cfg == GTCRNConfig()
    assert meta["source"] == "upstream GTCRN checkpoint"
    assert len(model.state_dict()) == 271


def test_offline_output_matches_upstream_demo(demo, upstream_model) -> None:
    noisy, reference = demo
    cfg = upstream_model.cfg
    with torch.no_grad():
        spec = S.stft(torch.from_numpy(noisy)[None], cfg, pad_mode="reflect")
        out = S.istft(upstream_model(spec), cfg)[0].numpy()
    assert len(out) == len(reference)
    assert np.abs(out - reference).max() <= 1e-4


@pytest.fixture(scope="module")
def torch_streamed(demo_frames, upstream_model) -> np.ndarray:
    """The demo frames through the torch streaming form, hop by hop (one thread: small ops)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stream = StreamingGTCRN.from_model(upstream_model)
        states = stream.initial_states(1)
        out = []
        with torch.no_grad():
            for t in range(demo_frames.shape[2]):
                enh, *states = stream(demo_frames[:, :, t : t + 1], *states)
                out.append(enh.numpy())
    finally:
        torch.set_num_threads(threads)
    return np.concatenate(out, axis=2)


def test_streaming_equals_offline(demo_frames, upstream_model, torch_streamed) -> None:
    assert demo_frames.shape[2] >= 600
    with torch.no_grad():
        offline = upstream_model(demo_frames).numpy()
    # float32 through 611 frames of recurrence, outputs up to ~2: a few ulps (1.0014e-5 seen once)
    assert np.abs(torch_streamed - offline).max() <= 2e-5


@pytest.fixture(scope="module")
def our_onnx(upstream_model, tmp_path_factory) -> Path:
    return export_onnx(upstream_model, tmp_path_factory.mktemp("onnx") / "m.onnx", model_name="t")


def _run_ours(path: Path, frames: np.ndarray) -> np.ndarray:
    sess = _session(path)
    meta = sess.get_modelmeta().custom_metadata_map
    names = json.loads(meta["state_names"])
    shapes = json.loads(meta["state_shapes"])
    states = {n: np.zeros([1 if d == -1 else d for d in s], np.float32) for n, s in zip(names, shapes)}
    outs = ["enh"] + [f"{n}_out" for n in names]
    result = []
    for t in range(frames.shape[2]):
        enh, *new = sess.run(outs, {"spec": frames[:, :, t : t + 1], **states})
        states = dict(zip(names, new))
        result.append(enh)
    return np.concatenate(result, axis=2)


def test_onnx_graph_is_lean_and_self_describing(our_onnx: Path) -> None:
    proto = onnx.load(str(our_onnx))
    ops = [n.op_type for n in proto.graph.node]
    assert "ScatterND" not in ops
    assert len(ops) < 415
    meta = {p.key: p.value for p in proto.metadata_props}
    for key in ("sample_rate", "n_fft", "hop", "window", "state_names", "state_shapes", "model_name", "model_card"):
        assert key in meta
    assert (meta["sample_rate"], meta["n_fft"], meta["hop"]) == ("16000", "512", "256")
    assert len(json.loads(meta["state_names"])) == len(json.loads(meta["state_shapes"]))


def test_onnx_equals_torch_streaming(our_onnx: Path, demo_frames, torch_streamed) -> None:
    ours = _run_ours(our_onnx, demo_frames.numpy())
    # float32 graphs: 1e-5 absolute below magnitude 1, relative above (bins reach ~10)
    assert (np.abs(ours - torch_streamed) / np.maximum(np.abs(torch_streamed), 1.0)).max() <= 1e-5


def test_onnx_equals_upstream_streaming_onnx(our_onnx: Path, demo_frames, reference_dir: Path, upstream_model) -> None:
    frames = demo_frames.numpy()
    ours = _run_ours(our_onnx, frames)
    sess = _session(reference_dir / "stream_dns3_2024-03_simplified.onnx")
    caches = {
        "conv_cache": np.zeros((2, 1, 16, 16, 33), np.float32),
        "tra_cache": np.zeros((2, 3, 1, 1, 16), np.float32),
        "inter_cache": np.zeros((2, 1, 33, 16), np.float32),
    }
    theirs = []
    for t in range(frames.shape[2]):
        enh, *new = sess.run(None, {"mix": frames[:, :, t : t + 1], **caches})
        caches = dict(zip(caches, new))
        theirs.append(enh)
    theirs = np.concatenate(theirs, axis=2)
    # Waveforms (what a listener gets) agree to 1e-5; in the spectrum, both float32 graphs
    # sit ~1e-5 from each other at bins of magnitude ~10 (each is as far from upstream's
    # own torch model), so the spectral check is on the complex mask: |enh diff| / |noisy|.
    cfg = upstream_model.cfg
    wave_ours = S.istft(torch.from_numpy(ours), cfg).numpy()
    wave_theirs = S.istft(torch.from_numpy(theirs), cfg).numpy()
    assert np.abs(wave_ours - wave_theirs).max() <= 1e-5
    noisy_mag = np.sqrt((frames**2).sum(axis=-1, keepdims=True))
    assert (np.abs(ours - theirs) / np.maximum(noisy_mag, 1.0)).max() <= 1e-5


def test_export_of_our_own_checkpoint_roundtrips(tmp_path: Path) -> None:
    cfg = GTCRNConfig()
    torch.manual_seed(0)
    model = GTCRN(cfg).eval()
    save_model(tmp_path / "ours.pt", model, meta={"step": 3})
    loaded, cfg2, meta = load_checkpoint(tmp_path / "ours.pt")
    assert cfg2 == cfg and meta["step"] == 3 and meta["source"] == "voipfilter"
    path = export_onnx(loaded, tmp_path / "ours.onnx", model_name="ours")
    frames = S.stft(torch.randn(1, 16000) * 0.1, cfg)
    with torch.no_grad():
        offline = loaded(frames).numpy()
    assert np.abs(_run_ours(path, frames.numpy()) - offline).max() <= 1e-5


def test_onnx_batch_dimension_is_dynamic(our_onnx: Path) -> None:
    sess = _session(our_onnx)
    meta = sess.get_modelmeta().custom_metadata_map
    names, shapes = json.loads(meta["state_names"]), json.loads(meta["state_shapes"])
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((3, 257, 1, 2)).astype(np.float32)
    states = {n: np.zeros([3 if d == -1 else d for d in s], np.float32) for n, s in zip(names, shapes)}
    enh, *_ = sess.run(None, {"spec": frames, **states})
    single = [
        sess.run(None, {"spec": frames[i : i + 1], **{n: v[[i]] if shapes[k][0] == -1 else v[:, [i]]
                                                        for k, (n, v) in enumerate(states.items())}})[0]
        for i in range(3)
    ]
    np.testing.assert_allclose(enh, np.concatenate(single), atol=1e-5)


def test_average_of_checkpoints(tmp_path, capsys):
    """`voipfilter average` writes the mean of the weights (fixed ones stay exact), keeps
    integer buffers, refuses other networks and missing files, and export reads it."""
    from voipfilter.cli import main

    torch.manual_seed(0)
    a, b = GTCRN(), GTCRN()
    save_model(tmp_path / "a.pt", a, {"step": 10, "audio_hours": 1.0})
    save_model(tmp_path / "b.pt", b, {"step": 20, "audio_hours": 2.0})
    out = tmp_path / "mean.pt"
    assert main(["average", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "-o", str(out)]) == 0
    model, cfg, meta = load_checkpoint(out)
    sa, sb, sm = a.state_dict(), b.state_dict(), model.state_dict()
    for key, value in sm.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (sa[key] + sb[key]) / 2)
        else:
            assert torch.equal(value, sa[key])
    torch.testing.assert_close(sm["erb.erb_fc.weight"], sa["erb.erb_fc.weight"], rtol=0, atol=0)
    assert not torch.equal(sm["encoder.en_convs.0.conv.weight"], sa["encoder.en_convs.0.conv.weight"])
    assert meta["source"] == "voipfilter average" and [s["step"] for s in meta["averaged"]] == [10, 20]
    assert main(["export", "--checkpoint", str(out), "-o", str(tmp_path / "mean.onnx")]) == 0

    save_model(tmp_path / "other.pt", GTCRN(GTCRNConfig(channels=8)))
    capsys.readouterr()
    assert main(["average", str(tmp_path / "a.pt"), str(tmp_path / "other.pt"), "-o", str(out)]) == 2
    assert "same configuration" in capsys.readouterr().err
    assert main(["average", str(tmp_path / "a.pt"), str(tmp_path / "missing.pt"), "-o", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["average", str(tmp_path / "a.pt"), "-o", str(out)]) == 2
    assert "at least two" in capsys.readouterr().err


def _grads(params, out: torch.Tensor, probe: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad((out * probe).sum(), params))


@pytest.mark.parametrize("dilation", [1, 5])
@pytest.mark.parametrize("kind", ["pointwise", "depthwise"])
def test_fast_conv_is_the_transposed_conv(kind: str, dilation: int) -> None:
    """The decoder's stride-1 transposed convs, computed as ordinary convs for speed, give
    the transposed conv's output and gradients (weights, bias and input)."""
    from voipfilter.nn.gtcrn import GTConvBlock, conv2d

    torch.manual_seed(0)
    block = GTConvBlock(16, 16, dilation=dilation, transposed=True)
    conv = block.point_conv1 if kind == "pointwise" else block.depth_conv
    x = torch.randn(3, conv.in_channels, 20 + 2 * dilation, 33, requires_grad=True)
    ref, fast = conv(x), conv2d(conv, x)
    assert fast.shape == ref.shape
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    probe = torch.randn_like(ref)
    params = [conv.weight, conv.bias, x]
    for g_fast, g_ref in zip(_grads(params, fast, probe), _grads(params, ref, probe)):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_grouped_gru_as_one_block_diagonal_gru(bidirectional: bool) -> None:
    """GRNN runs its two group GRUs as one GRU with block-diagonal weights: output, final
    state and the gradients of both GRUs' own parameters equal running them apart."""
    from voipfilter.nn.gtcrn import GRNN

    torch.manual_seed(0)
    grnn = GRNN(16, 16 if not bidirectional else 8, bidirectional=bidirectional)
    x = torch.randn(5, 30, 16)
    h0 = torch.randn(2 if bidirectional else 1, 5, grnn.hidden_size)

    def apart():
        y1, h1 = grnn.rnn1(x[..., :8], h0[..., : grnn.hidden_size // 2].contiguous())
        y2, h2 = grnn.rnn2(x[..., 8:], h0[..., grnn.hidden_size // 2 :].contiguous())
        return torch.cat([y1, y2], -1), torch.cat([h1, h2], -1)

    (y, h), (y_ref, h_ref) = grnn(x, h0), apart()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)
    probe = torch.randn_like(y_ref)
    params = list(grnn.parameters())
    for g, g_ref in zip(_grads(params, y, probe), _grads(params, y_ref, probe)):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)
