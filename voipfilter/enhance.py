"""``voipfilter enhance``: denoise files through exactly the streaming path a call uses.

    voipfilter enhance IN -o OUT.wav            (or OUT.flac, OUT.ogg...: any format soundfile
                                                 writes; overwritten if it exists)
    voipfilter enhance IN [IN ...] -o OUT_DIR   (one OUT_DIR/<stem>.wav per input)
    voipfilter enhance IN OUT.wav               (a last name that does not exist yet)
    options: --model NAME|M.onnx, --keep-delay, --chunk-ms MS, -q

Each file is streamed block by block (bounded memory) to a Denoiser at its own rate in
chunks (20 ms by default, like a call), then ``delay_samples`` zeros flush the tail out. By
default the first ``delay_samples`` output samples are dropped, so the output is aligned
with the input and as long (ready to score against a clean reference); ``--keep-delay``
writes what a live listener hears: the same length, delayed by ``delay_samples``.

Input: anything libsndfile reads, at any rate from 1 to 384 kHz. 8, 16, 24, 32, 44.1 and
48 kHz go to :class:`~voipfilter.Denoiser` directly; other rates (11.025, 22.05, 96 kHz...)
are resampled to the model's rate and back by :class:`~voipfilter.anyrate.AnyRateDenoiser`,
the delay still exact. Multichannel input is downmixed to mono with a warning. Output: mono
at the input's rate, 16-bit where the format has it. Every input and output is checked
before anything is written; a missing/unreadable file, a bad rate or an output format that
cannot be written is reported with exit code 2 and nothing is written. Outputs are written
to a temporary file that is renamed into place, so an interrupted run (Ctrl-C: exit code
130, one line) leaves no half-written file.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .anyrate import check_any_rate, denoiser_for
from .audio import AudioFileError, check_writable, open_output, output_format, probe

__all__ = ["enhance_array", "enhance_stream", "enhance_file", "configure", "run"]

DEFAULT_CHUNK_MS = 20.0
BLOCK_SAMPLES = 1 << 16  # read/write granularity of enhance_file (about 1.4 s at 48 kHz)


def _chunk(sample_rate: int, chunk_ms: float) -> int:
    return max(1, int(round(sample_rate * chunk_ms / 1000)))


def _feed(denoiser, x: np.ndarray, chunk: int) -> np.ndarray:
    if len(x) <= chunk:
        return denoiser.process(x)
    return np.concatenate([denoiser.process(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def enhance_stream(blocks: Iterable[np.ndarray], denoiser, keep_delay: bool = False, chunk: int | None = None) -> Iterator[np.ndarray]:
    """Denoise a mono float32 stream given as blocks; yields output blocks that add up to
    as many samples as went in: aligned with the input (default) or delayed by
    ``delay_samples`` (``keep_delay=True``). ``denoiser`` is used as it is (not reset)."""
    if chunk is None:
        chunk = _chunk(denoiser.sample_rate, DEFAULT_CHUNK_MS)
    d = denoiser.delay_samples
    skip = 0 if keep_delay else d
    n_in = n_out = 0
    for x in blocks:
        n_in += len(x)
        y = _feed(denoiser, np.ascontiguousarray(x, dtype=np.float32), chunk)
        if skip:
            cut = min(skip, len(y))
            y, skip = y[cut:], skip - cut
        n_out += len(y)
        if len(y):
            yield y
    if n_out < n_in:  # flush the filter's delay out with zeros
        y = _feed(denoiser, np.zeros(d, dtype=np.float32), chunk)[skip:][: n_in - n_out]
        if len(y):
            yield y


def enhance_array(
    x: np.ndarray,
    sample_rate: int,
    model=None,
    keep_delay: bool = False,
    chunk: int | None = None,
    denoiser=None,
    **denoiser_kwargs,
) -> np.ndarray:
    """Denoise a whole mono float32 signal through the streaming filter.

    Returns ``len(x)`` samples: aligned with ``x`` (default), or as a listener hears them,
    delayed by ``delay_samples`` (``keep_delay=True``). ``denoiser`` reuses a Denoiser (it is
    reset first); otherwise one is made from ``model`` and ``denoiser_kwargs`` (any rate:
    see :func:`voipfilter.anyrate.denoiser_for`).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"enhance_array takes a 1-D signal, got shape {x.shape}")
    if denoiser is None:
        denoiser = denoiser_for(model, sample_rate, **denoiser_kwargs)
    else:
        if denoiser.sample_rate != sample_rate:
            raise ValueError(f"denoiser runs at {denoiser.sample_rate} Hz, signal is {sample_rate} Hz")
        denoiser.reset()
    out = list(enhance_stream([x], denoiser, keep_delay=keep_delay, chunk=chunk))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def _check_rate(path: Path, rate: int) -> None:
    try:
        check_any_rate(rate)
    except ValueError as exc:
        raise AudioFileError(f"{path}: {exc}") from None


