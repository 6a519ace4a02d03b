"""The filter's share of an aiortc echo server's CPU, N real calls over loopback.

Not a test: a measurement, recorded in docs/benchmarks-tracks.md.

A server process (this script with ``--serve``, pinned to one core) answers WebRTC offers
and echoes each call's audio back: Opus decoded, through ``NoiseSuppressionTrack`` (filter
on, the default batched engine) or straight back (off), Opus encoded. The parent process
(pinned to the other cores) opens N calls to it over 127.0.0.1, each sending 48 kHz audio
in real time (aiortc's own Opus encoder and RTP sender) and draining what comes back.
Signalling is one JSON line per offer/answer on the server's stdin/stdout. For each load
and mode, the server's CPU time (user + system, from /proc) is read over a window after
all calls are up; CPU per call is that over N, and the filter's share is
(on − off) / on per call, both from the same run, given only where both servers echoed
every call in real time (≥ 49 of 50 frames/s per call back: a saturated server's CPU is
capped, so its share says nothing).

    python benchmarks/echo_calls.py --calls 1 8 16 --seconds 10
"""
from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RATE = 48000
FRAME = 960
CLK_TCK = os.sysconf("SC_CLK_TCK")
KEEP_UP_FPS = 49.0  # of 50 frames/s per call: below, the echo falls behind and its CPU share means little


def proc_cpu_seconds(pid: int) -> float:
    """user + system CPU of process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --------------------------------------------------------------------------- server
async def serve(filter_on: bool, model: str | None) -> None:
    """Answer one offer per stdin line (JSON {"sdp", "type"}), one answer per stdout line;
    "close" closes every call; EOF ends the server."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from voipfilter.ice import LOOPBACK, restrict_host_candidates
    from voipfilter.track import NoiseSuppressionTrack

    restrict_host_candidates(LOOPBACK)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    pcs: list = []
    tracks: list = []
    while True:
        line = await reader.readline()
        if not line:
            break
        msg = json.loads(line)
        if msg == "close":
            for t in tracks:
                if hasattr(t, "release"):
                    t.release()
            await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)
            pcs.clear()
            tracks.clear()
            print(json.dumps("closed"), flush=True)
            continue
        pc = RTCPeerConnection(configuration=RTCConfiguration(iceServers=[]))
        pcs.append(pc)

        @pc.on("track")
        def on_track(track, pc=pc):
            out = NoiseSuppressionTrack(track, model=model) if filter_on else track
            tracks.append(out)
            pc.addTrack(out)

        await pc.setRemoteDescription(RTCSessionDescription(**msg))
        await pc.setLocalDescription(await pc.createAnswer())
        print(json.dumps({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}), flush=True)


# --------------------------------------------------------------------------- clients
def speechlike(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(RATE * seconds)).astype(np.float32)
    k = np.hanning(15).astype(np.float32)
    x = np.convolve(x, k / k.sum(), mode="same")
    return (0.1 * x / np.abs(x).max() * 32767).astype(np.int16)


