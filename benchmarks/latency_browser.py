#!/usr/bin/env python3
"""Measure the demo call's round trip in headless Chromium, filter out of the path vs in it.

Starts ``server.py`` on loopback (host candidates limited to 127.0.0.1, no STUN), opens the
page in Debian's headless Chromium (driven by Playwright's Python package, never a browser
download), starts a call from a fake microphone (a wav written here) or the page's built-in
sample, waits for the call to settle, presses "Measure round trip" and reads the page's
numbers (``window.voipfilterDemo``). Several calls, each with several paired marker runs.

Server setups are compared in the same run (``--setups``): one server per setup, side by
side, and each call on one is followed by a call on the next (the order alternates), so
they are measured in pairs under the same load. By default the demo's defaults against
``--aiortc-jitter-buffer``; ``ptime20`` runs aiortc's 20 ms Opus packets.

    python benchmarks/latency_browser.py --calls 3 --runs 5 --json runs/latency_browser.json

Needs: apt-get install chromium chromium-driver; pip install playwright (dev extra).
The test tests/test_browser.py uses the helpers below with one short call.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def chromium_flags(fake_wav: Path) -> list[str]:
    """The flags from the project's WebRTC facts (headless, fake devices, loopback ICE)."""
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
        "--allow-loopback-in-peer-connection",
    ]


