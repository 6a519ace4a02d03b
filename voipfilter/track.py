"""``NoiseSuppressionTrack``: drop-in noise suppression for any aiortc audio track.

::

    @pc.on("track")
    def on_track(track):
        if track.kind == "audio":
            pc.addTrack(NoiseSuppressionTrack(track))      # or MediaRecorder, MediaRelay...

Every frame the source yields comes out as one s16 frame with the same number of samples,
sample rate, ``pts`` and ``time_base``, so the Opus encoder downstream buffers nothing
extra; the audio inside is the source's audio filtered and delayed by a constant
``delay_samples`` (``delay_ms``). Design decisions (gaps, format changes, backlog, fail-open,
threading) are explained in docs/track.md; the short version is in the class docstring.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from typing import Any, Callable, Optional

import numpy as np

try:  # aiortc is a run-time dependency, but keep the import error readable
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
except ImportError as exc:  # pragma: no cover
    raise ImportError("voipfilter.track needs aiortc: pip install aiortc") from exc

import av

from .chain import RETRY_FIRST_S, RETRY_MAX_S, Chain, DenoiserLike
from .denoiser import SUPPORTED_RATES, check_atten_lim_db
from .frames import frame_to_mono, mono_to_frame
from .engine import BatchEngine, default_engine, run_alone, step_share
from .pool import prewarm_in_background, shared_executor

__all__ = ["NoiseSuppressionTrack", "SUPPORTED_RATES"]

logger = logging.getLogger("voipfilter.track")

TIMING_WINDOW = 3000  # frames kept for the processing-time percentiles (1 min at 20 ms)


def _db(power: float) -> float | None:
    return None if power <= 0.0 else 10.0 * math.log10(power)


class NoiseSuppressionTrack(MediaStreamTrack):
    """An audio track that yields ``source``'s audio with the noise suppressed.

    Parameters
    ----------
    source:
        Any aiortc audio ``MediaStreamTrack`` (a remote track, ``MediaPlayer.audio``, a
        ``MediaRelay`` proxy...). Frames may be s16, s32, flt, fltp (any PyAV audio format
        that converts to numpy), mono, stereo or more channels (averaged), any rate, any
        number of samples.
    model:
        None (the shipped default model), a shipped model's name (``"gtcrn-voipfilter"``,
        see :func:`voipfilter.shipped_models`), a path, or a loaded
        :class:`voipfilter.model.Model`.
        Loaded once per process (``Model.load`` caches); each track has its own state.
    atten_lim_db:
        None (full suppression) or a limit in dB: the delay-aligned noisy signal is mixed
        back in at ``-atten_lim_db`` dB, so noise is attenuated by at most that much.
    enabled:
        False starts in bypass (delayed dry audio, the model not run).
    max_backlog_ms:
        When frames reach the track later than live by more than this (the filter or the
        process is slower than real time), frames are dropped until it is live again, and
        counted. None: never drop (offline use).
    offload:
        Run the filter off the event loop so the loop is never blocked by inference
        (default). False runs it inline in ``recv()``.
    engine:
        Where an offloaded filter runs. True (default): the process's
        :class:`~voipfilter.engine.BatchEngine`, one worker thread that runs the model
        steps of all its tracks that share a model in one batched onnxruntime call (each
        track's output is what it would be alone, to float32 rounding). A BatchEngine: that
        one. False: the shared thread pool, each track's frames on their own.
    denoiser_factory:
        Advanced: ``factory(sample_rate) -> object`` with ``process``, ``reset`` and
        ``delay_samples`` used instead of :class:`voipfilter.denoiser.Denoiser`.

    Behaviour in one paragraph (details in docs/track.md): output frames are s16 with the
    input frame's sample count, rate, pts and time_base; mono when the first input frame is
    mono, otherwise stereo with identical channels (aiortc's Opus encoder is stereo and
    upmixes mono at -3 dB). The delay is constant per sample rate. pts gaps are closed
    (the model state is kept) with a 5 ms dip at the splice; a sample-rate change starts a
    new filter for the new rate; layout/format/frame-size changes need nothing. Any error
    while filtering passes the audio through (delayed, crossfaded), is counted, logged once,
    and the model is retried later with backoff. ``enabled``, ``atten_lim_db`` and
    ``reset()`` take effect with a 20 ms crossfade. When the source ends, this track ends.
    """

    kind = "audio"

    def __init__(
        self,
        source: MediaStreamTrack,
        *,
        model: Any = None,
        atten_lim_db: float | None = None,
        enabled: bool = True,
        max_backlog_ms: float | None = 100.0,
        offload: bool = True,
        denoiser_factory: Callable[[int], DenoiserLike] | None = None,
        engine: "bool | BatchEngine" = True,
    ) -> None:
        super().__init__()
        if getattr(source, "kind", "audio") != "audio":
            raise ValueError(f"NoiseSuppressionTrack needs an audio track, got kind={source.kind!r}")
        self.source = source
        if engine is True:
            engine = default_engine()
        self._engine: BatchEngine | None = engine or None
        if denoiser_factory is None:
            from .model import Model

            self.model = Model.load(model)  # raises now (not mid-call) for a missing file
            self._factory: Callable[[int], DenoiserLike] = self._make_denoiser
            if offload:
                prewarm_in_background(self.model, 48000)
        else:
            self.model = model
            self._factory = denoiser_factory
        self._enabled = bool(enabled)
        self._atten_lim_db: float | None = None
        self.atten_lim_db = atten_lim_db
        self.max_backlog_ms = max_backlog_ms
        self.offload = bool(offload)

        self._recv_lock = asyncio.Lock()
        self._inflight: Optional[asyncio.Future] = None
        self._chain: Chain | None = None
        self._out_channels: int | None = None
        # expected time of the next frame, in seconds, as an exact ratio (numerator,
        # denominator) of ints: Fraction arithmetic cost ~20 µs per frame
        self._prev_end: tuple[int, int] | None = None
        self._prev_fmt: tuple | None = None
        self._last_out = 0.0
        self._declick = False
        self._reset_requested = False
        self._drop_pending = False
        self._error_logged = False
        self._delay_cache: dict[int, int] = {}
        # backlog
        self._baseline: float | None = None
        self._rebaseline = False  # after one-off work (a new filter), re-measure
        self._prev_keep: tuple[float, float, float] | None = None
        self._ahead = 0.0  # media delivered minus wall time elapsed (seconds)
        self._offline = False  # the source runs faster than real time: never drop
        self._catching_up = False
        self._lag = 0.0
        # stats
        self._n_in = 0
        self._n_out = 0
        self._n_dropped = 0
        self._n_gaps = 0
        self._gap_s = 0.0
        self._n_back = 0
        self._n_format = 0
        self._n_rate = 0
        self._n_errors = 0
        self._n_failopen = 0
        self._n_resets = 0
        self._last_error: str | None = None
        self._proc = deque(maxlen=TIMING_WINDOW)
        self._loop_max = 0.0
        self._proc_total = 0.0
        self._audio_total = 0.0
        self._in_pow = 0.0
        self._out_pow = 0.0
        self._n_samples = 0

    # ------------------------------------------------------------------------- knobs
    @property
    def enabled(self) -> bool:
        """Filtering on (True) or bypass (False); switching crossfades over 20 ms."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = bool(value)

    @property
    def atten_lim_db(self) -> float | None:
        """None: full suppression; a number: attenuate the noise by at most this many dB."""
        return self._atten_lim_db

    @atten_lim_db.setter
    def atten_lim_db(self, value: float | None) -> None:
        value = check_atten_lim_db(value)
        self._atten_lim_db = value

    def reset(self) -> None:
        """Start the model from a fresh state (e.g. a new talker or a known discontinuity).
        Click-free: crossfade to the dry path, restart, warm up, crossfade back (~75 ms)."""
        self._reset_requested = True

    # ------------------------------------------------------------------------- delay
    def _make_denoiser(self, rate: int) -> DenoiserLike:
        from .denoiser import Denoiser

        return Denoiser(self.model, sample_rate=rate, engine=self._engine if self.offload else None)

    @property
    def sample_rate(self) -> int | None:
        """The rate of the frames being filtered (None before the first frame)."""
        return self._chain.rate if self._chain is not None else None

    @property
    def delay_samples(self) -> int:
        """Constant delay of the audio inside the output frames, in samples at the current
        rate (48 kHz before the first frame). 0 while a rate the model cannot run is passed
        through."""
        if self._chain is not None:
            return self._chain.delay
        return self.delay_samples_at(48000)

    @property
    def delay_ms(self) -> float:
        rate = self._chain.rate if self._chain is not None else 48000
        return 1000.0 * self.delay_samples / rate

    def delay_samples_at(self, rate: int) -> int:
        """The delay this track would have at ``rate`` (0 if the rate is unsupported)."""
        if rate not in self._delay_cache:
            try:
                self._delay_cache[rate] = int(self._factory(rate).delay_samples)
            except Exception:
                self._delay_cache[rate] = 0
        return self._delay_cache[rate]

    # ------------------------------------------------------------------------- recv
    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        async with self._recv_lock:
            loop = asyncio.get_running_loop()
            if self._inflight is not None:  # a previous recv() was cancelled mid-frame
                try:
                    await asyncio.shield(self._inflight)
                except BaseException:
                    pass
                self._inflight = None
            while True:
                t_wait = loop.time()
                try:
                    frame = await self.source.recv()
                except MediaStreamError:
                    self.stop()
                    raise
                if self.readyState != "live":  # stopped while waiting: no more frames
                    raise MediaStreamError
                t0 = time.perf_counter()
                now = loop.time()
                self._n_in += 1
                try:
                    keep = self._keep(frame, now, now - t_wait)
                except Exception:  # not an audio frame we can time: never drop it
                    keep = True
                if not keep:
                    self._n_dropped += 1
                    self._drop_pending = True
                    self._loop_max = max(self._loop_max, time.perf_counter() - t0)
                    continue
                break
            if self.offload:
                if self._engine is not None:
                    fut = self._engine.submit(self._process_safe_steps(frame), loop)
                else:
                    fut = loop.run_in_executor(shared_executor(), self._process_safe, frame)
                self._inflight = fut
                t_sync = time.perf_counter() - t0
                try:
                    out = await asyncio.shield(fut)
                except Exception as exc:  # the engine itself failed (closed...): the frame goes out
                    out = self._fail_open_frame(frame, exc)
                self._inflight = None
            else:
                out = self._process_safe(frame)
                t_sync = time.perf_counter() - t0
            self._loop_max = max(self._loop_max, t_sync)
            self._n_out += 1
            return out

    def release(self) -> None:
        """Stop the track and free its filter now (a server ending a call): the filter's
        resamplers hold native threads, which would otherwise wait for Python's cycle
        collector. stats() stays readable; the delay reads as at 48 kHz again."""
        self.stop()
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            inflight.add_done_callback(lambda _fut: self._free_filter())
        else:
            self._free_filter()

    def _free_filter(self) -> None:
        self._chain = None

    def _keep(self, frame: av.AudioFrame, now: float, waited: float) -> bool:
        """Backlog policy: True to process ``frame``, False to drop it.

        A frame's offset is wall clock minus media time. A frame we had to wait for is live,
        and so is the earliest-arriving one; a frame that comes later than that offset by
        more than ``max_backlog_ms`` was queued behind us: frames are then dropped until one
        is live (within one frame) again. A source that has delivered more than a second of
        audio ahead of the wall clock is a file read as fast as we go, not a live call, and is
        never dropped from.
        """
        if self.max_backlog_ms is None or frame.pts is None or frame.time_base is None or not frame.sample_rate:
            return True
        dur = frame.samples / frame.sample_rate
        media = float(frame.pts * frame.time_base)
        offset = now - media
        jump = False
        if self._prev_keep is not None:
            prev_now, prev_media, prev_dur = self._prev_keep
            elapsed = max(0.0, now - prev_now)
            # media delivered minus wall time, leaking 1 %/s so that clock drift between a
            # live sender and us (~0.1 ms/s) never adds up to a second
            self._ahead = self._ahead * math.exp(-0.01 * elapsed) + prev_dur - elapsed
            if self._ahead > 1.0:
                self._offline = True
            jump = abs(media - (prev_media + prev_dur)) > 0.0005
        self._prev_keep = (now, media, dur)
        live = waited > max(0.001, 0.1 * dur)
        if self._baseline is None or live or jump or offset < self._baseline or self._rebaseline:
            # live, earliest so far, or the source's timeline jumped (lost packets, a
            # restart): this frame's offset is the new reference
            self._baseline = offset
            self._rebaseline = False
        self._lag = offset - self._baseline
        if self._catching_up:
            if self._lag <= max(dur, 0.001) or live:
                self._catching_up = False
                return True
            return False
        if not self._offline and self._lag > self.max_backlog_ms / 1000.0:
            self._catching_up = True
            return False
        return True

    # ------------------------------------------------------------------------- processing
    def _process_safe(self, frame: av.AudioFrame) -> av.AudioFrame:
        return run_alone(self._process_safe_steps(frame))

    def _process_safe_steps(self, frame: av.AudioFrame):
        """A frame's processing as a step generator (:mod:`voipfilter.engine`): the model
        steps it yields run batched with other tracks' on the engine, or alone inline."""
        # processing time: this frame's own work plus its share of the batched model steps
        # (not the time it waited for other tracks' work in the same round)
        busy = 0.0
        t0 = time.perf_counter()
        gen = self._process(frame)
        answer = None
        try:
            while True:
                try:
                    req = gen.send(answer)
                except StopIteration as stop:
                    out = stop.value
                    break
                busy += time.perf_counter() - t0
                answer = yield req
                t0 = time.perf_counter()
                busy += step_share()
        except Exception as exc:  # last line of fail-open: the frame itself goes out
            out = self._fail_open_frame(frame, exc)
        dt = busy + time.perf_counter() - t0
        self._proc.append(dt)
        self._proc_total += dt
        if frame.sample_rate:
            self._audio_total += frame.samples / frame.sample_rate
        return out

    def _fail_open_frame(self, frame: av.AudioFrame, exc: BaseException) -> av.AudioFrame:
        """The input frame as the output (s16, the track's channels), the error counted."""
        self._error(exc, "track")
        self._n_failopen += 1
        try:
            x = frame_to_mono(frame)
            return mono_to_frame(x, self._out_channels or (1 if frame.layout.nb_channels == 1 else 2), frame)
        except Exception:
            return frame

    def _error(self, exc: BaseException, where: str) -> None:
        self._n_errors += 1
        self._last_error = f"{where}: {type(exc).__name__}: {exc}"
        if not self._error_logged:
            self._error_logged = True
            logger.warning(
                "noise suppression failed (%s); passing audio through unchanged. Further "
                "errors on this track are counted in stats() only.",
                where,
                exc_info=exc,
            )
        else:
            logger.debug("noise suppression error (%s): %r", where, exc)

    def _new_chain(self, rate: int, fresh_start: bool) -> Chain:
        den = None
        delay = 0
        try:
            den = self._factory(rate)
            delay = int(den.delay_samples)
        except Exception as exc:
            self._error(exc, f"no filter for {rate} Hz")
            den = None
            delay = 0
        self._delay_cache.setdefault(rate, delay)
        return Chain(rate, den, delay, fresh_start=fresh_start)

    def _process(self, frame: av.AudioFrame):
        rate = int(frame.sample_rate)
        n = frame.samples
        x = frame_to_mono(frame)
        if self._out_channels is None:
            # Locked for the track's life: downstream encoders configure from the 1st frame.
            self._out_channels = 1 if frame.layout.nb_channels == 1 else 2

        fmt = (frame.format.name, frame.layout.name)
        if self._prev_fmt is not None and fmt != self._prev_fmt:
            self._n_format += 1
        self._prev_fmt = fmt

        chain = self._chain
        if chain is None or chain.rate != rate:
            if chain is not None:
                self._n_rate += 1
                self._declick = True  # the old rate's last D samples are not played
            chain = self._chain = self._new_chain(rate, fresh_start=True)
            self._rebaseline = True  # creating a filter is one-off work, not a backlog
            if self._n_rate:
                chain.dips.append(0)
            self._prev_end = None

        # pts continuity (in seconds, so time_base changes are harmless)
        tb = frame.time_base
        if frame.pts is not None and tb is not None:
            pts, num, den = int(frame.pts), tb.numerator, tb.denominator  # t = pts * num / den
            if self._prev_end is not None:
                end_num, end_den = self._prev_end
                # float(t - prev_end) exactly: int true division is correctly rounded
                delta = (pts * num * end_den - end_num * den) / (den * end_den) * rate
                if abs(delta) > max(1.0, 0.0005 * rate):
                    chain.dips.append(chain.pos)
                    if chain.delay < chain.dip_len:
                        self._declick = True  # too little delay to fade the tail out
                    if self._drop_pending:
                        pass  # counted as drops already
                    elif delta > 0:
                        self._n_gaps += 1
                        self._gap_s += delta / rate
                    else:
                        self._n_back += 1
            self._prev_end = (pts * num * rate + n * den, den * rate)  # t + n / rate
        else:
            self._prev_end = None  # no timeline to compare the next frame with
        self._drop_pending = False

        if n == 0:
            return mono_to_frame(np.zeros(0, np.float32), self._out_channels, frame)

        y = yield from self._mix(chain, x)
        self._in_pow += float(np.dot(x, x))
        self._out_pow += float(np.dot(y, y))
        self._n_samples += n
        return mono_to_frame(y, self._out_channels, frame)

    def _mix(self, chain: Chain, x: np.ndarray):
        n = len(x)
        D = chain.delay
        # dry path, delayed exactly like the wet one
        if D:
            buf = np.concatenate([chain.dry_hist, x])
            dry = buf[:n]
            chain.dry_hist = buf[n:].copy() if n < D else buf[-D:].copy()
        else:
            dry = x

        if self._reset_requested:
            self._reset_requested = False
            if chain.den is not None:
                chain.reset_pending = True
                self._n_resets += 1

        # The model's life cycle. It is only stopped or restarted while the output is all
        # dry (w == 0), so neither ever shows in the output.
        if chain.den is not None and chain.w == 0.0:
            if chain.den_active and (not self._enabled or chain.reset_pending or chain.den_failed):
                chain.den_active = False  # bypassed (saves the CPU), reset asked, or broken
            if not chain.den_active:
                if not self._enabled:
                    chain.reset_pending = False  # re-enabling restarts it anyway
                elif chain.retry_at is None or chain.pos >= chain.retry_at:
                    try:
                        chain.restart_den()
                        chain.reset_pending = False
                    except Exception as exc:
                        self._error(exc, "model reset")
                        chain.den_failed = True
                        self._schedule_retry(chain)

        wet = None
        if chain.den is not None and chain.den_active:
            try:
                steps = getattr(chain.den, "process_steps", None)
                if steps is not None:
                    wet = yield from steps(x)
                else:
                    wet = chain.den.process(x)
                wet = np.asarray(wet, dtype=np.float32)
                if wet.shape != (n,):
                    raise ValueError(f"denoiser returned shape {wet.shape} for {n} samples")
                if not np.isfinite(wet).all():
                    raise FloatingPointError("denoiser output is not finite")
            except Exception as exc:
                self._error(exc, "model")
                # Denoiser's ModelStepError carries the call's output, still aligned (failed
                # hops passed through): fade from it to the dry path. Otherwise jump to dry.
                wet = getattr(exc, "output", None)
                if not (isinstance(wet, np.ndarray) and wet.shape == (n,) and np.isfinite(wet).all()):
                    wet = None
                    if chain.w > 0.0:
                        self._declick = True  # wet → dry without a crossfade: remove the step
                    chain.w = 0.0
                else:
                    wet = wet.astype(np.float32, copy=False)
                if not chain.failing or not chain.den_failed:
                    self._schedule_retry(chain)  # first failure, or a retried model failed again
                chain.den_failed = True
                chain.failing = True

        if chain.failing and chain.den_active and not chain.den_failed and chain.warm():
            chain.failing = False  # the retried model works again
        if self._enabled and chain.failing:
            self._n_failopen += 1

        # target wet weight: enabled, limited by atten_lim_db, zero until the model is warm
        lim = 0.0 if self._atten_lim_db is None else 10.0 ** (-self._atten_lim_db / 20.0)
        target = (1.0 - lim) if self._enabled else 0.0
        if wet is None or chain.den_failed or chain.reset_pending or not chain.warm():
            target = 0.0
        if chain.pos == 0 and chain.start_ok:
            chain.w = target  # start of a chain: wet and dry are both D samples of silence

        if wet is None:
            y = dry.copy()
            chain.w = 0.0
        elif chain.w == target:
            w = np.float32(target)
            if target == 1.0:
                y = wet.copy()
            elif target == 0.0:
                y = dry.copy()
            else:
                y = dry + w * (wet - dry)
        else:
            k = np.arange(1, n + 1, dtype=np.float64) * chain.xfade_step
            if target > chain.w:
                wv = np.minimum(chain.w + k, target)
            else:
                wv = np.maximum(chain.w - k, target)
            chain.w = float(wv[-1])
            y = dry + wv.astype(np.float32) * (wet - dry)

        g = chain.dip_gain(n)
        if g is not None:
            y = y * g
        if self._declick:
            self._declick = False
            L = min(chain.declick_len, n)
            step = self._last_out - float(y[0])
            if step != 0.0:
                y = y.copy()
                y[:L] += np.float32(step) * (1.0 - np.arange(L, dtype=np.float32) / L)
        self._last_out = float(y[-1])
        chain.pos += n
        return y

    def _schedule_retry(self, chain: Chain) -> None:
        """Back off: retry after 1 s of audio, doubling to 30 s while errors keep coming;
        an error more than a minute after the previous one starts again at 1 s."""
        if chain.last_error_pos is not None and chain.pos - chain.last_error_pos > 60 * chain.rate:
            chain.retry_s = RETRY_FIRST_S
        chain.last_error_pos = chain.pos
        chain.retry_at = chain.pos + int(chain.retry_s * chain.rate)
        chain.retry_s = min(RETRY_MAX_S, chain.retry_s * 2)

    # ------------------------------------------------------------------------- stats
    def stats(self) -> dict[str, Any]:
        """A snapshot of what this track has done (cheap; safe to call any time)."""
        # deque.copy() runs in C under the GIL: safe while a worker thread appends
        proc = np.fromiter(self._proc.copy(), dtype=np.float64) * 1000.0
        chain = self._chain
        if chain is None:
            mode = "idle"
        elif chain.den is None:
            mode = "passthrough"
        elif chain.w > 0.0:
            mode = "filtering" if chain.w >= 1.0 - 1e-6 or self._atten_lim_db else "crossfading"
        elif not self._enabled:
            mode = "bypass"
        elif chain.failing:
            mode = "fail-open"
        else:
            mode = "warming"
        n = max(1, self._n_samples)
        in_db = _db(self._in_pow / n) if self._n_samples else None
        out_db = _db(self._out_pow / n) if self._n_samples else None
        return {
            "frames_in": self._n_in,
            "frames_out": self._n_out,
            "frames_dropped": self._n_dropped,
            "gaps": self._n_gaps,
            "gap_ms": 1000.0 * self._gap_s,
            "pts_jumps_back": self._n_back,
            "format_changes": self._n_format,
            "rate_changes": self._n_rate,
            "errors": self._n_errors,
            "fail_open_frames": self._n_failopen,
            "last_error": self._last_error,
            "resets": self._n_resets,
            "proc_ms_p50": float(np.percentile(proc, 50)) if proc.size else None,
            "proc_ms_p95": float(np.percentile(proc, 95)) if proc.size else None,
            "proc_ms_max": float(proc.max()) if proc.size else None,
            "loop_block_ms_max": 1000.0 * self._loop_max,
            "rtf": (self._proc_total / self._audio_total) if self._audio_total else None,
            "backlog_ms": 1000.0 * self._lag,
            "sample_rate": chain.rate if chain else None,
            "delay_samples": self.delay_samples if chain else None,
            "delay_ms": self.delay_ms if chain else None,
            "input_level_dbfs": in_db,
            "output_level_dbfs": out_db,
            "removed_db": (in_db - out_db) if (in_db is not None and out_db is not None) else None,
            "mode": mode,
            "enabled": self._enabled,
            "atten_lim_db": self._atten_lim_db,
        }

    def __repr__(self) -> str:
        return f"NoiseSuppressionTrack(source={self.source!r}, enabled={self._enabled})"
