"""``AnyRateDenoiser``: the streaming filter for audio at a rate ``Denoiser`` does not take.

    x (rate R) ─► resample R→M ─► Denoiser at M ─► resample M→R ─► FIFO ─► y

M is the model's own rate (16 kHz), so this is the path a :class:`~voipfilter.Denoiser`
takes at 44.1 kHz, with the resampling outside it: one resampler each way, no model-rate
work added. The Denoiser at M is a block model with a hop of one sample and a delay of
``delay_samples`` (511 at 16 kHz), so :func:`~voipfilter.resample.chain_timing` gives the
priming that keeps the delay constant, exact and an integer at R, however the input is
chunked. Measured (``AnyRateDenoiser(None, R).delay_samples``): 11025 Hz 441 samples
(40.0 ms), 22050 Hz 882 (40.0 ms), 96000 Hz 3357 (34.97 ms).

A rate that shares few factors with 16 kHz (e.g. 22051) works too, but the exact delay costs
up to a second of priming and the resamplers' timing takes seconds to probe; files do not
mind (``voipfilter enhance`` removes the delay), calls would. ``denoiser_for`` picks
``Denoiser`` for the rates it takes and this class for the rest.
"""
from __future__ import annotations

import os

import numpy as np

from .denoiser import Denoiser, ModelStepError, _Fifo
from .engine import run_alone
from .model import Model
from .resample import SUPPORTED_RATES, StreamingResampler, chain_timing

__all__ = ["AnyRateDenoiser", "MIN_RATE", "MAX_RATE", "check_any_rate", "denoiser_for"]

MIN_RATE = 1000
MAX_RATE = 384000


def check_any_rate(sample_rate: int) -> int:
    """Validate a rate for :class:`AnyRateDenoiser` (an integer in [1 kHz, 384 kHz])."""
    try:
        ok = int(sample_rate) == sample_rate and MIN_RATE <= int(sample_rate) <= MAX_RATE
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"unsupported sample rate {sample_rate!r}; any whole number of Hz "
                         f"from {MIN_RATE} to {MAX_RATE} works")
    return int(sample_rate)


class AnyRateDenoiser:
    """A :class:`~voipfilter.Denoiser` for one mono stream at any rate (see the module doc).

    Same interface: ``process(x)`` returns ``len(x)`` samples (float32 or int16, as given)
    delayed by exactly ``delay_samples``; ``reset()``; ``enabled``, ``atten_lim_db`` and
    ``model_failures`` are the inner Denoiser's. It can be a track's ``denoiser_factory``.
    ``engine``: as for Denoiser (the inner Denoiser's state in that engine's store).
    """

    def __init__(
        self,
        model: "Model | str | os.PathLike | None" = None,
        sample_rate: int = 22050,
        atten_lim_db: float | None = None,
        enabled: bool = True,
        engine=None,
    ):
        self.sample_rate = check_any_rate(sample_rate)
        model = Model.load(model)
        self.inner = Denoiser(model, sample_rate=model.sample_rate, atten_lim_db=atten_lim_db, enabled=enabled,
                              engine=engine)
        self.inner_rate = self.inner.sample_rate
        self._timing = chain_timing(self.sample_rate, self.inner_rate, 1, self.inner.delay_samples)
        self.reset()

    @property
    def model(self) -> Model:
        return self.inner.model

    @property
    def delay_samples(self) -> int:
        """Exact, constant delay of the output, in samples at ``sample_rate``."""
        return self._timing.delay_samples

    @property
    def delay_seconds(self) -> float:
        return self._timing.delay_samples / self.sample_rate

    @property
    def model_failures(self) -> int:
        return self.inner.model_failures

    @property
    def enabled(self) -> bool:
        return self.inner.enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self.inner.enabled = value

    @property
    def atten_lim_db(self) -> float | None:
        return self.inner.atten_lim_db

    @atten_lim_db.setter
    def atten_lim_db(self, value: float | None) -> None:
        self.inner.atten_lim_db = value

    def reset(self) -> None:
        """Start a new stream: fresh resamplers and model state, same delay."""
        t = self._timing
        self.inner.reset()
        self._down = StreamingResampler(self.sample_rate, self.inner_rate)
        self._up = StreamingResampler(self.inner_rate, self.sample_rate)
        self._out = _Fifo(4 * t.delay_samples + 8192)
        self._out.push_zeros(t.output_priming)
        self._out.push(self._up.process(np.zeros(t.model_priming, dtype=np.float32)))

    def process(self, x: np.ndarray) -> np.ndarray:
        """Denoise the next ``len(x)`` samples; returns as many, same dtype, delayed by
        ``delay_samples``. A failed model step raises ModelStepError as Denoiser does, with
        the whole call's output (failed hops passed through) in ``output``."""
        return run_alone(self.process_steps(x))

    def process_steps(self, x: np.ndarray):
        """``process`` as a step generator (:mod:`voipfilter.engine`)."""
        xf = self.inner._validate(x)
        n = len(xf)
        if n == 0:
            return np.zeros(0, dtype=x.dtype)
        failure = None
        down = self._down.process(xf)
        try:
            wet = yield from self.inner.process_steps(down)
        except ModelStepError as exc:
            wet, failure = exc.output, exc
        if len(wet):
            self._out.push(self._up.process(wet))
        y = self._out.pop(n)
        if x.dtype == np.int16:
            y = np.clip(np.rint(y * np.float32(32768.0)), -32768, 32767).astype(np.int16)
        if failure is not None:
            raise ModelStepError(str(failure), output=y, n_failed=failure.n_failed) from failure
        return y

    def __repr__(self) -> str:
        return (f"AnyRateDenoiser(model={self.model.model_name!r}, sample_rate={self.sample_rate}, "
                f"inner_rate={self.inner_rate}, delay_samples={self.delay_samples})")


def denoiser_for(model: "Model | str | os.PathLike | None", sample_rate: int, **kwargs) -> "Denoiser | AnyRateDenoiser":
    """A Denoiser at the rates it takes (8, 16, 24, 32, 44.1, 48 kHz), else an AnyRateDenoiser."""
    if sample_rate in SUPPORTED_RATES:
        return Denoiser(model, sample_rate=sample_rate, **kwargs)
    return AnyRateDenoiser(model, sample_rate=sample_rate, **kwargs)
