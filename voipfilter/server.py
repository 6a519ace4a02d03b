"""The demo call server: ``voipfilter serve`` (and ``python server.py`` in a checkout).

An aiohttp app. ``GET /`` serves the page in ``web/``; ``POST /offer`` takes a browser's
``{"sdp", "type": "offer"}`` and answers it. The call is an echo: the caller's audio runs
through :class:`voipfilter.track.NoiseSuppressionTrack` and is sent straight back, so the
caller hears the filter and the page can time the whole round trip.

Per-call stats and controls travel over a data channel named ``control`` that the page
opens (JSON messages, see :meth:`Call.handle_message`), and over a small HTTP API keyed by
the call id that ``/offer`` returns: ``GET /calls/{id}``, ``POST /calls/{id}/control``,
``DELETE /calls/{id}``.  ``GET /health`` is for container health checks, ``GET /config``
tells the page the ICE servers and defaults.

Every error from the API is JSON: ``{"error": code, "message": text}`` with a 4xx/5xx
status. Each call writes one JSON log line when it ends.

Every offer is treated as hostile (docs/server.md): the SDP is counted against caps and
only one audio section is decoded (voipfilter/offer_limits.py); Host, Origin and the
optional token are checked on every request (voipfilter/access.py); a call ends by itself
when it never connects, when no audio arrives, when the caller goes away, and after
``max_call_s``; each client address holds at most ``max_calls_per_client`` calls.
"""
from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import logging
import math
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .access import AccessPolicy, is_loopback
from .offer_limits import OfferLimits, OfferRejected, OfferShape, check_offer, pin_audio_stream

