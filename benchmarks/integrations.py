#!/usr/bin/env python3
"""Delay and CPU of the pipecat filter and the LiveKit processor, beside the bare Denoiser.

Feeds web/sample.wav (noisy speech) frame by frame, as each framework hands it over:
pipecat 20 ms mono frames of 16-bit PCM (``await NoiseSuppressionFilter.filter``, the model
in voipfilter's thread pool), LiveKit 10 ms ``rtc.AudioFrame``s, mono and stereo
(``NoiseSuppression._process``, inline as ``AudioStream`` calls it). Frames of the bare
``Denoiser.process`` (one per channel) are interleaved with the wrapper's in the same run,
so both see the same machine load. Times are CPU time (``time.process_time``: every thread
of the process), not wall time, so that other work on a shared machine does not count;
for pipecat also the CPU time of the event-loop thread alone (``time.thread_time``), the
part of a frame that blocks the loop. Prints ms per frame (median, 95th percentile), the
real-time factor (CPU time / audio time) and the delay; then ``--streams`` pipecat filters
run concurrently on one event loop, as many calls in one process do: CPU seconds per
second of audio per stream.

    python benchmarks/integrations.py [--seconds 10] [--streams 1 8 32]

Needs the extras ``pipecat`` and ``livekit``.
"""
from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from voipfilter import Denoiser
from voipfilter.resample import StreamingResampler

SAMPLE = Path(__file__).resolve().parents[1] / "web" / "sample.wav"
RATES = (16000, 24000, 48000)


def load(rate: int, seconds: float) -> np.ndarray:
    x, sr = sf.read(SAMPLE, dtype="float32")
    x = np.tile(x, int(np.ceil(seconds * sr / len(x))))[: int(seconds * sr)]
    if rate != sr:
        x = StreamingResampler(sr, rate).process(x)
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)


def stats(times: list[float], frame_s: float) -> str:
    """'median p95 RTF' of per-frame times in seconds."""
    t = np.array(times) * 1000.0
    return f"{np.median(t):6.3f} {np.percentile(t, 95):6.3f} {t.sum() / (len(t) * frame_s * 1000.0):6.3f}"


async def bench_pipecat(rate: int, seconds: float) -> None:
    from voipfilter.integrations.pipecat import NoiseSuppressionFilter

    x = load(rate, seconds)
    n = rate // 50
    f = NoiseSuppressionFilter()
    await f.start(rate)
    den = Denoiser(sample_rate=rate)
    t_f, t_loop, t_d = [], [], []
    for i in range(0, len(x) - n + 1, n):
        chunk = x[i : i + n]
        c0, l0 = time.process_time(), time.thread_time()
        await f.filter(chunk.tobytes())
        c1, l1 = time.process_time(), time.thread_time()
        den.process(chunk)
        c2 = time.process_time()
        t_f.append(c1 - c0)
        t_loop.append(l1 - l0)
        t_d.append(c2 - c1)
    print(f"pipecat  {rate:5d} 1  20 ms | filter {stats(t_f, 0.02)} | Denoiser {stats(t_d, 0.02)} | "
          f"loop thread {stats(t_loop, 0.02)} | delay {f.delay_samples} ({f.delay_ms:.2f} ms)")


def bench_livekit(rate: int, channels: int, seconds: float) -> None:
    from livekit import rtc

    from voipfilter.integrations.livekit import NoiseSuppression

    x = load(rate, seconds)
    xs = np.stack([x] * channels, axis=1)
    n = rate // 100
    nc = NoiseSuppression()
    dens = [Denoiser(sample_rate=rate) for _ in range(channels)]
    t_p, t_d = [], []
    for i in range(0, len(x) - n + 1, n):
        frame = rtc.AudioFrame(xs[i : i + n].tobytes(), rate, channels, n)
        t0 = time.process_time()
        nc._process(frame)
        t1 = time.process_time()
        for c, den in enumerate(dens):
            den.process(np.ascontiguousarray(xs[i : i + n, c]))
        t2 = time.process_time()
        t_p.append(t1 - t0)
        t_d.append(t2 - t1)
    print(f"livekit  {rate:5d} {channels}  10 ms | _process {stats(t_p, 0.01)} | Denoiser {stats(t_d, 0.01)} | "
          f"delay {nc.delay_samples} ({nc.delay_ms:.2f} ms)")


async def bench_streams(k: int, rate: int, seconds: float) -> None:
    """k filters fed concurrently (offline, as fast as they go): CPU seconds per audio second
    per stream, and audio seconds per wall second (this one depends on free cores)."""
    from voipfilter.integrations.pipecat import NoiseSuppressionFilter

    x = load(rate, seconds)
    n = rate // 50
    filters = [NoiseSuppressionFilter() for _ in range(k)]
    for f in filters:
        await f.start(rate)

    async def run(f):
        for i in range(0, len(x) - n + 1, n):
            await f.filter(x[i : i + n].tobytes())

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(run(f) for f in filters))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"streams {k:3d} x {rate} Hz pipecat filters on one loop: {cpu / (k * seconds):.3f} CPU s per audio s "
          f"per stream; {k * seconds / wall:6.1f} audio s per wall s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="audio per configuration")
    ap.add_argument("--streams", type=int, nargs="*", default=[1, 8, 32], help="concurrent pipecat filters")
    args = ap.parse_args()
    print("columns: framework, rate, channels, frame | wrapper CPU ms/frame median, p95, RTF | the same for the "
          "bare Denoiser(s) [| pipecat: the event-loop thread's share]")
    for rate in RATES:
        asyncio.run(bench_pipecat(rate, args.seconds))
    for rate in RATES:
        for channels in (1, 2):
            bench_livekit(rate, channels, args.seconds)
    for k in args.streams:
        asyncio.run(bench_streams(k, 16000, args.seconds))


if __name__ == "__main__":
    main()
