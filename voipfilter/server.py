"""The demo call server's HTTP app, run by ``voipfilter serve`` (voipfilter/serve.py) and
``python server.py`` in a checkout.

An aiohttp app. ``GET /`` serves the page in ``web/``; ``POST /offer`` takes a browser's
``{"sdp", "type": "offer"}`` and answers it. The call is an echo: the caller's audio runs
through :class:`voipfilter.track.NoiseSuppressionTrack` and is sent straight back, so the
caller hears the filter and the page can time the whole round trip.

Per-call stats and controls travel over a data channel named ``control`` that the page
opens (JSON messages, see :meth:`voipfilter.call.Call.handle_message`), and over a small HTTP API keyed by
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

The settings live in voipfilter/server_config.py, one call in voipfilter/call.py.
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from aiohttp import web

from .access import AccessPolicy
from .call import Call, parse_controls
from .offer_limits import OfferRejected, check_offer
from .server_config import (
    AIORTC_JITTER_PREFETCH,
    APP_KEY_ACCESS,
    APP_KEY_CALLS,
    APP_KEY_CONFIG,
    APP_KEY_ENDING,
    APP_KEY_STATE,
    ServerConfig,
)

log = logging.getLogger("voipfilter.server")

API_PREFIXES = ("/offer", "/calls", "/health", "/config")
TOKEN_PREFIXES = ("/offer", "/calls", "/config")  # the page, /static and /health stay open


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
    # What start-up loaded (aiortc, av, onnxruntime, numpy, the model) lives as long as the
    # server: move it out of the collector's reach, so that its full passes during calls
    # walk only what calls made. A full pass over the start-up heap held the event loop
    # 25-52 ms, every call's audio with it (docs/latency.md).
    gc.collect()
    gc.freeze()


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
        from .pool import prewarm

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
