"""PyAV audio frames to mono float32 and back, for the aiortc track.

Any sample format and channel count comes in (:func:`frame_to_mono`); s16 mono or stereo
with the input frame's rate and timestamps goes out (:func:`mono_to_frame`).
"""
from __future__ import annotations

import av
import numpy as np

_INT_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0}
_S16_MEAN2 = np.float32(1.0 / 65536.0)  # (a + b) / 2 / 32768, exact in float32
_S16_SCALE = np.float32(1.0 / 32768.0)


def frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """Any PyAV audio frame → mono float32 in [-1, 1] (channels averaged; NaN/inf → 0/±1)."""
    n = frame.samples
    if n == 0:
        return np.zeros(0, np.float32)
    channels = frame.layout.nb_channels
    if frame.format.name == "s16" and channels <= 2:
        # What aiortc's decoders give, read straight from the plane: the same float32
        # values as the general path below (every step is exact), at a fifth of the cost.
        a = np.frombuffer(frame.planes[0], dtype=np.int16, count=n * channels)
        if channels == 1:
            return a.astype(np.float32) * _S16_SCALE
        x = a[0::2].astype(np.float32)
        x += a[1::2]
        x *= _S16_MEAN2
        return x
    arr = frame.to_ndarray()
    if not frame.format.is_planar:
        arr = arr.reshape(n, channels).T
    if arr.dtype in _INT_SCALE:
        x = arr.astype(np.float32) * np.float32(1.0 / _INT_SCALE[arr.dtype])
    elif arr.dtype == np.uint8:
        x = (arr.astype(np.float32) - 128.0) * np.float32(1.0 / 128.0)
    else:
        x = arr.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
        x = np.clip(x, -1.0, 1.0)
    if channels == 1:
        mono = x[0]
    elif channels == 2:
        mono = (x[0] + x[1]) * np.float32(0.5)
    else:
        mono = x.mean(axis=0, dtype=np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)


def mono_to_frame(y: np.ndarray, channels: int, like: av.AudioFrame) -> av.AudioFrame:
    """float32 mono → s16 frame of ``channels`` (1 or 2, identical channels) with ``like``'s
    sample rate, pts and time_base (written straight into the new frame's plane)."""
    n = len(y)
    z = np.multiply(y, np.float32(32768.0), dtype=np.float32)
    np.rint(z, out=z)
    np.minimum(z, 32767.0, out=z)
    np.maximum(z, -32768.0, out=z)
    q = z.astype(np.int16)
    out = av.AudioFrame(format="s16", layout="stereo" if channels == 2 else "mono", samples=n)
    if n:
        if channels == 2:
            v = np.frombuffer(out.planes[0], dtype=np.int16, count=2 * n)
            v[0::2] = q
            v[1::2] = q
        else:
            np.frombuffer(out.planes[0], dtype=np.int16, count=n)[:] = q
    out.sample_rate = like.sample_rate
    out.pts = like.pts
    tb = like.time_base
    if tb is not None:
        out.time_base = tb
    return out
