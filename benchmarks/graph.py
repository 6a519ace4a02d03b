#!/usr/bin/env python3
"""The streaming graph alone: µs per call-hop of ONNX files at several batch sizes.

Each file runs in its own onnxruntime session, set up as ``voipfilter.Model`` sets its
sessions up (one intra-op thread unless ``--threads``, sequential, ORT_ENABLE_ALL, no
spinning). The state is carried from hop to hop, as a stream does. The files take turns
round by round, and each file's best round is reported, so a background burst touches
every file alike. Two times per call-hop: wall clock, and the CPU time of the thread that
runs the session (``time.thread_time``; with one intra-op thread onnxruntime computes in the
calling thread), which a busy machine inflates far less. ``--level`` also times other graph
optimization levels.

    python benchmarks/graph.py                # old vs new form of the shipped model
    python benchmarks/graph.py A.onnx B.onnx --batch 1 8 64
    python benchmarks/graph.py --level all extended basic
    python benchmarks/graph.py --profile --batch 64   # where the time goes, by op type

Without files, "old" is the shipped checkpoint (runs/gtcrn-v7/checkpoints/last.pt) exported
in the previous graph form (``voipfilter export --previous-graph``; ``--old-rev REV``: the
shipped file at git revision REV instead) and "new" is the shipped model file, the same
checkpoint exported in the current form.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHIPPED = "voipfilter/models/gtcrn-voipfilter.onnx"
CHECKPOINT = "runs/gtcrn-v7/checkpoints/last.pt"  # the shipped model's weights (raw)
LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
}


def session(path: Path, level: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = LEVELS[level]
    if threads == 1:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class Stream:
    """One session fed its own outputs as the next hop's state, on fixed random frames."""

    def __init__(self, path: Path, level: str, threads: int, batch: int):
        self.sess = session(path, level, threads)
        meta = self.sess.get_modelmeta().custom_metadata_map
        names, shapes = json.loads(meta["state_names"]), json.loads(meta["state_shapes"])
        n_freqs = int(meta["n_fft"]) // 2 + 1
        rng = np.random.default_rng(0)
        self.frames = [(0.3 * rng.standard_normal((batch, n_freqs, 1, 2))).astype(np.float32) for _ in range(16)]
        self.feed = {n: np.zeros([batch if d == -1 else d for d in s], np.float32) for n, s in zip(names, shapes)}
        self.outputs = ["enh"] + [f"{n}_out" for n in names]
        self.names = names
        self.batch = batch

    def hops(self, n: int) -> tuple[float, float]:
        """Run n hops; return (wall, this thread's CPU) µs per call-hop."""
        run, feed, frames, outputs, names = self.sess.run, self.feed, self.frames, self.outputs, self.names
        t0, c0 = time.perf_counter(), time.thread_time()
        for i in range(n):
            feed["spec"] = frames[i % 16]
            res = run(outputs, feed)
            feed.update(zip(names, res[1:]))
        scale = 1e6 / n / self.batch
        return (time.perf_counter() - t0) * scale, (time.thread_time() - c0) * scale


def profile(path: Path, level: str, threads: int, batch: int,
            hops: int = 300) -> tuple[list[tuple[str, float, int]], list[tuple[str, float]]]:
    """onnxruntime's profiler over ``hops`` hops: (op type, share of kernel time, nodes) and
    (node, share) rows, largest first."""
    with tempfile.TemporaryDirectory() as d:
        s = Stream(path, level, threads, batch)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.graph_optimization_level = LEVELS[level]
        opts.enable_profiling, opts.profile_file_prefix = True, str(Path(d) / "p")
        s.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        s.hops(hops)
        events = json.loads(Path(s.sess.end_profiling()).read_text())
    total: dict[str, float] = {}
    nodes: dict[str, set[str]] = {}
    per_node: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op, name = e["args"]["op_name"], f'{e["args"]["op_name"]} {e["name"][: -len("_kernel_time")]}'
            total[op] = total.get(op, 0.0) + e["dur"]
            nodes.setdefault(op, set()).add(name)
            per_node[name] = per_node.get(name, 0.0) + e["dur"]
    whole = sum(total.values())
    by_op = sorted(((op, t / whole, len(nodes[op])) for op, t in total.items()), key=lambda r: -r[1])
    return by_op, sorted(((n, t / whole) for n, t in per_node.items()), key=lambda r: -r[1])


def default_files(tmp: Path, old_rev: str | None) -> list[tuple[str, Path]]:
    """old: the shipped checkpoint in the previous graph form (or the shipped file at git
    ``old_rev``); new: the shipped file."""
    old = tmp / "old.onnx"
    if old_rev:
        old.write_bytes(subprocess.run(["git", "-C", str(REPO), "show", f"{old_rev}:{SHIPPED}"],
                                       capture_output=True, check=True).stdout)
    else:
        from voipfilter.nn.checkpoint import load_checkpoint
        from voipfilter.nn.export import export_onnx

        export_onnx(load_checkpoint(REPO / CHECKPOINT)[0], old, fast=False)
    return [("old", old), ("new", REPO / SHIPPED)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", type=Path, help="ONNX files (default: old vs new shipped model)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--level", nargs="+", default=["all"], choices=sorted(LEVELS))
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per session")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--hops", type=float, default=0.1, help="seconds of running per file and round (about)")
    ap.add_argument("--old-rev", default=None,
                    help="without files: take 'old' from the shipped file at this git revision instead")
    ap.add_argument("--profile", action="store_true",
                    help="instead of timing, print onnxruntime's profile (kernel time by op type) per file and batch")
    ap.add_argument("--top", type=int, default=8, help="with --profile: how many of the costliest nodes to name")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        files = [(p.stem, p) for p in args.files] if args.files else default_files(Path(d), args.old_rev)
        if args.profile:
            for batch in args.batch:
                for name, path in files:
                    rows, top = profile(path, args.level[0], args.threads, batch)
                    print(f"{name}, batch {batch}: " + ", ".join(f"{op} {100 * sh:.0f} % ({n})" for op, sh, n in rows if sh >= 0.01))
                    print("    top nodes: " + ", ".join(f"{n} {100 * sh:.1f} %" for n, sh in top[: args.top]))
            return 0
        print(f"onnxruntime {ort.__version__}, intra_op threads {args.threads}; µs per call-hop, best of {args.rounds} rounds")
        print("batch  level     time " + "".join(f"{name:>12s}" for name, _ in files))
        for batch in args.batch:
            for level in args.level:
                streams = [Stream(p, level, args.threads, batch) for _, p in files]
                n = [max(5, int(args.hops * 1e6 / (s.hops(10)[0] * batch))) for s in streams]  # warm-up, then size
                wall = [float("inf")] * len(streams)
                cpu = [float("inf")] * len(streams)
                for _ in range(args.rounds):
                    for i, s in enumerate(streams):
                        w, c = s.hops(n[i])
                        wall[i], cpu[i] = min(wall[i], w), min(cpu[i], c)
                for what, best in (("wall", wall), ("cpu", cpu)):
                    print(f"{batch:5d}  {level:9s} {what:4s} " + "".join(f"{b:12.1f}" for b in best), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
