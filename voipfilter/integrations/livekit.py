"""``NoiseSuppression``: voipfilter as a LiveKit audio frame processor.

::

    from livekit import rtc
    from voipfilter.integrations.livekit import NoiseSuppression

    stream = rtc.AudioStream(track, noise_cancellation=NoiseSuppression())

or, in a LiveKit agent, ``room_io.AudioInputOptions(noise_cancellation=NoiseSuppression())``.

LiveKit's ``AudioStream`` calls ``_process(frame)`` on its event loop for every frame it
receives, at the stream's ``sample_rate`` and ``num_channels``; each call returns a frame
of the same rate, channel count and length, each channel filtered by its own stream state
and delayed by the constant ``delay_samples``. A 10 ms mono frame costs well under a
millisecond of CPU (docs/integrations.md), little enough to run inline as LiveKit does.

``enabled = False`` passes the input through delayed by the same ``delay_samples``, with a
10 ms crossfade, for as long as frames keep coming to ``_process``. LiveKit's
``AudioStream`` stops calling a disabled processor (frames then reach the app unprocessed
and undelayed); when the processor sees frames again after such a pause it starts a fresh
stream state rather than replay audio from before it.
"""
from __future__ import annotations

import logging
import os

import numpy as np

try:
    from livekit import rtc
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "voipfilter.integrations.livekit needs the LiveKit SDK: pip install 'voipfilter[livekit]' "
        f"(or pip install livekit) ({exc})"
    ) from exc

from ..denoiser import SUPPORTED_RATES, Denoiser, ModelStepError, check_atten_lim_db
from ..model import Model
from ..pool import prewarm_in_background

__all__ = ["NoiseSuppression"]

logger = logging.getLogger("voipfilter.integrations.livekit")

PREWARM_RATES = (48000, 24000)  # AudioStream's default rate and a common agent input rate


class NoiseSuppression(rtc.FrameProcessor[rtc.AudioFrame]):
    """A LiveKit ``FrameProcessor[AudioFrame]`` that runs voipfilter's streaming GTCRN.

    Parameters
    ----------
    model:
        None (the shipped default model), a path to a streaming ONNX file, or a loaded
        :class:`voipfilter.model.Model`; loaded once per process, shared by all instances.
    atten_lim_db:
        None (full suppression) or the most the filter may attenuate, in dB.
    enabled:
        False starts disabled (see the module docstring for what LiveKit does then).

    One instance holds the state of one stream: give each ``AudioStream`` (each
    participant) its own. A new rate or channel count, or a new publication reported by
    LiveKit, starts a fresh state.
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
        self._dens: list[Denoiser] = []
        self._format: tuple[int, int] | None = None  # (sample_rate, num_channels)
        self._delay = 0
        self._passthrough_rate: int | None = None
        self._paused = False  # disabled and not fed since: the stream has a hole
        self._publication: str | None = None
        self._errors = 0
        self._error_logged = False
        for rate in PREWARM_RATES:  # the first Denoiser per rate measures its resamplers
            prewarm_in_background(self._model, rate)

    # ------------------------------------------------------------------ knobs
    @property
    def enabled(self) -> bool:
        """Filtering (True) or delay-aligned bypass (False) of the frames that reach
        ``_process``; LiveKit's AudioStream hands a disabled processor no frames."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        value = bool(value)
        if self._enabled and not value:
            self._paused = True  # cleared by the next frame that reaches _process
        self._enabled = value

    @property
    def atten_lim_db(self) -> float | None:
        """None: full suppression; a number: attenuate by at most this many dB."""
        return self._atten_lim_db

    @atten_lim_db.setter
    def atten_lim_db(self, value: float | None) -> None:
        self._atten_lim_db = check_atten_lim_db(value)

    @property
    def model(self) -> Model:
        return self._model

    @property
    def sample_rate(self) -> int | None:
        """The rate of the frames being filtered (None before the first frame)."""
        return self._format[0] if self._format else None

    @property
    def delay_samples(self) -> int:
        """Constant delay of the output, in samples at ``sample_rate`` (0 before the first
        frame and for a rate the model cannot run, which is passed through)."""
        return self._delay

    @property
    def delay_ms(self) -> float:
        rate = self.sample_rate
        return 1000.0 * self.delay_samples / rate if rate else 0.0

    @property
    def errors(self) -> int:
        """Frames whose processing raised (their audio was passed through)."""
        return self._errors

    def reset(self) -> None:
        """Start a fresh stream state at the next frame (e.g. a new talker)."""
        self._dens = []

    # ------------------------------------------------------------------ FrameProcessor
    def _on_stream_info_updated(self, *, room_name: str, participant_identity: str, publication_sid: str) -> None:
        if self._publication is not None and publication_sid != self._publication:
            self.reset()  # another track: its audio does not continue the old one
        self._publication = publication_sid

    def _process(self, frame: rtc.AudioFrame) -> rtc.AudioFrame:
        rate, channels, n = frame.sample_rate, frame.num_channels, frame.samples_per_channel
        if n == 0 or channels == 0:
            return frame
        if rate not in SUPPORTED_RATES:
            if self._passthrough_rate != rate:
                self._passthrough_rate = rate
                logger.warning(
                    "NoiseSuppression: %d Hz is not a rate the model runs at (%s); passing it through "
                    "unfiltered (ask AudioStream for sample_rate=48000, 24000 or 16000)",
                    rate, ", ".join(map(str, SUPPORTED_RATES)),
                )
            self._format, self._delay, self._dens = (rate, channels), 0, []
            return frame
        if not self._dens or self._format != (rate, channels) or (self._paused and self._enabled):
            # a new stream or format, or a hole in the stream (LiveKit skipped us while disabled)
            self._dens = [Denoiser(self._model, rate) for _ in range(channels)]
            self._format, self._delay = (rate, channels), self._dens[0].delay_samples
        self._paused = False
        x = np.frombuffer(frame.data, dtype=np.int16)[: n * channels].reshape(n, channels)
        y = np.empty_like(x)
        try:
            for c, den in enumerate(self._dens):
                den.enabled = self._enabled
                den.atten_lim_db = self._atten_lim_db
                try:
                    y[:, c] = den.process(np.ascontiguousarray(x[:, c]))
                except ModelStepError as exc:  # failed hops passed through, still aligned
                    y[:, c] = exc.output
                    self._count_error(exc)
        except Exception as exc:  # not the model: pass this frame's audio through
            self._count_error(exc)
            return frame
        return rtc.AudioFrame(y.tobytes(), rate, channels, n, userdata=frame.userdata)

    def _close(self) -> None:
        """Drop the stream state (LiveKit calls this when its AudioStream closes); the next
        frame starts a fresh one."""
        self.reset()
        self._publication = None

    # ------------------------------------------------------------------ internals
    def _count_error(self, exc: BaseException) -> None:
        self._errors += 1
        if not self._error_logged:
            self._error_logged = True
            logger.warning("NoiseSuppression: %s; audio passed through", exc, exc_info=exc)
        else:
            logger.debug("NoiseSuppression: %s", exc)

    def __repr__(self) -> str:
        return (
            f"NoiseSuppression(model={self._model.model_name!r}, sample_rate={self.sample_rate}, "
            f"delay_samples={self.delay_samples}, enabled={self._enabled}, atten_lim_db={self._atten_lim_db})"
        )
