"""``voipfilter enhance``: denoise files through exactly the streaming path a call uses.

    voipfilter enhance IN [IN ...] -o OUT_DIR        (one OUT_DIR/<stem>.wav per input)
    voipfilter enhance IN -o OUT.wav                 (or: voipfilter enhance IN OUT.wav)
    options: --model M.onnx, --keep-delay, --chunk-ms MS

Each file is fed to a :class:`~voipfilter.Denoiser` at its own rate in chunks (20 ms by
default, like a call), then ``delay_samples`` zeros flush the tail out. By default the first
``delay_samples`` output samples are dropped, so the output is aligned with the input and as
long (ready to score against a clean reference); ``--keep-delay`` writes what a live listener
hears: the same length, delayed by ``delay_samples``.

Input: wav/flac (anything libsndfile reads) at 8, 16, 24, 32, 44.1 or 48 kHz. Multichannel
input is downmixed to mono with a warning. Output: mono 16-bit WAV at the input's rate.
Every input is checked before anything is written; a missing/unreadable file or an
unsupported rate is reported with exit code 2 and nothing is written. Outputs are written
atomically (temporary file, then rename), so an interrupted run leaves no half-written file.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from .audio import AudioFileError, probe, read_mono, write_wav16
from .resample import SUPPORTED_RATES

__all__ = ["enhance_array", "enhance_file", "configure", "run"]

DEFAULT_CHUNK_MS = 20.0


def enhance_array(
    x: np.ndarray,
    sample_rate: int,
    model=None,
    keep_delay: bool = False,
    chunk: int | None = None,
    denoiser=None,
    **denoiser_kwargs,
) -> np.ndarray:
    """Denoise a whole mono float32 signal through the streaming Denoiser.

    Returns ``len(x)`` samples: aligned with ``x`` (default), or as a listener hears them,
    delayed by ``delay_samples`` (``keep_delay=True``). ``denoiser`` reuses a Denoiser (it is
    reset first); otherwise one is made from ``model`` and ``denoiser_kwargs``.
    """
    from .denoiser import Denoiser

    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"enhance_array takes a 1-D signal, got shape {x.shape}")
    if denoiser is None:
        denoiser = Denoiser(model, sample_rate=sample_rate, **denoiser_kwargs)
    else:
        if denoiser.sample_rate != sample_rate:
            raise ValueError(f"denoiser runs at {denoiser.sample_rate} Hz, signal is {sample_rate} Hz")
        denoiser.reset()
    if chunk is None:
        chunk = max(1, int(round(sample_rate * DEFAULT_CHUNK_MS / 1000)))
    d = denoiser.delay_samples
    n = len(x)
    padded = np.concatenate([x, np.zeros(d, dtype=np.float32)])
    out = np.empty(n + d, dtype=np.float32)
    for start in range(0, n + d, chunk):
        block = padded[start : start + chunk]
        out[start : start + len(block)] = denoiser.process(block)
    return out[:n] if keep_delay else out[d : d + n]


def enhance_file(in_path, out_path, model=None, keep_delay: bool = False, chunk_ms: float = DEFAULT_CHUNK_MS) -> dict:
    """Enhance one file; returns a small report dict (rate, samples, delay, channels)."""
    from .denoiser import Denoiser
    from .resample import check_rate

    rate, channels, _ = probe(in_path)
    try:
        check_rate(rate)
    except ValueError as exc:
        raise AudioFileError(f"{in_path}: {exc}") from None
    x, rate = read_mono(in_path, downmix_warning=False)
    den = Denoiser(model, sample_rate=rate)
    chunk = max(1, int(round(rate * chunk_ms / 1000)))
    y = enhance_array(x, rate, keep_delay=keep_delay, chunk=chunk, denoiser=den)
    write_wav16(out_path, y, rate)
    return {"in": str(in_path), "out": str(out_path), "sample_rate": rate, "samples": len(x),
            "channels": channels, "delay_samples": den.delay_samples}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IN", help="wav/flac files (8-48 kHz); "
                        "a last argument ending in .wav that does not exist is the output file")
    parser.add_argument("-o", "--output", metavar="OUT", help="output folder, or OUT.wav for a single input")
    parser.add_argument("--model", metavar="M.onnx", help="streaming ONNX model (default: the shipped model)")
    parser.add_argument("--keep-delay", action="store_true",
                        help="write what a live listener hears (delayed by the filter's delay) "
                             "instead of output aligned with the input")
    parser.add_argument("--chunk-ms", type=float, default=DEFAULT_CHUNK_MS,
                        help="chunk size fed to the filter, in ms (default 20, as in a call); "
                             "the output does not depend on it")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-file lines")


def _fail(msg: str) -> int:
    print(f"voipfilter enhance: error: {msg}", file=sys.stderr)
    return 2


def _plan(args) -> list[tuple[Path, Path]] | str:
    inputs = [Path(p) for p in args.inputs]
    output = args.output
    if output is None:
        if len(inputs) >= 2 and inputs[-1].suffix.lower() == ".wav" and not inputs[-1].exists():
            output = str(inputs.pop())
        else:
            return "give the output with -o OUT_DIR (or -o OUT.wav for one input)"
    out = Path(output)
    if out.suffix.lower() == ".wav" and not out.is_dir():
        if len(inputs) != 1:
            return f"{len(inputs)} inputs need an output folder, not the file {out}"
        if not out.parent.is_dir():
            return f"output folder {out.parent} does not exist"
        pairs = [(inputs[0], out)]
    else:
        if out.exists() and not out.is_dir():
            return f"{out} exists and is not a folder"
        pairs = [(p, out / (p.stem + ".wav")) for p in inputs]
        names = [o.name for _, o in pairs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            return f"several inputs would write the same output file(s): {', '.join(dupes)}"
    for src, dst in pairs:
        if src.exists() and dst.exists() and src.resolve() == dst.resolve():
            return f"output {dst} would overwrite its input"
    return pairs


def run(args) -> int:
    plan = _plan(args)
    if isinstance(plan, str):
        return _fail(plan)
    # Check every input before writing anything.
    for src, _ in plan:
        try:
            rate, channels, _ = probe(src)
        except AudioFileError as exc:
            return _fail(str(exc))
        if rate not in SUPPORTED_RATES:
            return _fail(f"{src}: unsupported sample rate {rate} Hz (supported: "
                         + ", ".join(str(r) for r in SUPPORTED_RATES) + ")")
        if channels > 1:
            print(f"voipfilter enhance: warning: {src} has {channels} channels; downmixing to mono",
                  file=sys.stderr)
    from .model import Model

    try:
        model = Model.load(args.model)
    except (FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    os.makedirs(plan[0][1].parent, exist_ok=True)

    items = plan
    bar = None
    if len(plan) > 1 and not args.quiet:
        from tqdm import tqdm

        bar = tqdm(plan, desc="enhance", unit="file", file=sys.stderr)
        items = bar
    try:
        for src, dst in items:
            try:
                info = enhance_file(src, dst, model=model, keep_delay=args.keep_delay, chunk_ms=args.chunk_ms)
            except AudioFileError as exc:
                return _fail(str(exc))
            except Exception as exc:  # a model failure: report, leave nothing half-written
                print(f"voipfilter enhance: {src}: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
            if bar is None and not args.quiet:
                print(f"{src} -> {dst} ({info['sample_rate']} Hz, delay {info['delay_samples']} samples"
                      f"{', kept' if args.keep_delay else ', removed'})", file=sys.stderr)
    finally:
        if bar is not None:
            bar.close()
    return 0
