"""Checks for pre-mixed noisy/clean pair folders, and ``voipfilter check-pairs DIR``.

A pair folder holds ``noisy/`` and ``clean/`` with the same file names. Every pair must
have the same sample rate, channel count and length, and the clean file must line up with
the noisy one sample for sample: the cross-correlation of the two peaks at lag 0. A pair
that is offset by even one sample teaches a model a delay (or asks it to predict the
future), so it is reported and refused, never silently used. The checker also flags
clipping and silent files, and file names present on one side only.

This module needs numpy, scipy and soundfile only (no torch).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

AUDIO_EXTS = {".wav", ".flac", ".ogg", ".mp3"}

# Thresholds (dBFS / fractions) a person preparing data can rely on.
SILENT_DBFS = -60.0
CLIP_LEVEL = 0.999
CLIP_FRACTION = 1e-4  # more than 0.01 % of samples at full scale
CLIP_RUN = 3  # or any run of 3+ consecutive full-scale samples
MIN_CORRELATION = 0.1  # normalised correlation at lag 0 below this: not the same speech


@dataclass
class PairReport:
    name: str
    noisy: Path | None
    clean: Path | None
    sample_rate: int | None = None
    seconds: float | None = None
    lag: int | None = None  # samples by which clean must be delayed to match noisy
    correlation: float | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        state = "OK" if self.ok else "FAIL"
        parts = [f"{state:4s} {self.name}"]
        if self.lag is not None:
            parts.append(f"lag={self.lag:+d}")
        if self.correlation is not None:
            parts.append(f"corr={self.correlation:.3f}")
        text = "  ".join(parts)
        for p in self.problems:
            text += f"\n     problem: {p}"
        for w in self.warnings:
            text += f"\n     warning: {w}"
        return text


class MisalignedPairsError(ValueError):
    """Raised when pair folders hold pairs that must not be trained on."""

    def __init__(self, reports: list[PairReport]):
        self.reports = reports
        bad = [r for r in reports if not r.ok]
        lines = "\n".join(r.line() for r in bad[:20])
        more = f"\n... and {len(bad) - 20} more" if len(bad) > 20 else ""
        super().__init__(f"{len(bad)} of {len(reports)} pairs refused:\n{lines}{more}")


def estimate_lag(noisy: np.ndarray, clean: np.ndarray, max_lag: int | None = None) -> tuple[int, float]:
    """(lag, normalised correlation at that lag) where noisy[n] ~ clean[n - lag].

    Full FFT cross-correlation; ``max_lag`` limits the search (default: a second at
    16 kHz or the signal length, whichever is smaller).
    """
    from scipy import signal

    n = min(len(noisy), len(clean))
    a = noisy[:n].astype(np.float64)
    b = clean[:n].astype(np.float64)
    a = a - a.mean()
    b = b - b.mean()
    xc = signal.correlate(a, b, mode="full", method="fft")  # index n-1 is lag 0
    lags = np.arange(-(n - 1), n)
    if max_lag is None:
        max_lag = min(16000, n - 1)
    sel = np.abs(lags) <= max_lag
    xc, lags = xc[sel], lags[sel]
    i = int(np.argmax(xc))
    denom = np.sqrt(np.dot(a, a) * np.dot(b, b)) + 1e-20
    return int(lags[i]), float(xc[i] / denom)


def _clipping(x: np.ndarray) -> str | None:
    full = np.abs(x) >= CLIP_LEVEL
    count = int(full.sum())
    if count == 0:
        return None
    frac = count / x.size
    # longest run of consecutive full-scale samples
    run = 0
    longest = 0
    if count:
        idx = np.flatnonzero(full)
        breaks = np.flatnonzero(np.diff(idx) != 1)
        starts = np.concatenate([[0], breaks + 1])
        ends = np.concatenate([breaks, [len(idx) - 1]])
        longest = int((ends - starts).max() + 1)
        run = longest
    if frac > CLIP_FRACTION or run >= CLIP_RUN:
        return f"clipped: {count} samples at full scale ({100 * frac:.3f} %), longest run {run}"
    return None


def _dbfs(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def check_pair(noisy_path: Path | None, clean_path: Path | None, name: str | None = None) -> PairReport:
    """Check one pair; every problem found goes into the report (nothing raises)."""
    import soundfile as sf

    name = name or (noisy_path or clean_path).name
    rep = PairReport(name=name, noisy=noisy_path, clean=clean_path)
    if noisy_path is None:
        rep.problems.append("no noisy file for this clean file")
        return rep
    if clean_path is None:
        rep.problems.append("no clean file for this noisy file")
        return rep
    try:
        noisy, sr_n = sf.read(str(noisy_path), dtype="float64", always_2d=True)
        clean, sr_c = sf.read(str(clean_path), dtype="float64", always_2d=True)
    except Exception as exc:  # unreadable file
        rep.problems.append(f"unreadable: {exc}")
        return rep
    rep.sample_rate = sr_n
    rep.seconds = noisy.shape[0] / sr_n
    if sr_n != sr_c:
        rep.problems.append(f"sample rate differs: noisy {sr_n} Hz, clean {sr_c} Hz")
    if noisy.shape[1] != clean.shape[1]:
        rep.problems.append(f"channel count differs: noisy {noisy.shape[1]}, clean {clean.shape[1]}")
    if noisy.shape[1] != 1:
        rep.warnings.append(f"{noisy.shape[1]} channels: only the first is used")
    noisy, clean = noisy[:, 0], clean[:, 0]
    if len(noisy) != len(clean):
        rep.problems.append(f"length differs: noisy {len(noisy)}, clean {len(clean)} samples")
    for side, x in (("noisy", noisy), ("clean", clean)):
        if not np.all(np.isfinite(x)):
            rep.problems.append(f"{side}: NaN or Inf samples")
            continue
        if len(x) == 0 or _dbfs(x) < SILENT_DBFS:
            rep.problems.append(f"{side}: silent ({_dbfs(x) if len(x) else float('-inf'):.1f} dBFS)")
        clip = _clipping(x)
        if clip:
            rep.problems.append(f"{side}: {clip}")
    if len(noisy) and len(clean) and np.all(np.isfinite(noisy)) and np.all(np.isfinite(clean)) and sr_n == sr_c:
        lag, corr = estimate_lag(noisy, clean, max_lag=min(sr_n, min(len(noisy), len(clean)) - 1))
        rep.lag, rep.correlation = lag, corr
        if lag != 0:
            ms = 1000.0 * lag / sr_n
            rep.problems.append(
                f"misaligned: clean must be shifted by {lag:+d} samples ({ms:+.2f} ms) to match noisy; "
                "cross-correlation must peak at lag 0"
            )
        elif corr < MIN_CORRELATION:
            rep.problems.append(f"clean and noisy hardly correlate (r={corr:.3f} at lag 0): not the same recording?")
    return rep


def list_pairs(root: str | Path) -> list[tuple[str, Path | None, Path | None]]:
    """(name, noisy, clean) for every file name in root/noisy or root/clean (sorted)."""
    root = Path(root)
    nd, cd = root / "noisy", root / "clean"
    if not nd.is_dir() or not cd.is_dir():
        raise FileNotFoundError(f"{root} must hold noisy/ and clean/ folders")

    def index(d: Path) -> dict[str, Path]:
        return {str(p.relative_to(d)): p for p in sorted(d.rglob("*")) if p.suffix.lower() in AUDIO_EXTS}

    n, c = index(nd), index(cd)
    return [(k, n.get(k), c.get(k)) for k in sorted(set(n) | set(c))]


def check_dir(root: str | Path) -> list[PairReport]:
    return [check_pair(n, c, name) for name, n, c in list_pairs(root)]


# --------------------------------------------------------------------------- CLI
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="folder(s) with noisy/ and clean/")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only failing pairs and the summary")


def run(args: argparse.Namespace) -> int:
    failed = 0
    total = 0
    errors = 0
    for d in args.dirs:
        try:
            reports = check_dir(d)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            errors += 1
            continue
        if not reports:
            print(f"error: {d}: no audio files in noisy/ or clean/", file=sys.stderr)
            errors += 1
            continue
        for r in reports:
            total += 1
            if not r.ok:
                failed += 1
            if not r.ok or not args.quiet:
                print(r.line())
    print(f"{total} pairs checked, {total - failed} ok, {failed} with problems")
    return 1 if (failed or errors) else 0
