"""One echo call of the demo server: its peer connection, the track it sends back
(:class:`EchoTrack`: the filter's output, or the caller's audio with ``bypass``), its control
channel and stats, and the limits that end it (connect timeout, no audio, caller gone, call
length).

The HTTP API (voipfilter/server.py) makes a :class:`Call` per offer and keeps it in the app's
``APP_KEY_CALLS`` until it ends; each call writes one JSON log line when it ends.
"""
from __future__ import annotations

import asyncio
import fractions
import json
import logging
import math
import time
from typing import Any

from aiohttp import web
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .lateness import LatenessMeter
from .offer_limits import OfferShape, pin_audio_stream
from .pacing import SendPacer
from .ptime import answer_with_ptime, send_opus_packets_of
from .server_config import (
    AIORTC_JITTER_PREFETCH, APP_KEY_CALLS, APP_KEY_CONFIG, APP_KEY_ENDING, APP_KEY_STATE, ServerConfig,
)

log = logging.getLogger("voipfilter.server")

PACED_QUEUE_FRAMES = 4  # frames a paced EchoTrack computes ahead of sending


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("atten_lim_db must be a finite number of dB or null")
    if value < 0:
        raise ValueError("atten_lim_db must be >= 0 (dB of attenuation allowed) or null (no limit)")
    return float(value)


def parse_controls(body: Any) -> dict:
    """Validate controls: {"enabled"?: bool, "bypass"?: bool, "atten_lim_db"?: number|null}.

    ``enabled`` is the filter's own switch (off: the delay-aligned dry signal, so switching
    never jumps); ``bypass`` takes the filter out of the path altogether (the caller's
    audio goes straight back), the baseline for timing what the filter adds."""
    if not isinstance(body, dict):
        raise ValueError("controls must be a JSON object")
    out: dict = {}
    for name in ("enabled", "bypass"):
        if name in body:
            if not isinstance(body[name], bool):
                raise ValueError(f"{name} must be true or false")
            out[name] = body[name]
    if "atten_lim_db" in body:
        out["atten_lim_db"] = _finite_or_none(body["atten_lim_db"])
    return out


