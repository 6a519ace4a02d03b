"""The hop loop of one stream: STFT, model step, overlap-add (:class:`StreamCore`), at the
model's rate or on the stream's own STFT (:class:`NativeRateCore`).

A core takes samples at its rate and returns ``hop`` samples per completed hop, its input
delayed by the block delay (synthesis window length - hop). Its steps are a generator
(:meth:`StreamCore.process_steps`) that yields one windowed frame per hop to whoever runs
the model (:mod:`voipfilter.engine`: one batched FFT and onnxruntime call for many streams).

**Native rate** (24, 32 and 48 kHz, where the model's framing scaled by ``r = rate / 16000``
is whole samples): the frame is the same window at the stream's rate (1536 points, hop 768
at 48 kHz for the 512/256 framing), whose FFT has the model's 31.25 Hz bin spacing. Its
first ``F`` bins, divided by ``r`` and tapered to zero over the top 240 Hz below 8 kHz, are
the model's input (the taper was chosen on 12 dev/vbd48 pairs: without it PESQ-WB was 0.04
below the resampled path's, whose input rolls off there, with it 0.01); the output spectrum is ``r``
times the model's output, plus ``g`` times the part the taper took out, plus ``g`` times
the bins above 8 kHz, ``g`` the high-band gain (:mod:`voipfilter.highband`). No resampler
runs, so the delay is the window's alone (1535 samples, 31.98 ms, at 48 kHz for 512/256;
767, 15.98 ms, for the low-delay pair), and with an identity model (g = 1) the output is the
delayed input to float rounding.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from .engine import bind_slot
from .highband import HighBandGain
from .model import Model
from .stft import StreamingAnalysis, StreamingSynthesis, WindowPair, irfft_frames, rfft_frames, window_pair

__all__ = ["NativeRateCore", "StreamCore", "native_windows"]

# The model's input fades to 0 over this band below its Nyquist frequency at native rate.
TAPER_HZ = 240.0


class StreamCore:
    """The model-rate part: hop buffering, STFT, model step, overlap-add.

    ``process_steps(x)`` takes any number of model-rate samples and returns hop * (number of
    completed hops) samples whose content is the input delayed by the block delay
    (synthesis window length - hop: 256 at sqrt-Hann 512/256, 128 asymmetric 512/256 at 128).

    With ``highband`` (full-band output), each hop's gain is taken from its spectra and the
    output is ``enhanced - gain * input`` (same delay): what the up-resampler must add to
    ``gain * full-band input`` to give the enhanced low band plus the gain-scaled high band.
    """

    in_scale = None  # the engine hands this core's FFT to the model as it is (model rate)

    def __init__(self, model: Model, highband: HighBandGain | None = None, engine=None, windows=None):
        windows = windows or model.windows
        self.model = model
        self.hop = windows.hop
        self.n_fft = windows.n_fft
        self.block_delay = windows.block_delay
        self.highband = highband
        self._analysis = StreamingAnalysis(windows=windows)
        self._synthesis = StreamingSynthesis(windows=windows)
        self._pending = np.zeros(windows.hop, dtype=np.float32)
        self._n_pending = 0
        self._run = model.session.run
        self._out_names = list(model._output_names)
        self._state_names = list(model.state_names)
        self.model_failures = 0
        # With an engine, the model state is a slot of the engine's SlotStore (batched
        # steps); without, it is this object's own list of arrays.
        self.store = None
        self.slot = -1
        if engine is not None:
            self.store, self.slot = bind_slot(self, engine, model)
        self.reset()

    def reset(self) -> None:
        self._analysis.reset()
        self._synthesis.reset()
        self._n_pending = 0
        if self.highband is not None:
            self.highband.reset()
        if self.store is not None:
            self.store.zero(self.slot)
        else:
            initial = self.model.initial_state(1)
            self._states = [initial[name] for name in self._state_names]

    def step_alone(self, frame: np.ndarray):
        """One hop at batch 1 from its windowed frame (n_fft,): (spec, enh, the inverse
        transform of enh (n_fft,), error or None); a failed step's enh is its spec."""
        spec = rfft_frames(frame[None, :])
        if self.store is not None:
            enh, errs = self.store.step(np.array([self.slot], np.intp), spec)
            err = errs[0]
        else:
            enh, err = self._model_step(spec)
        return spec, enh, irfft_frames(enh, self.n_fft)[0], err

    def _model_step(self, spec: np.ndarray) -> tuple[np.ndarray, BaseException | None]:
        """This object's own state, batch 1: (enh, None), or (spec, the error)."""
        feed = dict(zip(self._state_names, self._states))
        feed["spec"] = spec
        try:
            outs = self._run(self._out_names, feed)
        except Exception as exc:  # onnxruntime raises its own types; keep the stream going
            return spec, exc
        enh = outs[0]
        new_states = outs[1:]
        if not np.isfinite(enh).all():
            self._states = [np.zeros_like(s) for s in self._states]
            return spec, FloatingPointError("model returned non-finite values; state reset")
        self._states = new_states
        return enh, None

    def _hop_output(self, spec, enh, frame, err) -> np.ndarray:
        """The hop of output one answered step completes."""
        seg = self._synthesis.add_frame(frame)
        if self.highband is not None:
            # The output hop is the input delayed by block_delay: the analysis buffer's
            # oldest_hop().
            self.highband.update(spec, enh, err is None)
            seg -= self.highband.ramp() * self._analysis.oldest_hop()
        return seg

    def process_steps(self, x: np.ndarray):
        """A step generator over ``x``: yields ``(self, windowed frame)`` per hop and takes
        ``(spec, enh, irfft(enh), error)`` back (see :mod:`voipfilter.engine`, which
        transforms and runs many calls' hops at once); returns (output samples, first error
        or None, number of failed hops)."""
        hop = self.hop
        n = len(x)
        n_hops = (self._n_pending + n) // hop
        if n_hops == 0:
            self._pending[self._n_pending : self._n_pending + n] = x
            self._n_pending += n
            return np.zeros(0, dtype=np.float32), None, 0
        out = np.empty(n_hops * hop, dtype=np.float32)
        first_error = None
        failed = 0
        pos = 0
        for k in range(n_hops):
            if self._n_pending:
                take = hop - self._n_pending
                self._pending[self._n_pending :] = x[pos : pos + take]
                block = self._pending
                self._n_pending = 0
            else:
                take = hop
                block = x[pos : pos + hop]
            pos += take
            spec, enh, frame, err = yield self, self._analysis.frame(block)
            if err is not None:
                self.model_failures += 1
                failed += 1
                if first_error is None:
                    first_error = err
            out[k * hop : (k + 1) * hop] = self._hop_output(spec, enh, frame, err)
        rest = n - pos
        if rest:
            self._pending[:rest] = x[pos:]
            self._n_pending = rest
        return out, first_error, failed


