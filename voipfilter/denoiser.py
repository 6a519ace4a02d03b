"""``Denoiser``: streaming noise suppression for audio of any chunk size at any supported rate.

Signal path for one stream at ``sample_rate`` R around a model at rate M (16 kHz):

    x ─► resample R→M ─► [STFT ─► model step ─► overlap-add], hop by hop ─► resample M→R ─► FIFO ─► y
    x ───────────────────────────── delay line of delay_samples ────────────────────────────► dry

At 24, 32 and 48 kHz (``native_rate=True``, the default) no resampler runs: the hop loop
works on the stream's own STFT, the model's windows at rate R, and gives the model its
first bins (:class:`voipfilter.cores.NativeRateCore`):

    x ─► [STFT at R ─► model step on bins 0-8 kHz, high band × gain ─► overlap-add at R] ─► FIFO ─► y

* ``process(x)`` returns exactly ``len(x)`` samples: the output FIFO is primed with zeros
  (the fewest that never let it run dry, computed from the resamplers' measured behaviour,
  see :mod:`voipfilter.resample`), so the delay is constant and independent of chunking.
* ``delay_samples`` (at R) is exact: with an identity model, ``y[n] == x[n - delay]`` at the
  model rate and with full-band output (to float rounding), and up to the resamplers' band
  limit at 8 kHz and with ``fullband=False``. At 16 kHz it is the synthesis window's length
  - 1: 511 samples for the sqrt-Hann 512/256 framing, 255 for the asymmetric 512/256 pair at
  hop 128; at 48 kHz 1535 (31.98 ms) and 767 (15.98 ms) on the native-rate path (1631 and
  863 resampled), with or without full-band output; see ``delay_samples``.
* Output for a given input stream is bit-identical however it is chunked.
* ``enabled = False`` outputs the delay-aligned input (the dry path); the model keeps
  running, so toggling never shifts audio and re-enabling is seamless. ``atten_lim_db``
  limits suppression by mixing the dry path back: ``y = wet * (1 - a) + dry * a`` with
  ``a = 10 ** (-atten_lim_db / 20)`` (as DeepFilterNet does). Changes to either made during a
  stream ramp the mix linearly over 10 ms to avoid clicks.
* A model step that raises (or returns NaN/inf) does not lose audio: that hop passes the
  noisy spectrum through unprocessed, the rest of the chunk is processed, the stream stays
  aligned, and ``process`` then raises :class:`ModelStepError` whose ``output`` attribute
  holds the full, correctly delayed output of the call. The model state is kept (reset to
  zeros if it became non-finite). ``model_failures`` counts failed hops. A failed hop's
  high-band gain is 1: both bands pass through.
* Full-band output (default at R > M, ``fullband=False`` turns it off): the model sees 0-8 kHz
  only; the band above is kept, scaled by a per-hop gain g from the model's own top bins
  (:mod:`voipfilter.highband`). At a native rate g scales the spectrum's bins above 8 kHz.
  On the resampled path the model-rate loop outputs ``enhanced - g * input`` (its input
  delayed by the block delay is the oldest hop of the analysis frame) and
  ``y = up(that) + g * dry``: the enhanced low band plus g times what the resamplers remove,
  with one resampler per direction and the same delay. With an identity model (g = 1), ``y``
  is the delayed input to float rounding at every rate and chunking, on either path.
"""
from __future__ import annotations

import os

import numpy as np

from .cores import NativeRateCore, StreamCore, native_windows
from .engine import run_alone
from .highband import HighBandConfig, HighBandGain
from .model import Model
from .resample import SUPPORTED_RATES, StreamingResampler, chain_timing, check_rate

__all__ = ["Denoiser", "HighBandConfig", "ModelStepError", "SUPPORTED_RATES", "check_atten_lim_db"]

RAMP_SECONDS = 0.010


