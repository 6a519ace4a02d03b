"""PyAV audio frames to mono float32 and back, for the aiortc track.

Any sample format and channel count comes in (:func:`frame_to_mono`); s16 mono or stereo
with the input frame's rate and timestamps goes out (:func:`mono_to_frame`).
"""
from __future__ import annotations

import av
import numpy as np

_INT_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0}


def frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """Any PyAV audio frame → mono float32 in [-1, 1] (channels averaged; NaN/inf → 0/±1)."""
    n = frame.samples
    if n == 0:
        return np.zeros(0, np.float32)
    channels = frame.layout.nb_channels
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
    sample rate, pts and time_base."""
    y16 = np.clip(np.rint(y * 32768.0), -32768, 32767).astype(np.int16)
    if channels == 2:
        data = np.repeat(y16, 2)[None, :]
        layout = "stereo"
    else:
        data = y16[None, :]
        layout = "mono"
    out = av.AudioFrame.from_ndarray(data, format="s16", layout=layout)
    out.sample_rate = like.sample_rate
    out.pts = like.pts
    if like.time_base is not None:
        out.time_base = like.time_base
    return out
