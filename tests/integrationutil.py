"""Test helpers shared by the pipecat and LiveKit integration tests."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import soundfile as sf

from conftest import IN_CI, REPO

SAMPLE = REPO / "web" / "sample.wav"  # 10 s of noisy speech, 16 kHz mono


def require_extra(module: str, extra: str) -> None:
    """Skip the whole test module when an extra is not installed (fail under CI=true,
    where the README's test command installs every extra)."""
    if importlib.util.find_spec(module) is None:
        reason = f"{module} is not installed; pip install -e '.[{extra}]'"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: this must not be skipped)", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


def sample(rate: int = 16000, seconds: float | None = None) -> np.ndarray:
    """web/sample.wav as int16 at ``rate`` (resampled with voipfilter's own resampler)."""
    x, sr = sf.read(SAMPLE, dtype="float32")
    if seconds is not None:
        x = x[: int(seconds * sr)]
    if rate != sr:
        from voipfilter.resample import StreamingResampler

        x = StreamingResampler(sr, rate).process(x)
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)


def levels_db(x: np.ndarray, rate: int) -> tuple[float, float]:
    """(noise floor, speech level) in dBFS: the 10th and 90th percentiles of the 20 ms
    frame powers. In noisy speech the quietest frames are the noise between words; frames
    of digital silence (a stream's start, a delay line) are not noise and are left out."""
    n = rate // 50
    f = x[: len(x) // n * n].astype(np.float64).reshape(-1, n) / 32768.0
    f = f[np.any(f != 0, axis=1)]
    e = 10.0 * np.log10(np.mean(f * f, axis=1) + 1e-12)
    return float(np.percentile(e, 10)), float(np.percentile(e, 90))


def noise_removed_db(noisy: np.ndarray, out: np.ndarray, rate: int, delay: int) -> float:
    """How far the noise floor of ``out`` (delayed by ``delay``) is below that of ``noisy``."""
    n = min(len(noisy), len(out) - delay)
    return levels_db(noisy[:n], rate)[0] - levels_db(out[delay : delay + n], rate)[0]
