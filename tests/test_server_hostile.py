"""The demo server against callers who do not play by the rules (issue 18), and the page's
hang-up as one event whatever order its DELETE and connection close arrive in (issue 25).

Real aiortc callers on loopback, as in tests/test_server.py (its helpers are reused);
every wait is bounded and waits on the event it needs.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time

import pytest

pytest.importorskip("aiohttp")

from test_server import Caller, WEB, identity_model, make_config, run_cli, running, wait_for  # noqa: E402,F401

from voipfilter import serve  # noqa: E402
from voipfilter import server as srv  # noqa: E402
from voipfilter.server_config import ConfigError  # noqa: E402
from voipfilter.offer_limits import OfferLimits, OfferRejected, check_offer  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def call_ends(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if '"call_end"' in r.getMessage()]


def native_threads() -> int:
    """Threads of this process that Python did not start (onnxruntime, libav, ...)."""
    return len(os.listdir("/proc/self/task")) - threading.active_count()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class SilentAudio:
    """An audio track that never yields a frame: a connected caller that sends nothing."""

    def __new__(cls):
        from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

        class _Track(MediaStreamTrack):
            kind = "audio"

            async def recv(self):
                while self.readyState == "live":
                    await asyncio.sleep(0.1)
                raise MediaStreamError

        return _Track()


# --------------------------------------------------------------------------- hang-up race


@pytest.mark.parametrize("order", ["close_then_delete", "delete_then_close"])
async def test_hangup_is_one_event_whatever_the_order(identity_model, caplog, order):
    """The page sends DELETE and closes its connection; either may reach the server first,
    and both record 'hangup' (the close first: the server waits hangup_grace_s for it)."""
    caplog.set_level(logging.INFO, logger="voipfilter.server")
    async with running(make_config(identity_model, hangup_grace_s=60.0)) as (app, client):
        caller = Caller(6.0)
        try:
            body = await caller.call(client)
            call = srv.calls_of(app)[body["call_id"]]
            await wait_for(lambda: sum(map(len, caller.received)) > 10 * 960, 15, "audio came back")
            if order == "close_then_delete":
                await caller.close()
                await wait_for(lambda: call.closed, 15, "the server saw the connection close")
                assert srv.calls_of(app) == {}  # the slot is free at once ...
                assert call_ends(caplog) == []  # ... the end reason waits for the DELETE
                resp = await client.delete(f"/calls/{body['call_id']}")
            else:
                resp = await client.delete(f"/calls/{body['call_id']}")
                await caller.close()
            assert resp.status == 200, await resp.text()
            await wait_for(lambda: call_ends(caplog), 15, "the call-end line")
        finally:
            await caller.close()
    ends = call_ends(caplog)
    assert [e["reason"] for e in ends] == ["hangup"], ends
    assert ends[0]["frames_in"] > 10


async def test_a_close_without_delete_is_the_callers_after_the_grace(identity_model, caplog):
    caplog.set_level(logging.INFO, logger="voipfilter.server")
    async with running(make_config(identity_model, hangup_grace_s=0.2)) as (app, client):
        caller = Caller(4.0)
        body = await caller.call(client)
        await caller.close()
        await wait_for(lambda: call_ends(caplog), 15, "the call-end line")
        assert (await client.delete(f"/calls/{body['call_id']}")).status == 404  # too late
    assert [e["reason"] for e in call_ends(caplog)] == ["caller_closed"]


async def test_a_vanished_caller_is_not_a_hangup(identity_model, caplog, monkeypatch):
    """A caller that stops sending anything (browser killed, network gone) fails ICE
    consent checks: reason 'caller_lost', not a hang-up."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)  # 6 missed checks: ~1.2 s, not 30
    caplog.set_level(logging.INFO, logger="voipfilter.server")
    async with running(make_config(identity_model, no_media_timeout_s=0, hangup_grace_s=0.2)) as (app, client):
        caller = Caller(10.0)
        try:
            await caller.call(client)
            await wait_for(lambda: sum(map(len, caller.received)) > 10 * 960, 15, "audio came back")
            for transport in caller.pc._RTCPeerConnection__iceTransports:  # the caller goes silent
                for protocol in transport._connection._protocols:
                    protocol.transport.sendto = lambda *a, **k: None
            await wait_for(lambda: call_ends(caplog), 30, "the server noticed the caller vanished")
        finally:
            await caller.close()
    assert [e["reason"] for e in call_ends(caplog)] == ["caller_lost"]


