"""Small soundfile helpers: read mono float32, write 16-bit PCM without wrapping, atomically."""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

__all__ = ["AudioFileError", "read_mono", "to_int16", "write_wav16", "probe"]


class AudioFileError(ValueError):
    """A file that cannot be used: missing, unreadable, or at an unsupported rate."""


def probe(path: str | os.PathLike) -> tuple[int, int, int]:
    """(sample_rate, channels, frames) of an audio file, or AudioFileError."""
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise AudioFileError(f"{path}: no such file")
    if not path.is_file():
        raise AudioFileError(f"{path}: not a file")
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError
        raise AudioFileError(f"{path}: cannot read audio ({exc})") from None
    return int(info.samplerate), int(info.channels), int(info.frames)


def read_mono(path: str | os.PathLike, downmix_warning: bool = True) -> tuple[np.ndarray, int]:
    """Read a file as mono float32 in [-1, 1); multichannel is averaged (with a warning)."""
    import soundfile as sf

    path = Path(path)
    probe(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioFileError(f"{path}: cannot read audio ({exc})") from None
    if data.shape[1] > 1:
        if downmix_warning:
            warnings.warn(f"{path}: {data.shape[1]} channels, downmixed to mono", stacklevel=2)
        x = data.mean(axis=1, dtype=np.float32)
    else:
        x = data[:, 0]
    return np.ascontiguousarray(x, dtype=np.float32), int(rate)


def to_int16(y: np.ndarray) -> np.ndarray:
    """float [-1, 1) → int16, rounded and clipped (never wraps)."""
    return np.clip(np.rint(np.asarray(y, dtype=np.float32) * np.float32(32768.0)), -32768, 32767).astype(np.int16)


def write_wav16(path: str | os.PathLike, y: np.ndarray, sample_rate: int) -> Path:
    """Write mono 16-bit PCM WAV atomically (temp file in the same folder, then rename)."""
    import soundfile as sf

    path = Path(path)
    data = y if y.dtype == np.int16 else to_int16(y)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".wav.part", dir=str(path.parent))
    os.close(fd)
    try:
        sf.write(tmp, data, int(sample_rate), subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