def _read_blocks(path: Path, blocksize: int, progress: Callable[[int], None] | None) -> Iterator[np.ndarray]:
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as f:
            for block in f.blocks(blocksize=blocksize, dtype="float32", always_2d=True):
                x = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
                yield np.ascontiguousarray(x)
                if progress is not None:
                    progress(len(x))
    except sf.LibsndfileError as exc:
        raise AudioFileError(f"{path}: cannot read audio ({exc})") from None


def enhance_file(
    in_path,
    out_path,
    model=None,
    keep_delay: bool = False,
    chunk_ms: float = DEFAULT_CHUNK_MS,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Enhance one file into ``out_path`` (its format from the extension); ``progress(n)``
    is called with each block's number of input samples. Returns a small report dict."""
    in_path, out_path = Path(in_path), Path(out_path)
    rate, channels, _ = probe(in_path)
    _check_rate(in_path, rate)
    den = denoiser_for(model, rate)
    chunk = _chunk(rate, chunk_ms)
    blocksize = chunk * max(1, BLOCK_SAMPLES // chunk)
    samples = 0
    with open_output(out_path, rate) as out:
        for y in enhance_stream(_read_blocks(in_path, blocksize, progress), den, keep_delay, chunk):
            out.write(y)
            samples += len(y)
    return {"in": str(in_path), "out": str(out_path), "sample_rate": rate, "samples": samples,
            "channels": channels, "delay_samples": den.delay_samples,
            "filter_rate": getattr(den, "inner_rate", rate)}


OUTPUT_HELP = """\
output (-o OUT):
  one input, OUT with an audio extension (.wav, .flac, .ogg, .mp3, .aiff... any format
    soundfile writes): writes that file, in that format; again on every run (overwritten)
  OUT an existing folder, or a name without an extension: a folder (made if missing) with
    one <stem>.wav per input; several inputs need a folder
  no -o: of two names, the second is the output file if it has an audio extension and
    does not exist yet
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = OUTPUT_HELP
    parser.add_argument("inputs", nargs="+", metavar="IN",
                        help="audio files (wav, flac, ogg... at any rate; multichannel is downmixed)")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="output file (one input: OUT.wav, OUT.flac...) or folder (see below)")
    parser.add_argument("--model", metavar="NAME|M.onnx",
                        help="a shipped model's name (gtcrn-voipfilter) or a streaming ONNX file "
                             "(default: the shipped gtcrn-voipfilter)")
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


def _is_audio_name(path: Path) -> bool:
    try:
        output_format(path)
    except AudioFileError:
        return False
    return True


def _plan(args) -> list[tuple[Path, Path]] | str:
    """(input, output) pairs from the command line, or what is wrong with it."""
    inputs = [Path(p) for p in args.inputs]
    output = args.output
    if output is None:
        if len(inputs) == 2 and _is_audio_name(inputs[-1]) and not inputs[-1].exists():
            output = str(inputs.pop())
        else:
            taken = len(inputs) == 2 and inputs[-1].exists()
            exists = f" ({inputs[-1]} exists, so it is taken as an input)" if taken else ""
            return f"give the output with -o: OUT.wav (or .flac...) for one input, a folder for several{exists}"
    out = Path(output)
    if out.is_dir() or not out.suffix:
        if out.exists() and not out.is_dir():
            return f"{out} exists and is not a folder; give a folder, or a file name with an audio extension"
        pairs = [(p, out / (p.stem + ".wav")) for p in inputs]
        names = [o.name for _, o in pairs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            return f"several inputs would write the same output file(s): {', '.join(dupes)}"
    else:
        if len(inputs) != 1:
            return (f"{len(inputs)} inputs need an output folder, not the file {out} "
                    "(give an existing folder or a name without an extension)")
        try:
            output_format(out)
        except AudioFileError as exc:
            return f"{exc} (a folder output needs a name without an extension, or an existing folder)"
        if not out.parent.is_dir():
            return f"output folder {out.parent} does not exist"
        pairs = [(inputs[0], out)]
    for src, dst in pairs:
        if src.exists() and dst.exists() and src.resolve() == dst.resolve():
            return f"output {dst} would overwrite its input"
    return pairs


def _summary(info: dict, keep_delay: bool) -> str:
    rate, d = info["sample_rate"], info["delay_samples"]
    ms = 1000.0 * d / rate
    parts = [f"{info['samples'] / rate:.1f} s at {rate} Hz"]
    if info["filter_rate"] != rate:
        parts.append(f"filtered at {info['filter_rate']} Hz (resampled there and back)")
    if info["channels"] > 1:
        parts.append(f"downmixed from {info['channels']} channels")
    if keep_delay:
        how = f"delayed by the filter's {d} samples ({ms:.1f} ms), as a live listener hears it"
    else:
        how = f"aligned: the filter's {d}-sample ({ms:.1f} ms) delay removed"
    return f"{info['in']} -> {info['out']}: {', '.join(parts)}; {how}"


def run(args) -> int:
    plan = _plan(args)
    if isinstance(plan, str):
        return _fail(plan)
    # Check every input and output before writing anything.
    rates, seconds = [], []
    for src, dst in plan:
        try:
            rate, channels, frames = probe(src)
            _check_rate(src, rate)
            check_writable(dst, rate)
        except AudioFileError as exc:
            return _fail(str(exc))
        if channels > 1:
            print(f"voipfilter enhance: warning: {src} has {channels} channels; downmixing to mono",
                  file=sys.stderr)
        rates.append(rate)
        seconds.append(frames / rate)
    from .model import Model

    try:
        model = Model.load(args.model)
    except (FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    os.makedirs(plan[0][1].parent, exist_ok=True)

    bar = None
    done = 0
    src, dst = plan[0]
    try:
        if not args.quiet:
            from tqdm import tqdm

            bar = tqdm(total=sum(seconds), desc="enhance", unit="s", file=sys.stderr,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}]")
        for (src, dst), rate in zip(plan, rates):
            progress = None if bar is None else (lambda n, r=rate: bar.update(n / r))
            info = enhance_file(src, dst, model=model, keep_delay=args.keep_delay, chunk_ms=args.chunk_ms,
                                progress=progress)
            done += 1
            if bar is not None:
                bar.write(_summary(info, args.keep_delay), file=sys.stderr)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        elif not args.quiet:  # interrupted while the bar was being drawn: end its line
            print(file=sys.stderr)
        earlier = f"; the {done} output(s) before it are complete" if done else ""
        print(f"voipfilter enhance: interrupted; {dst} not written{earlier}", file=sys.stderr)
        return 130
    except AudioFileError as exc:
        return _fail(str(exc))
    except Exception as exc:  # a model failure: report, leave nothing half-written
        print(f"voipfilter enhance: {src}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
    return 0