log = logging.getLogger("voipfilter.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_CALLS = 4
DEFAULT_MAX_BODY = 64 * 1024  # a browser offer with every candidate is ~5-10 KB
DEFAULT_CONNECT_TIMEOUT_S = 10.0  # the page posts its offer with every candidate gathered
DEFAULT_MAX_CALL_S = 3600.0
DEFAULT_NO_MEDIA_TIMEOUT_S = 15.0
DEFAULT_MAX_CALLS_PER_CLIENT = 2
DEFAULT_HTTP_TIMEOUT_S = 10.0  # request head, request body, and an idle keep-alive connection
DEFAULT_HANGUP_GRACE_S = 2.0
STATS_INTERVAL_S = 0.5

# aiortc 1.16 decodes received audio behind JitterBuffer(capacity=16, prefetch=4): a frame
# leaves when the 4th packet after it has arrived, i.e. 80 ms at 20 ms packets.
AIORTC_JITTER_PREFETCH = 4
APP_KEY_CONFIG = web.AppKey("voipfilter_config", object)
APP_KEY_CALLS = web.AppKey("voipfilter_calls", dict)
APP_KEY_STATE = web.AppKey("voipfilter_state", dict)
APP_KEY_ENDING = web.AppKey("voipfilter_ending", dict)
APP_KEY_ACCESS = web.AppKey("voipfilter_access", AccessPolicy)

API_PREFIXES = ("/offer", "/calls", "/health", "/config")
TOKEN_PREFIXES = ("/offer", "/calls", "/config")  # the page, /static and /health stay open


# --------------------------------------------------------------------------- config


@dataclass
class ServerConfig:
    """Everything the app needs; ``configure``/``run`` build it from flags and env."""

    web_dir: Path
    model: Any = None  # a path, a loaded voipfilter.model.Model, or None (the default model)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_calls: int = DEFAULT_MAX_CALLS
    max_body: int = DEFAULT_MAX_BODY
    stun: list[str] = field(default_factory=list)
    turn: list[str] = field(default_factory=list)
    turn_user: str | None = None
    turn_password: str | None = None
    loopback_only: bool = False
    atten_lim_db: float | None = None
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    max_call_s: float = DEFAULT_MAX_CALL_S
    stats_interval_s: float = STATS_INTERVAL_S
    aiortc_jitter_buffer: bool = False  # True: aiortc's own receive buffer (for comparison)
    # who may call, and the limits that free slots (docs/server.md)
    no_media_timeout_s: float = DEFAULT_NO_MEDIA_TIMEOUT_S  # 0 = never
    max_calls_per_client: int = DEFAULT_MAX_CALLS_PER_CLIENT
    hangup_grace_s: float = DEFAULT_HANGUP_GRACE_S  # a DELETE this soon after the caller left is its hang-up
    http_timeout_s: float = DEFAULT_HTTP_TIMEOUT_S
    offer_limits: OfferLimits = field(default_factory=OfferLimits)
    allow_origins: list[str] = field(default_factory=list)
    token: str | None = None

    def ice_servers(self):
        """aiortc RTCIceServer list for the server's own peer connections (may be empty)."""
        from aiortc import RTCIceServer

        servers = []
        if self.stun:
            servers.append(RTCIceServer(urls=list(self.stun)))
        if self.turn:
            servers.append(
                RTCIceServer(urls=list(self.turn), username=self.turn_user, credential=self.turn_password)
            )
        return servers

    def browser_ice_servers(self) -> list[dict]:
        """The same servers in the browser's RTCConfiguration form (served by GET /config).

        TURN credentials given here are visible to every page visitor: use coturn's
        ``use-auth-secret`` with short-lived credentials for anything public."""
        servers: list[dict] = []
        if self.stun:
            servers.append({"urls": list(self.stun)})
        if self.turn:
            entry: dict = {"urls": list(self.turn)}
            if self.turn_user is not None:
                entry["username"] = self.turn_user
            if self.turn_password is not None:
                entry["credential"] = self.turn_password
            servers.append(entry)
        return servers


class ConfigError(Exception):
    """A problem the operator must fix (no model, no web/): printed without a traceback."""


def _repo_web_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent
    return [
        here / "web",  # if a packaging step ever copies web/ into the package
        here.parent / "web",  # a source checkout (also an editable install)
        Path(sys.prefix) / "share" / "voipfilter" / "web",  # a data-files install
    ]


def find_web_dir(explicit: str | os.PathLike | None) -> Path:
    """The folder with index.html: ``explicit`` if given, else the checkout's ``web/``."""
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if not (path / "index.html").is_file():
            raise ConfigError(f"--web-dir {path}: no index.html there (give the repository's web/ folder)")
        return path
    for path in _repo_web_dirs():
        if (path / "index.html").is_file():
            return path.resolve()
    raise ConfigError(
        "the demo page (web/index.html) was not found next to the package; run from a "
        "voipfilter checkout (python server.py) or pass --web-dir PATH / VOIPFILTER_WEB_DIR"
    )


def resolve_model(model_arg: str | os.PathLike | None):
    """Load the model the calls will share, or raise ConfigError with what to do."""
    from . import model as model_mod

    try:
        path = model_mod.resolve_model_path(model_arg or None)
    except model_mod.ModelNotFoundError as exc:
        if model_arg:
            raise ConfigError(f"--model {model_arg}: {exc}") from None
        raise ConfigError(
            f"no model: {exc}. Pass --model NAME or PATH (a shipped model's name or a streaming "
            "ONNX file; voipfilter export writes one), or set VOIPFILTER_MODEL."
        ) from None
    try:
        return model_mod.Model.load(path)
    except Exception as exc:  # noqa: BLE001 - report any load failure to the operator
        raise ConfigError(f"cannot load model {path}: {exc}") from exc


# --------------------------------------------------------------------------- errors


def json_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers or None)


