"""The demo call server's settings: :class:`ServerConfig`, its defaults, the model and page it
serves (:func:`resolve_model`, :func:`find_web_dir`), and the keys under which the aiohttp app
holds them and its calls.

``voipfilter serve`` (voipfilter/serve.py) builds a ServerConfig from flags and environment;
tests and embedders build one directly and pass it to :func:`voipfilter.server.create_app`.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from .access import AccessPolicy
from .offer_limits import OfferLimits

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

# where the app holds its settings, its calls (in progress; in their hang-up grace) and state
APP_KEY_CONFIG = web.AppKey("voipfilter_config", object)
APP_KEY_CALLS = web.AppKey("voipfilter_calls", dict)
APP_KEY_STATE = web.AppKey("voipfilter_state", dict)
APP_KEY_ENDING = web.AppKey("voipfilter_ending", dict)
APP_KEY_ACCESS = web.AppKey("voipfilter_access", AccessPolicy)


DEFAULT_PTIME_MS = 10  # 10 ms Opus packets (voipfilter.ptime): a shorter round trip than aiortc's 20 ms


@dataclass
class ServerConfig:
    """Everything the app needs; ``voipfilter serve`` (voipfilter/serve.py) builds it from flags
    and env."""

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
    send_pacing: bool = False  # hold sent frames a little so the caller's jitter buffer may stay lower (opt-in)
    ptime_ms: int = DEFAULT_PTIME_MS  # Opus packet duration both ways (voipfilter.ptime)
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


DEMO_MODEL = "gtcrn-voipfilter-ll"  # the demo shows latency: the low-delay model when installed


def demo_model_name() -> str | None:
    """The shipped model the demo server runs when none is given: ``gtcrn-voipfilter-ll``
    (15.98 ms at 48 kHz) when installed, else the library's default (None)."""
    from . import model as model_mod

    return DEMO_MODEL if DEMO_MODEL in model_mod.shipped_models() else None


def resolve_model(model_arg: str | os.PathLike | None):
    """Load the model the calls will share (:func:`demo_model_name` when none is given), or
    raise ConfigError with what to do."""
    from . import model as model_mod

    try:
        path = model_mod.resolve_model_path(model_arg or demo_model_name())
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
