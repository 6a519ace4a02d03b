#!/usr/bin/env python3
"""Where two models differ on dev/vbd: what they do to clean speech and to noise in pauses.

For each ONNX model, through the streaming path (delay removed):
- clean in: the level change (dB) and PESQ-WB when the *clean* dev files are enhanced
  (every second file), i.e. whether the model damages speech that has no noise;
- pauses: how much the noise is lowered (dB against the noisy input) in the frames where
  the clean file is 35 dB below its loudest 16 ms frame.

    python benchmarks/dev_gap.py voipfilter/models/gtcrn-voipfilter.onnx upstream.onnx

Needs the eval extra (pesq) and ../shared/data/dev/vbd beside the checkout.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from voipfilter.denoiser import Denoiser
from voipfilter.enhance import enhance_array
from voipfilter.evaluate.metrics import pesq_wb

VBD = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev" / "vbd"
FRAME = 256


def frame_energy(x: np.ndarray) -> np.ndarray:
    n = len(x) // FRAME
    return np.mean(x[: n * FRAME].reshape(n, FRAME) ** 2, axis=1) + 1e-12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="ONNX models")
    ap.add_argument("--vbd", type=Path, default=VBD, help="folder with clean/ and noisy/")
    args = ap.parse_args()
    files = sorted((args.vbd / "clean").glob("*.flac"))
    if not files:
        raise SystemExit(f"no clean/*.flac under {args.vbd}")
    for model in args.models:
        den = Denoiser(model, sample_rate=16000)
        level, pesq, pause = [], [], []
        for i, f in enumerate(files):
            clean, _ = sf.read(f, dtype="float32")
            noisy, _ = sf.read(args.vbd / "noisy" / f.name, dtype="float32")
            if i % 2 == 0:
                y = enhance_array(clean, 16000, denoiser=den)
                level.append(10 * np.log10(np.sum(y.astype(np.float64) ** 2) / np.sum(clean.astype(np.float64) ** 2)))
                pesq.append(pesq_wb(clean, y, 16000))
            ec = frame_energy(clean)
            quiet = ec < ec.max() * 10 ** -3.5
            if quiet.sum() >= 3:
                ey, ex = frame_energy(enhance_array(noisy, 16000, denoiser=den)), frame_energy(noisy)
                pause.append(10 * np.log10(ey[quiet].mean() / ex[quiet].mean()))
        print(f"{Path(model).name}: clean in: level {np.mean(level):+.2f} dB, PESQ-WB {np.mean(pesq):.3f} "
              f"({len(level)} files); noise in pauses {np.mean(pause):+.1f} dB ({len(pause)} files)")


if __name__ == "__main__":
    main()
