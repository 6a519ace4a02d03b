"""DNSMOS P.835 (SIG, BAK, OVRL) and P.808 with the ONNX models the ``speechmos`` package ships.

``speechmos`` (PyPI, Microsoft's DNS/AEC challenge organisers) carries the DNSMOS ONNX
files inside its wheel, so scoring works offline. Its own ``dnsmos`` module imports
librosa (only for a mel spectrogram) and requests without declaring them; this module
loads the same ONNX files with onnxruntime and computes that mel spectrogram with numpy,
exactly as librosa >= 0.10 does (``tests/test_metrics.py`` compares the two when librosa
is installed). The scoring procedure (9.01 s windows, 1 s hop, polynomial calibration,
mean over windows) is speechmos's / the DNS challenge's ``dnsmos_local.py``.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

SR = 16000
INPUT_LENGTH = 9.01


def model_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("speechmos")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("speechmos is not installed: pip install 'voipfilter[eval]'", name="speechmos")
    return Path(spec.origin).parent / "dnsmos_models"


@functools.lru_cache(maxsize=1)
def _sessions():
    import onnxruntime as ort

    d = model_dir()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    primary = ort.InferenceSession(str(d / "sig_bak_ovr.onnx"), opts, providers=["CPUExecutionProvider"])
    p808 = ort.InferenceSession(str(d / "model_v8.onnx"), opts, providers=["CPUExecutionProvider"])
    return primary, p808


def _hz_to_mel(f):
    f = np.asanyarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz(m):
    m = np.asanyarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), freqs)


@functools.lru_cache(maxsize=4)
def mel_filterbank(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels) (Slaney scale and norm)."""
    fftfreqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2.0), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fftfreqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, None]
    return weights.astype(np.float32)


def melspec_db(audio: np.ndarray, n_mels: int = 120, frame_size: int = 320, hop: int = 160, sr: int = SR) -> np.ndarray:
    """speechmos's audio_melspec: (frames, n_mels), (power_to_db(ref=max) + 40) / 40."""
    n_fft = frame_size + 1
    # librosa.stft: centred, zero padding (librosa >= 0.10), periodic Hann
    y = np.asarray(audio, dtype=np.float64)
    pad = n_fft // 2
    y = np.pad(y, (pad, pad), mode="constant")
    n_frames = 1 + (len(y) - n_fft) // hop
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    spec = np.fft.rfft(y[idx] * win, axis=1)
    power = np.abs(spec) ** 2  # (frames, bins)
    mel = power @ mel_filterbank(sr, n_fft, n_mels).astype(np.float64).T  # (frames, mels)
    amin, top_db = 1e-10, 80.0
    log_spec = 10.0 * np.log10(np.maximum(amin, mel))
    log_spec -= 10.0 * np.log10(np.maximum(amin, mel.max()))
    log_spec = np.maximum(log_spec, log_spec.max() - top_db)
    return (log_spec + 40.0) / 40.0


def _polyfit(sig, bak, ovr):
    p_ovr = np.poly1d([-0.06766283, 1.11546468, 0.04602535])
    p_sig = np.poly1d([-0.08397278, 1.22083953, 0.0052439])
    p_bak = np.poly1d([-0.13166888, 1.60915514, -0.39604546])
    return p_sig(sig), p_bak(bak), p_ovr(ovr)


def dnsmos(audio: np.ndarray, sr: int = SR) -> dict[str, float]:
    """{'ovrl', 'sig', 'bak', 'p808'} for a 16 kHz mono float signal in [-1, 1]."""
    if sr != SR:
        raise ValueError(f"DNSMOS needs {SR} Hz audio, got {sr}")
    primary, p808 = _sessions()
    audio = np.clip(np.asarray(audio, dtype=np.float64), -1.0, 1.0)
    len_samples = int(INPUT_LENGTH * sr)
    if len(audio) == 0:
        raise ValueError("empty signal")
    while len(audio) < len_samples:
        audio = np.append(audio, audio)
    num_hops = int(np.floor(len(audio) / sr) - INPUT_LENGTH) + 1
    sig_l, bak_l, ovr_l, p808_l = [], [], [], []
    for idx in range(num_hops):
        seg = audio[int(idx * sr) : int((idx + INPUT_LENGTH) * sr)]
        if len(seg) < len_samples:
            continue
        x = seg.astype(np.float32)[None, :]
        mel = melspec_db(seg[:-160]).astype(np.float32)[None]
        p = p808.run(None, {"input_1": mel})[0][0][0]
        s, b, o = primary.run(None, {"input_1": x})[0][0]
        s, b, o = _polyfit(s, b, o)
        sig_l.append(s)
        bak_l.append(b)
        ovr_l.append(o)
        p808_l.append(p)
    return {
        "ovrl": float(np.mean(ovr_l)),
        "sig": float(np.mean(sig_l)),
        "bak": float(np.mean(bak_l)),
        "p808": float(np.mean(p808_l)),
    }
