#!/usr/bin/env python3
"""The first call's first frames: compute per frame on a fresh server, warmed at start-up
or not, side by side.

Each run is a fresh process (warm-up is once per process): the demo app on loopback with
the shipped model, one real aiortc call (tests/test_server.py's caller: paced speech,
loopback ICE), and the filter's processing time of each of the call's first 60 frames.
``no-warm`` runs replace the server's start-up warm-up (voipfilter.pool.prewarm) with
nothing: the track then warms the model in the background when the call is made, racing
the call's first frame.

    python benchmarks/first_frames.py --runs 3
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


async def one_call(warm: bool) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    import test_server as ts

    from voipfilter import pool
    from voipfilter import server as srv
    from voipfilter.server_config import ServerConfig

    if not warm:
        pool.prewarm = lambda model, rate=48000: None
    cfg = ServerConfig(web_dir=REPO / "web", model=None, loopback_only=True)
    async with ts.running(cfg) as (app, client):
        caller = ts.Caller(4.0)
        try:
            body = await caller.call(client)
            await ts.wait_for(lambda: len(caller.received) >= 60, 30, "60 frames back")
            proc = [1000 * x for x in list(srv.calls_of(app)[body["call_id"]].track._proc)[:60]]
            await client.delete(f"/calls/{body['call_id']}")
        finally:
            await caller.close()
    return {"warm": warm, "first_ms": proc[0], "max_ms": max(proc), "median_ms": statistics.median(proc)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="fresh processes per mode (alternating)")
    ap.add_argument("--child", choices=["warm", "no-warm"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(asyncio.run(one_call(args.child == "warm"))))
        return 0
    rows = []
    for i in range(2 * args.runs):
        mode = "warm" if i % 2 else "no-warm"
        out = subprocess.run([sys.executable, __file__, "--child", mode], capture_output=True, text=True,
                             timeout=300, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{mode:8s} first frame {r['first_ms']:6.1f} ms, max of 60 {r['max_ms']:6.1f} ms, "
              f"median {r['median_ms']:.1f} ms", flush=True)
    for warm in (False, True):
        firsts = [r["first_ms"] for r in rows if r["warm"] is warm]
        print(f"{'warm' if warm else 'no-warm'}: first frame ms {', '.join(f'{v:.1f}' for v in firsts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