def _jitter_buffer_depth(receiver) -> tuple[int, float] | None:
    """Packets and ms of audio waiting in aiortc's receive jitter buffer, read from its
    private state (aiortc 1.16): None where that state is not reachable. For
    voipfilter.jitter's buffer: packets held now, and the mean time a packet waited."""
    jb = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
    if hasattr(jb, "stats"):
        s = jb.stats()
        return s["depth_packets"], s["hold_ms_mean"]
    packets = getattr(jb, "_packets", None)
    if packets is None:
        return None
    stamps = sorted({p.timestamp for p in packets if p is not None})
    if not stamps:
        return 0, 0.0
    if len(stamps) >= 2:
        steps = sorted(((b - a) % (1 << 32)) for a, b in zip(stamps, stamps[1:]))
        step = steps[len(steps) // 2]
    else:
        step = 960
    clock = 48000  # Opus RTP clock; G.711/G.722 calls use 8000
    codecs = getattr(receiver, "_RTCRtpReceiver__codecs", None) or {}
    for codec in codecs.values():
        clock = getattr(codec, "clockRate", clock) or clock
        break
    return len(stamps), 1000.0 * len(stamps) * step / clock


class EchoTrack(MediaStreamTrack):
    """What the server sends back: the filter's output, or with ``bypass`` the caller's
    audio untouched. The filter is not pulled meanwhile; when it comes back it sees a pts
    gap, which NoiseSuppressionTrack closes (state kept, a 5 ms dip at the splice).

    Frames keep the duration they arrived with; pts are restamped to one continuous
    timeline so the encoder never sees the switch. :attr:`lateness` measures how late
    frames leave against that timeline (what the caller's jitter buffer sizes itself on);
    it restarts at a switch, which moves the timeline by the filter's delay."""

    kind = "audio"

    def __init__(self, source: MediaStreamTrack, ns: MediaStreamTrack, pacer: SendPacer | None = None):
        super().__init__()
        self.source = source
        self.ns = ns
        self._bypass = False
        self.lateness = LatenessMeter()
        self.pacer = pacer  # holds frames a little so the caller's jitter buffer stays a bucket lower
        self.last_frame_at: float | None = None  # monotonic time of the last caller frame
        self._pts = 0
        self._rate: int | None = None
        # paced: frames ready to send (a few at most: the sender pulls every frame's time)
        self._ready: asyncio.Queue = asyncio.Queue(maxsize=PACED_QUEUE_FRAMES)
        self._producer: asyncio.Future | None = None

    @property
    def bypass(self) -> bool:
        return self._bypass

    @bypass.setter
    def bypass(self, value: bool) -> None:
        if bool(value) != self._bypass:
            self.lateness.reset()
            if self.pacer is not None:
                self.pacer.reset()
        self._bypass = bool(value)

    async def _next(self):
        """The next frame of the path in use, restamped; with its ready time and end (s)."""
        if self._bypass:
            frame = await self.source.recv()
        else:
            frame = await self.ns.recv()
        self.last_frame_at = time.monotonic()
        if self._rate is not None and frame.sample_rate != self._rate:
            self._pts = self._pts * frame.sample_rate // self._rate
        self._rate = frame.sample_rate
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, frame.sample_rate)
        self._pts += frame.samples
        return frame, self.last_frame_at, self._pts / frame.sample_rate

    async def _produce(self) -> None:
        """With pacing: keep pulling the filter while the sender waits out a hold, so that
        holding a frame never delays the computing of the next one."""
        try:
            while True:
                await self._ready.put(await self._next())
        except Exception as exc:  # noqa: BLE001 - the source ended or failed: recv raises it
            await self._ready.put(exc)

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        if self.pacer is None:
            frame, _, media_s = await self._next()
        else:
            if self._producer is None:
                self._producer = asyncio.ensure_future(self._produce())
            item = await self._ready.get()
            if isinstance(item, BaseException):
                raise item
            frame, ready, media_s = item
            wait = ready + self.pacer.hold(ready, media_s) - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        self.lateness.add(time.monotonic(), media_s)
        return frame

    def stop(self) -> None:
        super().stop()
        if self._producer is not None:
            self._producer.cancel()
        self.ns.stop()