def native_windows(model: Model, rate: int) -> WindowPair | None:
    """The model's framing at ``rate`` (the same windows, ``rate / model rate`` times as many
    samples), or None where that is not whole samples or the rate is not above the model's."""
    r = Fraction(int(rate), model.sample_rate)
    w = model.windows
    n_fft, hop = w.n_fft * r, w.hop * r
    if r <= 1 or n_fft.denominator != 1 or hop.denominator != 1:
        return None
    return window_pair(w.kind, int(n_fft), int(hop))


class NativeRateCore(StreamCore):
    """The hop loop on the stream's own STFT (module docstring): no resampling.

    The engine computes the frame's FFT (``n_fft`` at the stream rate) and hands the model
    its first bins times :attr:`in_scale`, builds each hop's output spectrum with
    :meth:`output_spectrum` and inverse-transforms them together; the answer is ``(model
    input, enh, inverse transform, error)``, as for :class:`StreamCore`.
    """

    def __init__(self, model: Model, rate: int, highband: HighBandGain | None = None, engine=None):
        windows = native_windows(model, rate)
        if windows is None:
            raise ValueError(f"{rate} Hz is not a native rate for a model at {model.sample_rate} Hz")
        self.ratio = np.float32(rate / model.sample_rate)
        n_model = model.n_fft // 2 + 1
        bin_hz = model.sample_rate / model.n_fft
        top = model.sample_rate / 2
        freq = np.arange(n_model) * bin_hz
        taper = np.clip((top - freq) / TAPER_HZ, 0.0, 1.0)
        self.n_model = n_model
        self.in_scale = (taper / float(self.ratio)).astype(np.float32).reshape(n_model, 1, 1)
        self._rest = (1.0 - taper).astype(np.float32)  # what the taper took out, back at g
        super().__init__(model, highband, engine, windows=windows)

    def step_alone(self, frame: np.ndarray):
        spec = rfft_frames(frame[None, :])
        model_in = np.ascontiguousarray(spec[:, : self.n_model] * self.in_scale)
        if self.store is not None:
            enh, errs = self.store.step(np.array([self.slot], np.intp), model_in)
            err = errs[0]
        else:
            enh, err = self._model_step(model_in)
        return model_in, enh, np.fft.irfft(self.output_spectrum(model_in, enh, spec[0], err), self.n_fft), err

    def output_spectrum(self, model_in, enh, spec, err) -> np.ndarray:
        """The hop's output spectrum (complex64, the stream-rate bins) from the model's input
        and output and the frame's spectrum; advances the high-band gain by one hop (the
        engine calls it once per answered step, then inverse-transforms a round's at once)."""
        s = spec.reshape(-1, 2).view(np.complex64)[:, 0]
        e = enh.reshape(-1, 2).view(np.complex64)[:, 0]
        f = self.n_model
        if self.highband is not None:
            g = np.float32(self.highband.update(model_in, enh, err is None))
        else:
            g = np.float32(0.0)  # band-limited output
        out = np.empty_like(s)
        out[:f] = e * self.ratio + s[:f] * (self._rest * g)
        out[f:] = s[f:] * g
        return out

    def _hop_output(self, model_in, enh, frame, err) -> np.ndarray:
        return self._synthesis.add_frame(frame)
