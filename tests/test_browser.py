"""The demo page in headless Chromium: a real call from a fake microphone to the server.

Debian's ``chromium`` driven by Playwright's Python package (never a browser download), a
wav written here as the microphone, ``server.py`` on loopback with the synthetic identity
model. The page starts a call, audio flows both ways, the latency panel shows the
filter's delay and a measured round trip, and a screenshot lands in test-artifacts/.

Skips (with the reason) where chromium or playwright is missing, except under CI=true.
CI needs: apt-get install chromium chromium-driver; pip install playwright.
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, _missing, require_module

sys.path.insert(0, str(REPO / "benchmarks"))

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def browser_ready() -> None:
    require_module("playwright", "dev")
    import latency_browser

    if not Path(latency_browser.CHROMIUM).exists():
        _missing(f"{latency_browser.CHROMIUM} not found; apt-get install chromium chromium-driver")


@pytest.fixture(scope="module")
def identity_model(tmp_path_factory) -> Path:
    require_module("onnx", "train")
    from modelfactory import make_identity_model

    return make_identity_model(tmp_path_factory.mktemp("models") / "identity.onnx")


def num(text: str) -> float:
    m = re.search(r"[-+]?\d+(\.\d+)?", text)
    assert m, f"no number in {text!r}"
    return float(m.group())


def test_page_calls_the_server_and_shows_where_the_latency_goes(browser_ready, identity_model, tmp_path):
    import latency_browser as lb

    fake = lb.write_voice_wav(tmp_path / "voice.wav", seconds=60.0)
    log = tmp_path / "server.log"
    with lb.server_process(str(identity_model), log) as url, lb.browser(fake) as ctx:
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        state = lb.start_call(page, url, "mic", settle_s=1.0)
        # audio both ways: the browser sent and received packets, the server filtered frames,
        # and what came back is loud enough to be the (identity-filtered) speech
        assert state["browser"]["packetsSent"] > 50 and state["browser"]["packetsReceived"] > 50
        assert state["serverStats"]["filter"]["frames_in"] > 50
        assert state["peaks"]["out"] > -40 and state["peaks"]["in"] > -40, state["peaks"]

        # The measurement is a real-time one. On an overloaded machine (a shared CI box) the
        # browser's adaptive jitter buffer grows (measured: 280-915 ms on 2 cores at a load
        # average of 13, against 35-50 ms on a quiet machine), a marker can come back too
        # late or too damaged to be found, and a pair's difference carries the buffer's
        # adaptation. So: measure up to 3 times until one measurement is clean; the page
        # must always time the marker with the filter out of the path and in it; its
        # accuracy is asserted when the call kept up (browser jitter buffer under 150 ms).
        attempts = []
        for _ in range(3):
            state = lb.measure(page, runs=3)
            rt = state["roundTrip"]
            attempts.append(rt)
            delay = state["latency"]["filterDelayMs"]
            added = rt["addedExclBrowserJitterMs"]
            if rt["failures"] == 0 and added is not None and delay - 25 < added < delay + 25:
                break
        assert 30 < delay < 40
        assert any(a["off"] for a in attempts) and any(a["on"] for a in attempts), attempts
        for a in attempts:
            for v in a["off"] + a["on"]:
                assert 20 < v < 2500, a
        jb = [p[k] for p in rt["pairs"] for k in ("jbOff", "jbOn") if p[k] is not None]
        if jb and max(jb) < 150:
            assert rt["failures"] == 0, rt
            assert len(rt["off"]) == 3 and len(rt["on"]) == 3, rt
            # the filter is in the path only for "on": its delay (34 ms at 48 kHz) shows up,
            # give or take the browser's adaptive jitter buffer
            assert rt["addedExclBrowserJitterMs"] is not None
            assert delay - 25 < rt["addedExclBrowserJitterMs"] < delay + 25, rt
        else:
            print(f"accuracy not asserted: browser jitter buffer up to {max(jb, default=None)} ms "
                  f"(an overloaded machine); measurements: {attempts}")

        # the latency panel, as a person reads it
        assert num(page.inner_text("#lat-filter-delay")) == pytest.approx(delay, abs=0.1)
        # the server forwards packets as they come (voipfilter's buffer, the default) ...
        assert 0 <= num(page.inner_text("#lat-server-jb")) < 20
        assert "low-latency buffer" in page.inner_text("#lat-server-jb-src")
        assert state["serverStats"]["server_receive_buffer"]["released"] > 100
        # ... and the page asked Chromium for its lowest playout delay
        assert state["browser"]["jitterBufferTargetAskedMs"] == 0
        assert "the page asked 0 ms" in page.inner_text("#lat-browser-jb-src")
        assert num(page.inner_text("#lat-browser-jb")) >= 0
        # which model the call runs, with its delay; 10 ms Opus packets both ways (the
        # server's a=ptime:10: Chromium sends ~100 packets a second, not 50)
        model = state["serverStats"]["model"]
        assert model and page.inner_text("#st-model").startswith(f"{model}, ")
        assert num(page.inner_text("#st-model").split(", ")[-1]) == pytest.approx(delay, abs=0.1)
        assert page.inner_text("#st-ptime") == "10 ms, both ways"
        t1, sent1 = time.monotonic(), lb.demo_state(page)["browser"]["packetsSent"]
        time.sleep(2.5)  # the page polls getStats once a second
        t2, sent2 = time.monotonic(), lb.demo_state(page)["browser"]["packetsSent"]
        assert 75 < (sent2 - sent1) / (t2 - t1) < 125, (sent1, sent2, t2 - t1)

        # the round-trip table shows the last measurement
        for cell, value in (("#rtt-off", rt["offMedian"]), ("#rtt-on", rt["onMedian"]), ("#rtt-added", rt["addedMs"])):
            text = page.inner_text(cell)
            if value is None:
                assert text == "–", (cell, text)
            else:
                assert num(text) == pytest.approx(value, abs=0.06), (cell, text, value)

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "browser-call.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000

        lb.hang_up(page)
        assert not errors, errors

    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    ends = [x for x in lines if x.get("event") == "call_end"]
    assert len(ends) == 1 and ends[0]["reason"] == "hangup", lines
    assert ends[0]["frames_in"] > 100 and ends[0]["errors"] == 0


def test_page_takes_the_token_from_its_url(browser_ready, identity_model, tmp_path):
    """With --token the page sends the token from its URL (#token=...) on every API request;
    without it the call does not start and the page says why."""
    import latency_browser as lb

    token = "browser-test-token-1234"
    log = tmp_path / "server.log"
    fake = lb.write_voice_wav(tmp_path / "voice.wav", seconds=20.0)
    with lb.server_process(str(identity_model), log, extra_args=("--token", token)) as url, lb.browser(fake) as ctx:
        bare = ctx.new_page()
        bare.goto(url + "/")
        bare.wait_for_function("() => window.voipfilterDemo && window.voipfilterDemo.ready")
        bare.click("#start-btn")
        state = lb.wait_state(bare, "s.callState === 'failed'", 20, "refused without the token")
        assert "token" in state["error"], state["error"]

        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/#token=" + token)
        page.wait_for_function("() => window.voipfilterDemo && window.voipfilterDemo.ready")
        page.select_option("#input-select", "sample")
        page.click("#start-btn")
        state = lb.wait_state(page, "s.callState === 'connected' || s.callState === 'failed'", 20, "connected")
        assert state["callState"] == "connected", state.get("error")
        lb.wait_state(page, "s.browser.packetsReceived > 20 && s.serverStats", 20, "audio and stats")
        lb.hang_up(page)
        assert not errors, errors
    ends = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{") and '"call_end"' in x]
    assert [e["reason"] for e in ends] == ["hangup"], ends
