#!/usr/bin/env python3
"""Soak the demo server: N real aiortc callers on loopback for T minutes.

Starts ``server.py --loopback-ice`` as its own process, then N callers (aiortc, no STUN,
host candidates limited to 127.0.0.1) each send the page's noisy speech sample in a loop,
in real time, with a marker (``web/marker.wav``) mixed in every few seconds, and record
what comes back. Every 10 s it prints the server's RSS, threads and open files, its CPU per
call, and per call the frames sent and received, the pts gaps in what came back and the
marker round trip (the lag between the marker leaving and coming back, frame-level, i.e.
within ±20 ms). At the end it reads each call's own counters from the server (frames in,
out, dropped, gaps), hangs up, and prints a summary with the RSS growth per minute after
the warm-up::

    python benchmarks/soak.py --calls 3 --minutes 10
    python benchmarks/soak.py --calls 2 --minutes 1 --model /path/to/model.onnx --json soak.json

The numbers recorded for this machine are in docs/benchmarks.md ("Server soak").
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import fractions
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RATE = 48000
FRAME = 960  # 20 ms
ENV_STEP = 12  # envelope at 4 kHz


def load_48k(name: str) -> np.ndarray:
    """A 16 kHz wav from web/ as 48 kHz float32 mono (linear interpolation is enough here)."""
    import soundfile as sf

    x, sr = sf.read(REPO / "web" / name, dtype="float32")
    if x.ndim > 1:
        x = x.mean(axis=1)
    ratio = RATE // sr
    return np.interp(np.arange(len(x) * ratio) / ratio, np.arange(len(x)), x).astype(np.float32)


def envelope(x: np.ndarray) -> np.ndarray:
    """Moving RMS, one value per ENV_STEP samples (phase changes of the filter do not move it)."""
    n = len(x) // ENV_STEP
    blocks = x[: n * ENV_STEP].astype(np.float64).reshape(n, ENV_STEP)
    e = np.sqrt((blocks**2).mean(axis=1))
    return np.convolve(e, np.ones(4) / 4, mode="same")


def best_lag(ref: np.ndarray, hay: np.ndarray) -> tuple[int, float]:
    """Offset (samples) of ``ref`` inside ``hay`` and the normalised envelope correlation."""
    er, eh = envelope(ref), envelope(hay)
    if len(eh) < len(er) or len(er) < 8:
        return 0, 0.0
    er = er - er.mean()
    nr = np.sqrt((er**2).sum())
    win = len(er)
    c1 = np.concatenate([[0.0], np.cumsum(eh)])
    c2 = np.concatenate([[0.0], np.cumsum(eh**2)])
    lags = len(eh) - win + 1
    acc = np.correlate(eh, er, mode="valid")[:lags]
    s1 = c1[win : win + lags] - c1[:lags]
    s2 = c2[win : win + lags] - c2[:lags]
    ni = np.sqrt(np.maximum(s2 - s1**2 / win, 1e-12))
    corr = acc / (nr * ni + 1e-12)
    k = int(np.argmax(corr))
    return k * ENV_STEP, float(corr[k])


class Caller:
    """One aiortc caller: paced looped speech with markers out, what comes back recorded."""

    def __init__(self, index: int, speech: np.ndarray, marker: np.ndarray, marker_every_s: float):
        import av
        from aiortc import RTCConfiguration, RTCPeerConnection
        from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

        self.index = index
        self.call_id: str | None = None
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.createDataChannel("control")
        self.sent_frames = 0
        self.recv_frames = 0
        self.recv_gaps = 0
        self.round_trips: list[tuple[float, float]] = []  # (elapsed s, ms)
        self.missed_markers = 0
        self.sent_wall: collections.deque = collections.deque(maxlen=1000)  # (pos, wall)
        self.sent_audio: collections.deque = collections.deque(maxlen=1000)  # (pos, samples)
        self.recv: collections.deque = collections.deque(maxlen=1000)  # (pos, wall, samples)
        self.markers: list[int] = []  # sent positions of markers not measured yet
        self._recv_pos = 0
        self._prev_pts: int | None = None
        self._t0 = time.monotonic()
        caller = self
        every = int(marker_every_s * RATE)
        # the marker at 0 dBFS peak over speech lowered 12 dB: found in any filter's output
        marker = (marker / (np.abs(marker).max() + 1e-9) * 0.7).astype(np.float32)

        class Source(MediaStreamTrack):
            kind = "audio"

            def __init__(self) -> None:
                super().__init__()
                self.pos = 0
                self.start: float | None = None

            async def recv(self):
                if self.readyState != "live":
                    raise MediaStreamError
                if self.start is None:
                    self.start = time.monotonic()
                wait = self.start + self.pos / RATE - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                i = self.pos % len(speech)
                x = np.take(speech, np.arange(i, i + FRAME), mode="wrap")
                phase = self.pos % every
                if self.pos >= every and phase < len(marker):  # no marker in the first interval
                    if phase == 0:
                        caller.markers.append(self.pos)
                    m = marker[phase : phase + FRAME]
                    x = 0.25 * x
                    x[: len(m)] += m
                pcm = np.clip(x * 32767, -32768, 32767).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
                frame.sample_rate = RATE
                frame.pts = self.pos
                frame.time_base = fractions.Fraction(1, RATE)
                caller.sent_wall.append((self.pos, time.monotonic()))
                caller.sent_audio.append((self.pos, pcm))
                caller.sent_frames += 1
                self.pos += FRAME
                return frame

        self.pc.addTrack(Source())

        @self.pc.on("track")
        def _on_track(track) -> None:
            asyncio.ensure_future(self._record(track))

    async def _record(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            while True:
                frame = await track.recv()
                x = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0].astype(np.int16)
                if self._prev_pts is not None and frame.pts != self._prev_pts:
                    self.recv_gaps += 1
                self._prev_pts = frame.pts + frame.samples
                self.recv.append((self._recv_pos, time.monotonic(), x))
                self._recv_pos += len(x)
                self.recv_frames += 1
        except (MediaStreamError, asyncio.CancelledError):
            pass

    def measure_markers(self, window_s: float = 1.5) -> None:
        """Time every marker whose return window has passed."""
        now = time.monotonic()
        for pos in list(self.markers):
            sent_at = next((w for p, w in self.sent_wall if p == pos), None)
            if sent_at is None:
                self.markers.remove(pos)
                continue
            if now < sent_at + window_s + 0.2:
                continue
            self.markers.remove(pos)
            ref = [a for p, a in self.sent_audio if pos - 2 * FRAME <= p < pos + int(0.45 * RATE)]
            hay = [(p, w, a) for p, w, a in self.recv if sent_at - 0.1 <= w <= sent_at + window_s]
            if not ref or len(hay) < 5:
                self.missed_markers += 1
                continue
            lag, conf = best_lag(np.concatenate(ref).astype(np.float32),
                                 np.concatenate([a for _, _, a in hay]).astype(np.float32))
            if conf < 0.5:
                self.missed_markers += 1
                continue
            # the received frame that holds the marker's start, and when it arrived
            target = hay[0][0] + lag + 2 * FRAME
            arrived = next((w for p, w, a in hay if p <= target < p + len(a)), None)
            if arrived is None:
                self.missed_markers += 1
                continue
            self.round_trips.append((sent_at - self._t0, 1000.0 * (arrived - sent_at)))


def proc_sample(pid: int) -> dict:
    """RSS (MB), threads, open files and CPU seconds of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "cpu_s": (int(stat[11]) + int(stat[12])) / ticks,
    }


