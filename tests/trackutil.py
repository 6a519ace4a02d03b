"""Test helpers for NoiseSuppressionTrack: synthetic frames, fake and tapping tracks."""
from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

# format -> (numpy dtype, planar, full scale)
FORMATS = {
    "s16": (np.int16, False),
    "s16p": (np.int16, True),
    "s32": (np.int32, False),
    "s32p": (np.int32, True),
    "flt": (np.float32, False),
    "fltp": (np.float32, True),
    "dbl": (np.float64, False),
    "dblp": (np.float64, True),
    "u8": (np.uint8, False),
}


def encode_samples(x: np.ndarray, dtype) -> np.ndarray:
    """float samples in [-1, 1] → the given numpy sample type (full scale)."""
    if dtype == np.int16:
        return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)
    if dtype == np.int32:
        return np.clip(np.rint(x.astype(np.float64) * 2147483648.0), -2147483648, 2147483647).astype(np.int32)
    if dtype == np.uint8:
        return np.clip(np.rint(x * 128.0 + 128.0), 0, 255).astype(np.uint8)
    return x.astype(dtype)


def make_frame(
    x: np.ndarray,
    rate: int,
    pts: int | None,
    fmt: str = "s16",
    layout: str = "stereo",
    time_base: fractions.Fraction | None = None,
) -> av.AudioFrame:
    """A frame whose every channel carries ``x`` (float, mono, [-1, 1]); ``x`` may also be
    (channels, n) for different channels."""
    dtype, planar = FORMATS[fmt]
    channels = av.AudioLayout(layout).nb_channels
    xs = np.asarray(x)
    if xs.ndim == 1:
        xs = np.repeat(xs[None, :], channels, axis=0)
    data = encode_samples(xs, dtype)
    arr = data if planar else data.T.reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format=fmt, layout=layout)
    frame.sample_rate = rate
    frame.pts = pts
    if time_base is not None or pts is not None:
        frame.time_base = time_base if time_base is not None else fractions.Fraction(1, rate)
    return frame


def frames_of(x: np.ndarray, rate: int, n: int, fmt="s16", layout="stereo", pts0: int = 0) -> list[av.AudioFrame]:
    return [make_frame(x[i : i + n], rate, pts0 + i, fmt, layout) for i in range(0, len(x) - n + 1, n)]


def out_mono(frames) -> np.ndarray:
    """Output s16 frames (mono or identical-stereo) → one float array."""
    parts = []
    for f in frames:
        assert f.format.name == "s16"
        a = f.to_ndarray().astype(np.float32) / 32768.0 if f.samples else np.zeros((1, 0), np.float32)
        ch = f.layout.nb_channels
        parts.append(a.reshape(-1, ch)[:, 0] if f.samples else np.zeros(0, np.float32))
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class FakeSource(MediaStreamTrack):
    """Yields the given frames, then ends. ``pace``: sleep that long before each frame
    (None: frames are ready at once, like a file read as fast as possible)."""

    kind = "audio"

    def __init__(self, frames, pace: float | None = None):
        super().__init__()
        self.frames = list(frames)
        self.pace = pace

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        if self.pace:
            await asyncio.sleep(self.pace)
        if not self.frames:
            self.stop()
            raise MediaStreamError
        return self.frames.pop(0)


class LiveSource(MediaStreamTrack):
    """Frames produced at real time into an unbounded queue (like aiortc's remote track).
    ``sent[i]`` is the wall time frame i was produced."""

    kind = "audio"

    def __init__(self, frames):
        super().__init__()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.sent: dict[int, float] = {}
        self._frames = list(frames)
        self._task = asyncio.ensure_future(self._produce())

    async def _produce(self):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        media = 0.0
        for f in self._frames:
            delay = t0 + media - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.sent[f.pts] = time.monotonic()
            self.queue.put_nowait(f)
            media += f.samples / f.sample_rate
        self.queue.put_nowait(None)

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        f = await self.queue.get()
        if f is None:
            self.stop()
            raise MediaStreamError
        return f

    def stop(self):
        super().stop()
        self._task.cancel()


class Tap(MediaStreamTrack):
    """Passes another track's frames through, keeping (pts, samples, rate, mono audio)."""

    kind = "audio"

    def __init__(self, track, keep_audio: bool = True):
        super().__init__()
        self.track = track
        self.keep_audio = keep_audio
        self.meta: list[tuple] = []
        self.audio: list[np.ndarray] = []

    async def recv(self):
        try:
            f = await self.track.recv()
        except MediaStreamError:
            self.stop()
            raise
        self.meta.append((f.pts, f.samples, f.sample_rate, f.time_base))
        if self.keep_audio:
            a = f.to_ndarray()
            ch = f.layout.nb_channels
            if f.format.name == "s16" and not f.format.is_planar:
                self.audio.append(a.reshape(-1, ch).mean(axis=1).astype(np.float32) / 32768.0)
        return f

    def mono(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)


async def drain(track, limit: int | None = None, timeout: float = 30.0) -> list[av.AudioFrame]:
    """recv() until the track ends (or ``limit`` frames)."""
    out = []

    async def _go():
        while limit is None or len(out) < limit:
            try:
                out.append(await track.recv())
            except MediaStreamError:
                return

    await asyncio.wait_for(_go(), timeout)
    return out


def assert_invariants(inp, out) -> None:
    """One s16 output frame per input frame, with the input's size, rate, pts and time_base."""
    assert len(out) == len(inp)
    for i, o in zip(inp, out):
        assert o.format.name == "s16"
        assert o.samples == i.samples
        assert o.sample_rate == i.sample_rate
        assert o.pts == i.pts
        assert o.time_base == i.time_base
