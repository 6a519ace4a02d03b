#!/usr/bin/env python3
"""Is a DNSMOS gap on dev/real_noisy a level effect? DNSMOS P.835 scores depend on level.

DNSMOS's P.835 network (SIG / BAK / OVRL) reads the waveform as it is, so the same audio
scores differently at another level, and two enhancers that leave their outputs at different
levels are not compared on quality alone. For each real_noisy file this prints:

- the unprocessed file's OVRL at gains 2, 1, 0.5 and 0.25 (the level effect alone);
- each model's OVRL as it comes out of the streaming path (delay removed), and the same
  output scaled to the RMS of the first model's output (the models compared at one level).

    python benchmarks/dnsmos_level.py UPSTREAM.onnx voipfilter/models/gtcrn-voipfilter.onnx

Needs the eval extra (speechmos) and ../shared/data/dev/real_noisy beside the checkout.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from voipfilter.denoiser import Denoiser
from voipfilter.enhance import enhance_array
from voipfilter.evaluate.dnsmos import dnsmos

REAL_NOISY = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev" / "real_noisy"
GAINS = (2.0, 1.0, 0.5, 0.25)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="ONNX models; the first sets the level of the matched column")
    ap.add_argument("--dir", type=Path, default=REAL_NOISY, help="folder of noisy recordings (16 kHz)")
    args = ap.parse_args()
    files = sorted(args.dir.glob("*.flac"))
    if not files:
        raise SystemExit(f"no *.flac under {args.dir}")
    rows: dict[str, list[tuple[float, float]]] = {Path(m).name: [] for m in args.models}
    for f in files:
        x, sr = sf.read(f, dtype="float32")
        if sr != 16000:
            raise SystemExit(f"{f}: {sr} Hz, need 16000")
        noisy = " ".join(f"x{g:g} {dnsmos(x * g)['ovrl']:.3f}" for g in GAINS)
        print(f"{f.name}: unprocessed OVRL {noisy}")
        ref_rms = None
        for m in args.models:
            y = enhance_array(x, 16000, denoiser=Denoiser(m, sample_rate=16000))
            level = max(rms(y), 1e-12)
            if ref_rms is None:
                ref_rms = level
            gain = ref_rms / level
            as_is = dnsmos(y)["ovrl"]
            matched = as_is if gain == 1.0 else dnsmos(y * gain)["ovrl"]
            rows[Path(m).name].append((as_is, matched))
            print(f"  {Path(m).name}: OVRL {as_is:.3f} at its level ({20 * np.log10(level):.1f} dBFS), "
                  f"{matched:.3f} at the first model's ({20 * np.log10(gain):+.1f} dB)")
    for name, r in rows.items():
        a = np.array(r)
        print(f"{name}: mean OVRL {a[:, 0].mean():.3f} as is, {a[:, 1].mean():.3f} at the first model's level")


if __name__ == "__main__":
    main()