def http_json(url: str, method: str = "GET", body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def server(args, log_path: Path):
    """The server process (benchmarks/latency_browser.py starts it), with room for every call."""
    from latency_browser import server_process

    started = []
    extra = ("--max-calls", str(args.calls), "--max-calls-per-client", str(args.calls))
    with server_process(args.model, log_path, extra_args=extra, on_start=started.append) as url:
        yield started[0], url


async def soak(args, proc, url: str) -> dict:
    from aiortc import RTCSessionDescription

    from voipfilter.ice import LOOPBACK, restrict_host_candidates

    loop = asyncio.get_running_loop()
    restriction = restrict_host_candidates(LOOPBACK)
    speech, marker = load_48k("sample.wav"), load_48k("marker.wav")
    idle = proc_sample(proc.pid)
    callers = [Caller(i, speech, marker, args.marker_every_s) for i in range(args.calls)]
    try:
        for c in callers:
            await c.pc.setLocalDescription(await c.pc.createOffer())
            d = c.pc.localDescription
            answer = await loop.run_in_executor(None, http_json, url + "/offer", "POST", {"sdp": d.sdp, "type": d.type})
            c.call_id = answer["call_id"]
            await c.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        deadline = time.monotonic() + 30
        while not all(c.pc.connectionState == "connected" for c in callers):
            if time.monotonic() > deadline:
                raise SystemExit(f"calls did not connect: {[c.pc.connectionState for c in callers]}")
            await asyncio.sleep(0.1)
        print(f"{args.calls} calls connected; server idle: {idle}", flush=True)

        t0 = time.monotonic()
        end = t0 + 60 * args.minutes
        samples = []
        last = proc_sample(proc.pid)
        last_t = t0
        next_report = t0 + 10
        while time.monotonic() < end:
            await asyncio.sleep(0.5)
            for c in callers:
                c.measure_markers()
            if time.monotonic() >= next_report:
                now = time.monotonic()
                s = proc_sample(proc.pid)
                cpu_pct_per_call = 100 * (s["cpu_s"] - last["cpu_s"]) / (now - last_t) / args.calls
                last, last_t = s, now
                next_report += 10
                rec = dict(s, t=round(now - t0, 1), cpu_pct_per_call=round(cpu_pct_per_call, 1))
                dropped = []
                for c in callers:
                    st = await loop.run_in_executor(None, http_json, f"{url}/calls/{c.call_id}")
                    dropped.append((st.get("filter") or {}).get("frames_dropped"))
                rec["server_dropped"] = dropped
                rec["load1"] = os.getloadavg()[0]
                samples.append(rec)
                per_call = "  ".join(
                    f"#{c.index}: sent {c.sent_frames} recv {c.recv_frames} gaps {c.recv_gaps} "
                    f"dropped {d} rt {f'{c.round_trips[-1][1]:.0f} ms' if c.round_trips else '-'}"
                    for c, d in zip(callers, dropped))
                print(f"[{rec['t']:6.0f} s] server RSS {s['rss_mb']:.1f} MB, threads {s['threads']}, "
                      f"fds {s['fds']}, CPU {cpu_pct_per_call:.1f} % of a core per call, load "
                      f"{rec['load1']:.1f} | {per_call}", flush=True)
        total = proc_sample(proc.pid)
        server_stats = [await loop.run_in_executor(None, http_json, f"{url}/calls/{c.call_id}") for c in callers]
        for c in callers:
            await loop.run_in_executor(None, http_json, f"{url}/calls/{c.call_id}", "DELETE")
        for c in callers:
            await c.pc.close()
        health = await loop.run_in_executor(None, http_json, url + "/health")
        wall = time.monotonic() - t0
    finally:
        for c in callers:
            await c.pc.close()
        restriction.undo()
    await asyncio.sleep(1.0)
    after = proc_sample(proc.pid)

    warm = [s for s in samples if s["t"] >= args.warmup_s]
    slope = None
    if len(warm) >= 3:
        t = np.array([s["t"] for s in warm]) / 60.0
        r = np.array([s["rss_mb"] for s in warm])
        slope = float(np.polyfit(t, r, 1)[0])
    calls = []
    for c, st in zip(callers, server_stats):
        f = st.get("filter") or {}
        rts = [ms for _, ms in c.round_trips]
        first = [ms for t, ms in c.round_trips if t < 60]
        lastm = [ms for t, ms in c.round_trips if t >= wall - 60]
        calls.append({
            "sent": c.sent_frames, "received": c.recv_frames, "received_pts_gaps": c.recv_gaps,
            "server_frames_in": f.get("frames_in"), "server_frames_out": f.get("frames_out"),
            "server_dropped": f.get("frames_dropped"), "server_gaps": f.get("gaps"), "server_errors": f.get("errors"),
            "markers": len(rts), "markers_missed": c.missed_markers,
            "rt_ms_median": round(statistics.median(rts), 1) if rts else None,
            "rt_ms_max": round(max(rts), 1) if rts else None,
            "rt_ms_first_min": round(statistics.median(first), 1) if first else None,
            "rt_ms_last_min": round(statistics.median(lastm), 1) if lastm else None,
        })
    return {
        "calls": args.calls, "minutes": args.minutes, "wall_s": round(wall, 1),
        "server_idle": idle, "server_after_hangup": after, "health_after": health,
        "rss_growth_mb_per_min_after_warmup": round(slope, 3) if slope is not None else None,
        "rss_mb_first": samples[0]["rss_mb"] if samples else None,
        "rss_mb_last": samples[-1]["rss_mb"] if samples else None,
        "cpu_pct_of_a_core_per_call": round(100 * (total["cpu_s"] - idle["cpu_s"]) / wall / args.calls, 1),
        "per_call": calls, "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3, help="concurrent callers (default 3)")
    ap.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    ap.add_argument("--model", help="streaming ONNX model for the server (default: the shipped one)")
    ap.add_argument("--marker-every-s", type=float, default=5.0, help="a marker this often (default 5 s)")
    ap.add_argument("--warmup-s", type=float, default=60.0, help="left out of the RSS slope (default 60 s)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="voipfilter-soak-") as tmp:
        log_path = Path(tmp) / "server.log"
        with server(args, log_path) as (proc, url):
            result = asyncio.run(soak(args, proc, url))
        ends = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{") and '"call_end"' in x]
        result["end_reasons"] = [e.get("reason") for e in ends]
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
