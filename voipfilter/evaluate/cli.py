"""``voipfilter eval``: score models on a folder of noisy files, through the streaming path.

    voipfilter eval --noisy DIR [--clean DIR] [--model M.onnx ...] [--tsv OUT.tsv]

Each ``--model`` (repeatable) is a streaming ONNX file, a shipped model's name, ``default`` (the shipped model) or
``none`` (the unprocessed noisy input, so baselines are measured in the same run). A model
enhances each file through :class:`voipfilter.Denoiser`, the run-time path itself, and
its constant ``delay_samples`` is removed (the input is padded with that many zeros and
the first ``delay_samples`` output samples dropped), so the output is sample-aligned with
the clean file. With ``--clean`` (same file names), PESQ-WB, STOI and SI-SDR are computed;
DNSMOS OVRL/SIG/BAK/P.808 always (``--no-dnsmos`` to skip). Prints a mean per model and
writes per-file rows to ``--tsv``.

Needs the ``eval`` extra (pesq, pystoi, speechmos, scipy); no torch.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np

from .metrics import INTRUSIVE, dnsmos, intrusive, nanmean

AUDIO_EXTS = {".wav", ".flac", ".ogg"}
DNSMOS_KEYS = ("ovrl", "sig", "bak", "p808")


def _read(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return x[:, 0].copy(), sr


def _to16k(x: np.ndarray, sr: int) -> np.ndarray:
    if sr == 16000:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(16000, sr)
    return resample_poly(x.astype(np.float64), 16000 // g, sr // g).astype(np.float32)


def enhance_aligned(x: np.ndarray, sr: int, model) -> np.ndarray:
    """Enhance through the streaming Denoiser and return output aligned with ``x``
    (``y[n]`` is the enhancement of ``x[n]``), same length."""
    from voipfilter.denoiser import Denoiser

    den = Denoiser(model, sample_rate=sr)
    d = den.delay_samples
    y = den.process(np.concatenate([x.astype(np.float32), np.zeros(d, np.float32)]))
    return y[d : d + len(x)]


def _model_arg(spec: str):
    """(label, model object or None for 'none')."""
    if spec == "none":
        return "none", None
    from voipfilter.model import Model, default_model_path, resolve_model_path

    path = default_model_path() if spec == "default" else resolve_model_path(spec)
    return (spec if spec != "default" else f"default ({path.name})"), Model.load(path)


def list_files(noisy_dir: Path) -> list[Path]:
    files = sorted(p for p in noisy_dir.rglob("*") if p.suffix.lower() in AUDIO_EXTS and p.is_file())
    if not files:
        raise FileNotFoundError(f"no audio files in {noisy_dir}")
    return files


def evaluate(noisy_dir: Path, clean_dir: Path | None, models: list[str], use_dnsmos: bool = True,
             out_dir: Path | None = None, progress: bool = True) -> list[dict]:
    """One row per (model, file) with the metrics that apply."""
    files = list_files(noisy_dir)
    rows: list[dict] = []
    for spec in models:
        label, model = _model_arg(spec)
        t0 = time.time()
        it = files
        if progress:
            try:
                from tqdm import tqdm

                it = tqdm(files, desc=label, unit="file", leave=False, file=sys.stderr)
            except ImportError:
                pass
        for f in it:
            rel = f.relative_to(noisy_dir)
            x, sr = _read(f)
            y = x if model is None else enhance_aligned(x, sr, model)
            if out_dir is not None and model is not None:
                import soundfile as sf

                dst = out_dir / Path(label).stem / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                sf.write(str(dst), y, sr)
            row: dict = {"model": label, "file": str(rel), "seconds": round(len(x) / sr, 3)}
            y16 = _to16k(y, sr)
            if clean_dir is not None:
                cp = clean_dir / rel
                if not cp.exists():
                    raise FileNotFoundError(f"no clean file for {rel} in {clean_dir}")
                c, csr = _read(cp)
                if csr != sr or len(c) != len(x):
                    raise ValueError(f"{rel}: clean and noisy differ in rate or length ({csr}/{sr}, {len(c)}/{len(x)})")
                row.update(intrusive(_to16k(c, sr), y16, 16000))
            if use_dnsmos:
                row.update(dnsmos(np.clip(y16, -1, 1), 16000))
            rows.append(row)
        if progress:
            print(f"{label}: {len(files)} files in {time.time() - t0:.1f} s", file=sys.stderr)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    labels = list(dict.fromkeys(r["model"] for r in rows))
    for label in labels:
        rs = [r for r in rows if r["model"] == label]
        s = {"model": label, "files": len(rs)}
        for k in INTRUSIVE + DNSMOS_KEYS:
            if k in rs[0]:
                s[k] = nanmean(r.get(k) for r in rs)
        out.append(s)
    return out


def _table(summary: list[dict]) -> str:
    keys = [k for k in INTRUSIVE + DNSMOS_KEYS if any(k in s for s in summary)]
    names = {"pesq": "PESQ-WB", "stoi": "STOI", "si_sdr": "SI-SDR", "ovrl": "OVRL", "sig": "SIG", "bak": "BAK",
             "p808": "P.808"}
    w = max(len(s["model"]) for s in summary)
    lines = [f"{'model':<{w}}  files  " + "  ".join(f"{names[k]:>7}" for k in keys)]
    for s in summary:
        lines.append(f"{s['model']:<{w}}  {s['files']:5d}  " + "  ".join(f"{s.get(k, math.nan):7.3f}" for k in keys))
    return "\n".join(lines)


def write_tsv(rows: list[dict], path: Path) -> None:
    keys = ["model", "file", "seconds"] + [k for k in INTRUSIVE + DNSMOS_KEYS if any(k in r for r in rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys, delimiter="\t", extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--noisy", required=True, type=Path, help="folder of noisy files")
    parser.add_argument("--clean", type=Path, help="folder of clean references (same names): PESQ-WB, STOI, SI-SDR")
    parser.add_argument("--model", action="append", dest="models", metavar="M",
                        help="streaming ONNX file, 'default' or 'none' (unprocessed); repeat to compare "
                             "(default: default)")
    parser.add_argument("--tsv", type=Path, help="write per-file scores here (tab-separated)")
    parser.add_argument("--no-dnsmos", action="store_true", help="skip DNSMOS")
    parser.add_argument("--out-dir", type=Path, help="also write the enhanced files here (one folder per model)")


def run(args: argparse.Namespace) -> int:
    models = args.models or ["default"]
    try:
        rows = evaluate(args.noisy, args.clean, models, use_dnsmos=not args.no_dnsmos, out_dir=args.out_dir,
                        progress=sys.stderr.isatty())
    except (FileNotFoundError, ValueError) as exc:
        print(f"voipfilter eval: {exc}", file=sys.stderr)
        return 2
    summary = summarize(rows)
    print(_table(summary))
    if args.tsv:
        write_tsv(rows + [{**s, "file": "MEAN"} for s in summary], args.tsv)
        print(f"per-file scores: {args.tsv}")
    return 0