@web.middleware
async def json_errors(request: web.Request, handler):
    """API routes answer every error in JSON, never aiohttp's text pages."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not request.path.startswith(API_PREFIXES) or exc.status < 400:
            raise
        code = {
            404: "not_found",
            405: "method_not_allowed",
            408: "request_timeout",
            413: "body_too_large",
        }.get(exc.status, "http_error")
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return json_error(exc.status, code, exc.reason or code, **headers)


@web.middleware
async def access_checks(request: web.Request, handler):
    """Host and Origin on every request, the token on the API (voipfilter/access.py)."""
    policy: AccessPolicy = request.app[APP_KEY_ACCESS]
    host = request.headers.get("Host")
    why = policy.check_host(host)
    if why is not None:
        return json_error(403, "forbidden_host", why)
    why = policy.check_origin(request.headers.get("Origin"), host)
    if why is not None:
        return json_error(403, "forbidden_origin", why)
    if request.path.startswith(TOKEN_PREFIXES) and not policy.check_token(request.headers.get("Authorization")):
        return json_error(
            401, "unauthorized",
            "this server needs its token: open the page as /#token=TOKEN (or ?token=TOKEN), "
            "or send the header Authorization: Bearer TOKEN",
            **{"WWW-Authenticate": "Bearer"},
        )
    return await handler(request)


async def read_body(request: web.Request, timeout_s: float) -> bytes:
    """The request body, or HTTP 408 when the client stops sending it part way."""
    try:
        return await asyncio.wait_for(request.read(), timeout_s)
    except asyncio.TimeoutError:
        raise web.HTTPRequestTimeout(reason=f"the request body did not arrive within {timeout_s:g} s") from None


# --------------------------------------------------------------------------- calls


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
    timeline so the encoder never sees the switch."""

    kind = "audio"

    def __init__(self, source: MediaStreamTrack, ns: MediaStreamTrack):
        super().__init__()
        self.source = source
        self.ns = ns
        self.bypass = False
        self.last_frame_at: float | None = None  # monotonic time of the last caller frame
        self._pts = 0
        self._rate: int | None = None

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        if self.bypass:
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
        return frame

    def stop(self) -> None:
        super().stop()
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
        self.echo = EchoTrack(self.source, self.track)
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
        self._tasks.append(asyncio.ensure_future(self._watch()))
        desc = self.pc.localDescription
        return {"sdp": desc.sdp, "type": desc.type, "call_id": self.id}

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
        }
        out.update(self._sample_jitter_buffer())
        jb = getattr(self.receiver, "_RTCRtpReceiver__jitter_buffer", None)
        if hasattr(jb, "stats"):
            out["server_receive_buffer"] = jb.stats()
        queue = getattr(self.source, "_queue", None)
        out["server_decoded_queue_frames"] = queue.qsize() if queue is not None else None
        if self.track is not None:
            out["enabled"] = bool(self.track.enabled)
            out["atten_lim_db"] = self.track.atten_lim_db
            out["bypass"] = bool(self.echo.bypass) if self.echo is not None else False
            out["delay_ms"] = self.track.delay_ms
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
        }

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


# --------------------------------------------------------------------------- handlers


async def index(request: web.Request) -> web.StreamResponse:
    web_dir: Path = request.app[APP_KEY_CONFIG].web_dir
    return web.FileResponse(web_dir / "index.html", headers={"Cache-Control": "no-cache"})


async def health(request: web.Request) -> web.Response:
    app = request.app
    cfg: ServerConfig = app[APP_KEY_CONFIG]
    model = app[APP_KEY_STATE].get("model")
    return web.json_response(
        {
            "status": "ok",
            "calls": len(app[APP_KEY_CALLS]),
            "max_calls": cfg.max_calls,
            "model": getattr(model, "model_name", None) or str(cfg.model or "default"),
        }
    )


async def config_handler(request: web.Request) -> web.Response:
    cfg: ServerConfig = request.app[APP_KEY_CONFIG]
    return web.json_response(
        {
            "iceServers": cfg.browser_ice_servers(),
            "maxCalls": cfg.max_calls,
            "attenLimDb": cfg.atten_lim_db,
            "serverJitterBufferNominalMs": AIORTC_JITTER_PREFETCH * 20,
        }
    )


