"""How many 48 kHz calls one CPU core (or ``--cores N``) keeps in real time with NoiseSuppressionTrack.

Not a test: a measurement, recorded in docs/benchmarks-tracks.md.

The whole process (event loop, the engine's worker or the track thread pool, onnxruntime
with one intra-op thread) is pinned to one core (``--cores 2``: to two). For N = 1, 2, 3,
... N tracks run at once, each fed like aiortc feeds a remote audio track: a 20 ms, 48 kHz, s16 stereo frame every 20 ms into an unbounded
asyncio queue (random phase per call), and each pulled by its own consumer task (like the
RTP sender's encoder loop). A load is *real time* when, over the run, no frame was
dropped by the backlog policy and the 99th percentile of the frame latency (queued → out
of recv()) stays under 2 frames (40 ms). Also reported: the compute-only bound (Denoiser
alone on one core, no event loop, no threads) and per-frame processing times.

    python benchmarks/tracks.py --model model.onnx                  # N = 1, 2, ... until it fails
    python benchmarks/tracks.py --model model.onnx --calls 4 8 12 --seconds 20 --json out.json
    python benchmarks/tracks.py --engine on off --calls 1 8 32 64 --search   # both paths, same run
    python benchmarks/tracks.py --engine on off rnnoise --cores 2 --calls 8 32 --search

``--engine on`` (the default) is the track's default: every track's model steps go through
the process's BatchEngine (one worker thread, one batched onnxruntime run per round);
``off`` is the per-track thread pool (``engine=False``), the path before the engine;
``on-t2`` the engine with its model's onnxruntime session on 2 intra-op threads
(``Model.load(path, intra_op_num_threads=2)``); ``on-w2`` an engine with two worker
threads (``BatchEngine(workers=2)``); ``rnnoise`` the reference a user would
otherwise pick: RNNoise per call (pyrnnoise through benchmarks/peers.py's wrapper, two
10 ms frames per 20 ms frame, inline in the track's ``recv()``; benchmark only).
``--search`` adds loads between the largest real-time load and the smallest failing one
(bisection; if every load kept up, it doubles the largest first) to find the most calls
kept in real time. Per load, besides latency, it reports
the CPU per call and, for the engine, where the CPU of a call-frame goes: the onnxruntime
run, the state gather/scatter, the rest of the worker (STFT, resampling, mixing, frame
conversion: the per-call Python/numpy work) and everything outside the worker (event loop,
sources, consumers, asyncio), and the worker thread's CPU as % of one core (near 100: the
one worker is the bottleneck, whatever the number of cores).
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


def pin_cores(core: int | None, n: int = 1) -> list[int] | None:
    """Pin this process to ``n`` cores: ``core`` and the ones below it (default: the last
    ``n`` allowed). Done before any thread exists, so every thread inherits it."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    last = cores.index(core) + 1 if core is not None else len(cores)
    chosen = cores[max(0, last - n) : last]
    if len(chosen) < n:
        raise SystemExit(f"--cores {n}: only {len(cores)} core(s) allowed here")
    os.sched_setaffinity(0, set(chosen))
    return chosen


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


def compute_bound_batched(model, n_calls: int, seconds: float = 2.0) -> dict:
    """n_calls Denoisers at 48 kHz stepped together (run_batched), on this thread: the
    engine's ceiling without the track, event loop or threads."""
    from voipfilter import Denoiser
    from voipfilter.engine import BatchEngine, run_batched

    engine = BatchEngine()
    dens = [Denoiser(model, sample_rate=RATE, engine=engine) for _ in range(n_calls)]
    x = make_audio(seconds).astype(np.float32) / 32768
    chunks = [x[i : i + FRAME] for i in range(0, len(x) - FRAME + 1, FRAME)]
    for c in chunks[:10]:
        run_batched(d.process_steps(c) for d in dens)
    t0 = time.perf_counter()
    for c in chunks:
        run_batched(d.process_steps(c) for d in dens)
    per = (time.perf_counter() - t0) / (len(chunks) * n_calls)
    return {"calls": n_calls, "us_per_call_frame": 1e6 * per, "max_calls": int(FRAME_S / per)}


