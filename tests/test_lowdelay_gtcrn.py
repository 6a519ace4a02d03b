"""GTCRN on the low-delay framing (asymmetric 512/256 windows, hop 128): torch STFT = run-time
STFT, streaming = offline, ONNX export = torch streaming form, Denoiser = offline waveform."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import require_module

require_module("torch", "train")

import torch  # noqa: E402

from voipfilter import Denoiser, Model  # noqa: E402
from voipfilter.nn import stft as S  # noqa: E402
from voipfilter.nn.config import GTCRNConfig  # noqa: E402
from voipfilter.nn.export import export_onnx  # noqa: E402
from voipfilter.nn.gtcrn import GTCRN  # noqa: E402
from voipfilter.nn.streaming import StreamingGTCRN  # noqa: E402
from voipfilter.stft import ASYMMETRIC, analysis_frames  # noqa: E402

CFG = GTCRNConfig(hop=128, window=ASYMMETRIC)


def _signal(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    x = np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t)) + 0.3 * rng.standard_normal(n)
    return (0.2 * x).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> GTCRN:
    torch.manual_seed(0)
    net = GTCRN(CFG)
    # random BN statistics, so that every layer is exercised, then inference mode
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("ll") / "ll.onnx", model_name="ll-test")


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    return S.stft(torch.from_numpy(_signal(16000 * 2))[None], CFG)


def test_torch_frames_are_the_streaming_frames():
    x = _signal(128 * 50 + 31, 1)
    torch_frames = S.stft(torch.from_numpy(x)[None], CFG).numpy()
    stream = analysis_frames(x, windows=CFG.window_pair())
    assert torch_frames.shape[2] == len(x) // 128 + 1
    np.testing.assert_allclose(torch_frames[:, :, : stream.shape[2]], stream, atol=2e-5)


def test_torch_istft_reconstructs_and_reflect_padding_is_refused():
    x = torch.from_numpy(_signal(128 * 40 + 77, 2))[None]
    np.testing.assert_allclose(S.istft(S.stft(x, CFG), CFG, x.shape[-1]).numpy(), x.numpy(), atol=2e-6)
    with pytest.raises(ValueError, match="sqrt_hann_periodic"):
        S.stft(x, CFG, pad_mode="reflect")


def test_config_validation():
    CFG.validate()
    with pytest.raises(ValueError, match="known"):
        GTCRNConfig(window="kaiser").validate()
    with pytest.raises(ValueError, match="n_fft/2"):
        GTCRNConfig(hop=128).validate()  # sqrt-Hann at 75 % overlap is not a framing we train


def _mask_error(a: np.ndarray, b: np.ndarray, frames: torch.Tensor) -> float:
    """Largest difference of two enhanced spectra relative to the noisy magnitude (at least
    1): the difference of the complex masks, where float32 rounding of big bins is not."""
    noisy = np.sqrt((frames.numpy() ** 2).sum(axis=-1, keepdims=True))
    return float((np.abs(a - b) / np.maximum(noisy, 1.0)).max())


def _torch_streamed(model: GTCRN, frames: torch.Tensor) -> np.ndarray:
    stream = StreamingGTCRN.from_model(model)
    states = stream.initial_states(1)
    out = []
    with torch.no_grad():
        for t in range(frames.shape[2]):
            enh, *states = stream(frames[:, :, t : t + 1], *states)
            out.append(enh.numpy())
    return np.concatenate(out, axis=2)


def test_streaming_equals_offline(model, frames):
    with torch.no_grad():
        offline = model(frames).numpy()
    streamed = _torch_streamed(model, frames)
    assert frames.shape[2] == 251
    assert _mask_error(streamed, offline, frames) <= 1e-5


def test_onnx_export_equals_torch_streaming(model, exported, frames):
    m = Model(exported)
    assert m.windows.kind == ASYMMETRIC and (m.n_fft, m.hop) == (512, 128)
    assert json.loads(m.metadata["gtcrn_config"])["window"] == ASYMMETRIC
    streamed = _torch_streamed(model, frames)
    state = m.initial_state(1)
    ours = []
    for t in range(frames.shape[2]):
        enh, state = m.step(np.ascontiguousarray(frames[:, :, t : t + 1].numpy()), state)
        ours.append(enh)
    assert _mask_error(np.concatenate(ours, axis=2), streamed, frames) <= 1e-5


def test_denoiser_waveform_equals_offline_torch(model, exported):
    """The run-time stream (numpy STFT + ONNX, odd chunks) is the offline torch pipeline
    (stft -> GTCRN -> istft) delayed by exactly delay_samples = 255 at 16 kHz."""
    x = _signal(16000 * 2, 3)
    with torch.no_grad():
        offline = S.istft(model(S.stft(torch.from_numpy(x)[None], CFG)), CFG, len(x))[0].numpy()
    den = Denoiser(exported, 16000)
    d = den.delay_samples
    assert d == 255
    y = np.concatenate([den.process(c) for c in np.array_split(x, 97)])
    # the last partial hop of the offline signal is synthesised from one frame only
    n = len(x) - 128
    assert np.abs(y[d:n] - offline[: n - d]).max() <= 1e-5
    assert np.abs(offline).max() > 1e-3  # the model does something
