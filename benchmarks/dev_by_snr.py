#!/usr/bin/env python3
"""Where on dev/vbd two models differ, by the input SNR of each file.

Reads the per-file TSV that ``voipfilter eval --tsv`` writes, measures each dev file's
input SNR from its clean/noisy pair (10·log10 of clean energy over (noisy − clean)
energy; VoiceBank-DEMAND's test files are mixed at 2.5, 7.5, 12.5 and 17.5 dB), and prints
each model's mean score per SNR band with its paired difference to the first model
(mean ± standard error over the files of the band; ``--ref`` picks another model).

    voipfilter eval --noisy ../shared/data/dev/vbd/noisy --clean ../shared/data/dev/vbd/clean \\
        --model v7.onnx --model up.onnx --tsv dev.tsv
    python benchmarks/dev_by_snr.py dev.tsv [--metric pesq] [--vbd ../shared/data/dev/vbd]

Needs ../shared/data/dev/vbd beside the checkout (or ``--vbd``); reads no model.
"""
from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf

from voipfilter.evaluate.metrics import paired

VBD = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev" / "vbd"
# Measured this way the dev files sit about 1.5 dB under their nominal (active-speech) SNR,
# so the edges fall between the nominal 2.5 / 7.5 / 12.5 / 17.5 dB groups.
BANDS = ((-np.inf, 4.0, "< 4 dB"), (4.0, 9.0, "4-9 dB"), (9.0, 14.0, "9-14 dB"), (14.0, np.inf, ">= 14 dB"))


def input_snr(vbd: Path, name: str) -> float:
    """SNR in dB of the noisy dev file against its clean reference."""
    clean, _ = sf.read(vbd / "clean" / name, dtype="float64")
    noisy, _ = sf.read(vbd / "noisy" / name, dtype="float64")
    return float(10 * np.log10(np.sum(clean**2) / max(np.sum((noisy - clean) ** 2), 1e-20)))


def read_scores(tsv: Path, metric: str) -> dict[str, dict[str, float]]:
    """{model: {file: score}} from an eval TSV."""
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    with open(tsv, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["file"] == "MEAN":
                continue  # the mean rows eval adds
            if metric not in row:
                raise SystemExit(f"{tsv} has no column {metric!r} (columns: {', '.join(row)})")
            scores[row["model"]][row["file"]] = float(row[metric])
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tsv", type=Path, help="per-file TSV of `voipfilter eval --tsv` on dev/vbd")
    ap.add_argument("--metric", default="pesq", help="TSV column to compare (default pesq)")
    ap.add_argument("--ref", help="model to pair the others against (a TSV model name; default the first)")
    ap.add_argument("--vbd", type=Path, default=VBD, help="folder with clean/ and noisy/")
    args = ap.parse_args()
    scores = read_scores(args.tsv, args.metric)
    models = list(scores)
    files = sorted(set.intersection(*(set(s) for s in scores.values())))
    if not files:
        raise SystemExit(f"no file is scored for every model in {args.tsv}")
    snr = {f: input_snr(args.vbd, f) for f in files}
    ref = args.ref or models[0]
    if ref not in scores:
        raise SystemExit(f"--ref {ref!r} is not a model of {args.tsv} ({', '.join(models)})")
    w = max(len(m) for m in models)
    print(f"{args.metric} by input SNR; differences are paired against {ref}")
    for lo, hi, label in BANDS + ((-np.inf, np.inf, "all"),):
        band = [f for f in files if lo <= snr[f] < hi]
        if not band:
            continue
        print(f"\n{label}: {len(band)} files, input SNR {np.mean([snr[f] for f in band]):.1f} dB on average")
        for m in models:
            v = np.array([scores[m][f] for f in band])
            line = f"  {m:<{w}}  {v.mean():.3f}"
            if m != ref:
                line += "   %+.3f ± %.3f" % paired(v, [scores[ref][f] for f in band])
            print(line)


if __name__ == "__main__":
    main()