def profile_worker(model, n_calls: int, frames: int = 50, top: int = 15) -> dict:
    """cProfile of what the engine's worker does per round for n_calls tracks (each track's
    _process_safe_steps driven by run_batched on this thread, no event loop): where the time
    of a call-frame goes. Prints the top functions by own time; returns µs per call-frame."""
    import cProfile
    import pstats

    import av
    from aiortc.mediastreams import MediaStreamTrack

    from voipfilter.engine import BatchEngine, run_batched
    from voipfilter.track import NoiseSuppressionTrack

    class NoSource(MediaStreamTrack):
        kind = "audio"

        async def recv(self):  # never called: frames are handed to the track directly
            raise RuntimeError

    engine = BatchEngine()
    tracks = [NoiseSuppressionTrack(NoSource(), model=model, engine=engine, max_backlog_ms=None)
              for _ in range(n_calls)]
    stereo = np.repeat(make_audio(1.0), 2)

    def frame(i: int):
        j = (i * FRAME) % (len(stereo) // 2 - FRAME)
        f = av.AudioFrame.from_ndarray(stereo[None, 2 * j : 2 * (j + FRAME)], format="s16", layout="stereo")
        f.sample_rate, f.pts, f.time_base = RATE, i * FRAME, fractions.Fraction(1, RATE)
        return f

    def rounds(a: int, b: int, prof=None) -> float:
        spent = 0.0
        for i in range(a, b):
            fs = [frame(i) for _ in tracks]  # the source's work, neither timed nor profiled
            t = time.perf_counter()
            if prof is not None:
                prof.enable()
            run_batched([tr._process_safe_steps(f) for tr, f in zip(tracks, fs)])
            if prof is not None:
                prof.disable()
            spent += time.perf_counter() - t
        return spent

    rounds(0, 10)
    per = rounds(10, 10 + frames) / (frames * n_calls)
    prof = cProfile.Profile()
    rounds(10 + frames, 10 + 2 * frames, prof)
    print(f"# worker profile, {n_calls} calls: {1e6 * per:.0f} µs per call-frame unprofiled; "
          f"top functions by own time (profiled, per call-frame):")
    stats = pstats.Stats(prof).stats
    rows = sorted(((v[2], k) for k, v in stats.items()), reverse=True)[:top]
    total = sum(v[2] for v in stats.values())
    for tt, (file, line, name) in rows:
        where = name if file == "~" else f"{Path(file).name}:{line}({name})"
        print(f"#   {1e6 * tt / (frames * n_calls):6.1f} µs  {100 * tt / total:4.1f} %  {where}")
    return {"calls": n_calls, "us_per_call_frame": 1e6 * per}


class StepTimer:
    """Wraps the engine's SlotStore for ``model``: time in onnxruntime and in gather/scatter."""

    def __init__(self, engine, model):
        self.store = engine.store(model)
        self.run_s = 0.0
        self.state_s = 0.0
        run, gather, scatter = self.store._run, self.store._gather, self.store._scatter

        def timed(fn, attr):
            def wrapper(*a):
                t = time.perf_counter()
                try:
                    return fn(*a)
                finally:
                    setattr(self, attr, getattr(self, attr) + time.perf_counter() - t)
            return wrapper

        self.store._run = timed(run, "run_s")
        self.store._gather = timed(gather, "state_s")
        self.store._scatter = timed(scatter, "state_s")


def rnnoise_track_class():
    """A track that runs RNNoise (pyrnnoise, through benchmarks/peers.py's wrapper) on each
    20 ms 48 kHz frame: downmix to mono, two 10 ms RNNoise frames, s16 out on the frame's
    layout, pts kept. Inline in ``recv()`` (a C call per 10 ms, the way a user would wire
    it); no backlog policy, so only latency decides real time. Benchmark only."""
    import av
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peers import FRAME as RN_FRAME, RNNoise

    class RNNoiseTrack(MediaStreamTrack):
        kind = "audio"

        def __init__(self, source: MediaStreamTrack):
            super().__init__()
            self.source = source
            self.rn = RNNoise()
            self.proc: list[float] = []

        async def recv(self):
            try:
                frame = await self.source.recv()
            except MediaStreamError:
                self.stop()
                raise
            t = time.perf_counter()
            ch = len(frame.layout.channels)
            x = frame.to_ndarray().reshape(-1, ch).mean(axis=1, dtype=np.float32) / 32768.0
            y = np.concatenate([self.rn.process(x[i : i + RN_FRAME]) for i in range(0, len(x), RN_FRAME)])
            s16 = (np.clip(y, -1.0, 32767 / 32768) * 32768.0).astype(np.int16)
            out = av.AudioFrame.from_ndarray(np.repeat(s16, ch)[None, :], format="s16", layout=frame.layout.name)
            out.sample_rate, out.pts, out.time_base = frame.sample_rate, frame.pts, frame.time_base
            self.proc.append(time.perf_counter() - t)
            return out

        def release(self) -> None:
            self.stop()
            if self.rn is not None:
                self.rn.close()
                self.rn = None

        def stats(self) -> dict:
            ms = 1000 * np.array(self.proc or [0.0])
            return {"frames_dropped": 0, "errors": 0, "proc_ms_p50": float(np.median(ms)),
                    "proc_ms_p95": float(np.percentile(ms, 95))}

    return RNNoiseTrack


def thread_cpu_seconds(native_id: int | None) -> float:
    """CPU time of one thread of this process (Linux /proc), 0 if unknown."""
    if native_id is None:
        return 0.0
    try:
        with open(f"/proc/self/task/{native_id}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except OSError:
        return 0.0


async def run_load(model, n_calls: int, seconds: float, offload: bool, seed: int = 0, engine=True,
                   track_cls=None) -> dict:
    """One load: ``n_calls`` tracks for ``seconds``. ``engine``: True (the default engine),
    False (the thread pool) or a BatchEngine; ``track_cls(source)`` replaces
    NoiseSuppressionTrack (the RNNoise reference)."""
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
        if track_cls is not None:
            track = track_cls(src)
        else:
            track = NoiseSuppressionTrack(src, model=model, offload=offload, engine=engine)
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

    from voipfilter.engine import default_engine

    eng = engine if engine not in (True, False) else default_engine()
    tick = asyncio.ensure_future(ticker())
    c0, w0 = cpu_seconds(), time.perf_counter()
    r0, s0 = eng.rounds, eng.steps
    timer = TIMERS.get((id(eng), id(model)))
    timer_run, timer_state = (timer.run_s, timer.state_s) if timer else (0.0, 0.0)
    eng_threads = eng.threads
    wk0 = sum(thread_cpu_seconds(t.native_id) for t in eng_threads)
    await asyncio.wait_for(asyncio.gather(*consumers), seconds + 60)
    wall, cpu = time.perf_counter() - w0, cpu_seconds() - c0
    if not eng_threads:  # started during this load
        eng_threads = eng.threads
    worker_cpu = sum(thread_cpu_seconds(t.native_id) for t in eng_threads) - wk0
    rounds, steps = eng.rounds - r0, eng.steps - s0
    run_s, state_s = (timer.run_s - timer_run, timer.state_s - timer_state) if timer else (0.0, 0.0)
    done = True
    await tick
    for t in tracks:
        t.release()

    stats = [t.stats() for t in tracks]
    lat = np.array(latencies) * 1000
    dropped = sum(s["frames_dropped"] for s in stats)
    p99 = float(np.percentile(lat, 99)) if lat.size else float("inf")
    n_out = max(1, int(lat.size))
    split = {}
    is_engine = engine is not False and offload and track_cls is None
    if is_engine:
        split = {
            "engine_batch_mean": steps / rounds if rounds else None,
            "us_onnxruntime": 1e6 * run_s / n_out,
            "us_state_gather_scatter": 1e6 * state_s / n_out,
            "us_worker_rest": 1e6 * (worker_cpu - run_s - state_s) / n_out if worker_cpu else None,
            "us_outside_worker": 1e6 * (cpu - worker_cpu) / n_out if worker_cpu else None,
            "worker_cpu_percent": 100 * worker_cpu / wall if worker_cpu else None,
        }
    return {
        "calls": n_calls,
        "engine": is_engine,
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
        "cpu_percent_per_call": 100 * cpu / wall / n_calls,
        "us_cpu_per_call_frame": 1e6 * cpu / n_out,
        **split,
        "errors": int(sum(s["errors"] for s in stats)),
        "real_time": dropped == 0 and p99 <= 1000 * LATENCY_LIMIT_S,
    }


def export_upstream(ckpt: Path) -> Path:
    from voipfilter.nn.checkpoint import load_checkpoint
    from voipfilter.nn.export import export_onnx

    model, _, _ = load_checkpoint(ckpt)
    path = Path(tempfile.mkdtemp(prefix="voipfilter-bench-")) / "gtcrn-upstream.onnx"
    return export_onnx(model, path, model_name="gtcrn-upstream (benchmark)")


def _f(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def fmt_row(r: dict) -> str:
    return (
        f"| {r['calls']:>3} | {'yes' if r['real_time'] else 'no':>3} | {r['frames_dropped']:>5} | "
        f"{r['latency_ms_p50']:6.1f} | {r['latency_ms_p99']:6.1f} | {r['latency_ms_max']:7.1f} | "
        f"{r['proc_ms_p50']:5.2f} | {r['loop_late_ms_max']:6.1f} | {r['cpu_percent']:5.1f} | "
        f"{r['cpu_percent_per_call']:5.2f} | {r['us_cpu_per_call_frame']:5.0f} | "
        f"{_f(r.get('engine_batch_mean'), '5.1f')} | {_f(r.get('us_onnxruntime'), '4.0f')} | "
        f"{_f(r.get('us_state_gather_scatter'), '3.0f')} | {_f(r.get('us_worker_rest'), '4.0f')} | "
        f"{_f(r.get('us_outside_worker'), '4.0f')} | {_f(r.get('worker_cpu_percent'), '5.1f')} |"
    )


HEADER = (
    "| calls | real time | dropped | latency p50 ms | p99 ms | max ms | proc/frame p50 ms | loop late max ms "
    "| CPU % | CPU %/call | CPU µs/call-frame | batch | µs ORT | µs state | µs worker rest | µs outside worker | worker CPU % |\n"
    "|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="streaming ONNX model (default: the shipped model)")
    p.add_argument("--export-upstream", metavar="CKPT", help="export this upstream checkpoint and use it (needs torch)")
    p.add_argument("--calls", type=int, nargs="*", help="loads to run (default: 1, 2, 3, ... until one is not real time)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per load (default 10)")
    p.add_argument("--core", type=int, default=None, help="CPU core to pin to (default: the last one allowed)")
    p.add_argument("--cores", type=int, default=1,
                   help="pin to this many cores (--core and the ones below it; default 1)")
    p.add_argument("--inline", action="store_true", help="run the filter inline on the event loop (offload=False)")
    p.add_argument("--engine", nargs="+", choices=list(MODES), default=["on"],
                   help="paths to run, in this order, in one process: " + "; ".join(f"{k}: {v}" for k, v in MODES.items()))
    p.add_argument("--search", action="store_true",
                   help="bisect between the last real-time and first failing load (doubling first if none failed)")
    p.add_argument("--batched-bound", type=int, nargs="*", default=[],
                   help="also measure the engine's compute-only bound at these numbers of calls")
    p.add_argument("--profile", type=int, metavar="N", help="also profile the worker's round for N calls")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)

    core = pin_cores(args.core, args.cores)  # before any thread exists, so all inherit it
    where = f"{args.cores} core{'s' if args.cores > 1 else ''}"
    from voipfilter.model import Model

    model_path = export_upstream(Path(args.export_upstream)) if args.export_upstream else args.model
    model = Model.load(model_path)
    print(f"# {cpu_name()}, pinned to core(s) {core}; model {model.model_name}; python {platform.python_version()}")
    bound = compute_bound(model)
    print(
        f"# compute-only bound: {bound['frame_ms_mean']:.2f} ms per 20 ms frame (p95 {bound['frame_ms_p95']:.2f}), "
        f"RTF {bound['rtf']:.3f} -> at most {bound['max_calls']} calls per core"
    )
    batched = []
    for n in args.batched_bound:
        b = compute_bound_batched(model, n)
        batched.append(b)
        print(f"# engine compute-only bound at {n} calls: {b['us_per_call_frame']:.0f} µs per call-frame "
              f"-> at most {b['max_calls']} calls per core")
    prof = profile_worker(model, args.profile) if args.profile else None
    from voipfilter.engine import BatchEngine, default_engine

    modes = {}
    for mode in args.engine:
        engine = {"on": True, "on-t2": True, "on-w2": BatchEngine(workers=2)}.get(mode, False)
        track_cls = rnnoise_track_class() if mode == "rnnoise" else None
        mode_model = Model.load(model.path, intra_op_num_threads=2) if mode == "on-t2" else model
        if engine is not False:
            eng = default_engine() if engine is True else engine
            TIMERS.setdefault((id(eng), id(mode_model)), StepTimer(eng, mode_model))
        print(f"\n## {mode} ({MODES[mode]}){' (inline)' if args.inline and track_cls is None else ''}, {where}\n")
        print(HEADER)
        results = []

        def run(n: int) -> dict:
            r = asyncio.run(run_load(mode_model, n, args.seconds, offload=not args.inline, engine=engine,
                                     track_cls=track_cls))
            r["mode"] = mode
            results.append(r)
            print(fmt_row(r), flush=True)
            return r

        loads = args.calls or range(1, 1000)
        fails = 0
        for n in loads:
            r = run(n)
            if not args.calls:
                fails = fails + 1 if not r["real_time"] else 0
                if fails >= 2:
                    break
        if args.search:
            ok = [r["calls"] for r in results if r["real_time"]]
            lo = max(ok) if ok else 0
            bad = [r["calls"] for r in results if not r["real_time"] and r["calls"] > lo]
            hi = min(bad) if bad else None
            while hi is None and 0 < lo < MAX_SEARCH_CALLS:  # every load kept up: go higher
                if run(2 * lo)["real_time"]:
                    lo *= 2
                else:
                    hi = 2 * lo
            while hi is not None and hi - lo > max(1, lo // 16):
                mid = (lo + hi) // 2
                if run(mid)["real_time"]:
                    lo = mid
                else:
                    hi = mid
        ok = [r["calls"] for r in results if r["real_time"]]
        best = max(ok) if ok else 0
        print(f"# {mode}: most calls kept in real time on {where}: {best}")
        modes[mode] = {"loads": results, "max_real_time_calls": best}
        if args.json:  # after each mode: a run cut short keeps what it measured
            Path(args.json).write_text(
                json.dumps({"cpu": cpu_name(), "cores": core, "argv": sys.argv[1:], "bound": bound,
                            "batched_bound": batched, "profile": prof, "modes": modes},
                           indent=2)
            )
    return 0


TIMERS: dict[tuple[int, int], StepTimer] = {}  # per (engine, Model) ids: that engine's store
MODES = {
    "on": "the batched engine, the track's default",
    "on-t2": "the batched engine, onnxruntime with 2 intra-op threads",
    "on-w2": "a batched engine with 2 worker threads, BatchEngine(workers=2)",
    "off": "the per-track thread pool, engine=False",
    "rnnoise": "RNNoise per call (pyrnnoise), inline in recv()",
}
MAX_SEARCH_CALLS = 512


if __name__ == "__main__":
    sys.exit(main())
