"""``voipfilter eval``: score models on a folder of noisy files, through the streaming path.

    voipfilter eval --noisy DIR [--clean DIR] [--model M.onnx ...] [--tsv OUT.tsv] [--by-snr]

Each ``--model`` (repeatable) is a streaming ONNX file, a shipped model's name, ``default`` (the shipped model) or
``none`` (the unprocessed noisy input, so baselines are measured in the same run). A model
enhances each file through :class:`voipfilter.Denoiser`, the run-time path itself, and
its constant ``delay_samples`` is removed (the input is padded with that many zeros and
the first ``delay_samples`` output samples dropped), so the output is sample-aligned with
the clean file. With ``--clean`` (same file names), PESQ-WB, STOI and SI-SDR are computed;
DNSMOS OVRL/SIG/BAK/P.808 always (``--no-dnsmos`` to skip). Prints a mean per model, the
paired per-file difference of each model to the first (``--ref`` picks another), and with
``--by-snr`` both again by input-SNR band (the SNR of each noisy file against its clean
one); writes per-file rows to ``--tsv``. Speed is ``voipfilter bench``'s job, not this one's.

:func:`evaluate` also takes ``(label, enhance)`` pairs, where ``enhance(x, sr)`` returns
output aligned with ``x``: other enhancers are scored by the very same code
(``benchmarks/peers.py``).

Needs the ``eval`` extra (pesq, pystoi, speechmos, scipy); no torch.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path
from typing import Callable, Union

import numpy as np

from .metrics import INTRUSIVE, dnsmos, intrusive, nanmean, paired

AUDIO_EXTS = {".wav", ".flac", ".ogg"}
DNSMOS_KEYS = ("ovrl", "sig", "bak", "p808")
NAMES = {"pesq": "PESQ-WB", "stoi": "STOI", "si_sdr": "SI-SDR", "ovrl": "OVRL", "sig": "SIG", "bak": "BAK",
         "p808": "P.808"}
# Input-SNR bands of --by-snr. VoiceBank-DEMAND's test files are mixed at 2.5, 7.5, 12.5 and
# 17.5 dB of active speech; measured over the whole file they sit about 1.5 dB lower, so the
# edges fall between those groups.
SNR_BANDS = ((-math.inf, 4.0, "< 4 dB"), (4.0, 9.0, "4-9 dB"), (9.0, 14.0, "9-14 dB"), (14.0, math.inf, ">= 14 dB"))

Enhance = Callable[[np.ndarray, int], np.ndarray]
ModelSpec = Union[str, tuple[str, Enhance]]


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


def _model_arg(spec: ModelSpec) -> tuple[str, Enhance | None]:
    """(label, enhance function or None for 'none')."""
    if not isinstance(spec, str):
        return spec
    if spec == "none":
        return "none", None
    from voipfilter.model import Model, default_model_path, resolve_model_path

    path = default_model_path() if spec == "default" else resolve_model_path(spec)
    model = Model.load(path)
    return (spec if spec != "default" else f"default ({path.name})"), lambda x, sr: enhance_aligned(x, sr, model)


def input_snr(clean: np.ndarray, noisy: np.ndarray) -> float:
    """SNR in dB of a noisy file against its clean reference (whole file)."""
    c = clean.astype(np.float64)
    return float(10 * np.log10(np.sum(c**2) / max(np.sum((noisy.astype(np.float64) - c) ** 2), 1e-20)))


def list_files(noisy_dir: Path) -> list[Path]:
    files = sorted(p for p in noisy_dir.rglob("*") if p.suffix.lower() in AUDIO_EXTS and p.is_file())
    if not files:
        raise FileNotFoundError(f"no audio files in {noisy_dir}")
    return files


def evaluate(noisy_dir: Path, clean_dir: Path | None, models: list[ModelSpec], use_dnsmos: bool = True,
             out_dir: Path | None = None, progress: bool = True) -> list[dict]:
    """One row per (model, file) with the metrics that apply (and the input SNR, with a clean
    reference)."""
    files = list_files(noisy_dir)
    rows: list[dict] = []
    for spec in models:
        label, enhance = _model_arg(spec)
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
            y = x if enhance is None else enhance(x, sr)
            if len(y) != len(x):
                raise ValueError(f"{label} returned {len(y)} samples for the {len(x)} of {rel}")
            if out_dir is not None and enhance is not None:
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
                row["snr_in"] = input_snr(c, x)
                row.update(intrusive(_to16k(c, sr), y16, 16000))
            if use_dnsmos:
                row.update(dnsmos(np.clip(y16, -1, 1), 16000))
            rows.append(row)
        if progress:
            print(f"{label}: {len(files)} files in {time.time() - t0:.1f} s", file=sys.stderr)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Means per model."""
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
    w = max(len(s["model"]) for s in summary)
    lines = [f"{'model':<{w}}  files  " + "  ".join(f"{NAMES[k]:>7}" for k in keys)]
    for s in summary:
        lines.append(f"{s['model']:<{w}}  {s['files']:5d}  " + "  ".join(f"{s.get(k, math.nan):7.3f}" for k in keys))
    return "\n".join(lines)


