"""Lateness as the far end's NetEQ measures it, and send pacing that keeps it a bucket lower."""
from __future__ import annotations

import asyncio
import fractions
import random
import time

import numpy as np
import pytest

from voipfilter.lateness import LatenessMeter
from voipfilter.pacing import SendPacer


def test_even_events_are_on_time_and_a_late_one_is_measured():
    m = LatenessMeter()
    for k in range(300):
        assert m.add(5.0 + k * 0.01, k * 0.01) == pytest.approx(0.0, abs=1e-9)
    assert m.add(5.0 + 300 * 0.01 + 0.025, 300 * 0.01) == pytest.approx(0.025)
    s = m.stats()
    assert s["max_ms"] == pytest.approx(25.0) and s["p50_ms"] == pytest.approx(0.0, abs=1e-6)
    # an earlier-than-ever event becomes the new reference: those after it are late by the step
    assert m.add(5.0 + 301 * 0.01 - 0.005, 301 * 0.01) == pytest.approx(0.0)
    assert m.add(5.0 + 302 * 0.01, 302 * 0.01) == pytest.approx(0.005)


def test_reference_is_the_earliest_of_the_last_two_seconds():
    m = LatenessMeter(window_s=2.0)
    m.add(0.0, 0.0)  # 10 ms earlier than the stream that follows
    for k in range(1, 400):
        late = m.add(k * 0.01 + 0.010, k * 0.01)
    assert late == pytest.approx(0.0)  # the early event fell out of the window after 2 s


def test_neteq_target_from_half_second_maxima():
    m = LatenessMeter()
    for k in range(3000):  # 30 s of 10 ms packets, one 25 ms late in every half-second
        m.add(k * 0.01 + (0.025 if k % 50 == 7 else 0.0), k * 0.01)
    s = m.stats()
    assert s["p95_ms"] == pytest.approx(0.0, abs=1e-6)  # the per-packet view hides it
    assert s["interval_max_p95_ms"] == pytest.approx(25.0)
    assert s["neteq_target_ms"] == 40.0
    quiet = LatenessMeter()
    for k in range(3000):
        quiet.add(k * 0.01 + 0.003 * (k % 3), k * 0.01)
    assert quiet.stats()["neteq_target_ms"] == 20.0


def _paced(ready_late_s, pacer: SendPacer) -> LatenessMeter:
    sent = LatenessMeter(keep_intervals=20)
    for k, late in enumerate(ready_late_s):
        ready = 10.0 + k * 0.01 + late
        sent.add(ready + pacer.hold(ready, k * 0.01), k * 0.01)
    return sent


def test_pacing_lands_the_tail_below_a_bucket_edge():
    rng = random.Random(3)
    # 40 s: uniform jitter up to 5 ms, and in 10 % of half-seconds one frame 25 ms late
    late = [rng.random() * 0.005 for _ in range(4000)]
    for i in range(0, 4000, 50):
        if rng.random() < 0.10:
            late[i + 20] = 0.025
    unpaced = LatenessMeter(keep_intervals=20)
    for k, x in enumerate(late):
        unpaced.add(10.0 + k * 0.01 + x, k * 0.01)
    assert unpaced.stats()["neteq_target_ms"] == 40.0
    pacer = SendPacer(margin_ms=4.0)
    sent = _paced(late, pacer)
    q = pacer.ready.stats()["interval_max_p95_ms"]
    assert pacer.hold_ms == pytest.approx((q + 4.0) % 20.0, abs=0.05)  # stats round to 0.01 ms
    s = sent.stats()  # the last 10 s, the hold settled
    assert s["interval_max_p95_ms"] <= 20.0 - 4.0 + 1e-6
    assert s["neteq_target_ms"] == 20.0
    assert pacer.stats()["held_ms_mean"] < pacer.hold_ms  # most frames are held less than D


def test_nothing_is_held_when_nothing_is_gained():
    pacer = SendPacer(margin_ms=4.0)
    _paced([0.002 * (k % 5) for k in range(2000)], pacer)  # q = 8 ms: already bucket 0
    assert pacer.hold_ms == 0.0 and pacer.stats()["held_ms_mean"] == 0.0


def test_hold_grows_slowly_and_shrinks_at_once():
    pacer = SendPacer(margin_ms=4.0, ramp_ms=2.0)
    holds = []
    late = [0.032 if k % 50 == 10 else 0.0 for k in range(1500)]  # q = 32: D = 16
    for k, x in enumerate(late):
        ready = k * 0.01 + x
        pacer.hold(ready, k * 0.01)
        holds.append(pacer.hold_ms)
    steps = np.diff(holds)
    assert steps.max() <= 2.0 + 1e-9
    assert holds[-1] == pytest.approx(16.0)
    for k in range(1500, 1500 + 6000):  # the late frames stop; after 30 s q is 0 again
        pacer.hold(k * 0.01, k * 0.01)
    assert pacer.hold_ms == 0.0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        SendPacer(margin_ms=25.0)
    with pytest.raises(ValueError):
        LatenessMeter(window_s=0)


async def test_paced_echo_track_keeps_every_frame_in_order():
    """The demo's EchoTrack with a pacer: frames computed ahead while one is held, none
    lost or reordered, a hold derived from the late frames, producer gone at stop."""
    import av
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    from voipfilter.call import EchoTrack

    class Source(MediaStreamTrack):  # a real track: 10 ms frames, every 5th one 30 ms late
        kind = "audio"

        def __init__(self, frames: int):
            super().__init__()
            self.k, self.frames, self.t0 = 0, frames, time.monotonic()

        async def recv(self):
            if self.k >= self.frames:
                raise MediaStreamError
            due = self.t0 + self.k * 0.01 + (0.03 if self.k % 5 == 4 else 0.0)
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            frame = av.AudioFrame.from_ndarray(np.full((1, 480), self.k, np.int16), format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 48000, self.k * 480, fractions.Fraction(1, 48000)
            self.k += 1
            return frame

    n = 150
    echo = EchoTrack(Source(n), Source(n), SendPacer())
    got = []
    with pytest.raises(MediaStreamError):
        while True:
            frame = await echo.recv()
            got.append((int(frame.to_ndarray()[0, 0]), frame.pts))
    assert got == [(k, k * 480) for k in range(n)]
    assert echo.pacer.hold_ms > 0  # 30 ms late frames: q + margin = 34, D = 14
    assert echo.lateness.stats()["n"] == n
    echo.stop()
    await asyncio.sleep(0)
    assert echo._producer.done()


def test_send_pacing_is_opt_in_on_the_demo_server(monkeypatch):
    import argparse

    from voipfilter import serve

    parser = argparse.ArgumentParser()
    serve.configure(parser)
    assert serve.build_config(parser.parse_args([])).send_pacing is False
    assert serve.build_config(parser.parse_args(["--send-pacing"])).send_pacing is True
    monkeypatch.setenv("VOIPFILTER_SEND_PACING", "1")
    parser = argparse.ArgumentParser()
    serve.configure(parser)
    assert serve.build_config(parser.parse_args([])).send_pacing is True