# --------------------------------------------------------------------------- slots


async def test_a_silent_call_ends_with_no_media(identity_model, caplog):
    caplog.set_level(logging.INFO, logger="voipfilter.server")
    async with running(make_config(identity_model, no_media_timeout_s=1.0)) as (app, client):
        caller = Caller(2.0)
        caller.pc.getSenders()[0].replaceTrack(SilentAudio())
        try:
            await caller.call(client)
            assert len(srv.calls_of(app)) == 1
            await wait_for(lambda: srv.calls_of(app) == {}, 20, "the silent call ended")
        finally:
            await caller.close()
    assert [e["reason"] for e in call_ends(caplog)] == ["no_media"]


async def test_an_audio_call_is_not_ended_for_no_media(identity_model):
    async with running(make_config(identity_model, no_media_timeout_s=2.0)) as (app, client):
        caller = Caller(6.0)
        try:
            body = await caller.call(client)
            start = sum(map(len, caller.received))
            await wait_for(lambda: sum(map(len, caller.received)) > start + 3 * 48000, 30,
                           "3 s of audio after connecting")
            assert body["call_id"] in srv.calls_of(app)
        finally:
            await caller.close()


async def test_calls_per_client_address_are_capped(identity_model):
    async with running(make_config(identity_model, max_calls=4, max_calls_per_client=1,
                                   connect_timeout_s=60)) as (app, client):
        first, second = Caller(2.0), Caller(2.0)
        try:
            assert (await client.post("/offer", json=await first.offer())).status == 200  # never connects
            resp = await client.post("/offer", json=await second.offer())
            assert resp.status == 429 and resp.headers.get("Retry-After")
            assert (await resp.json())["error"] == "too_many_calls_from_client"
            assert len(srv.calls_of(app)) == 1
        finally:
            await first.close()
            await second.close()


async def test_ended_calls_release_native_threads_and_sockets_at_once(identity_model):
    """Nothing waits for Python's cycle collector: with it switched off, the native
    threads and the open files return to their baseline as each call ends."""
    import gc

    async def one_round(warm: bool = True) -> None:
        callers = [Caller(3.0), Caller(3.0)]
        try:
            bodies = [await c.call(client) for c in callers]
            await wait_for(lambda: all(sum(map(len, c.received)) > 10 * 960 for c in callers), 15, "audio on both calls")
            if warm:
                assert native_threads() > base_threads  # the calls' filters hold some
            for body in bodies:
                assert (await client.delete(f"/calls/{body['call_id']}")).status == 200
        finally:
            for c in callers:
                await c.close()

    gc.collect()
    gc.disable()
    try:
        async with running(make_config(identity_model)) as (app, client):
            await one_round(warm=False)  # warm-up: thread pools, the prewarmed filter, HTTP connections
            await wait_for(lambda: srv.calls_of(app) == {}, 10, "warm-up calls ended")
            base_threads, base_fds = native_threads(), open_fds()
            for _ in range(3):
                await one_round()
                await wait_for(lambda: native_threads() <= base_threads and open_fds() <= base_fds, 15,
                               f"threads {native_threads()}/{base_threads}, fds {open_fds()}/{base_fds}")
    finally:
        gc.enable()


# --------------------------------------------------------------------------- media


def _inactive_to_recvonly(sdp: str) -> str:
    """Make the caller ignore the server's 'inactive' and send on those sections anyway."""
    return sdp.replace("a=inactive", "a=recvonly")