def source_track(seed: int):
    """A live 48 kHz mono s16 source paced in real time (like a microphone)."""
    import av
    from aiortc.mediastreams import MediaStreamTrack

    audio = speechlike(2.0, seed)

    class Source(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.i = 0
            self.t0: float | None = None

        async def recv(self):
            loop = asyncio.get_running_loop()
            if self.t0 is None:
                self.t0 = loop.time()
            delay = self.t0 + self.i * FRAME / RATE - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            j = (self.i * FRAME) % (len(audio) - FRAME)
            f = av.AudioFrame.from_ndarray(audio[None, j : j + FRAME], format="s16", layout="mono")
            f.sample_rate, f.pts, f.time_base = RATE, self.i * FRAME, fractions.Fraction(1, RATE)
            self.i += 1
            return f

    return Source()


class Server:
    """The server subprocess and its signalling pipe."""

    def __init__(self, filter_on: bool, core: int | None, model: str | None):
        cmd = [sys.executable, __file__, "--serve", "on" if filter_on else "off"]
        if model:
            cmd += ["--model", model]
        pre = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     preexec_fn=pre, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    async def ask(self, msg) -> object:
        def go():
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("echo server ended")
            return json.loads(line)

        return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, go), 60)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def run_load(server: Server, n_calls: int, seconds: float, settle: float) -> dict:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    pcs, frames = [], [0] * n_calls
    drains = []

    async def drain(track, k: int) -> None:
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            frames[k] += 1

    try:
        for k in range(n_calls):
            pc = RTCPeerConnection(configuration=RTCConfiguration(iceServers=[]))
            pcs.append(pc)
            pc.addTrack(source_track(k))
            pc.on("track", lambda t, k=k: drains.append(asyncio.ensure_future(drain(t, k))))
            await pc.setLocalDescription(await pc.createOffer())
            answer = await server.ask({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})
            await pc.setRemoteDescription(RTCSessionDescription(**answer))
        t_end = time.monotonic() + 30
        while not all(pc.connectionState == "connected" for pc in pcs):
            if time.monotonic() > t_end or any(pc.connectionState == "failed" for pc in pcs):
                raise ConnectionError([pc.connectionState for pc in pcs])
            await asyncio.sleep(0.05)
        await asyncio.sleep(settle)  # calls up, jitter buffers filled, filters warm
        f0, c0, w0 = sum(frames), proc_cpu_seconds(server.proc.pid), time.monotonic()
        await asyncio.sleep(seconds)
        f1, c1, w1 = sum(frames), proc_cpu_seconds(server.proc.pid), time.monotonic()
    finally:
        for d in drains:
            d.cancel()
        await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)
        await server.ask("close")
    wall = w1 - w0
    return {
        "calls": n_calls,
        "server_cpu_percent": 100 * (c1 - c0) / wall,
        "server_cpu_percent_per_call": 100 * (c1 - c0) / wall / n_calls,
        "echoed_frames_per_call_s": (f1 - f0) / wall / n_calls,
        "keeps_up": (f1 - f0) / wall / n_calls >= KEEP_UP_FPS,
    }


async def measure(args) -> dict:
    from voipfilter.ice import LOOPBACK, restrict_host_candidates

    restrict_host_candidates(LOOPBACK)
    cores = sorted(os.sched_getaffinity(0))
    server_core = cores[-1] if len(cores) > 1 else None
    if server_core is not None:
        os.sched_setaffinity(0, set(cores[:-1]))  # the clients keep off the server's core
    results: dict = {"server_core": server_core, "loads": []}
    servers = {m: Server(m == "on", server_core, args.model) for m in ("off", "on")}
    try:
        for n in args.calls:
            row = {"calls": n}
            for mode, server in servers.items():  # off then on, each load, same run
                row[mode] = await run_load(server, n, args.seconds, args.settle)
            off, on = row["off"]["server_cpu_percent_per_call"], row["on"]["server_cpu_percent_per_call"]
            kept = row["off"]["keeps_up"] and row["on"]["keeps_up"]
            row["filter_share"] = (on - off) / on if on > 0 and kept else None
            results["loads"].append(row)
            share = "-" if row["filter_share"] is None else f"{100 * row['filter_share']:5.1f}"
            print(f"| {n:>3} | {off:6.2f} | {on:6.2f} | {share:>5} | "
                  f"{row['off']['echoed_frames_per_call_s']:5.1f} | {row['on']['echoed_frames_per_call_s']:5.1f} |",
                  flush=True)
    finally:
        for s in servers.values():
            s.close()
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", choices=["on", "off"], help=argparse.SUPPRESS)
    p.add_argument("--model", help="streaming ONNX model (default: the shipped model)")
    p.add_argument("--calls", type=int, nargs="+", default=[1, 8, 16], help="loads (default 1 8 16)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per load and mode (default 10)")
    p.add_argument("--settle", type=float, default=2.0, help="seconds after the calls connect, not measured")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.serve:
        asyncio.run(serve(args.serve == "on", args.model))
        return 0
    print("| calls | server CPU %/call, filter off | filter on | filter's share % | frames/s/call back, off | on |\n"
          "|---:|---:|---:|---:|---:|---:|", flush=True)
    res = asyncio.run(measure(args))
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv[1:], **res}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
