"""How many 48 kHz calls one CPU core keeps in real time with NoiseSuppressionTrack.

Not a test: a measurement, recorded in docs/benchmarks-tracks.md.

The whole process (event loop, the track thread pool, onnxruntime with one intra-op thread)
is pinned to one core. For N = 1, 2, 3, ... N tracks run at once, each fed like aiortc
feeds a remote audio track: a 20 ms, 48 kHz, s16 stereo frame every 20 ms into an unbounded
asyncio queue (random phase per call), and each pulled by its own consumer task (like the
RTP sender's encoder loop). A load is *real time* when, over the run, no frame was
dropped by the backlog policy and the 99th percentile of the frame latency (queued → out
of recv()) stays under 2 frames (40 ms). Also reported: the compute-only bound (Denoiser
alone on one core, no event loop, no threads) and per-frame processing times.

    python benchmarks/tracks.py --model model.onnx                  # N = 1, 2, ... until it fails
    python benchmarks/tracks.py --model model.onnx --calls 4 8 12 --seconds 20 --json out.json
    python benchmarks/tracks.py --export-upstream ../shared/reference/gtcrn-upstream/checkpoint_dns3_2024-03.tar

``--export-upstream CKPT`` (needs the train extra, torch) exports the upstream checkpoint to a
temporary streaming ONNX first, so the benchmark runs the real GTCRN when no shipped model
exists yet.
"""
from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from voipfilter.bench import cpu_name

RATE = 48000
FRAME = 960  # 20 ms
FRAME_S = FRAME / RATE
LATENCY_LIMIT_S = 2 * FRAME_S


def pin_one_core(core: int | None) -> int | None:
    if not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    core = cores[-1] if core is None else core
    os.sched_setaffinity(0, {core})
    return core


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-band noise at a call-like level (GTCRN's cost does not depend on content)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(RATE * seconds)).astype(np.float32)
    k = np.hanning(15).astype(np.float32)
    x = np.convolve(x, k / k.sum(), mode="same")
    return (0.1 * x / np.abs(x).max() * 32767).astype(np.int16)


def compute_bound(model, seconds: float = 5.0) -> dict:
    """Denoiser alone at 48 kHz, 20 ms chunks, on this thread: the ceiling for N."""
    from voipfilter import Denoiser

    d = Denoiser(model, sample_rate=RATE)
    x = make_audio(seconds).astype(np.float32) / 32768
    for i in range(0, RATE, FRAME):  # warm up
        d.process(x[i : i + FRAME])
    times = []
    t0 = time.perf_counter()
    for i in range(0, len(x) - FRAME + 1, FRAME):
        t = time.perf_counter()
        d.process(x[i : i + FRAME])
        times.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    per_frame = total / len(times)
    return {
        "frame_ms_mean": 1000 * per_frame,
        "frame_ms_p95": 1000 * float(np.percentile(times, 95)),
        "rtf": per_frame / FRAME_S,
        "max_calls": int(FRAME_S / per_frame),
    }


async def run_load(model, n_calls: int, seconds: float, offload: bool, seed: int = 0) -> dict:
    import av
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    from voipfilter.track import NoiseSuppressionTrack

    audio = make_audio(2.0, seed)
    stereo = np.repeat(audio, 2)
    n_frames = int(seconds / FRAME_S)
    loop = asyncio.get_running_loop()

    class LiveSource(MediaStreamTrack):
        kind = "audio"

        def __init__(self, phase: float):
            super().__init__()
            self.queue: asyncio.Queue = asyncio.Queue()
            self.sent: dict[int, float] = {}
            self.task = asyncio.ensure_future(self.produce(phase))

        async def produce(self, phase: float) -> None:
            t0 = loop.time() + phase
            for i in range(n_frames):
                delay = t0 + i * FRAME_S - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                j = (i * FRAME) % (len(audio) - FRAME)
                f = av.AudioFrame.from_ndarray(stereo[None, 2 * j : 2 * (j + FRAME)], format="s16", layout="stereo")
                f.sample_rate = RATE
                f.pts = i * FRAME
                f.time_base = fractions.Fraction(1, RATE)
                self.sent[f.pts] = time.perf_counter()
                self.queue.put_nowait(f)
            self.queue.put_nowait(None)

        async def recv(self):
            f = await self.queue.get()
            if f is None:
                self.stop()
                raise MediaStreamError
            return f

    latencies: list[float] = []
    tracks = []

    async def consume(track: NoiseSuppressionTrack, src: LiveSource) -> None:
        while True:
            try:
                f = await track.recv()
            except MediaStreamError:
                return
            latencies.append(time.perf_counter() - src.sent.pop(f.pts))

    rng = random.Random(seed)
    consumers = []
    for _ in range(n_calls):
        src = LiveSource(rng.random() * FRAME_S)
        track = NoiseSuppressionTrack(src, model=model, offload=offload)
        tracks.append(track)
        consumers.append(asyncio.ensure_future(consume(track, src)))

    # event-loop responsiveness while loaded
    worst_tick = 0.0
    done = False

    async def ticker() -> None:
        nonlocal worst_tick
        while not done:
            t = loop.time()
            await asyncio.sleep(0.005)
            worst_tick = max(worst_tick, loop.time() - t - 0.005)

    tick = asyncio.ensure_future(ticker())
    c0, w0 = cpu_seconds(), time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*consumers), seconds + 60)
    wall, cpu = time.perf_counter() - w0, cpu_seconds() - c0
    done = True
    await tick

    stats = [t.stats() for t in tracks]
    lat = np.array(latencies) * 1000
    dropped = sum(s["frames_dropped"] for s in stats)
    p99 = float(np.percentile(lat, 99)) if lat.size else float("inf")
    return {
        "calls": n_calls,
        "offload": offload,
        "seconds": seconds,
        "frames_out": int(lat.size),
        "frames_dropped": int(dropped),
        "latency_ms_p50": float(np.percentile(lat, 50)) if lat.size else None,
        "latency_ms_p95": float(np.percentile(lat, 95)) if lat.size else None,
        "latency_ms_p99": p99,
        "latency_ms_max": float(lat.max()) if lat.size else None,
        "proc_ms_p50": float(np.median([s["proc_ms_p50"] for s in stats])),
        "proc_ms_p95": float(np.median([s["proc_ms_p95"] for s in stats])),
        "loop_late_ms_max": 1000 * worst_tick,
        "cpu_percent": 100 * cpu / wall,
        "errors": int(sum(s["errors"] for s in stats)),
        "real_time": dropped == 0 and p99 <= 1000 * LATENCY_LIMIT_S,
    }