async def test_extra_audio_and_video_are_not_decoded_and_memory_stays_flat(identity_model):
    """A caller that adds a second audio track and a 640x480 video track, and sends on
    them although the answer says 'inactive': nothing is decoded for them and memory
    stays flat (before: +1.2 MB/s for the audio, +13 MB/s for the video, i.e. +70 MB in
    these 5 s)."""
    from aiortc import RTCSessionDescription
    from aiortc.mediastreams import VideoStreamTrack
    from test_server import PacedAudio, speech_48k

    async with running(make_config(identity_model)) as (app, client):
        caller = Caller(12.0)
        caller.pc.addTrack(PacedAudio(speech_48k(12.0)))
        caller.pc.addTrack(VideoStreamTrack())
        try:
            resp = await client.post("/offer", json=await caller.offer())
            body = await resp.json()
            assert resp.status == 200, body
            sections = re.split(r"\r?\nm=", body["sdp"])[1:]
            assert [s.split()[0] for s in sections] == ["audio", "audio", "video", "application"]
            assert "a=sendrecv" in sections[0]
            assert "a=inactive" in sections[1] and "a=inactive" in sections[2]
            await caller.pc.setRemoteDescription(
                RTCSessionDescription(sdp=_inactive_to_recvonly(body["sdp"]), type="answer"))
            await wait_for(lambda: caller.pc.connectionState == "connected", 15, "connected")
            senders = [t.sender for t in caller.pc.getTransceivers()]
            await wait_for(lambda: len(caller.received) > 25, 15, "audio came back")
            before = rss_mb()
            sent0 = [s._RTCRtpSender__packet_count for s in senders]
            t0 = time.monotonic()
            await wait_for(lambda: time.monotonic() - t0 > 5.0, 10, "5 s of the call")
            grown = rss_mb() - before
            sent = [s._RTCRtpSender__packet_count - n for s, n in zip(senders, sent0)]
            assert sent[1] > 100 and sent[2] > 50, sent  # the caller really sent on both
            decoders = [t.name for t in threading.enumerate() if t.name.endswith("-decoder")]
            # one server audio decoder and the caller's own for the echo; no video decoder
            assert sorted(decoders) == ["audio-decoder", "audio-decoder"], decoders
            assert grown < 20.0, f"RSS grew {grown:.1f} MB in 5 s"
            call = srv.calls_of(app)[body["call_id"]]
            assert call.track.stats()["frames_in"] > 100  # the real call still flows
        finally:
            await caller.close()


# --------------------------------------------------------------------------- offers


def _offer_with_sections(base_sdp: str, n_extra: int) -> str:
    """``base_sdp`` with ``n_extra`` more sending audio sections (short ones: ~700 fit in
    the 64 KB body limit)."""
    extra = "".join(
        f"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:x{i}\r\na=sendrecv\r\na=rtpmap:111 opus/48000/2\r\n"
        for i in range(n_extra))
    return base_sdp + extra


async def test_offer_caps_say_what_was_exceeded_and_cost_less_than_a_call(identity_model):
    async with running(make_config(identity_model)) as (app, client):
        caller = Caller(2.0)
        try:
            normal = (await caller.offer())["sdp"]
            fifty = _offer_with_sections(normal, 48)
            assert fifty.count("\nm=") == 50 and len(fifty) < 16 * 1024
            t = time.process_time()
            resp = await client.post("/offer", json={"sdp": fifty, "type": "offer"})
            cpu_fifty = time.process_time() - t
            err = await resp.json()
            assert resp.status == 400 and err["error"] == "too_many_media_sections", err
            assert "more than 4 media sections" in err["message"]

            t = time.process_time()
            resp = await client.post("/offer", json={"sdp": normal, "type": "offer"})
            cpu_normal = time.process_time() - t
            assert resp.status == 200
            assert cpu_fifty <= cpu_normal, (cpu_fifty, cpu_normal)
            assert srv.calls_of(app) and len(srv.calls_of(app)) == 1  # only the normal one

            many = normal.replace("a=end-of-candidates", "") + "".join(
                f"a=candidate:{i} 1 udp 2122260223 192.0.2.{i % 250 + 1} {40000 + i} typ host\r\n" for i in range(40))
            resp = await client.post("/offer", json={"sdp": many, "type": "offer"})
            err = await resp.json()
            assert resp.status == 400 and err["error"] == "too_many_candidates", err
        finally:
            await caller.close()


