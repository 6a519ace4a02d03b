"""Who may talk to the demo server: the Host and Origin checks and the shared secret.

- **Host**: a request must name one of the server's own addresses (the bound address; all
  of the machine's addresses and names when bound to 0.0.0.0 or ::; ``localhost`` and the
  loopback addresses when it listens there) or the host of an ``--allow-origin``. That is
  what stops DNS rebinding: a page on ``evil.example`` whose name now points at 127.0.0.1
  still sends ``Host: evil.example``.
- **Origin**: a browser's cross-site request carries the page's origin; it must be the
  server's own (the same host and port as the ``Host`` header, so a remapped port or a
  reverse proxy that keeps ``Host`` works) or one given with ``--allow-origin``. Requests
  without an ``Origin`` (curl, aiortc clients, same-origin GETs) pass.
- **Token**: with ``--token`` every API request (``/offer``, ``/calls/...``, ``/config``)
  needs ``Authorization: Bearer <token>``, compared in constant time. The page reads the
  token from its own URL (``?token=...`` or ``#token=...``). The page, its static files and
  ``/health`` stay open so that the page can load and container health checks work.

Failures are JSON: 403 ``forbidden_host`` / ``forbidden_origin``, 401 ``unauthorized``.
"""
from __future__ import annotations

import hmac
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Iterable
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")
DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (the only binds that need no token)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalise_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, the default port left out; ValueError if
    ``origin`` is not one (a path, a query or a missing host)."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"{origin!r} is not an origin (give scheme://host[:port], e.g. https://call.example.org)")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is None or port == DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def host_name(host_header: str) -> str:
    """The host part of a ``Host`` header value, lower case, without port or brackets."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def machine_addresses() -> set[str]:
    """Every address of this machine's interfaces, and its names (for a wildcard bind)."""
    names: set[str] = set()
    try:
        import ifaddr  # comes with aioice

        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                addr = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
                names.add(str(addr).split("%", 1)[0].lower())
    except Exception:  # noqa: BLE001 - fall back to the names alone
        pass
    host = socket.gethostname()
    for name in (host, socket.getfqdn(), f"{host.split('.')[0]}.local" if host else ""):
        if name:  # .local: the machine's mDNS name (Avahi, Bonjour), as docs/deploy.md uses
            names.add(name.lower())
    return names


@dataclass
class AccessPolicy:
    """The checks for one server: built once from its bind address and options."""

    bind_host: str
    allow_origins: Iterable[str] = ()
    token: str | None = None
    names: set[str] = field(init=False)
    origins: set[str] = field(init=False)

    def __post_init__(self) -> None:
        self.origins = {normalise_origin(o) for o in self.allow_origins}
        host = self.bind_host.strip().strip("[]").lower()
        names = {host} if host not in WILDCARD_HOSTS else machine_addresses() | set(LOOPBACK_NAMES)
        if is_loopback(host):
            names |= set(LOOPBACK_NAMES)
        for origin in self.origins:
            names.add(host_name(urlsplit(origin).netloc))
        self.names = names

    def check_host(self, host_header: str | None) -> str | None:
        """None if the Host header names this server, else the reason it is refused."""
        if not host_header:
            return "the request has no Host header"
        if host_name(host_header) not in self.names:
            return (
                f"Host {host_header!r} is not an address of this server; to serve it under another "
                "name start the server with --allow-origin https://THAT-NAME"
            )
        return None

    def check_origin(self, origin: str | None, host_header: str | None) -> str | None:
        """None if the Origin is absent, this server's own, or allowed; else the reason."""
        if origin is None:
            return None
        try:
            norm = normalise_origin(origin)
        except ValueError:
            return f"Origin {origin!r} is not allowed"
        if norm in self.origins:
            return None
        netloc = urlsplit(norm).netloc
        if host_header:
            scheme = urlsplit(norm).scheme
            try:
                same = normalise_origin(f"{scheme}://{host_header.strip().lower()}")
            except ValueError:
                same = None
            if same is not None and urlsplit(same).netloc == netloc:
                return None
        return f"Origin {origin!r} is not this server's; allow it with --allow-origin {norm}"

    def check_token(self, authorization: str | None) -> bool:
        """True when no token is set, or ``authorization`` is ``Bearer <token>``."""
        if not self.token:
            return True
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            given = ""
        return hmac.compare_digest(given.strip().encode("utf-8"), self.token.encode("utf-8"))