def paired_table(rows: list[dict], ref: str) -> str:
    """Each model's per-file difference to ``ref``: mean ± standard error, per metric."""
    labels = list(dict.fromkeys(r["model"] for r in rows))
    if ref not in labels:
        raise ValueError(f"--ref {ref!r} is not one of the models ({', '.join(labels)})")
    by = {(r["model"], r["file"]): r for r in rows}
    files = [r["file"] for r in rows if r["model"] == ref]
    keys = [k for k in INTRUSIVE + DNSMOS_KEYS if k in rows[0]]
    w = max(len(m) for m in labels)
    lines = [f"{'minus ' + ref:<{w}}  " + "  ".join(f"{NAMES[k]:>15}" for k in keys)]
    for m in labels:
        if m == ref:
            continue
        cells = []
        for k in keys:
            d, se = paired([by[(m, f)][k] for f in files], [by[(ref, f)][k] for f in files])
            cells.append(f"{d:+7.3f} ± {se:5.3f}")
        lines.append(f"{m:<{w}}  " + "  ".join(cells))
    return "\n".join(lines)


def by_snr(rows: list[dict], ref: str) -> str:
    """Means and paired differences to ``ref`` within each input-SNR band."""
    out = []
    for lo, hi, name in SNR_BANDS:
        band = [r for r in rows if lo <= r["snr_in"] < hi]
        if not band:
            continue
        n = len(band) // len({r["model"] for r in rows})
        snr = np.mean([r["snr_in"] for r in band if r["model"] == ref])
        out.append(f"input SNR {name}: {n} files, {snr:.1f} dB on average")
        out.append(_table(summarize(band)))
        out.append(paired_table(band, ref))
    return "\n\n".join(out)


def write_tsv(rows: list[dict], path: Path) -> None:
    keys = ["model", "file", "seconds"] + [k for k in ("snr_in",) + INTRUSIVE + DNSMOS_KEYS if any(k in r for r in rows)]
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
    parser.add_argument("--ref", help="model the paired differences are taken against (a --model as given; "
                                      "default the first)")
    parser.add_argument("--by-snr", action="store_true",
                        help="also score by input-SNR band (needs --clean): where on the test set models differ")


def report(rows: list[dict], ref: str | None = None, snr_bands: bool = False) -> str:
    """The printed report: means, paired differences to ``ref`` (default the first model) and,
    with ``snr_bands``, both again per input-SNR band."""
    labels = list(dict.fromkeys(r["model"] for r in rows))
    ref = ref or labels[0]
    parts = [_table(summarize(rows))]
    if len(labels) > 1:
        parts.append(paired_table(rows, ref))
    if snr_bands:
        parts.append(by_snr(rows, ref))
    return "\n\n".join(parts)


def _resolve_ref(ref: str | None) -> str | None:
    """A --ref as given to the label its rows carry."""
    if ref == "default":
        from voipfilter.model import default_model_path

        return f"default ({default_model_path().name})"
    return ref


def run(args: argparse.Namespace) -> int:
    models = args.models or ["default"]
    if args.by_snr and args.clean is None:
        print("voipfilter eval: --by-snr needs --clean (the input SNR is measured against the clean file)",
              file=sys.stderr)
        return 2
    if args.ref is not None and args.ref not in models:
        print(f"voipfilter eval: --ref {args.ref!r} is not one of the --model arguments", file=sys.stderr)
        return 2
    try:
        rows = evaluate(args.noisy, args.clean, models, use_dnsmos=not args.no_dnsmos, out_dir=args.out_dir,
                        progress=sys.stderr.isatty())
    except (FileNotFoundError, ValueError) as exc:
        print(f"voipfilter eval: {exc}", file=sys.stderr)
        return 2
    if args.tsv:  # first, so that the scores are kept whatever happens next
        write_tsv(rows + [{**s, "file": "MEAN"} for s in summarize(rows)], args.tsv)
    print(report(rows, _resolve_ref(args.ref), args.by_snr))
    if args.tsv:
        print(f"per-file scores: {args.tsv}")
    return 0