def test_check_offer_limits_and_choice():
    sdp = "v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\n" \
          "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=sendrecv\r\n" \
          "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n"
    shape = check_offer(sdp)
    assert shape.audio.mid == "1"  # the first section the caller sends on
    assert [s.mid for s in shape.ignored] == ["0"]
    with pytest.raises(OfferRejected, match="over the server's limit of 100"):
        check_offer(sdp, OfferLimits(max_sdp_bytes=100))
    with pytest.raises(OfferRejected, match="more than one data channel"):
        check_offer(sdp + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n")
    with pytest.raises(OfferRejected, match="text sections"):
        check_offer(sdp.replace("m=application", "m=text"))
    with pytest.raises(OfferRejected, match="no audio"):
        check_offer(sdp.replace("a=sendrecv", "a=inactive"))


# --------------------------------------------------------------------------- who may call


async def test_host_origin_token_and_content_type(identity_model):
    async with running(make_config(identity_model, token="s3cret-token",
                                   allow_origins=["https://call.example.org"])) as (app, client):
        port = client.server.port
        r = await client.get("/health", headers={"Host": "evil.example:%d" % port})
        assert r.status == 403 and (await r.json())["error"] == "forbidden_host"  # DNS rebinding
        r = await client.get("/", headers={"Host": "evil.example"})
        assert r.status == 403
        r = await client.get("/health", headers={"Host": f"localhost:{port}"})
        assert r.status == 200  # the token is not needed for health checks ...
        assert (await client.get("/")).status == 200  # ... nor for the page itself

        auth = {"Authorization": "Bearer s3cret-token"}
        r = await client.post("/offer", json={}, headers={**auth, "Origin": "http://evil.example"})
        assert r.status == 403 and (await r.json())["error"] == "forbidden_origin"
        r = await client.post("/offer", json={}, headers={**auth, "Origin": "null"})
        assert r.status == 403
        for origin in (f"http://127.0.0.1:{port}", "https://call.example.org"):
            r = await client.get("/config", headers={**auth, "Origin": origin})
            assert r.status == 200, origin
        r = await client.get("/config", headers={"Host": "call.example.org", **auth})
        assert r.status == 200  # behind a proxy that keeps the public name

        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            r = await client.get("/config", headers=headers)
            assert r.status == 401 and r.headers.get("WWW-Authenticate") == "Bearer"
            assert "#token=" in (await r.json())["message"]
        r = await client.post("/calls/nope/control", data='{"enabled": false}',
                              headers={**auth, "Content-Type": "text/plain"})
        assert r.status == 415  # a simple cross-site form post cannot reach it
        r = await client.post("/calls/nope/control", json={"enabled": False}, headers=auth)
        assert r.status == 404


def test_a_token_is_required_off_loopback(identity_model):
    import argparse

    parser = argparse.ArgumentParser()
    serve.configure(parser)
    base = ["--model", str(identity_model), "--web-dir", str(WEB)]
    with pytest.raises(ConfigError, match="VOIPFILTER_TOKEN=SECRET"):
        serve.build_config(parser.parse_args(base + ["--host", "0.0.0.0"]))
    cfg = serve.build_config(parser.parse_args(base + ["--host", "0.0.0.0", "--token", "x" * 20,
                                                     "--connect-timeout-s", "3"]))
    assert cfg.token == "x" * 20 and cfg.connect_timeout_s == 3.0
    assert serve.build_config(parser.parse_args(base + ["--host", "localhost"])).token is None
    with pytest.raises(ConfigError, match="--allow-origin"):
        serve.build_config(parser.parse_args(base + ["--allow-origin", "call.example.org/path"]))
    import sys

    r = run_cli([sys.executable, "server.py", "--host", "0.0.0.0", "--model", str(identity_model)],
                env={"VOIPFILTER_TOKEN": ""})
    assert r.returncode == 2 and "--token" in r.stderr and "Traceback" not in r.stderr, r.stderr


async def test_half_sent_and_idle_connections_are_closed(identity_model):
    async with running(make_config(identity_model, http_timeout_s=0.5)) as (app, client):
        port = client.server.port
        loop = asyncio.get_running_loop()

        async def closed_by_server(payload: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(payload)
                await writer.drain()
                return await asyncio.wait_for(reader.read(), 15)  # b"" or a reply, then EOF
            finally:
                writer.close()

        assert await closed_by_server(b"") == b""  # connected, sent nothing
        assert await closed_by_server(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n") == b""  # half a head
        reply = await closed_by_server(
            b"POST /offer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5000\r\n\r\n{\"sdp\": ")  # half a body
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert loop.is_running()