def export_upstream(ckpt: Path) -> Path:
    from voipfilter.nn.checkpoint import load_checkpoint
    from voipfilter.nn.export import export_onnx

    model, _, _ = load_checkpoint(ckpt)
    path = Path(tempfile.mkdtemp(prefix="voipfilter-bench-")) / "gtcrn-upstream.onnx"
    return export_onnx(model, path, model_name="gtcrn-upstream (benchmark)")


def fmt_row(r: dict) -> str:
    return (
        f"| {r['calls']:>3} | {'yes' if r['real_time'] else 'no':>3} | {r['frames_dropped']:>5} | "
        f"{r['latency_ms_p50']:6.1f} | {r['latency_ms_p99']:6.1f} | {r['latency_ms_max']:7.1f} | "
        f"{r['proc_ms_p50']:5.2f} | {r['proc_ms_p95']:5.2f} | {r['loop_late_ms_max']:6.1f} | {r['cpu_percent']:5.1f} |"
    )


HEADER = (
    "| calls | real time | dropped | latency p50 ms | p99 ms | max ms | proc/frame p50 ms | p95 ms | loop late max ms | CPU % |\n"
    "|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="streaming ONNX model (default: the shipped model)")
    p.add_argument("--export-upstream", metavar="CKPT", help="export this upstream checkpoint and use it (needs torch)")
    p.add_argument("--calls", type=int, nargs="*", help="loads to run (default: 1, 2, 3, ... until one is not real time)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per load (default 10)")
    p.add_argument("--core", type=int, default=None, help="CPU core to pin to (default: the last one allowed)")
    p.add_argument("--inline", action="store_true", help="run the filter inline on the event loop (offload=False)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)

    core = pin_one_core(args.core)  # before any thread exists, so all inherit it
    from voipfilter.model import Model

    model_path = export_upstream(Path(args.export_upstream)) if args.export_upstream else args.model
    model = Model.load(model_path)
    print(f"# {cpu_name()}, pinned to core {core}; model {model.model_name}; python {platform.python_version()}")
    bound = compute_bound(model)
    print(
        f"# compute-only bound: {bound['frame_ms_mean']:.2f} ms per 20 ms frame (p95 {bound['frame_ms_p95']:.2f}), "
        f"RTF {bound['rtf']:.3f} -> at most {bound['max_calls']} calls per core"
    )
    print(HEADER)
    results = []
    loads = args.calls or range(1, 1000)
    fails = 0
    for n in loads:
        r = asyncio.run(run_load(model, n, args.seconds, offload=not args.inline))
        results.append(r)
        print(fmt_row(r), flush=True)
        if not args.calls:
            fails = fails + 1 if not r["real_time"] else 0
            if fails >= 2:
                break
    ok = [r["calls"] for r in results if r["real_time"]]
    best = max(ok) if ok else 0
    print(f"# most calls kept in real time on one core: {best}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"cpu": cpu_name(), "core": core, "bound": bound, "loads": results, "max_real_time_calls": best}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
