"""``voipfilter bench``: time per hop and real-time factor on one thread.

Measures, in one run, on the same audio:

1. our streaming ONNX (``--model``, default the shipped model) and
2. upstream's streaming ONNX (``--reference``, default
   ``../shared/reference/gtcrn-upstream/stream_dns3_2024-03_simplified.onnx``),

each inside the same numpy STFT loop (analysis → session.run → overlap-add, one hop at a time,
state carried), interleaved round by round so that machine load affects both alike; and
3. the full ``Denoiser.process`` path at 48 kHz on 20 ms frames: the default (the model on
   the 48 kHz STFT, full-band output), the band-limited output (``fullband=False``) and the
   resampled path (``native_rate=False``), in rotating order round by round.

Real-time factor = processing time / audio duration (lower is better; 0.03 = 3 % of one core).
Reported numbers are medians over rounds, as wall-clock time and as the calling thread's CPU
time (``time.thread_time``; with one onnxruntime thread all work runs in the calling thread),
which is what to read on a machine shared with other jobs.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["configure", "run", "bench"]

REPO = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    return Path(os.environ.get("VOIPFILTER_SHARED", REPO.parent / "shared"))


def default_reference() -> Path:
    return _shared_dir() / "reference" / "gtcrn-upstream" / "stream_dns3_2024-03_simplified.onnx"


def default_audio() -> Path:
    return _shared_dir() / "reference" / "gtcrn-upstream" / "demo_noisy.wav"


class _HopRunner:
    """A streaming ONNX session driven hop by hop inside the numpy STFT loop.

    Works for any model whose first input is the spectrum (1, F, 1, 2), whose other inputs
    are states, and whose outputs are the enhanced spectrum then ``<state>_out`` (ours and
    upstream's both are)."""

    def __init__(self, path: Path, threads: int, label: str):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads == 1:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.label = label
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        outputs = [o.name for o in self.session.get_outputs()]
        self.spec_name = inputs[0].name
        self.state_names = [i.name for i in inputs[1:]]
        self.out_names = [outputs[0]] + [f"{n}_out" if f"{n}_out" in outputs else outputs[1 + k]
                                         for k, n in enumerate(self.state_names)]
        self.state_shapes = [tuple(d if isinstance(d, int) else 1 for d in i.shape) for i in inputs[1:]]
        self.n_nodes = None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.n_fft = int(meta.get("n_fft", 512))
        self.hop = int(meta.get("hop", 256))
        self.sample_rate = int(meta.get("sample_rate", 16000))
        from .stft import window_pair, window_pair_from_metadata

        try:
            self.windows = window_pair_from_metadata(meta)
        except ValueError:  # a file without our metadata (upstream's): sqrt-Hann at its hop
            self.windows = window_pair(n_fft=self.n_fft, hop=self.hop)

    def time_hops(self, x: np.ndarray) -> tuple[float, float]:
        """(wall, CPU) seconds per hop over all whole hops of x."""
        from .stft import StreamingAnalysis, StreamingSynthesis

        ana, syn = StreamingAnalysis(windows=self.windows), StreamingSynthesis(windows=self.windows)
        hop = self.hop
        n_hops = len(x) // hop
        states = [np.zeros(s, np.float32) for s in self.state_shapes]
        names, spec_name, out_names, run = self.state_names, self.spec_name, self.out_names, self.session.run
        gc.collect()
        c0, t0 = time.thread_time(), time.perf_counter()
        for k in range(n_hops):
            feed = dict(zip(names, states))
            feed[spec_name] = ana.analyze(x[k * hop : (k + 1) * hop])
            outs = run(out_names, feed)
            states = outs[1:]
            syn.synthesize(outs[0])
        t1, c1 = time.perf_counter(), time.thread_time()
        return (t1 - t0) / n_hops, (c1 - c0) / n_hops


def _count_nodes(path: Path) -> int | None:
    try:
        import onnx
    except ImportError:
        return None
    return len(onnx.load(str(path), load_external_data=False).graph.node)


def _time_denoiser(model, x: np.ndarray, rate: int, frame: int, fullband: bool = True,
                   native_rate: bool = True) -> tuple[float, float, list[float]]:
    from .denoiser import Denoiser

    den = Denoiser(model, sample_rate=rate, fullband=fullband, native_rate=native_rate)
    times = []
    gc.collect()
    n_frames = len(x) // frame
    c0, t0 = time.thread_time(), time.perf_counter()
    for k in range(n_frames):
        t = time.perf_counter()
        den.process(x[k * frame : (k + 1) * frame])
        times.append(time.perf_counter() - t)
    total, cpu = time.perf_counter() - t0, time.thread_time() - c0
    duration = n_frames * frame / rate
    return total / duration, cpu / duration, times


def bench(
    model=None,
    reference: Path | None = None,
    audio: Path | None = None,
    seconds: float = 10.0,
    rounds: int = 5,
    threads: int = 1,
    full_rate: int = 48000,
    frame_ms: float = 20.0,
) -> dict:
    from .model import Model, resolve_model_path
    from .resample import StreamingResampler

    model_path = resolve_model_path(model)
    ours_model = Model.load(model_path, intra_op_num_threads=threads)
    ours = _HopRunner(ours_model.path, threads, f"ours ({ours_model.model_name})")

    runners = [ours]
    ref = None
    if reference is not None and Path(reference).is_file():
        ref = _HopRunner(Path(reference), threads, "upstream stream ONNX")
        runners.append(ref)

    audio_name = "synthetic noise"
    if audio is not None and Path(audio).is_file():
        import soundfile as sf

        x, rate = sf.read(str(audio), dtype="float32", always_2d=True)
        x = x.mean(axis=1).astype(np.float32)
        if rate != ours_model.sample_rate:
            x = StreamingResampler(rate, ours_model.sample_rate).process(x)
        audio_name = Path(audio).name
    else:
        rng = np.random.default_rng(0)
        x = (0.1 * rng.standard_normal(int(seconds * ours_model.sample_rate))).astype(np.float32)
    n = int(seconds * ours_model.sample_rate)
    if len(x) < n:
        x = np.tile(x, n // max(1, len(x)) + 1)
    x = np.ascontiguousarray(x[:n])

    # Warm up, then interleave rounds.
    for r in runners:
        r.time_hops(x[: 50 * r.hop])
    per_hop: dict[str, list[float]] = {r.label: [] for r in runners}
    per_hop_cpu: dict[str, list[float]] = {r.label: [] for r in runners}
    for _ in range(rounds):
        for r in runners:
            wall, cpu = r.time_hops(x)
            per_hop[r.label].append(wall)
            per_hop_cpu[r.label].append(cpu)

    x_full = StreamingResampler(ours_model.sample_rate, full_rate).process(x) if full_rate != ours_model.sample_rate else x
    frame = int(round(full_rate * frame_ms / 1000))
    _time_denoiser(ours_model, x_full[: full_rate], full_rate, frame)  # warm-up (resampler probes)
    _time_denoiser(ours_model, x_full[: full_rate], full_rate, frame, native_rate=False)
    # the default path, band-limited output, and the resampled path (native_rate=False)
    variants = {"full": (True, True), "band_limited": (False, True), "resampled": (True, False)}
    rtfs = {k: [] for k in variants}
    cpus = {k: [] for k in variants}
    times_of = {k: [] for k in variants}
    order = list(variants)
    for i in range(rounds):
        for k in order[i % 3 :] + order[: i % 3]:  # rotate who goes first
            fullband, native = variants[k]
            rtf, cpu, times = _time_denoiser(ours_model, x_full, full_rate, frame, fullband=fullband, native_rate=native)
            rtfs[k].append(rtf)
            cpus[k].append(cpu)
            times_of[k].extend(times)
    full_rtf, full_cpu, frame_times = rtfs["full"], cpus["full"], times_of["full"]
    bl_rtf, bl_cpu, bl_times = rtfs["band_limited"], cpus["band_limited"], times_of["band_limited"]

    def hop_result(r: _HopRunner) -> dict:
        ms = statistics.median(per_hop[r.label]) * 1e3
        return {
            "label": r.label,
            "path": str(r.path),
            "nodes": _count_nodes(r.path),
            "ms_per_hop": ms,
            "ms_per_hop_rounds": [t * 1e3 for t in per_hop[r.label]],
            "cpu_ms_per_hop": statistics.median(per_hop_cpu[r.label]) * 1e3,
            "hop_ms_audio": 1e3 * r.hop / r.sample_rate,
            "rtf": ms / (1e3 * r.hop / r.sample_rate),
        }

    import onnxruntime

    result = {
        "audio": audio_name,
        "seconds": seconds,
        "rounds": rounds,
        "threads": threads,
        "ours": hop_result(ours),
        "reference": hop_result(ref) if ref else None,
        "full_path": {
            "sample_rate": full_rate,
            "frame_ms": frame_ms,
            "rtf": statistics.median(full_rtf),
            "rtf_rounds": full_rtf,
            "cpu_rtf": statistics.median(full_cpu),
            "cpu_rtf_rounds": full_cpu,
            "ms_per_frame_median": statistics.median(frame_times) * 1e3,
            "ms_per_frame_p99": float(np.percentile(frame_times, 99)) * 1e3,
            "rtf_median_frame": statistics.median(frame_times) / (frame_ms / 1e3),
            "delay_samples": None,
            "band_limited": {
                "rtf": statistics.median(bl_rtf),
                "rtf_rounds": bl_rtf,
                "cpu_rtf": statistics.median(bl_cpu),
                "cpu_rtf_rounds": bl_cpu,
                "ms_per_frame_median": statistics.median(bl_times) * 1e3,
            },
            "resampled": {
                "rtf": statistics.median(rtfs["resampled"]),
                "cpu_rtf": statistics.median(cpus["resampled"]),
                "cpu_rtf_rounds": cpus["resampled"],
                "ms_per_frame_median": statistics.median(times_of["resampled"]) * 1e3,
            },
            # Medians of the per-round ratios: each round times all three back to back.
            "cpu_ratio_fullband_to_band_limited": statistics.median([a / b for a, b in zip(full_cpu, bl_cpu)]),
            "cpu_ratio_native_to_resampled": statistics.median([a / b for a, b in zip(full_cpu, cpus["resampled"])]),
        },
        "environment": {
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
            "cpu": cpu_name(),
            "machine": platform.machine(),
        },
    }
    from .denoiser import Denoiser

    result["full_path"]["delay_samples"] = Denoiser(ours_model, full_rate).delay_samples
    if ref:
        result["ratio_ours_to_reference"] = result["ours"]["ms_per_hop"] / result["reference"]["ms_per_hop"]
        result["cpu_ratio_ours_to_reference"] = (
            result["ours"]["cpu_ms_per_hop"] / result["reference"]["cpu_ms_per_hop"]
        )
    return result


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_table(res: dict) -> str:
    rows = [("what", "ms/hop", "RTF", "CPU ms/hop", "nodes")]
    for key in ("ours", "reference"):
        r = res.get(key)
        if r:
            rows.append((f"{r['label']}, hop + numpy STFT", f"{r['ms_per_hop']:.3f}", f"{r['rtf']:.4f}",
                         f"{r['cpu_ms_per_hop']:.3f}", str(r["nodes"]) if r["nodes"] is not None else "?"))
    lines = []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if res.get("ratio_ours_to_reference") is not None:
        lines.append(f"ours / upstream time per hop: {res['ratio_ours_to_reference']:.2f} wall, "
                     f"{res['cpu_ratio_ours_to_reference']:.2f} CPU (target <= 0.70)")
    f = res["full_path"]
    lines.append(
        f"Denoiser.process at {f['sample_rate']} Hz on {f['frame_ms']:g} ms frames: RTF {f['rtf']:.4f} "
        f"(target <= 0.03; CPU {f['cpu_rtf']:.4f}; {f['rtf_median_frame']:.4f} from the median frame), "
        f"{f['ms_per_frame_median']:.3f} ms/frame median, {f['ms_per_frame_p99']:.3f} ms p99, "
        f"delay {f['delay_samples']} samples"
    )
    b = f["band_limited"]
    lines.append(
        f"  band-limited (fullband=False): RTF {b['rtf']:.4f} (CPU {b['cpu_rtf']:.4f}), "
        f"{b['ms_per_frame_median']:.3f} ms/frame median; full-band / band-limited CPU "
        f"{f['cpu_ratio_fullband_to_band_limited']:.3f} (target <= 1.15)"
    )
    r = f["resampled"]
    lines.append(
        f"  resampled (native_rate=False): RTF {r['rtf']:.4f} (CPU {r['cpu_rtf']:.4f}), "
        f"{r['ms_per_frame_median']:.3f} ms/frame median; native / resampled CPU "
        f"{f['cpu_ratio_native_to_resampled']:.3f}"
    )
    e = res["environment"]
    lines.append(
        f"{res['threads']} thread(s), {res['rounds']} rounds x {res['seconds']:g} s of {res['audio']}; "
        f"onnxruntime {e['onnxruntime']}, numpy {e['numpy']}, {e['cpu']}"
    )
    return "\n".join(lines)


def format_comparison(results: list[dict]) -> str:
    """CPU per second of a call, each model against the first (hops of different length
    compare by the real-time factor, not by ms per hop)."""
    base = results[0]
    lines = ["model                      ms/hop  hop ms  CPU RTF/hop  48 kHz path CPU RTF  x first"]
    for r in results:
        o, f = r["ours"], r["full_path"]
        lines.append(
            f"{o['label'][:26]:<26} {o['ms_per_hop']:6.3f}  {o['hop_ms_audio']:6.1f}  "
            f"{o['cpu_ms_per_hop'] / o['hop_ms_audio']:11.4f}  {f['cpu_rtf']:19.4f}  "
            f"{f['cpu_rtf'] / base['full_path']['cpu_rtf']:7.2f}"
        )
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="NAME|M.onnx", action="append",
                        help="our streaming ONNX: a shipped model's name or a file (default: the shipped "
                        "model); repeat to time several in one run, each beside the reference")
    parser.add_argument("--reference", metavar="PATH", default=None,
                        help=f"upstream streaming ONNX (default: {default_reference()}; skipped if absent)")
    parser.add_argument("--audio", metavar="WAV", default=None,
                        help="audio to run (default: upstream's demo_noisy.wav if present, else noise)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of audio per round (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("--json", metavar="FILE", nargs="?", const="-", default=None,
                        help="also write the results as JSON to FILE (or stdout with no FILE)")


def run(args) -> int:
    from .model import ModelNotFoundError

    reference = Path(args.reference) if args.reference else default_reference()
    if args.reference and not reference.is_file():
        print(f"voipfilter bench: error: reference model not found: {reference}", file=sys.stderr)
        return 2
    audio = Path(args.audio) if args.audio else default_audio()
    if args.audio and not audio.is_file():
        print(f"voipfilter bench: error: audio not found: {audio}", file=sys.stderr)
        return 2
    results = []
    for model in args.model or [None]:
        try:
            res = bench(model=model, reference=reference, audio=audio, seconds=args.seconds,
                        rounds=args.rounds, threads=args.threads)
        except (ModelNotFoundError, ValueError) as exc:
            print(f"voipfilter bench: error: {exc}", file=sys.stderr)
            return 2
        results.append(res)
        if args.json != "-":
            print(format_table(res) + ("\n" if len(args.model or []) > 1 else ""), flush=True)
    if results[0]["reference"] is None:
        print(f"(upstream reference not found at {reference}; its row is skipped)", file=sys.stderr)
    if len(results) > 1 and args.json != "-":
        print(format_comparison(results))
    out = results[0] if len(results) == 1 else {"models": results}
    if args.json == "-":
        print(json.dumps(out, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0
