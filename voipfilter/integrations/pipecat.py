"""``NoiseSuppressionFilter``: voipfilter as a pipecat input audio filter.

::

    from pipecat.transports.base_transport import TransportParams
    from voipfilter.integrations.pipecat import NoiseSuppressionFilter

    params = TransportParams(audio_in_enabled=True, audio_in_filter=NoiseSuppressionFilter())

The transport calls ``filter(audio)`` with 16-bit mono PCM at its input rate (pipecat's
``audio_in_sample_rate``); every call returns exactly as many bytes, the audio filtered and
delayed by the constant ``delay_samples``. The model runs in voipfilter's thread pool, so
the event loop only converts bytes (well under a millisecond per frame). Control frames:

* ``FilterEnableFrame(enable=False)`` crossfades (10 ms) to the input delayed by the same
  ``delay_samples``; the model keeps running, so turning it back on is seamless.
* ``FilterUpdateSettingsFrame(settings={"atten_lim_db": 12})`` limits suppression (None:
  no limit); ``{"model": "other.onnx"}`` loads that model off the event loop, runs it beside
  the current one for ``SWAP_WARMUP_S`` and crossfades to it (its delay must be the same).

A failing model never silences the call: failed hops pass the input through, aligned.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import numpy as np

try:
    from pipecat.audio.filters.base_audio_filter import BaseAudioFilter
    from pipecat.frames.frames import FilterControlFrame, FilterEnableFrame, FilterUpdateSettingsFrame
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "voipfilter.integrations.pipecat needs pipecat: pip install 'voipfilter[pipecat]' "
        f"(or pip install pipecat-ai) ({exc})"
    ) from exc

from ..denoiser import Denoiser, ModelStepError, check_atten_lim_db
from ..model import Model
from ..pool import shared_executor

__all__ = ["NoiseSuppressionFilter"]

logger = logging.getLogger("voipfilter.integrations.pipecat")

SWAP_WARMUP_S = 0.2  # a new model runs this long beside the old one before the crossfade
SWAP_XFADE_S = 0.02  # old model -> new model crossfade
SETTINGS = ("atten_lim_db", "model")


class _Swap:
    """A model change in progress: the new Denoiser is fed the same audio as the current one;
    after ``warmup`` samples its output is crossfaded in over ``xfade`` samples."""

    def __init__(self, den: Denoiser, warmup: int, xfade: int):
        self.den = den
        self.fed = 0
        self.warmup = warmup
        self.xfade = max(1, xfade)

    def mix(self, old: np.ndarray, new: np.ndarray) -> np.ndarray:
        """The output for this chunk (float32); ``self.fed`` counts samples before it."""
        pos = self.fed + np.arange(len(old), dtype=np.float64)
        w = np.clip((pos - self.warmup) / self.xfade, 0.0, 1.0).astype(np.float32)
        self.fed += len(old)
        return old * (np.float32(1.0) - w) + new * w

    @property
    def done(self) -> bool:
        return self.fed >= self.warmup + self.xfade


class NoiseSuppressionFilter(BaseAudioFilter):
    """A pipecat ``BaseAudioFilter`` that runs voipfilter's streaming GTCRN.

    Parameters
    ----------
    model:
        None (the shipped default model), a path to a streaming ONNX file, or a loaded
        :class:`voipfilter.model.Model`. Loaded (and checked) here, once per process.
    atten_lim_db:
        None (full suppression) or the most the filter may attenuate, in dB.
    enabled:
        False starts in bypass (the input delayed by ``delay_samples``).

    One filter serves one transport (one stream); give each pipeline its own.
    """

    def __init__(
        self,
        model: "Model | str | os.PathLike | None" = None,
        *,
        atten_lim_db: float | None = None,
        enabled: bool = True,
    ) -> None:
        self._model = Model.load(model)  # a bad path fails here, not mid-call
        self._atten_lim_db = check_atten_lim_db(atten_lim_db)
        self._enabled = bool(enabled)
        self._sample_rate = 0
        self._den: Denoiser | None = None
        self._last_delay = 0
        self._swap: _Swap | None = None
        self._pending: Denoiser | None = None
        self._lock = asyncio.Lock()
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ knobs
    @property
    def enabled(self) -> bool:
        """Filtering (True) or delay-aligned bypass (False); set by ``FilterEnableFrame``."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = bool(value)

    @property
    def atten_lim_db(self) -> float | None:
        """None: full suppression; a number: attenuate by at most this many dB."""
        return self._atten_lim_db

    @atten_lim_db.setter
    def atten_lim_db(self, value: float | None) -> None:
        self._atten_lim_db = check_atten_lim_db(value)

    @property
    def model(self) -> Model:
        """The model in use (the new one as soon as a model change has been loaded)."""
        return self._model

    @property
    def sample_rate(self) -> int:
        """The transport's input rate (0 before ``start``)."""
        return self._sample_rate

    @property
    def delay_samples(self) -> int:
        """Constant delay of the filtered audio, in samples at ``sample_rate`` (0 before the
        first ``start``)."""
        return self._den.delay_samples if self._den is not None else self._last_delay

    @property
    def delay_ms(self) -> float:
        return 1000.0 * self.delay_samples / self._sample_rate if self._sample_rate else 0.0

    # ------------------------------------------------------------------ BaseAudioFilter
    async def start(self, sample_rate: int) -> None:
        """Build the filter for the transport's rate off the event loop (the first one per
        rate in a process measures its resampler timing, ~0.1-0.2 s) and warm it up."""
        self._sample_rate = int(sample_rate)
        self._den = await self._run(self._build, self._model)
        self._last_delay = self._den.delay_samples
        self._swap = self._pending = None

    async def stop(self) -> None:
        """Drop the stream's state; ``start`` builds a fresh one."""
        async with self._lock:
            self._den = self._swap = self._pending = None

    async def process_frame(self, frame: FilterControlFrame) -> None:
        """``FilterEnableFrame``: enable/bypass. ``FilterUpdateSettingsFrame``: keys
        ``atten_lim_db`` and ``model``. A bad value is logged and changes nothing."""
        if isinstance(frame, FilterEnableFrame):
            self.enabled = frame.enable
        elif isinstance(frame, FilterUpdateSettingsFrame):
            await self._update(dict(frame.settings))

    async def filter(self, audio: bytes) -> bytes:
        """Filter 16-bit mono PCM; returns as many bytes, delayed by ``delay_samples``."""
        if not audio:
            return audio
        if self._den is None:
            self._warn_once("not-started", "filter() before start(): audio passed through unfiltered")
            return audio
        if len(audio) % 2:
            self._warn_once("odd", f"filter() got {len(audio)} bytes, not 16-bit PCM: passed through")
            return audio
        x = np.frombuffer(audio, dtype=np.int16)
        async with self._lock:
            if self._den is None:  # stopped while waiting
                return audio
            if self._pending is not None and self._swap is None:
                self._swap = _Swap(
                    self._pending,
                    warmup=max(self._pending.delay_samples, round(SWAP_WARMUP_S * self._sample_rate)),
                    xfade=round(SWAP_XFADE_S * self._sample_rate),
                )
                self._pending = None
            for den in (self._den, self._swap.den if self._swap else None):
                if den is not None:
                    den.enabled = self._enabled
                    den.atten_lim_db = self._atten_lim_db
            try:
                y = await self._run(self._process, self._den, self._swap, x)
            except Exception:  # a bug, not a model failure: keep the call's audio flowing
                self._warn_once("error", "filter failed; audio passed through", exc_info=True)
                return audio
            if self._swap is not None and self._swap.done:
                self._den, self._swap = self._swap.den, None
                self._last_delay = self._den.delay_samples
        return y.tobytes()

    # ------------------------------------------------------------------ internals
    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(shared_executor(), fn, *args)

    def _build(self, model: Model) -> Denoiser:
        den = Denoiser(model, self._sample_rate, atten_lim_db=self._atten_lim_db, enabled=self._enabled)
        self._step(den, np.zeros(self._sample_rate // 50, np.int16))  # warm onnxruntime
        den.reset()
        return den

    @staticmethod
    def _step(den: Denoiser, x: np.ndarray) -> np.ndarray:
        try:
            return den.process(x)
        except ModelStepError as exc:  # failed hops passed through, still aligned
            logger.debug("%s", exc)
            return exc.output

    @classmethod
    def _process(cls, den: Denoiser, swap: _Swap | None, x: np.ndarray) -> np.ndarray:
        y = cls._step(den, x)
        if swap is None:
            return y
        y_new = cls._step(swap.den, x)
        out = swap.mix(y.astype(np.float32), y_new.astype(np.float32))
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)

    async def _update(self, settings: dict[str, Any]) -> None:
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            logger.warning("FilterUpdateSettingsFrame: unknown setting(s) %s ignored; known: %s", unknown, SETTINGS)
        if "atten_lim_db" in settings:
            try:
                self.atten_lim_db = settings["atten_lim_db"]
            except ValueError as exc:
                logger.error("FilterUpdateSettingsFrame: %s; atten_lim_db stays %s", exc, self._atten_lim_db)
        if "model" in settings:
            await self._load_model(settings["model"])

    async def _load_model(self, path: Any) -> None:
        try:
            model = await self._run(Model.load, path)
            den = await self._run(self._build, model) if self._sample_rate else None
        except Exception as exc:
            logger.error("FilterUpdateSettingsFrame: cannot load model %r (%s); the current model stays", path, exc)
            return
        if model is self._model:
            return
        if den is not None and self._den is not None and den.delay_samples != self._den.delay_samples:
            logger.error(
                "FilterUpdateSettingsFrame: model %r has a delay of %d samples, the current one %d; "
                "a call's delay cannot change mid-stream, so the current model stays "
                "(start a new filter with that model instead)",
                path, den.delay_samples, self._den.delay_samples,
            )
            return
        self._model = model
        if den is not None and self._den is not None:
            self._pending = den
        elif den is not None:
            self._den = den

    def _warn_once(self, key: str, message: str, **kw: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, **kw)
        else:
            logger.debug(message)

    def __repr__(self) -> str:
        return (
            f"NoiseSuppressionFilter(model={self._model.model_name!r}, sample_rate={self._sample_rate}, "
            f"delay_samples={self.delay_samples}, enabled={self._enabled}, atten_lim_db={self._atten_lim_db})"
        )