def write_voice_wav(path: Path, seconds: float = 60.0) -> Path:
    """A fake microphone: the page's noisy speech sample, 48 kHz mono 16-bit, repeated."""
    import soundfile as sf

    x, sr = sf.read(REPO / "web" / "sample.wav", dtype="float32")
    up = np.interp(np.arange(len(x) * 3) / 3.0, np.arange(len(x)), x).astype(np.float32)
    n = int(seconds * 48000)
    sf.write(path, np.tile(up, n // len(up) + 1)[:n], 48000, subtype="PCM_16")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(model: str | None, log_path: Path, port: int | None = None,
                   extra_args: tuple[str, ...] = (), on_start=None) -> Iterator[str]:
    """``python server.py --loopback-ice [extra_args]`` on a free port; yields its base URL
    (``on_start(proc)`` is called with the process once it answers)."""
    port = port or free_port()
    cmd = [sys.executable, str(REPO / "server.py"), "--port", str(port), "--loopback-ice"]
    if model:
        cmd += ["--model", str(model)]
    cmd += extra_args  # after --model: a setup's own --model wins
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(url + "/health", timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("server did not start in 30 s")
                    time.sleep(0.2)
            if on_start is not None:
                on_start(proc)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def browser(fake_wav: Path) -> Iterator[object]:
    """A fresh headless Chromium (Playwright persistent context, own user-data-dir)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="voipfilter-chromium-") as profile:
        ctx = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=chromium_flags(fake_wav),
            ignore_default_args=["--mute-audio"],
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield ctx
        finally:
            ctx.close()


def demo_state(page) -> dict:
    return page.evaluate("() => JSON.parse(JSON.stringify(window.voipfilterDemo))")


def wait_state(page, predicate: str, timeout_s: float, what: str) -> dict:
    """Wait until the JS expression ``predicate`` (over ``s`` = window.voipfilterDemo) holds."""
    try:
        page.wait_for_function(f"() => {{ const s = window.voipfilterDemo; return !!(s && ({predicate})); }}",
                               timeout=timeout_s * 1000, polling=200)
    except Exception as exc:
        raise AssertionError(f"{what}: not within {timeout_s} s; page state: "
                             f"{json.dumps(demo_state(page))[:1500]}") from exc
    return demo_state(page)


def start_call(page, base_url: str, source: str = "mic", settle_s: float = 3.0, query: str = "") -> dict:
    """Open the page (``query``: e.g. ``?jitterBufferTarget=default``), start a call from
    ``source`` ('mic' = the fake device, or 'sample'), wait until audio flows both ways and
    server stats arrive."""
    page.goto(base_url + "/" + query)
    page.wait_for_function("() => window.voipfilterDemo && window.voipfilterDemo.ready")
    page.select_option("#input-select", source)
    page.click("#start-btn")
    wait_state(page, "s.callState === 'connected' || s.callState === 'failed'", 20, "call connected")
    state = wait_state(
        page,
        "s.browser.packetsReceived > 50 && s.browser.packetsSent > 50 && s.serverStats "
        "&& s.serverStats.filter && s.serverStats.filter.frames_out > 50",
        20, "audio both ways",
    )
    if state["callState"] != "connected":
        raise AssertionError(f"call failed: {state.get('error')}")
    time.sleep(settle_s)
    return demo_state(page)


def measure(page, runs: int) -> dict:
    page.evaluate(
        "(n) => { const sel = document.getElementById('measure-runs');"
        " if (![...sel.options].some(o => o.value === String(n))) sel.add(new Option(String(n), String(n)));"
        " sel.value = String(n); }",
        runs,
    )
    page.click("#measure-btn")
    wait_state(page, "s.roundTrip.running", 5, "measurement started")
    return wait_state(page, "!s.roundTrip.running", 15 + 6 * runs, "measurement finished")


def hang_up(page) -> None:
    page.click("#stop-btn")
    wait_state(page, "s.callState === 'idle'", 10, "hung up")


def _fmt(values: list[float | None]) -> str:
    return ", ".join("–" if v is None else f"{v:.1f}" for v in values)


# server setups a run compares in pairs: the demo's defaults (voipfilter's receive buffer, 10 ms
# Opus packets), aiortc's receive buffer, aiortc's 20 ms packets
SETUPS = {
    "voipfilter": (),
    "aiortc": ("--aiortc-jitter-buffer",),
    "ptime20": ("--ptime-ms", "20"),
    "paced": ("--send-pacing",),
    "aiortc-ptime20": ("--aiortc-jitter-buffer", "--ptime-ms", "20"),
    # the library's default model where the demo runs the low-delay one (without --model)
    "gtcrn-voipfilter": ("--model", "gtcrn-voipfilter"),
}


def run_call(url: str, fake: Path, args: argparse.Namespace, query: str, screenshot: Path | None) -> dict:
    """One call in a fresh browser: start, measure the paired marker runs, hang up."""
    with browser(fake) as ctx:
        page = ctx.new_page()
        start_call(page, url, args.input, query=query)
        state = measure(page, args.runs)
        if screenshot:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        hang_up(page)
    rt, lat, srv = state["roundTrip"], state["latency"], state["serverStats"] or {}
    return {"roundTrip": rt, "latency": lat, "browser": state["browser"],
            "server": {k: v for k, v in srv.items() if k != "filter"}, "filter": srv.get("filter")}


def summarise(results: list[dict]) -> dict:
    """Round trips off/on, the filter's paired added latency, and the stages (median over calls)."""
    off = [v for r in results for v in r["roundTrip"]["off"]]
    on = [v for r in results for v in r["roundTrip"]["on"]]
    pairs = [p for r in results for p in r["roundTrip"]["pairs"] if p["off"] is not None and p["on"] is not None]
    diffs = [p["on"] - p["off"] for p in pairs]
    diffs_jb = [(p["on"] - p["jbOn"]) - (p["off"] - p["jbOff"]) for p in pairs
                if p["jbOn"] is not None and p["jbOff"] is not None]

    # each run minus the browser's jitter buffer during it: what the rest of the path costs,
    # without the browser's adaptation (which a loaded machine drives up to seconds)
    runs = [p for r in results for p in r["roundTrip"]["pairs"]]
    off_nojb = [p["off"] - p["jbOff"] for p in runs if p["off"] is not None and p["jbOff"] is not None]
    on_nojb = [p["on"] - p["jbOn"] for p in runs if p["on"] is not None and p["jbOn"] is not None]

    def stat(key: str) -> float | None:
        vals = [r["latency"][key] for r in results if r["latency"].get(key) is not None]
        return statistics.median(vals) if vals else None

    def spread(values: list[float]) -> dict | None:
        return {"median": statistics.median(values), "min": min(values), "max": max(values),
                "n": len(values)} if values else None

    return {
        "round_trip_off_ms": spread(off),
        "round_trip_on_ms": spread(on),
        "round_trip_off_minus_browser_jitter_buffer_ms": spread(off_nojb),
        "round_trip_on_minus_browser_jitter_buffer_ms": spread(on_nojb),
        "added_ms_paired_median": statistics.median(diffs) if diffs else None,
        "added_ms_without_browser_jitter_drift_median": statistics.median(diffs_jb) if diffs_jb else None,
        "filter_delay_ms": results[-1]["latency"].get("filterDelayMs"),
        "stages_median_over_calls_ms": {
            k: stat(k) for k in ("networkMs", "serverJitterBufferMs", "filterDelayMs", "filterComputeP50Ms",
                                 "filterComputeP95Ms", "sendPacingMs", "sendNetEqTargetMs", "browserJitterBufferMs",
                                 "browserJitterBufferTargetMs", "playoutMs")
        },
        "failures": sum(r["roundTrip"]["failures"] for r in results),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="streaming ONNX model (default: the shipped model)")
    ap.add_argument("--calls", type=int, default=3, help="calls per server setup, each a fresh page (default 3)")
    ap.add_argument("--runs", type=int, default=5, help="marker pairs per call (default 5)")
    ap.add_argument("--input", choices=["mic", "sample"], default="mic",
                    help="fake microphone (a wav of the sample) or the page's built-in sample")
    ap.add_argument("--setups", nargs="+", choices=list(SETUPS), default=["voipfilter", "aiortc"],
                    help="server setups, one server each, their calls alternating (default: voipfilter "
                         "aiortc): voipfilter = the demo's defaults, aiortc = aiortc's receive buffer, "
                         "ptime20 = 20 ms Opus packets, aiortc-ptime20 = both of aiortc's, gtcrn-voipfilter = "
                         "the library's default model (the demo's is gtcrn-voipfilter-ll), paced = the server's send pacing "
                         "(--send-pacing)")
    ap.add_argument("--browser-jitter-target", default="0", metavar="MS|default",
                    help="what the page asks of RTCRtpReceiver.jitterBufferTarget (default 0; "
                         "'default' leaves Chromium's choice)")
    ap.add_argument("--json", type=Path, help="write every number here")
    ap.add_argument("--screenshot", type=Path, help="save a screenshot of the last call's page")
    args = ap.parse_args(argv)

    names = list(dict.fromkeys(args.setups))
    query = "" if args.browser_jitter_target == "0" else f"?jitterBufferTarget={args.browser_jitter_target}"
    results: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="voipfilter-latency-") as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        fake = write_voice_wav(tmp / "voice.wav", seconds=30.0 + 12.0 * args.runs)
        urls = {n: stack.enter_context(server_process(args.model, tmp / f"server-{n}.log", extra_args=SETUPS[n]))
                for n in names}
        for call in range(args.calls):
            order = names if call % 2 == 0 else names[::-1]  # alternate who goes first
            for i, name in enumerate(order):
                last = call == args.calls - 1 and i == len(order) - 1
                r = run_call(urls[name], fake, args, query, args.screenshot if last else None)
                r["call"] = call
                results[name].append(r)
                rt = r["roundTrip"]
                lat = r["latency"]
                print(f"call {call + 1} [{name}]: off {_fmt(rt['off'])} | on {_fmt(rt['on'])} | "
                      f"added (paired median) {_fmt([rt['addedMs']])} ms; server buffer "
                      f"{_fmt([lat.get('serverJitterBufferMs')])} ms, browser jitter buffer "
                      f"{_fmt([lat.get('browserJitterBufferMs')])} ms; markers not found {rt['failures']}", flush=True)
        server_logs = {n: (tmp / f"server-{n}.log").read_text().splitlines() for n in names}

    summary: dict = {"setups": {n: summarise(results[n]) for n in names},
                     "server_args": {n: list(SETUPS[n]) for n in names},
                     "browser_jitter_target": args.browser_jitter_target}

    # paired by call: every other setup minus the first, each call's median against its partner's
    def med(r: dict, key: str) -> float | None:
        return statistics.median(r["roundTrip"][key]) if r["roundTrip"][key] else None

    for other in names[1:]:
        for key in ("off", "on"):
            d = [med(a, key) - med(v, key) for v, a in zip(results[names[0]], results[other])
                 if med(a, key) is not None and med(v, key) is not None]
            summary[f"{other}_minus_{names[0]}_{key}_ms"] = {"per_call": d, "median": statistics.median(d) if d else None}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"summary": summary, "calls": results, "server_logs": server_logs,
                                         "command": sys.argv}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
