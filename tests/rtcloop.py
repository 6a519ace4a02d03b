"""Test helper: two real aiortc RTCPeerConnections talking over loopback only.

No STUN (``RTCConfiguration(iceServers=[])``) and host candidates limited to 127.0.0.1
through :func:`voipfilter.ice.restrict_host_candidates`, so a call works on a machine with no
network and never leaves it. Typical use::

    async with loopback_pair() as (a, b):
        a.addTrack(MediaPlayer(wav).audio)
        b.on("track", lambda t: ...)          # B wraps / records / echoes
        await connect(a, b)                   # offer from A, answer from B
        ...

Everything is bounded by timeouts: a test can hang on nothing here.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from aiortc import RTCConfiguration, RTCPeerConnection

from voipfilter.ice import LOOPBACK, restrict_host_candidates


def make_pc() -> RTCPeerConnection:
    return RTCPeerConnection(configuration=RTCConfiguration(iceServers=[]))


async def connect(offerer: RTCPeerConnection, answerer: RTCPeerConnection, timeout: float = 15.0) -> None:
    """Offer from ``offerer``, answer from ``answerer`` (no trickle: aiortc gathers all
    candidates inside setLocalDescription), then wait until both are connected."""

    async def _go() -> None:
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)
        while not (offerer.connectionState == "connected" and answerer.connectionState == "connected"):
            if "failed" in (offerer.connectionState, answerer.connectionState):
                raise ConnectionError(
                    f"ICE/DTLS failed: offerer {offerer.connectionState}, answerer {answerer.connectionState}"
                )
            await asyncio.sleep(0.02)

    await asyncio.wait_for(_go(), timeout)


def candidate_hosts(pc: RTCPeerConnection) -> set[str]:
    """The addresses in the candidate lines of a peer's local description."""
    hosts = set()
    for line in pc.localDescription.sdp.splitlines():
        if line.startswith("a=candidate:"):
            hosts.add(line.split()[4])
    return hosts


@contextlib.asynccontextmanager
async def loopback_pair(close_timeout: float = 5.0) -> AsyncIterator[tuple[RTCPeerConnection, RTCPeerConnection]]:
    """Two peer connections whose ICE gathering is limited to loopback; closed on exit."""
    restriction = restrict_host_candidates(LOOPBACK)
    a, b = make_pc(), make_pc()
    try:
        yield a, b
    finally:
        try:
            await asyncio.wait_for(asyncio.gather(a.close(), b.close(), return_exceptions=True), close_timeout)
        finally:
            restriction.undo()