class Call:
    """One echo call: a peer connection, its filter track and its control channel."""

    def __init__(self, app: web.Application, call_id: str, remote: str | None):
        from aiortc import RTCConfiguration, RTCPeerConnection

        self.app = app
        self.config: ServerConfig = app[APP_KEY_CONFIG]
        self.id = call_id
        self.remote = remote
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=self.config.ice_servers()))
        if not self.config.aiortc_jitter_buffer:
            from .jitter import low_latency_audio

            low_latency_audio(self.pc)  # packets in order go to the decoder at once
        self.track = None  # NoiseSuppressionTrack
        self.echo: EchoTrack | None = None
        self.source = None  # the caller's audio track
        self.receiver = None
        self.channel = None
        self.created = time.monotonic()
        self.connected_at: float | None = None
        self.closed = False  # media stopped and the slot freed (the end reason may follow)
        self.end_reason: str | None = None
        self._tasks: list[asyncio.Task] = []
        self.pending_reason: str | None = None  # why the caller went, during the hang-up grace
        self._grace: asyncio.TimerHandle | None = None
        self._summary: dict | None = None
        self._jb_max_ms = 0.0
        self._jb_samples: list[float] = []

        @self.pc.on("connectionstatechange")
        async def _on_state() -> None:
            state = self.pc.connectionState
            if state == "connected" and self.connected_at is None:
                self.connected_at = time.monotonic()
            elif state == "failed":  # ICE or DTLS failed, or consent checks went unanswered
                await self.caller_gone("caller_lost" if self.connected_at is not None else "ice_failed")
            elif state == "closed":  # the caller closed its connection (DTLS close_notify)
                await self.caller_gone("caller_closed")

        @self.pc.on("iceconnectionstatechange")
        async def _on_ice_state() -> None:
            # ICE ends both when the caller closes its connection and when aioice gives up on
            # a caller that stopped answering consent checks (RFC 7675: six unanswered checks,
            # ~30 s), with the same states. What tells them apart is the silence before: a
            # vanished caller sent nothing for several consent intervals, a closing one was
            # sending until it closed.
            if self.pc.iceConnectionState in ("failed", "closed") and self.connected_at is not None:
                import aioice.ice

                silent_s = time.monotonic() - max(self.connected_at, self.echo.last_frame_at or 0.0) \
                    if self.echo is not None else 0.0
                vanished = silent_s > 2 * aioice.ice.CONSENT_INTERVAL
                await self.caller_gone("caller_lost" if vanished else "caller_closed")

        @self.pc.on("datachannel")
        def _on_channel(channel) -> None:
            if channel.label != "control":
                return
            self.channel = channel

            @channel.on("message")
            def _on_message(message) -> None:
                reply = self.handle_message(message)
                if reply is not None:
                    self.send(reply)

    # ---- negotiation

    async def answer(self, sdp: str, sdp_type: str, shape: OfferShape) -> dict:
        """Apply the offer, wire the echo and return the answer. ValueError: bad offer.

        ``shape`` (from :func:`check_offer`) names the one audio section to filter; every
        other audio/video section is answered ``inactive``, so aiortc never starts its
        receiver (no decoder thread, no queue) and never sends on it."""
        from aiortc import RTCSessionDescription

        from .track import NoiseSuppressionTrack

        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=sdp_type))
        except Exception as exc:  # noqa: BLE001 - aiortc raises many kinds on bad SDP
            raise ValueError(f"the offer could not be applied: {exc.__class__.__name__}: {exc}") from exc

        media = [t for t in self.pc.getTransceivers() if t.kind in ("audio", "video")]
        audio = [t for t in media if t.kind == "audio" and t.receiver.track is not None]
        wanted = shape.audio.mid if shape.audio is not None else None
        transceiver = next((t for t in audio if wanted is not None and t.mid == wanted), audio[0] if audio else None)
        if transceiver is None:
            raise ValueError("the offer has no audio to filter (add an audio track, sendrecv)")
        for other in media:
            if other is not transceiver:
                other.direction = "inactive"
        self.receiver = transceiver.receiver
        self.source = transceiver.receiver.track
        self.track = NoiseSuppressionTrack(
            self.source, model=self.app[APP_KEY_STATE]["model"], atten_lim_db=self.config.atten_lim_db
        )
        self.echo = EchoTrack(self.source, self.track, SendPacer() if self.config.send_pacing else None)
        transceiver.sender.replaceTrack(self.echo)
        transceiver.direction = "sendrecv"
        if not pin_audio_stream(self.receiver, transceiver.mid):
            log.warning("cannot pin the call's audio to one RTP stream (aiortc changed?)")

        @self.source.on("ended")
        async def _on_ended() -> None:
            await self.caller_gone("caller_closed")

        try:
            answer = await self.pc.createAnswer()
            await asyncio.wait_for(self.pc.setLocalDescription(answer), timeout=15)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"no answer could be made for the offer: {exc.__class__.__name__}: {exc}") from exc
        # Opus packets of ptime_ms both ways: ours from the encoder, the caller's from a=ptime
        send_opus_packets_of(self.pc, self.config.ptime_ms)
        self._tasks.append(asyncio.ensure_future(self._watch()))
        desc = self.pc.localDescription
        return {"sdp": answer_with_ptime(desc.sdp, self.config.ptime_ms), "type": desc.type, "call_id": self.id}

    # ---- controls and stats

    def apply_controls(self, controls: dict) -> None:
        if self.track is None:
            return
        if "enabled" in controls:
            self.track.enabled = controls["enabled"]
        if "atten_lim_db" in controls:
            self.track.atten_lim_db = controls["atten_lim_db"]
        if "bypass" in controls and self.echo is not None:
            self.echo.bypass = controls["bypass"]

    def handle_message(self, message: Any) -> dict | None:
        """Control channel protocol (JSON text):

        - ``{"type": "set", "enabled": bool, "bypass": bool, "atten_lim_db": number|null}``
          (any subset) → ``{"type": "state", ...}``
        - ``{"type": "reset"}`` → resets the filter state → ``{"type": "state", ...}``
        - ``{"type": "ping", "t": any}`` → ``{"type": "pong", "t": same}`` (data channel RTT)
        - ``{"type": "stats"}`` → one stats message now (they also come every 0.5 s)
        Anything else → ``{"type": "error", "message": ...}``.
        """
        try:
            msg = json.loads(message) if isinstance(message, (str, bytes)) else None
            if not isinstance(msg, dict):
                raise ValueError("messages are JSON objects with a 'type'")
            kind = msg.get("type")
            if kind == "set":
                self.apply_controls(parse_controls({k: v for k, v in msg.items() if k != "type"}))
                return self.state_message()
            if kind == "reset":
                if self.track is not None:
                    self.track.reset()
                return self.state_message()
            if kind == "ping":
                return {"type": "pong", "t": msg.get("t"), "server_time": time.time()}
            if kind == "stats":
                return self.stats()
            raise ValueError(f"unknown message type {kind!r}")
        except ValueError as exc:
            return {"type": "error", "message": str(exc)}

    def state_message(self) -> dict:
        return {
            "type": "state",
            "enabled": bool(self.track.enabled) if self.track is not None else None,
            "atten_lim_db": self.track.atten_lim_db if self.track is not None else None,
            "bypass": bool(self.echo.bypass) if self.echo is not None else None,
        }

    def send(self, message: dict) -> None:
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            try:
                channel.send(json.dumps(message))
            except Exception:  # noqa: BLE001 - a closing channel must not end the call
                log.debug("control channel send failed", exc_info=True)

    def _sample_jitter_buffer(self) -> dict:
        depth = _jitter_buffer_depth(self.receiver) if self.receiver is not None else None
        if depth is None:
            return {"server_jitter_buffer_ms": None, "server_jitter_buffer_packets": None}
        packets, ms = depth
        self._jb_samples.append(ms)
        del self._jb_samples[:-20]
        self._jb_max_ms = max(self._jb_max_ms, ms)
        return {
            "server_jitter_buffer_ms": round(ms, 1),
            "server_jitter_buffer_avg_ms": round(sum(self._jb_samples) / len(self._jb_samples), 1),
            "server_jitter_buffer_max_ms": round(self._jb_max_ms, 1),
            "server_jitter_buffer_packets": packets,
        }

    def stats(self) -> dict:
        now = time.monotonic()
        out: dict = {
            "type": "stats",
            "call_id": self.id,
            "state": self.pc.connectionState,
            "duration_s": round(now - self.created, 3),
            "server_jitter_buffer_nominal_ms": AIORTC_JITTER_PREFETCH * 20 if self.config.aiortc_jitter_buffer else 0,
            "server_jitter_buffer_kind": "aiortc" if self.config.aiortc_jitter_buffer else "voipfilter",
            "opus_ptime_ms": self.config.ptime_ms,
        }
        out.update(self._sample_jitter_buffer())
        receive = self._receive_buffer_stats()
        if receive is not None:
            out["server_receive_buffer"] = receive
        if self.echo is not None:
            out["server_send_lateness"] = self.echo.lateness.stats()
            out["server_send_pacing"] = self.echo.pacer.stats() if self.echo.pacer is not None else None
        queue = getattr(self.source, "_queue", None)
        out["server_decoded_queue_frames"] = queue.qsize() if queue is not None else None
        if self.track is not None:
            out["enabled"] = bool(self.track.enabled)
            out["atten_lim_db"] = self.track.atten_lim_db
            out["bypass"] = bool(self.echo.bypass) if self.echo is not None else False
            out["delay_ms"] = self.track.delay_ms
            out["model"] = getattr(self.track.model, "model_name", None)
            try:
                out["filter"] = self.track.stats()
            except Exception as exc:  # noqa: BLE001 - stats must never end the call
                out["filter"] = {"error": str(exc)}
        return out

    async def _watch(self) -> None:
        """Push stats; enforce the connect timeout, the no-audio timeout and the call length
        limit."""
        cfg = self.config
        try:
            while not self.closed:
                await asyncio.sleep(cfg.stats_interval_s)
                now = time.monotonic()
                if self.connected_at is None and now - self.created > cfg.connect_timeout_s:
                    await self.close("connect_timeout")
                    return
                if self.connected_at is not None and cfg.no_media_timeout_s:
                    last = self.echo.last_frame_at if self.echo is not None else None
                    if now - max(last or 0.0, self.connected_at) > cfg.no_media_timeout_s:
                        await self.close("no_media")
                        return
                if cfg.max_call_s and now - self.created > cfg.max_call_s:
                    await self.close("max_duration")
                    return
                if self.channel is not None:
                    self.send(self.stats())
        except asyncio.CancelledError:
            pass

    # ---- end

    def summary(self) -> dict:
        """The fields of the per-call log line."""
        end = time.monotonic()
        fs: dict = {}
        if self.track is not None:
            try:
                fs = self.track.stats() or {}
            except Exception as exc:  # noqa: BLE001
                fs = {"stats_error": str(exc)}

        def r(value, digits=3):
            return round(value, digits) if isinstance(value, float) else value

        return {
            "event": "call_end",
            "call_id": self.id,
            "remote": self.remote,
            "reason": self.end_reason,
            "duration_s": round(end - self.created, 3),
            "connected_s": round(end - self.connected_at, 3) if self.connected_at else 0.0,
            "frames_in": fs.get("frames_in"),
            "frames_out": fs.get("frames_out"),
            "drops": fs.get("frames_dropped"),
            "gaps": fs.get("gaps"),
            "errors": fs.get("errors"),
            "fail_open_frames": fs.get("fail_open_frames"),
            "last_error": fs.get("last_error"),
            "delay_ms": r(self.track.delay_ms) if self.track is not None else None,
            "p50_ms": r(fs.get("proc_ms_p50")),
            "p95_ms": r(fs.get("proc_ms_p95")),
            "max_ms": r(fs.get("proc_ms_max")),
            "rtf": r(fs.get("rtf"), 4),
            "removed_db": r(fs.get("removed_db"), 1),
            "server_jitter_buffer_max_ms": round(self._jb_max_ms, 1),
            "arrival_lateness": (self._receive_buffer_stats() or {}).get("arrival_lateness"),
            "send_lateness": self.echo.lateness.stats() if self.echo is not None else None,
        }

    def _receive_buffer_stats(self) -> dict | None:
        """voipfilter's receive buffer's stats (None with aiortc's, which keeps none)."""
        jb = getattr(self.receiver, "_RTCRtpReceiver__jitter_buffer", None)
        return jb.stats() if hasattr(jb, "stats") else None

    async def close(self, reason: str) -> None:
        """End the call now with ``reason``: one log line, slot, media and sockets freed."""
        if self.end_reason is not None:
            return
        self.end_reason = reason
        if self._grace is not None:
            self._grace.cancel()
        self.app[APP_KEY_ENDING].pop(self.id, None)
        await self._release()
        summary = dict(self._summary or {}, reason=reason)
        log.info(json.dumps(summary, default=str))

    async def caller_gone(self, reason: str) -> None:
        """The caller closed or lost its connection: free everything now, but wait
        ``hangup_grace_s`` for the page's DELETE before recording ``reason``: a page that
        hangs up sends both, in either order, and that is one hang-up."""
        if self.closed:
            return
        self.pending_reason = reason
        self.app[APP_KEY_ENDING][self.id] = self
        loop = asyncio.get_running_loop()
        self._grace = loop.call_later(
            max(0.0, self.config.hangup_grace_s), lambda: asyncio.ensure_future(self.close(reason))
        )
        await self._release()

    async def _release(self) -> None:
        """Free the slot, stop the tracks and close the peer connection (idempotent).

        Ends the filter explicitly (its resamplers hold native threads) rather than leaving
        it to Python's cycle collector."""
        if self.closed:
            return
        self.closed = True
        self.app[APP_KEY_CALLS].pop(self.id, None)
        self._summary = self.summary()  # before the track stops
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        try:
            if self.echo is not None:
                self.echo.stop()
            if self.track is not None:
                self.track.release()
        except Exception:  # noqa: BLE001
            log.debug("track stop failed", exc_info=True)
        try:
            await self.pc.close()
        except Exception:  # noqa: BLE001
            log.warning("peer connection close failed", exc_info=True)
