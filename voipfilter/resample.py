"""Streaming resampling (libswresample through ``av.AudioResampler``) with exactly known timing.

What was measured (PyAV 18 / libswresample, float mono, every pair of 8, 16, 24, 32, 44.1 and
48 kHz with 16 kHz, impulses and noise fed in chunks of 1, 7, 160, 480, 960, 4096 and mixed):

* **Content is chunk-independent**: the output stream is bit-identical however the input is
  cut into frames.
* **The output count is a function of the cumulative input count only** (not of the
  chunking): after n input samples the resampler has emitted exactly ``count(n)`` samples.
  It holds back about 16 samples of the lower rate (about 1 ms per direction) in steady
  state, and twice that before its first output.
* **No content delay**: output sample j is the band-limited input at time j * rate_in /
  rate_out exactly (an impulse at input sample 1000 peaks at output 1000 * ratio; for
  44.1 kHz, where that is not an integer, the peak straddles it). The resampler only
  *buffers*; it does not shift.

So a chain down → block model → up has a constant, exactly computable delay once its output
goes through a FIFO primed with enough zeros never to run dry:
:func:`chain_timing` computes the priming from the resamplers' measured count functions
(:meth:`StreamingResampler.count`, probed once per rate pair and process with one-sample
frames, so a different libswresample build cannot silently break the delay).
"""
from __future__ import annotations

import errno
import math
import threading
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

__all__ = [
    "SUPPORTED_RATES",
    "StreamingResampler",
    "ChainTiming",
    "chain_timing",
    "check_rate",
]

SUPPORTED_RATES = (8000, 16000, 24000, 32000, 44100, 48000)


def check_rate(sample_rate: int) -> int:
    """Validate a stream sample rate; return it as int or raise ValueError."""
    try:
        ok = int(sample_rate) == sample_rate and int(sample_rate) in SUPPORTED_RATES
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"unsupported sample rate {sample_rate!r}; supported: "
            + ", ".join(f"{r}" for r in SUPPORTED_RATES)
        )
    return int(sample_rate)


