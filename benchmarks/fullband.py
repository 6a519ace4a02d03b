#!/usr/bin/env python3
"""Full-band vs band-limited output at 48 kHz on VoiceBank-DEMAND pairs (dev/vbd48).

Each noisy file goes through the streaming path (``voipfilter.enhance.enhance_array``: a
``Denoiser`` at the file's rate, 20 ms chunks, its delay removed) four times in the same run:
``fullband=True`` (the default) and ``fullband=False`` (nothing above the model's 8 kHz),
each on the default native-rate path (the model on the 48 kHz STFT) and resampled
(``native_rate=False``: 48 -> 16 -> 48 kHz around the model).
Scored against the clean file, with the noisy input as a third row:

- SI-SDR at 48 kHz;
- LSD 8-24 kHz: log-spectral distance to clean in 8-24 kHz (dB; per 2048-point Hann frame,
  hop 512, RMS over bins of the power ratio in dB, powers floored at 1e-10; mean over frames);
- PESQ-WB after resampling to 16 kHz (``voipfilter eval``'s resampler);

and the attenuation of 48 kHz white noise that has nothing below 8 kHz.

    python benchmarks/fullband.py                       # the table of docs/benchmarks.md
    python benchmarks/fullband.py --sweep               # also gain variants (band, smoothing)
    python benchmarks/fullband.py --png docs/img --only p232_001 p257_009   # the PNGs of docs/img

``--png`` also draws spectrograms (clean / noisy / band-limited / full-band) of the files named
by ``--png-files``; that needs matplotlib (in the ``eval`` extra). Needs the ``eval`` extra
(pesq, scipy) and ../shared/data/dev/vbd48 beside the checkout.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from voipfilter.denoiser import Denoiser, HighBandConfig
from voipfilter.enhance import enhance_array
from voipfilter.evaluate.cli import _to16k
from voipfilter.evaluate.metrics import pesq_wb, si_sdr
from voipfilter.model import Model, default_model_path

VBD48 = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev" / "vbd48"
N_FFT, HOP, FLOOR = 2048, 512, 1e-10

SWEEP = {
    "band 5-8 kHz, no smoothing": HighBandConfig((5000.0, 8000.0), 0.0, 0.0),
    "band 6-8 kHz, no smoothing": HighBandConfig((6000.0, 8000.0), 0.0, 0.0),
    "band 7-8 kHz, no smoothing": HighBandConfig((7000.0, 8000.0), 0.0, 0.0),
    "band 4-8 kHz, no smoothing": HighBandConfig((4000.0, 8000.0), 0.0, 0.0),
    "band 5-8 kHz, 30 ms both ways": HighBandConfig((5000.0, 8000.0), 30.0, 30.0),
    "band 5-8 kHz, release 60 ms": HighBandConfig((5000.0, 8000.0), 0.0, 60.0),
    "band 5-8 kHz, attack 60 ms": HighBandConfig((5000.0, 8000.0), 60.0, 0.0),
    "band 5-8 kHz, release 30 ms": HighBandConfig((5000.0, 8000.0), 0.0, 30.0),
    "band 5-8 kHz, release 120 ms": HighBandConfig((5000.0, 8000.0), 0.0, 120.0),
    "band 4-8 kHz, release 60 ms": HighBandConfig((4000.0, 8000.0), 0.0, 60.0),
}


def power_spectrogram(x: np.ndarray) -> np.ndarray:
    """(frames, bins) power of 2048-point periodic-Hann frames, hop 512."""
    n = 1 + max(0, len(x) - N_FFT) // HOP
    idx = np.arange(n)[:, None] * HOP + np.arange(N_FFT)[None, :]
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    return np.abs(np.fft.rfft(x.astype(np.float64)[idx] * w, axis=1)) ** 2


def lsd_band(ref: np.ndarray, est: np.ndarray, sr: int, lo: float = 8000.0, hi: float = 24000.0) -> float:
    """Log-spectral distance (dB) between ref and est in [lo, hi) Hz."""
    f = np.fft.rfftfreq(N_FFT, 1 / sr)
    band = (f >= lo) & (f < hi)
    pr = np.maximum(power_spectrogram(ref)[:, band], FLOOR)
    pe = np.maximum(power_spectrogram(est)[:, band], FLOOR)
    return float(np.mean(np.sqrt(np.mean((10 * np.log10(pr / pe)) ** 2, axis=1))))


def score(clean: np.ndarray, y: np.ndarray, sr: int) -> dict[str, float]:
    return {
        "si_sdr": si_sdr(clean, y),
        "lsd_hf": lsd_band(clean, y, sr),
        "pesq": pesq_wb(_to16k(clean, sr), _to16k(y, sr), 16000),
    }


def hf_noise_attenuation(model, rate: int = 48000, seconds: float = 3.0, native_rate: bool = True) -> float:
    """dB by which white noise with nothing below 8 kHz comes out quieter (full band, 20 ms
    chunks, first 0.5 s skipped)."""
    n = int(rate * seconds)
    spec = np.fft.rfft(np.random.default_rng(0).standard_normal(n))
    spec[np.fft.rfftfreq(n, 1 / rate) < 8000] = 0
    hf = np.fft.irfft(spec, n)
    x = (0.05 * hf / hf.std()).astype(np.float32)
    y = enhance_array(x, rate, denoiser=Denoiser(model, sample_rate=rate, native_rate=native_rate))
    skip = rate // 2
    return float(-10 * np.log10(np.mean(y[skip:] ** 2) / np.mean(x[skip:] ** 2)))


def draw(path: Path, name: str, signals: dict[str, np.ndarray], sr: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(signals), 1, figsize=(8, 1.8 * len(signals)), sharex=True, sharey=True, dpi=72,
                             layout="constrained")
    ref_db = 10 * np.log10(power_spectrogram(signals["clean"]).max())
    for ax, (label, x) in zip(axes, signals.items()):
        p = 10 * np.log10(np.maximum(power_spectrogram(x), FLOOR)) - ref_db
        t_end = len(x) / sr
        im = ax.imshow(p.T, origin="lower", aspect="auto", cmap="magma", vmin=-90, vmax=0,
                       extent=(0, t_end, 0, sr / 2000))
        ax.axhline(8, color="w", lw=0.6, ls="--")
        ax.set_ylabel("kHz")
        ax.set_title(f"{name}: {label}", fontsize=9, loc="left")
    axes[-1].set_xlabel("s")
    fig.colorbar(im, ax=axes, label="dB (re clean max)", shrink=0.6)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.canvas.draw()
    from PIL import Image  # matplotlib's own dependency; a 128-colour PNG is a fraction of the size

    Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3]).quantize(128).save(path, optimize=True)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vbd48", type=Path, default=VBD48, help="folder with clean/ and noisy/ at 48 kHz")
    ap.add_argument("--model", default=None, help="streaming ONNX (default: the shipped model)")
    ap.add_argument("--sweep", action="store_true", help="also score the gain variants in SWEEP")
    ap.add_argument("--png", type=Path, help="write spectrogram PNGs into this folder")
    ap.add_argument("--png-files", nargs="*", default=["p232_001", "p257_009"], help="file stems to draw")
    ap.add_argument("--only", nargs="*", help="score only these file stems (e.g. just the ones to draw)")
    args = ap.parse_args()
    files = sorted((args.vbd48 / "noisy").glob("*.flac"))
    if args.only:
        files = [f for f in files if f.stem in args.only]
    if not files:
        print(f"no noisy files in {args.vbd48 / 'noisy'}", file=sys.stderr)
        return 2
    model = Model.load(args.model if args.model else default_model_path())
    # (fullband, native_rate): the default path runs the model on the 48 kHz STFT; the
    # resampled rows are the 48 -> 16 -> 48 kHz path (native_rate=False)
    variants: dict[str, tuple["bool | HighBandConfig", bool]] = {
        "full-band (default)": (True, True),
        "band-limited": (False, True),
        "full-band, resampled": (True, False),
        "band-limited, resampled": (False, False),
    }
    if args.sweep:
        variants.update({k: (cfg, True) for k, cfg in SWEEP.items()})
    rows: dict[str, list[dict]] = {"noisy": []}
    rows.update({k: [] for k in variants})
    speakers: list[str] = []
    try:
        from tqdm import tqdm

        it = tqdm(files, unit="file", file=sys.stderr)
    except ImportError:
        it = files
    for f in it:
        noisy, sr = sf.read(str(f), dtype="float32")
        clean, csr = sf.read(str(args.vbd48 / "clean" / f.name), dtype="float32")
        if csr != sr or len(clean) != len(noisy):
            print(f"{f.name}: clean and noisy differ in rate or length", file=sys.stderr)
            return 2
        speakers.append(f.stem.split("_")[0])
        rows["noisy"].append(score(clean, noisy, sr))
        outs = {}
        for label, (fb, native) in variants.items():
            den = Denoiser(model, sample_rate=sr, fullband=fb, native_rate=native)
            y = enhance_array(noisy, sr, denoiser=den)
            outs[label] = y
            rows[label].append(score(clean, y, sr))
        if args.png and f.stem in args.png_files:
            draw(args.png / f"fullband_{f.stem}.png", f.stem,
                 {"clean": clean, "noisy": noisy, "band-limited": outs["band-limited"],
                  "full-band": outs["full-band (default)"]}, sr)
    print(f"{len(files)} pairs at {sr} Hz from {args.vbd48}, model {model.model_name}")
    groups = [("all", None)] + [(s, s) for s in sorted(set(speakers))]
    w = max(len(k) for k in rows)
    for gname, spk in groups:
        sel = [i for i, s in enumerate(speakers) if spk is None or s == spk]
        print(f"\n{gname} ({len(sel)} files)")
        print(f"{'output':<{w}}  SI-SDR 48k  LSD 8-24k  PESQ-WB 16k")
        for label, rs in rows.items():
            m = {k: float(np.nanmean([rs[i][k] for i in sel])) for k in ("si_sdr", "lsd_hf", "pesq")}
            print(f"{label:<{w}}  {m['si_sdr']:10.2f}  {m['lsd_hf']:9.2f}  {m['pesq']:11.3f}")
    fb, bl = rows["full-band (default)"], rows["band-limited"]
    d = [a["pesq"] - b["pesq"] for a, b in zip(fb, bl)]
    print(f"\nPESQ-WB full-band - band-limited: mean {np.nanmean(d):+.4f}, max |diff| {np.nanmax(np.abs(d)):.4f}")
    d = [a["pesq"] - b["pesq"] for a, b in zip(fb, rows["full-band, resampled"])]
    print(f"PESQ-WB native-rate - resampled (full band): mean {np.nanmean(d):+.4f}, max |diff| {np.nanmax(np.abs(d)):.4f}")
    print(f"white noise above 8 kHz alone, 48 kHz: {hf_noise_attenuation(model):.1f} dB quieter (full band), "
          f"{hf_noise_attenuation(model, native_rate=False):.1f} dB resampled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