def check_atten_lim_db(value: float | None) -> float | None:
    """Validate a suppression limit: None (no limit) or a number of dB >= 0."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"atten_lim_db must be None or a number >= 0, got {value!r}") from None
    if np.isnan(v) or v < 0:
        raise ValueError(f"atten_lim_db must be None or a number >= 0, got {value!r}")
    return v


class ModelStepError(RuntimeError):
    """A model step failed during ``Denoiser.process``; ``output`` holds the call's output
    (failed hops passed through unprocessed), ``n_failed`` the number of failed hops."""

    def __init__(self, message: str, output: np.ndarray, n_failed: int):
        super().__init__(message)
        self.output = output
        self.n_failed = n_failed


class _Fifo:
    """A float32 sample FIFO (amortised O(1) push/pop, no per-call reallocation once warm)."""

    __slots__ = ("_buf", "_start", "_end")

    def __init__(self, capacity: int = 4096):
        self._buf = np.zeros(max(16, capacity), dtype=np.float32)
        self._start = 0
        self._end = 0

    def __len__(self) -> int:
        return self._end - self._start

    def push(self, x: np.ndarray) -> None:
        n = len(x)
        if n == 0:
            return
        if self._end + n > len(self._buf):
            size = self._end - self._start
            if size + n > len(self._buf):
                new = np.zeros(max(2 * len(self._buf), size + n), dtype=np.float32)
                new[:size] = self._buf[self._start : self._end]
                self._buf = new
            else:
                self._buf[:size] = self._buf[self._start : self._end]
            self._start, self._end = 0, size
        self._buf[self._end : self._end + n] = x
        self._end += n

    def push_zeros(self, n: int) -> None:
        self.push(np.zeros(n, dtype=np.float32))

    def pop(self, n: int) -> np.ndarray:
        if n > self._end - self._start:
            raise RuntimeError(f"FIFO underrun: {n} samples wanted, {len(self)} held (a timing bug)")
        out = self._buf[self._start : self._start + n].copy()
        self._start += n
        if self._start == self._end:
            self._start = self._end = 0
        return out


class Denoiser:
    """Streaming noise suppressor for one mono stream.

    Parameters
    ----------
    model:
        None (the shipped default model), a shipped model's name (``"gtcrn-voipfilter"``,
        see :func:`voipfilter.shipped_models`), a path to a streaming ONNX file, or a
        :class:`~voipfilter.model.Model` (share one across many Denoisers).
    sample_rate:
        Rate of the audio given to ``process``: 8000, 16000, 24000, 32000, 44100 or 48000.
    atten_lim_db:
        None (no limit) or a non-negative number of dB: the most the filter may attenuate.
    enabled:
        False: bypass (delay-aligned input out).
    fullband:
        At rates above the model's (24-48 kHz): True (default) keeps the band above the
        model's, scaled by a gain from the model's top bins (:mod:`voipfilter.highband`);
        False gives the band-limited output (nothing above 8 kHz); a
        :class:`~voipfilter.highband.HighBandConfig` tunes the gain. No effect at 8/16 kHz.
    engine:
        None (default): the model state is this object's own and every hop runs at batch 1.
        A :class:`~voipfilter.engine.BatchEngine`: the state is a slot of the engine's
        store, so :meth:`process_steps` driven by the engine (or
        :func:`~voipfilter.engine.run_batched`) batches this stream's hops with others'.
        ``process`` works either way.
    native_rate:
        At 24, 32 and 48 kHz, True (default) runs the model on the stream's own STFT (the
        model's windows at the stream's rate, :mod:`voipfilter.cores`): no resampling, a
        2 ms shorter delay at 48 kHz, 0.88-0.99 of the CPU for one stream (docs/benchmarks.md).
        False resamples to the model's rate and back, as at 8 and 44.1 kHz.
    """

    def __init__(
        self,
        model: "Model | str | os.PathLike | None" = None,
        sample_rate: int = 16000,
        atten_lim_db: float | None = None,
        enabled: bool = True,
        fullband: "bool | HighBandConfig" = True,
        engine=None,
        native_rate: bool = True,
    ):
        self.sample_rate = check_rate(sample_rate)
        self.model = Model.load(model)
        if isinstance(fullband, HighBandConfig):
            config = fullband
        elif isinstance(fullband, bool):
            config = HighBandConfig() if fullband else None
        else:
            raise ValueError(f"fullband must be True, False or a HighBandConfig, got {fullband!r}")
        if self.sample_rate <= self.model.sample_rate:
            config = None  # the model sees the whole band already
        highband = (
            HighBandGain(config, self.model.sample_rate, self.model.n_fft, self.model.hop) if config else None
        )
        native = bool(native_rate) and native_windows(self.model, self.sample_rate) is not None
        if native:
            self._core = NativeRateCore(self.model, self.sample_rate, highband, engine)
            self._timing = chain_timing(self.sample_rate, self.sample_rate, self._core.hop, self._core.block_delay)
        else:
            self._core = StreamCore(self.model, highband, engine)
            self._timing = chain_timing(self.sample_rate, self.model.sample_rate, self.model.hop, self._core.block_delay)
        self._highband = highband
        self._resampling = not native and self.sample_rate != self.model.sample_rate
        # Stream sample n carries content of stream time n - delay, i.e. model-rate time
        # (n - delay) * _time_scale, where the high-band gain is looked up.
        self._time_scale = self.model.sample_rate / self.sample_rate
        self._ramp_step = 1.0 / max(1, round(RAMP_SECONDS * self.sample_rate))
        self._atten_lim_db = check_atten_lim_db(atten_lim_db)
        self._enabled = bool(enabled)
        self._mix = self._target_mix()
        self.reset()

    # ------------------------------------------------------------------ properties
    @property
    def delay_samples(self) -> int:
        """Exact, constant delay of the output relative to the input, in samples at
        ``sample_rate`` (includes resampler delay)."""
        return self._timing.delay_samples

    @property
    def delay_seconds(self) -> float:
        return self._timing.delay_samples / self.sample_rate

    @property
    def fullband(self) -> bool:
        """Whether the output keeps the band above the model's (False at 8/16 kHz)."""
        return self._highband is not None

    @property
    def model_failures(self) -> int:
        """Hops whose model step failed since construction (not cleared by reset)."""
        return self._core.model_failures

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = bool(value)

    @property
    def atten_lim_db(self) -> float | None:
        return self._atten_lim_db

    @atten_lim_db.setter
    def atten_lim_db(self, value: float | None) -> None:
        self._atten_lim_db = check_atten_lim_db(value)

    def _target_mix(self) -> float:
        if not self._enabled:
            return 1.0
        if self._atten_lim_db is None or np.isinf(self._atten_lim_db):
            return 0.0
        return float(10.0 ** (-self._atten_lim_db / 20.0))

    # ------------------------------------------------------------------ stream
    def reset(self) -> None:
        """Start a new stream: zero model state, empty buffers, same delay."""
        t = self._timing
        self._core.reset()
        if self._resampling:
            self._down = StreamingResampler(self.sample_rate, self.model.sample_rate)
            self._up = StreamingResampler(self.model.sample_rate, self.sample_rate)
            if t.model_priming:
                primed = self._up.process(np.zeros(t.model_priming, dtype=np.float32))
            else:
                primed = np.zeros(0, dtype=np.float32)
        else:
            self._down = self._up = None
            primed = np.zeros(0, dtype=np.float32)
        self._out = _Fifo(4 * t.delay_samples + 8192)
        self._out.push_zeros(t.output_priming)
        self._out.push(primed)
        self._dry = _Fifo(4 * t.delay_samples + 8192)
        self._dry.push_zeros(t.delay_samples)
        self._n_out = 0
        self._mix = self._target_mix()

    def _validate(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise ValueError(f"process() takes a numpy array, got {type(x).__name__}")
        if x.ndim != 1:
            raise ValueError(
                f"process() takes a 1-D mono array, got shape {x.shape}; "
                "downmix stereo first (e.g. x.mean(axis=...)) or flatten a mono (n, 1) array"
            )
        if x.dtype == np.int16:
            return x.astype(np.float32) * np.float32(1.0 / 32768.0)
        if x.dtype != np.float32:
            raise ValueError(f"process() takes float32 or int16 samples, got {x.dtype} (use x.astype(np.float32))")
        if not np.isfinite(x).all():
            raise ValueError("input contains NaN or infinite samples")
        return x

    def process(self, x: np.ndarray) -> np.ndarray:
        """Denoise the next ``len(x)`` samples of the stream; returns as many, same dtype,
        delayed by ``delay_samples``."""
        return run_alone(self.process_steps(x))

    def process_steps(self, x: np.ndarray):
        """``process`` as a step generator (:mod:`voipfilter.engine`): yields one model step
        per hop, returns (or raises) what ``process`` does."""
        xf = self._validate(x)
        n = len(xf)
        if n == 0:
            return np.zeros(0, dtype=x.dtype)
        if self._resampling:
            wet = self._down.process(xf)
            wet, err, failed = yield from self._core.process_steps(wet)
            if len(wet):
                wet = self._up.process(wet)
        else:
            wet, err, failed = yield from self._core.process_steps(xf)
        self._out.push(wet)
        y = self._out.pop(n)
        self._dry.push(xf)
        dry = self._dry.pop(n)
        if self._highband is not None and self._resampling:
            # The up-resampled core output is enhanced low band - gain * low band; adding
            # gain * (full-band input) leaves enhanced low band + gain * high band.
            g = self._highband.gains_at(self._n_out - self._timing.delay_samples, n, self._time_scale)
            y += g * dry
        self._n_out += n

        target = self._target_mix()
        mix = self._mix
        if mix == target:
            if mix == 1.0:
                y = dry
            elif mix != 0.0:
                y = y * np.float32(1.0 - mix) + dry * np.float32(mix)
        else:
            step = self._ramp_step if target > mix else -self._ramp_step
            ramp = mix + step * np.arange(1, n + 1, dtype=np.float64)
            ramp = np.minimum(ramp, target) if step > 0 else np.maximum(ramp, target)
            a = ramp.astype(np.float32)
            y = y * (np.float32(1.0) - a) + dry * a
            self._mix = float(ramp[-1])

        if x.dtype == np.int16:
            y = np.clip(np.rint(y * np.float32(32768.0)), -32768, 32767).astype(np.int16)
        if err is not None:
            raise ModelStepError(
                f"model step failed on {failed} hop(s) ({type(err).__name__}: {err}); "
                "those hops passed through unprocessed, the stream stays aligned",
                output=y,
                n_failed=failed,
            ) from err
        return y

    def __repr__(self) -> str:
        return (
            f"Denoiser(model={self.model.model_name!r}, sample_rate={self.sample_rate}, "
            f"delay_samples={self.delay_samples}, enabled={self._enabled}, atten_lim_db={self._atten_lim_db})"
        )
