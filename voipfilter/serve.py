"""``voipfilter serve`` (and ``python server.py`` in a checkout): the demo call server's
command line. Flags and ``VOIPFILTER_*`` environment variables become a
:class:`~voipfilter.server_config.ServerConfig`; :func:`run` loads the model, logs in JSON
lines and serves the app of voipfilter/server.py.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys

from aiohttp import web

from .access import AccessPolicy, is_loopback
from .ptime import OPUS_PTIMES_MS
from .server import create_app
from .server_config import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_HOST,
    DEFAULT_HTTP_TIMEOUT_S,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CALL_S,
    DEFAULT_MAX_CALLS,
    DEFAULT_MAX_CALLS_PER_CLIENT,
    DEFAULT_NO_MEDIA_TIMEOUT_S,
    DEFAULT_PORT,
    DEFAULT_PTIME_MS,
    ConfigError,
    ServerConfig,
    find_web_dir,
    resolve_model,
)

log = logging.getLogger("voipfilter.server")


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
                        help="a shipped model's name (gtcrn-voipfilter, gtcrn-voipfilter-ll) or the path "
                        "of a streaming ONNX model (default: the low-delay gtcrn-voipfilter-ll, 16 ms at "
                        "48 kHz, when installed, else gtcrn-voipfilter; env VOIPFILTER_MODEL)")
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
    parser.add_argument("--send-pacing", action="store_true", default=_env_bool("SEND_PACING"),
                        help="hold each frame a little before sending it back, aimed at keeping the caller's "
                             "jitter buffer a 20 ms step lower (docs/latency.md; not yet shown to help on a loaded "
                             "machine) (env VOIPFILTER_SEND_PACING)")
    parser.add_argument("--ptime-ms", type=int, choices=OPUS_PTIMES_MS,
                        default=int(_env("PTIME_MS", str(DEFAULT_PTIME_MS))),
                        help=f"Opus packet duration, both ways (default {DEFAULT_PTIME_MS}; aiortc's own is 20; "
                             "env VOIPFILTER_PTIME_MS)")


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
        send_pacing=args.send_pacing,
        ptime_ms=args.ptime_ms,
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