class StreamingResampler:
    """Mono float32 streaming resampler: ``process(x) -> y`` (any lengths, including 0).

    Exactly one of these per direction per stream. ``reset()`` forgets all history.

    It drives the filter graph ``av.AudioResampler`` builds (abuffer → aformat → abuffersink:
    libswresample, same output) itself, because the resampler's own per-frame overhead was
    most of its cost (~60 µs per 20 ms frame, of which ~20 µs the exception that ends each
    pull loop). Once the rate pair's count function is known (:meth:`count`, probed once per
    process), it pulls exactly the frames the new samples fill and never a pull too many.
    """

    def __init__(self, rate_in: int, rate_out: int):
        self.rate_in = int(rate_in)
        self.rate_out = int(rate_out)
        if self.rate_in <= 0 or self.rate_out <= 0:
            raise ValueError(f"bad rates {rate_in} -> {rate_out}")
        self.ratio = Fraction(self.rate_out, self.rate_in)
        self._time_base = Fraction(1, self.rate_in)
        self.reset()

    def reset(self) -> None:
        import av
        from av.filter import Graph

        self._av = av
        graph = Graph()
        src = graph.add("abuffer", sample_rate=str(self.rate_in), sample_fmt="flt", channel_layout="mono",
                        time_base=str(self._time_base))
        fmt = graph.add("aformat", sample_rates=str(self.rate_out), sample_fmts="flt", channel_layouts="mono")
        sink = graph.add("abuffersink")
        src.link_to(fmt)
        fmt.link_to(sink)
        graph.configure()
        self._graph, self._src, self._sink = graph, src, sink
        # the count function, when already probed (the probe itself pulls until empty)
        self._counts = _count_models.get((self.rate_in, self.rate_out))
        self._pts = 0
        self._n_out = 0

    def process(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        frame = self._av.AudioFrame(format="flt", layout="mono", samples=n)
        np.frombuffer(frame.planes[0], dtype=np.float32, count=n)[:] = x
        frame.sample_rate = self.rate_in
        frame.pts = self._pts
        frame.time_base = self._time_base
        self._pts += n
        self._src.push(frame)
        due = None if self._counts is None else self._counts.at(self._pts) - self._n_out
        outs = []
        got = 0
        while due is None or got < due:
            try:
                f = self._sink.pull()
            except self._av.FFmpegError as exc:  # EAGAIN: the graph holds nothing more now
                if exc.errno != errno.EAGAIN:
                    raise
                break
            # Packed float mono: plane 0 holds the samples (its buffer may be padded).
            outs.append(np.frombuffer(f.planes[0], dtype=np.float32, count=f.samples))
            got += f.samples
        self._n_out += got
        if not outs:
            return np.zeros(0, dtype=np.float32)
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    # ------------------------------------------------------------------ timing
    def count(self, n) -> np.ndarray:
        """Cumulative output samples after n cumulative input samples (vectorised over n)."""
        return _count_model(self.rate_in, self.rate_out)(n)


class _CountModel:
    """count(n) for one rate pair: a probed table, extended by its exact periodicity."""

    def __init__(self, rate_in: int, rate_out: int):
        g = math.gcd(rate_in, rate_out)
        self.p_in, self.p_out = rate_in // g, rate_out // g
        n_probe = max(2000, 4 * self.p_in + 1000)
        table = self._probe(rate_in, rate_out, n_probe)
        # Find where the count becomes periodic: table[n + p_in] == table[n] + p_out from n0 on.
        ok = table[self.p_in :] == table[: -self.p_in] + self.p_out
        bad = np.flatnonzero(~ok)
        n0 = 0 if len(bad) == 0 else int(bad[-1]) + 1
        if n0 > len(table) - 2 * self.p_in - 1:
            raise RuntimeError(
                f"libswresample {rate_in}->{rate_out} Hz: output count is not periodic after "
                f"{len(table)} samples; cannot guarantee a constant delay"
            )
        self.table = table
        self.n0 = n0
        self._list = table.tolist()

    def at(self, n: int) -> int:
        """count(n) for one int n (what a stream asks once per chunk)."""
        last = len(self._list) - 1
        if n <= last:
            return self._list[n]
        k = -(-(n - last) // self.p_in)
        return self._list[n - k * self.p_in] + k * self.p_out

    @staticmethod
    def _probe(rate_in: int, rate_out: int, n: int) -> np.ndarray:
        rs = StreamingResampler(rate_in, rate_out)
        one = np.zeros(1, dtype=np.float32)
        counts = np.zeros(n + 1, dtype=np.int64)
        total = 0
        for i in range(n):
            total += len(rs.process(one))
            counts[i + 1] = total
        return counts

    def __call__(self, n):
        n = np.asarray(n, dtype=np.int64)
        last = len(self.table) - 1
        if np.all(n <= last):
            return self.table[n]
        # Move n back into [n0, last] by whole periods.
        over = np.maximum(n - last, 0)
        k = -(-over // self.p_in)  # ceil
        k = np.where(n > last, np.maximum(k, 1), 0)
        base = n - k * self.p_in
        return self.table[base] + k * self.p_out


_count_models: dict[tuple[int, int], _CountModel] = {}
_count_lock = threading.Lock()


def _count_model(rate_in: int, rate_out: int) -> _CountModel:
    key = (int(rate_in), int(rate_out))
    with _count_lock:
        model = _count_models.get(key)
        if model is None:
            model = _CountModel(*key)
            _count_models[key] = model
        return model


@dataclass(frozen=True)
class ChainTiming:
    """Timing of stream rate → model rate → block model → stream rate.

    ``model_priming``: zeros fed to the up-resampler before the first model output (model
    rate), chosen so that ``delay_samples`` is an integer at the stream rate.
    ``output_priming``: zeros at the head of the output FIFO (stream rate), the fewest that
    never let it run dry for any chunking.
    ``delay_samples`` = output_priming + (block_delay + model_priming) * rate / model_rate.
    """

    sample_rate: int
    model_rate: int
    block_delay: int
    hop: int
    model_priming: int
    output_priming: int
    delay_samples: int


_timing_cache: dict[tuple[int, int, int, int], ChainTiming] = {}


def chain_timing(sample_rate: int, model_rate: int, hop: int, block_delay: int) -> ChainTiming:
    """Priming and exact delay for a stream at ``sample_rate`` around a block model.

    The block model consumes ``hop`` samples at ``model_rate`` and returns ``hop`` samples
    whose content is its input delayed by ``block_delay`` samples (n_fft - hop for the STFT
    model). Its cumulative output after m inputs is hop * (m // hop).
    """
    key = (int(sample_rate), int(model_rate), int(hop), int(block_delay))
    cached = _timing_cache.get(key)
    if cached is not None:
        return cached
    ratio = Fraction(sample_rate, model_rate)  # stream samples per model sample
    # Smallest model-rate priming making the content delay an integer at the stream rate.
    q = 0
    while ((block_delay + q) * ratio).denominator != 1:
        q += 1
    if sample_rate == model_rate:
        def down(n):
            return n

        def up(m):
            return m

        n_eval = 4 * hop + 1
    else:
        down = _count_model(sample_rate, model_rate)
        up = _count_model(model_rate, sample_rate)
        # Composite period in stream samples: whole periods of the down resampler that also
        # advance the model-rate stream by whole periods of the block and up-resampler.
        base = Fraction(math.lcm(hop, up.p_in)) * ratio
        period = math.lcm(base.numerator, down.p_in)
        transient = len(down.table) + int((len(up.table) + hop + q) * ratio) + 1
        n_eval = transient + 2 * period + 1
    n = np.arange(n_eval, dtype=np.int64)
    d = np.asarray(down(n))
    c = hop * (d // hop)
    u = np.asarray(up(q + c))
    priming = int(max(0, int(np.max(n - u))))
    delay = priming + (block_delay + q) * ratio
    assert delay.denominator == 1
    timing = ChainTiming(
        sample_rate=int(sample_rate),
        model_rate=int(model_rate),
        block_delay=int(block_delay),
        hop=int(hop),
        model_priming=q,
        output_priming=priming,
        delay_samples=int(delay),
    )
    _timing_cache[key] = timing
    return timing
