"""Small soundfile helpers: read mono float32, and write mono audio files atomically with the
permissions an ordinary write gives (new files: 0666 less the umask; overwritten files keep
their mode)."""
from __future__ import annotations

import contextlib
import io
import os
import secrets
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = [
    "AudioFileError",
    "read_mono",
    "to_int16",
    "probe",
    "output_format",
    "check_writable",
    "replacing",
    "open_output",
]


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


_ALIASES = {"AIF": ("AIFF", "PCM_16"), "OGA": ("OGG", "VORBIS"), "OPUS": ("OGG", "OPUS")}


def output_format(path: str | os.PathLike) -> tuple[str, str]:
    """(format, subtype) soundfile writes for ``path``'s extension: 16-bit PCM where the
    format has it (wav, flac, aiff...), else the format's own default (ogg: Vorbis, mp3).
    Also .aif, .oga and .opus (Ogg Opus). AudioFileError names the extensions that work."""
    import soundfile as sf

    ext = Path(path).suffix.lstrip(".").upper()
    if ext in _ALIASES:
        return _ALIASES[ext]
    formats = sf.available_formats()
    if ext not in formats:
        known = ", ".join("." + f.lower() for f in sorted(formats))
        what = f"'.{ext.lower()}'" if ext else "no extension"
        raise AudioFileError(f"{path}: cannot write an audio file with {what}; soundfile writes {known}")
    subtype = "PCM_16" if sf.check_format(ext, "PCM_16") else sf.default_subtype(ext)
    return ext, subtype


def check_writable(path: str | os.PathLike, sample_rate: int) -> tuple[str, str]:
    """``output_format(path)``, checked by opening that format at ``sample_rate`` in memory
    (some formats take only some rates), so a run fails before it computes anything."""
    import soundfile as sf

    fmt, subtype = output_format(path)
    try:
        with sf.SoundFile(io.BytesIO(), "w", int(sample_rate), 1, subtype, format=fmt):
            pass
    except Exception as exc:
        raise AudioFileError(f"{path}: cannot write {fmt.lower()} ({subtype}) at {sample_rate} Hz ({exc})") from None
    return fmt, subtype


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A new temporary path beside ``path`` that replaces ``path`` when the block succeeds
    and is removed when it fails or is interrupted, so ``path`` is never half-written.

    The temporary file is created with mode 0666 less the umask, as ``open()`` creates a
    file; when ``path`` exists its mode (and owner, where allowed) is carried over. A symlink
    is written through, as ``open()`` would.
    """
    target = Path(os.path.realpath(path))
    try:
        old = os.stat(target)
    except FileNotFoundError:
        old = None
    tmp = None
    try:
        for _ in range(100):
            name = target.parent / f".{target.name}.{secrets.token_hex(4)}.part"
            try:
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                continue
            tmp = name
            break
        else:
            raise FileExistsError(f"no free temporary name beside {target}")
        yield tmp
        if old is not None:
            os.chmod(tmp, old.st_mode & 0o7777)
            if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                with contextlib.suppress(OSError):
                    os.chown(tmp, old.st_uid, old.st_gid)
        os.replace(tmp, target)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


@contextlib.contextmanager
def open_output(path: str | os.PathLike, sample_rate: int) -> Iterator["OutputFile"]:
    """A mono output file in ``path``'s format, written to a temporary file and renamed into
    place on success (see :func:`replacing`); ``write(y)`` takes float [-1, 1) blocks."""
    import soundfile as sf

    fmt, subtype = output_format(path)
    with replacing(path) as tmp, sf.SoundFile(str(tmp), "w", int(sample_rate), 1, subtype, format=fmt) as f:
        yield OutputFile(f, subtype == "PCM_16")


class OutputFile:
    """Blocks to an open soundfile: 16-bit PCM rounded and clipped by :func:`to_int16` (never
    wraps), other subtypes as float clipped to [-1, 1]."""

    def __init__(self, f, pcm16: bool):
        self._f = f
        self._pcm16 = pcm16

    def write(self, y: np.ndarray) -> None:
        if len(y):
            self._f.write(to_int16(y) if self._pcm16 else np.clip(y, -1.0, 1.0))

