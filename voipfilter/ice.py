"""Limit the host ICE candidates that aiortc (through aioice) gathers to chosen addresses.

aioice builds its host candidates from every interface address it finds, **except**
127.0.0.1 (and ``::1``). Two peers on one machine with no network (a test, CI, a demo in a
loopback-only namespace) then have no candidate pair that works, or they pair over an
address that is not loopback. This module swaps aioice's address lookup for one that
returns exactly the addresses you name::

    from voipfilter.ice import restrict_host_candidates

    undo = restrict_host_candidates(["127.0.0.1"])   # from now on, loopback only
    ...
    undo()                                           # (or undo.undo()): back to normal

    with restrict_host_candidates(["127.0.0.1"]):    # or only inside a block
        ...                                          # create and connect RTCPeerConnections

Pair it with ``RTCConfiguration(iceServers=[])``: aiortc's default configuration asks a
public STUN server for a server-reflexive candidate, which a machine with no network cannot
reach (it only costs a timeout, but it is never useful on loopback).

Scope and caveats:

- The change is **process-wide**: it applies to every ICE gathering that starts while it is
  in force (aiortc gathers in ``setLocalDescription``), in every event loop and thread.
  Connections that already gathered keep their candidates.
- Only host candidates are affected; STUN (server-reflexive) and TURN (relayed) candidates
  are gathered as configured.
- An address that no interface of the machine has simply yields no candidate (aioice logs
  "Could not bind"), so naming an address is never harmful, only useless.
- aioice's ``use_ipv4`` / ``use_ipv6`` switches still apply: an IPv6 address is returned only
  when IPv6 gathering is on (aiortc turns both on).
- It patches ``aioice.ice.get_host_addresses`` (aioice 0.9 to 0.13 at least), the one
  function aioice uses to list host addresses. If a future aioice renames it,
  :func:`restrict_host_candidates` raises ``RuntimeError`` rather than silently doing
  nothing.
"""
from __future__ import annotations

import ipaddress
import threading
from typing import Callable, Iterable, Sequence

__all__ = [
    "LOOPBACK",
    "HostCandidateRestriction",
    "restrict_host_candidates",
    "current_restriction",
]

LOOPBACK: tuple[str, ...] = ("127.0.0.1",)
"""The IPv4 loopback address, the usual argument for tests and ``--ice-loopback``."""

_lock = threading.Lock()
_original: Callable[[bool, bool], list[str]] | None = None
_stack: list["HostCandidateRestriction"] = []


def _aioice_ice_module():
    try:
        import aioice.ice as ice_module
    except ImportError as exc:  # pragma: no cover - aiortc always brings aioice
        raise RuntimeError("aioice is not installed (it comes with aiortc)") from exc
    if not callable(getattr(ice_module, "get_host_addresses", None)):
        raise RuntimeError(
            "this aioice version has no aioice.ice.get_host_addresses; "
            "voipfilter.ice cannot restrict its host candidates"
        )
    return ice_module


def _normalise(addresses: Iterable[str]) -> tuple[str, ...]:
    if isinstance(addresses, (str, bytes)):
        raise TypeError("addresses must be a list of IP address strings, not one string")
    out: list[str] = []
    for addr in addresses:
        try:
            ip = ipaddress.ip_address(str(addr).strip())
        except ValueError:
            raise ValueError(f"not an IP address: {addr!r} (host names are not accepted)") from None
        text = str(ip)
        if text not in out:
            out.append(text)
    if not out:
        raise ValueError("give at least one address (call .undo() to lift a restriction)")
    return tuple(out)


class HostCandidateRestriction:
    """One restriction in force. Lift it with :meth:`undo` or by leaving a ``with`` block.

    Restrictions nest: the innermost one in force decides, and undoing it brings back the
    one that was in force before it (or aioice's own behaviour when none is left).
    """

    def __init__(self, addresses: Sequence[str]):
        self.addresses: tuple[str, ...] = tuple(addresses)
        self.active = False

    # aioice calls get_host_addresses(use_ipv4=..., use_ipv6=...)
    def host_addresses(self, use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
        """The addresses aioice gets while this restriction is the innermost in force."""
        out = []
        for addr in self.addresses:
            version = ipaddress.ip_address(addr).version
            if (version == 4 and use_ipv4) or (version == 6 and use_ipv6):
                out.append(addr)
        return out

    def undo(self) -> None:
        """Lift this restriction (idempotent)."""
        with _lock:
            if not self.active:
                return
            self.active = False
            if self in _stack:
                _stack.remove(self)
            _install_locked()

    __call__ = undo  # so the handle can be kept as a plain "restore" callable

    def __enter__(self) -> "HostCandidateRestriction":
        return self

    def __exit__(self, *exc_info) -> None:
        self.undo()

    def __repr__(self) -> str:
        state = "active" if self.active else "lifted"
        return f"HostCandidateRestriction({list(self.addresses)!r}, {state})"


def _install_locked() -> None:
    """Point aioice at the innermost active restriction, or back at its own function."""
    global _original
    ice_module = _aioice_ice_module()
    if _stack:
        if _original is None:
            _original = ice_module.get_host_addresses
        top = _stack[-1]

        def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            return top.host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)

        get_host_addresses.__voipfilter_restriction__ = top  # type: ignore[attr-defined]
        ice_module.get_host_addresses = get_host_addresses
    elif _original is not None:
        ice_module.get_host_addresses = _original
        _original = None


def restrict_host_candidates(addresses: Iterable[str] | None) -> HostCandidateRestriction | None:
    """Make aioice offer host candidates on exactly ``addresses`` (IP literals).

    ``restrict_host_candidates(["127.0.0.1"])`` keeps every peer connection created from now
    on to loopback. Returns a :class:`HostCandidateRestriction`; call it (or its ``undo()``)
    or use it as a context manager to lift it. ``restrict_host_candidates(None)`` lifts every
    restriction at once and returns None.

    Raises ``ValueError`` for an empty list or a string that is not an IP address, and
    ``RuntimeError`` if the installed aioice cannot be patched.
    """
    if addresses is None:
        with _lock:
            for r in _stack:
                r.active = False
            _stack.clear()
            _install_locked()
        return None
    restriction = HostCandidateRestriction(_normalise(addresses))
    with _lock:
        _aioice_ice_module()  # fail loudly before recording anything
        restriction.active = True
        _stack.append(restriction)
        _install_locked()
    return restriction


def current_restriction() -> HostCandidateRestriction | None:
    """The innermost restriction in force, or None when aioice gathers as it normally does."""
    with _lock:
        return _stack[-1] if _stack else None