async def offer(request: web.Request) -> web.Response:
    app = request.app
    cfg: ServerConfig = app[APP_KEY_CONFIG]
    state = app[APP_KEY_STATE]
    if state.get("shutting_down"):
        return json_error(503, "shutting_down", "the server is shutting down")

    ctype = request.content_type
    if ctype != "application/json":
        return json_error(415, "unsupported_media_type", "send the offer as application/json")
    if request.content_length is not None and request.content_length > cfg.max_body:
        return json_error(413, "body_too_large", f"the body is over {cfg.max_body} bytes")
    try:
        raw = await read_body(request, cfg.http_timeout_s)
    except web.HTTPRequestEntityTooLarge:
        return json_error(413, "body_too_large", f"the body is over {cfg.max_body} bytes")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return json_error(400, "invalid_json", f"the body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return json_error(422, "invalid_offer", 'the body must be a JSON object {"sdp": ..., "type": "offer"}')
    sdp, sdp_type = body.get("sdp"), body.get("type")
    if not isinstance(sdp, str) or not sdp.strip():
        return json_error(422, "invalid_offer", "'sdp' must be a non-empty string")
    if sdp_type != "offer":
        return json_error(422, "invalid_offer", "'type' must be \"offer\"")
    controls = {}
    if "controls" in body:
        try:
            controls = parse_controls(body["controls"])
        except ValueError as exc:
            return json_error(422, "invalid_controls", str(exc))
    if not sdp.lstrip().startswith("v=0"):
        return json_error(400, "invalid_sdp", "'sdp' is not an SDP session description (it must start with v=0)")
    try:
        shape = check_offer(sdp, cfg.offer_limits)
    except OfferRejected as exc:
        return json_error(400, exc.code, str(exc))

    calls: dict = app[APP_KEY_CALLS]
    if len(calls) >= cfg.max_calls:
        return json_error(
            503, "too_many_calls", f"{cfg.max_calls} calls are in progress; try again later", **{"Retry-After": "10"}
        )
    mine = sum(1 for c in calls.values() if c.remote == request.remote)
    if mine >= cfg.max_calls_per_client:
        return json_error(
            429, "too_many_calls_from_client",
            f"{mine} calls from {request.remote} are already connecting or in progress (the limit per "
            "address); hang one up first",
            **{"Retry-After": "10"},
        )
    call_id = secrets.token_hex(8)
    call = Call(app, call_id, request.remote)
    calls[call_id] = call  # hold the slot while negotiating
    try:
        answer = await call.answer(sdp, sdp_type, shape)
    except ValueError as exc:
        await call.close("bad_offer")
        return json_error(400, "invalid_sdp", str(exc))
    except Exception as exc:  # noqa: BLE001
        log.exception("offer failed")
        await call.close("server_error")
        return json_error(500, "server_error", f"{exc.__class__.__name__}: {exc}")
    call.apply_controls(controls)
    log.info(json.dumps({"event": "call_start", "call_id": call_id, "remote": request.remote}))
    return web.json_response(answer)


def _get_call(request: web.Request) -> Call:
    call = request.app[APP_KEY_CALLS].get(request.match_info["call_id"])
    if call is None:
        raise web.HTTPNotFound(reason="no such call (it ended, or the id is wrong)")
    return call


async def call_stats(request: web.Request) -> web.Response:
    return web.json_response(_get_call(request).stats(), dumps=lambda o: json.dumps(o, default=str))


async def call_control(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        return json_error(415, "unsupported_media_type", "send the controls as application/json")
    call = _get_call(request)
    try:
        body = json.loads(await read_body(request, request.app[APP_KEY_CONFIG].http_timeout_s))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return json_error(400, "invalid_json", f"the body is not valid JSON: {exc}")
    try:
        controls = parse_controls(body)
    except ValueError as exc:
        return json_error(422, "invalid_controls", str(exc))
    call.apply_controls(controls)
    return web.json_response(call.state_message())


async def call_hangup(request: web.Request) -> web.Response:
    """End the call as a hang-up, also when its connection closed just before (the page
    sends the DELETE and closes; the two may arrive in either order)."""
    call_id = request.match_info["call_id"]
    call = request.app[APP_KEY_CALLS].get(call_id) or request.app[APP_KEY_ENDING].get(call_id)
    if call is None:
        raise web.HTTPNotFound(reason="no such call (it ended, or the id is wrong)")
    await call.close("hangup")
    return web.json_response({"call_id": call.id, "ended": True})


# --------------------------------------------------------------------------- app


async def _on_startup(app: web.Application) -> None:
    cfg: ServerConfig = app[APP_KEY_CONFIG]
    state = app[APP_KEY_STATE]
    if cfg.loopback_only:
        from .ice import restrict_host_candidates

        state["ice_restore"] = restrict_host_candidates(["127.0.0.1"])


async def _on_shutdown(app: web.Application) -> None:
    app[APP_KEY_STATE]["shutting_down"] = True
    calls = list(app[APP_KEY_CALLS].values())
    if calls:
        await asyncio.gather(*(c.close("shutdown") for c in calls), return_exceptions=True)
    for call in list(app[APP_KEY_ENDING].values()):  # left in their hang-up grace: log them now
        await call.close(call.pending_reason or "caller_closed")


async def _on_cleanup(app: web.Application) -> None:
    restriction = app[APP_KEY_STATE].pop("ice_restore", None)
    if restriction is not None:
        restriction.undo()


def create_app(config: ServerConfig, model: Any = None) -> web.Application:
    """Build the app. ``model``: an already loaded Model (or path) to share; defaults to
    ``config.model`` (tests pass the identity model's path)."""
    app = web.Application(
        client_max_size=config.max_body,
        middlewares=[access_checks, json_errors],
        # aiohttp closes a connection that is idle, or has sent only part of a request
        # head, this long after it opened or after its last response
        handler_args={"keepalive_timeout": config.http_timeout_s},
    )
    app[APP_KEY_CONFIG] = config
    app[APP_KEY_ACCESS] = AccessPolicy(config.host, config.allow_origins, config.token)
    app[APP_KEY_CALLS] = {}
    app[APP_KEY_ENDING] = {}
    app[APP_KEY_STATE] = {"model": model if model is not None else config.model}
    if model is not None and not isinstance(model, (str, os.PathLike)):
        from .track import prewarm

        prewarm(model)  # so that the first call's first frames are not the model's first runs
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/config", config_handler)
    app.router.add_post("/offer", offer)
    app.router.add_get("/calls/{call_id}", call_stats)
    app.router.add_post("/calls/{call_id}/control", call_control)
    app.router.add_delete("/calls/{call_id}", call_hangup)
    app.router.add_static("/static/", config.web_dir, follow_symlinks=False)
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_cleanup)
    return app


def calls_of(app: web.Application) -> dict:
    """The calls in progress, by id (for tests and embedding)."""
    return app[APP_KEY_CALLS]


# --------------------------------------------------------------------------- CLI


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line; a message that is itself a JSON object is merged in."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        msg = record.getMessage()
        merged = False
        if msg.startswith("{"):
            try:
                obj = json.loads(msg)
                if isinstance(obj, dict):
                    out.update(obj)
                    merged = True
            except json.JSONDecodeError:
                pass
        if not merged:
            out["msg"] = msg
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _env(name: str, default=None):
    value = os.environ.get(f"VOIPFILTER_{name}")
    return default if value in (None, "") else value


def _env_list(name: str) -> list[str]:
    value = _env(name)
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _env_bool(name: str) -> bool:
    return str(_env(name, "")).lower() in ("1", "true", "yes", "on")


def _atten(value: str) -> float | None:
    if value.lower() in ("none", "off", "inf", ""):
        return None
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError("give dB >= 0, or 'none' for no limit")
    return v


def configure(parser: argparse.ArgumentParser) -> None:
    env_atten = _env("ATTEN_LIM_DB")
    parser.add_argument("--host", default=_env("HOST", DEFAULT_HOST),
                        help="address to listen on (default 127.0.0.1; env VOIPFILTER_HOST). "
                        "0.0.0.0 makes the demo reachable from other machines")
    parser.add_argument("--port", type=int, default=int(_env("PORT", DEFAULT_PORT)),
                        help="HTTP port (default 8080; env VOIPFILTER_PORT)")
    parser.add_argument("--model", default=_env("MODEL"),
                        help="a shipped model's name (gtcrn-voipfilter) or the path of a streaming "
                        "ONNX model (default: the shipped gtcrn-voipfilter; env VOIPFILTER_MODEL)")
    parser.add_argument("--web-dir", default=_env("WEB_DIR"),
                        help="folder with the page (default: web/ of the checkout; env VOIPFILTER_WEB_DIR)")
    parser.add_argument("--max-calls", type=int, default=int(_env("MAX_CALLS", DEFAULT_MAX_CALLS)),
                        help="concurrent calls; more get HTTP 503 (default 4; env VOIPFILTER_MAX_CALLS)")
    parser.add_argument("--max-body", type=int, default=int(_env("MAX_BODY", DEFAULT_MAX_BODY)),
                        help="largest request body in bytes (default 65536)")
    parser.add_argument("--max-call-seconds", type=float,
                        default=float(_env("MAX_CALL_SECONDS", DEFAULT_MAX_CALL_S)),
                        help="end a call after this long, 0 = never (default 3600)")
    parser.add_argument("--stun", action="append", default=None, metavar="URL",
                        help="STUN server, e.g. stun:stun.example.org:3478 (repeatable; "
                        "env VOIPFILTER_STUN, comma-separated). Default: none")
    parser.add_argument("--turn", action="append", default=None, metavar="URL",
                        help="TURN server, e.g. turn:turn.example.org:3478?transport=udp "
                        "(repeatable; env VOIPFILTER_TURN). Default: none")
    parser.add_argument("--turn-user", default=_env("TURN_USER"), help="TURN username (env VOIPFILTER_TURN_USER)")
    parser.add_argument("--turn-password", default=_env("TURN_PASSWORD"),
                        help="TURN password (env VOIPFILTER_TURN_PASSWORD; prefer the env variable)")
    parser.add_argument("--loopback-ice", action="store_true", default=_env_bool("LOOPBACK_ICE"),
                        help="offer only 127.0.0.1 host candidates (tests, a demo on this machine; "
                        "env VOIPFILTER_LOOPBACK_ICE=1)")
    parser.add_argument("--atten-lim-db", type=_atten, default=_atten(env_atten) if env_atten else None,
                        help="start calls with at most this much suppression in dB (default: no limit)")
    parser.add_argument("--tls-cert", default=_env("TLS_CERT"), metavar="PEM",
                        help="serve HTTPS with this certificate chain (browsers give the microphone "
                        "and AudioWorklet only to https:// pages or http://localhost; env VOIPFILTER_TLS_CERT)")
    parser.add_argument("--tls-key", default=_env("TLS_KEY"), metavar="PEM",
                        help="private key for --tls-cert (env VOIPFILTER_TLS_KEY)")
    _configure_guards(parser)
    parser.add_argument("--log-level", default=_env("LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"], help="log level (default info)")
    parser.add_argument("--access-log", action="store_true", help="also log every HTTP request")
    parser.add_argument("--aiortc-jitter-buffer", action="store_true", default=_env_bool("AIORTC_JITTER_BUFFER"),
                        help="receive with aiortc's own JitterBuffer (80 ms, stalls after a loss) instead of "
                             "voipfilter's low-latency one, for comparison (env VOIPFILTER_AIORTC_JITTER_BUFFER)")


def _configure_guards(parser: argparse.ArgumentParser) -> None:
    """Who may call, and the limits that free call slots (docs/server.md)."""
    g = parser.add_argument_group("access and limits")
    g.add_argument("--token", default=_env("TOKEN"),
                   help="shared secret every API request must carry (Authorization: Bearer TOKEN); the "
                   "page takes it from its URL, http://HOST:PORT/#token=TOKEN. Required with a --host "
                   "other than loopback. Prefer the env variable VOIPFILTER_TOKEN (a flag shows in ps)")
    g.add_argument("--allow-origin", action="append", default=None, metavar="ORIGIN",
                   help="also accept requests from this origin, and its host name in the Host header, "
                   "e.g. https://call.example.org behind a reverse proxy (repeatable; env "
                   "VOIPFILTER_ALLOW_ORIGIN, comma-separated)")
    g.add_argument("--connect-timeout-s", type=float,
                   default=float(_env("CONNECT_TIMEOUT_S", DEFAULT_CONNECT_TIMEOUT_S)),
                   help="end a call whose caller has not connected this long after its offer "
                   f"(default {DEFAULT_CONNECT_TIMEOUT_S:g})")
    g.add_argument("--no-media-timeout-s", type=float,
                   default=float(_env("NO_MEDIA_TIMEOUT_S", DEFAULT_NO_MEDIA_TIMEOUT_S)),
                   help="end a connected call that sends no audio for this long, reason no_media; "
                   f"0 = never (default {DEFAULT_NO_MEDIA_TIMEOUT_S:g})")
    g.add_argument("--max-calls-per-client", type=int,
                   default=int(_env("MAX_CALLS_PER_CLIENT", DEFAULT_MAX_CALLS_PER_CLIENT)),
                   help="calls one client address may have connecting or in progress; more get HTTP "
                   f"429 (default {DEFAULT_MAX_CALLS_PER_CLIENT}; behind a proxy every caller has the "
                   "proxy's address)")
    g.add_argument("--http-timeout-s", type=float, default=float(_env("HTTP_TIMEOUT_S", DEFAULT_HTTP_TIMEOUT_S)),
                   help="close an HTTP connection that is idle or sends a request head or body slower "
                   f"than this (default {DEFAULT_HTTP_TIMEOUT_S:g})")


def _guard_config(args: argparse.Namespace) -> dict:
    """The ServerConfig fields of the access-and-limits group, checked."""
    token = args.token or None
    if not is_loopback(args.host) and not token:
        raise ConfigError(
            f"--host {args.host} makes the server reachable from other machines, so it needs a shared "
            "secret: set VOIPFILTER_TOKEN=SECRET (or --token SECRET) and open the page as "
            f"http://HOST:{args.port}/#token=SECRET; or keep --host 127.0.0.1 and put a TLS reverse "
            "proxy in front (docs/deploy.md)"
        )
    if args.max_calls_per_client < 1:
        raise ConfigError("--max-calls-per-client must be at least 1")
    for name in ("connect_timeout_s", "http_timeout_s"):
        if not getattr(args, name) > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be more than 0 seconds")
    if args.no_media_timeout_s < 0:
        raise ConfigError("--no-media-timeout-s must be 0 (never) or more")
    origins = args.allow_origin if args.allow_origin is not None else _env_list("ALLOW_ORIGIN")
    for origin in origins:
        try:
            AccessPolicy(args.host, [origin])
        except ValueError as exc:
            raise ConfigError(f"--allow-origin {exc}") from None
    return dict(
        token=token,
        allow_origins=origins,
        connect_timeout_s=args.connect_timeout_s,
        no_media_timeout_s=args.no_media_timeout_s,
        max_calls_per_client=args.max_calls_per_client,
        http_timeout_s=args.http_timeout_s,
    )


def build_config(args: argparse.Namespace) -> ServerConfig:
    if args.max_calls < 1:
        raise ConfigError("--max-calls must be at least 1")
    if bool(getattr(args, "tls_cert", None)) != bool(getattr(args, "tls_key", None)):
        raise ConfigError("--tls-cert and --tls-key go together")
    if args.turn_password and not args.turn_user:
        raise ConfigError("--turn-password needs --turn-user")
    stun = args.stun if args.stun is not None else _env_list("STUN")
    turn = args.turn if args.turn is not None else _env_list("TURN")
    for url in stun:
        if not url.startswith("stun:"):
            raise ConfigError(f"--stun {url!r}: a STUN URL starts with stun:")
    for url in turn:
        if not url.startswith(("turn:", "turns:")):
            raise ConfigError(f"--turn {url!r}: a TURN URL starts with turn: or turns:")
    return ServerConfig(
        web_dir=find_web_dir(args.web_dir),
        model=args.model,
        host=args.host,
        port=args.port,
        max_calls=args.max_calls,
        max_body=args.max_body,
        stun=stun,
        turn=turn,
        turn_user=args.turn_user,
        turn_password=args.turn_password,
        loopback_only=args.loopback_ice,
        atten_lim_db=args.atten_lim_db,
        max_call_s=args.max_call_seconds,
        aiortc_jitter_buffer=args.aiortc_jitter_buffer,
        **_guard_config(args),
    )


def run(args: argparse.Namespace) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("voipfilter").setLevel(args.log_level.upper())
    try:
        config = build_config(args)
        model = resolve_model(config.model)
    except ConfigError as exc:
        print(f"voipfilter serve: {exc}", file=sys.stderr)
        return 2
    ssl_context = None
    if args.tls_cert:
        import ssl

        try:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            print(f"voipfilter serve: cannot use --tls-cert/--tls-key: {exc}", file=sys.stderr)
            return 2
    app = create_app(config, model=model)
    access_logger = None
    if args.access_log:
        access_logger = logging.getLogger("aiohttp.access")
        access_logger.setLevel(logging.INFO)
    scheme = "https" if ssl_context else "http"
    if config.host in ("0.0.0.0", "::", ""):  # every address: say which ones a browser can use
        where = (f"open {scheme}://127.0.0.1:{config.port}/ on this machine, or "
                 f"{scheme}://<this machine's address>:{config.port}/ from another one")
    else:
        where = f"open {scheme}://{config.host}:{config.port}/ in a browser"
    log.info(json.dumps({
        "event": "listening",
        "msg": f"voipfilter demo call server listening: {where}",
        "url": f"{scheme}://{config.host}:{config.port}/",
        "model": getattr(model, "model_name", None),
        "model_path": str(getattr(model, "path", config.model)),
        "web_dir": str(config.web_dir),
        "max_calls": config.max_calls,
        "ice_servers": len(config.ice_servers()),
        "loopback_ice": config.loopback_only,
        "token": bool(config.token),
        "allow_origins": config.allow_origins,
    }))
    web.run_app(
        app,
        host=config.host,
        port=config.port,
        ssl_context=ssl_context,
        access_log=access_logger,
        print=None,
        shutdown_timeout=5,
    )
    return 0
