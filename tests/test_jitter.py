"""The low-latency receive buffer (voipfilter/jitter.py) and its aiortc install hook.

Trace tests replay RTP packet arrivals (20 ms Opus packets, a deterministic clock) through
:class:`LowLatencyJitterBuffer`, calling ``poll()`` at its deadlines as the aiortc adapter's
timer does, and check which frames come out, when, and with which timestamps. The PLC test
decodes concealment frames with aiortc's own Opus decoder. The call tests connect two real
aiortc peers over loopback through a UDP relay that drops packets (tests/rtcloop.py).
"""
from __future__ import annotations

import asyncio
import fractions
import queue
import random
import time

import numpy as np
import pytest

from voipfilter.jitter import (
    RECEIVER_ATTRIBUTES,
    LowLatencyJitterBuffer,
    ReceiverJitterBuffer,
    low_latency_audio,
    opus_packet_samples,
)

TOC = 0xDC  # Opus CELT fullband 20 ms, one frame (what aiortc's encoder sends)
STEP = 960
DT = 0.02


def payload(k: int) -> bytes:
    """A packet's payload: the Opus TOC byte, then its index (so the test can trace it)."""
    return bytes([TOC]) + k.to_bytes(4, "big") + b"\x00" * 8


def index_of(frame) -> int | None:
    return None if frame.concealed else int.from_bytes(frame.data[1:5], "big")


def stream(n: int, seq0: int = 1000, ts0: int = 12345):
    """n packets sent every 20 ms: (send_time, k, seq, ts)."""
    return [(k * DT, k, (seq0 + k) % 65536, (ts0 + k * STEP) % (1 << 32)) for k in range(n)]


def replay(events, **options):
    """events: (arrival, seq, ts, payload); returns the buffer and [(release_time, frame)]."""
    jb = LowLatencyJitterBuffer(48000, conceal=options.pop("conceal", True), **options)
    out = []
    for arrival, seq, ts, data in sorted(events, key=lambda e: e[0]):
        while jb.deadline is not None and jb.deadline <= arrival:
            t = jb.deadline
            out += [(t, f) for f in jb.poll(t)]
        out += [(arrival, f) for f in jb.push(seq, ts, data, arrival)]
    while jb.deadline is not None:
        t = jb.deadline
        out += [(t, f) for f in jb.poll(t)]
    return jb, out


def arrivals(packets, delay=None, drop=()):
    """Arrival events for stream(): ``delay(k)`` seconds late, ``drop`` never arrives."""
    return [
        (t + (delay(k) if delay else 0.0), seq, ts, payload(k))
        for t, k, seq, ts in packets
        if k not in drop
    ]


def check_timeline(out, n_frames):
    """Output timestamps are 0, 960, ... with no overlap; returns the pts gaps (in frames)."""
    stamps = [f.timestamp for _, f in out]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)
    assert stamps[0] == 0 and all(s % STEP == 0 for s in stamps)
    gaps = [(a // STEP, (b - a) // STEP - 1) for a, b in zip(stamps, stamps[1:]) if b - a != STEP]
    assert stamps[-1] // STEP + 1 - sum(g for _, g in gaps) == len(out) <= n_frames
    return gaps


# --------------------------------------------------------------------------- traces
def test_in_order_released_at_once_with_delay_zero():
    rng = random.Random(1)
    pk = stream(200)
    jitter = {k: rng.uniform(0, 0.015) for k in range(200)}  # jittery, but never reordered
    ev = [(t + jitter[k], seq, ts, payload(k)) for t, k, seq, ts in pk]
    jb, out = replay(ev)
    assert [index_of(f) for _, f in out] == list(range(200))
    assert all(t == ev[index_of(f)][0] for t, f in out)  # released the moment it arrived
    assert all(f.hold_s == 0 for _, f in out)
    assert check_timeline(out, 200) == []
    s = jb.stats()
    assert s["hold_ms_max"] == 0 and s["depth_packets"] == 0 and s["lost"] == 0
    # uniform 0-15 ms delays: RFC 3550 jitter estimates E|D| = 15/3 = 5 ms
    assert 3.0 < s["arrival_jitter_ms"] < 7.5, s
    jb, _ = replay(arrivals(stream(200)))
    assert jb.stats()["arrival_jitter_ms"] < 1e-6  # on time, every packet


def test_reordered_by_one_to_three_fills_the_gap_and_the_wait_adapts():
    pk = stream(120)
    late = {10: 1, 30: 2, 50: 2, 70: 3, 90: 3}  # packet k arrives after k+d
    jb, out = replay(arrivals(pk, delay=lambda k: late[k] * DT + 0.005 if k in late else 0.0))
    got = [index_of(f) for _, f in out]
    # by 1: filled within the first 20 ms wait. By 2 or 3: the first one waits longer than
    # ever measured, is concealed and comes late; the wait then covers the next one.
    assert got == [None if k in (30, 70) else k for k in range(120)]
    assert check_timeline(out, 120) == []
    s = jb.stats()
    assert s["late"] == 2 and s["lost"] == 2 and s["concealed_frames"] == 2
    assert s["reordered"] == 3
    assert s["wait_ms"] == pytest.approx(60.0)  # 1.5 x 45 ms + 2, capped at max_wait_ms
    released_at = {index_of(f): t for t, f in out if not f.concealed}
    for k in released_at:
        behind = [j for j, d in late.items() if j < k <= j + d]
        if not behind:
            assert released_at[k] == pytest.approx(k * DT + (late[k] * DT + 0.005 if k in late else 0))
    assert released_at[11] == pytest.approx(10 * DT + DT + 0.005)  # held 5 ms, until 10 came


def test_lost_singles_and_bursts_concealed_or_handed_on_as_gaps():
    pk = stream(120)
    lost = {20} | {40, 41, 42} | set(range(60, 70))
    jb, out = replay(arrivals(pk, drop=lost))
    got = [index_of(f) for _, f in out]
    # singles and a 60 ms burst are concealed (one TOC-only frame each); 200 ms is longer than
    # max_conceal_ms (120) and is handed on as a pts gap.
    assert got == [None if k in (20, 40, 41, 42) else k for k in range(120) if not 60 <= k < 70]
    assert check_timeline(out, 120) == [(59, 10)]
    for _, f in out:
        if f.concealed:
            assert f.data == bytes([TOC & 0xFC]) and opus_packet_samples(f.data) == STEP
    s = jb.stats()
    assert (s["lost"], s["concealed_frames"], s["gaps"], s["gap_ms"]) == (14, 4, 1, 200.0)
    # the packet after a gap waits min_wait_ms (20 ms); everything else is released at once
    held = {index_of(f): f.hold_s for _, f in out if not f.concealed}
    assert {k for k, h in held.items() if h > 1e-9} == {21, 43, 70}
    assert max(held.values()) == pytest.approx(0.02)


def test_no_concealment_for_other_codecs_gives_pts_gaps():
    jb, out = replay(arrivals(stream(60), drop={20, 40, 41}), conceal=False)
    assert all(not f.concealed for _, f in out)
    assert check_timeline(out, 60) == [(19, 1), (39, 2)]
    assert jb.stats()["gaps"] == 2


def test_duplicates_and_very_late_packets_are_dropped():
    pk = stream(80)
    ev = arrivals(pk)
    ev += [(t + 0.001, seq, ts, data) for t, seq, ts, data in ev[::3]]  # each third twice
    ev += [(ev[50][0] + 0.005, *ev[49][1:])]  # a duplicate of a released packet, late
    ev = [e for e in ev if e[1] != pk[30][2]] + [(pk[30][0] + 0.5, pk[30][2], pk[30][3], payload(30))]
    jb, out = replay(ev)
    got = [index_of(f) for _, f in out]
    assert got == [None if k == 30 else k for k in range(80)]
    s = jb.stats()
    assert s["duplicates"] == 27  # 27 doubled (packet 30's double is gone with it), 1 late copy
    assert s["late"] == 1 and s["concealed_frames"] == 1


def test_stall_then_burst_is_released_as_it_arrives():
    pk = stream(150)
    # a 300 ms stall from packet 50: 50..65 arrive together at 1.3 s, then normal again
    ev = arrivals(pk, delay=lambda k: max(0.0, 1.3 - k * DT) if 50 <= k < 65 else 0.0)
    jb, out = replay(ev)
    assert [index_of(f) for _, f in out] == list(range(150))
    assert all(f.hold_s == 0 for _, f in out)  # in order: nothing held, depth 0 throughout
    assert check_timeline(out, 150) == []


def test_stall_then_a_shuffled_burst_with_a_loss_recovers_within_a_second():
    pk = stream(150)
    burst = list(range(50, 65))
    order = burst[::-1]
    delay = {k: 1.3 + 0.0005 * order.index(k) - k * DT for k in burst}
    ev = arrivals(pk, delay=lambda k: delay.get(k, 0.0), drop={57})
    jb, out = replay(ev)
    got = [index_of(f) for _, f in out]
    assert got == [None if k == 57 else k for k in range(150)]
    last_burst = max(t for t, f in out if index_of(f) in burst)
    assert last_burst - 1.3 < 1.0  # back to depth 0 well within a second (here: the wait)
    # 65 arrived with the burst and waited with it; from 66 on, released as they arrive
    assert all(t == pytest.approx(k * DT) for t, f in out if (k := index_of(f)) is not None and k >= 66)


@pytest.mark.parametrize("seq0,ts0", [(65530, 12345), (100, (1 << 32) - 3 * STEP), (65533, (1 << 32) - 2 * STEP)])
def test_sequence_and_timestamp_wrap(seq0, ts0):
    pk = stream(40, seq0=seq0, ts0=ts0)
    ev = arrivals(pk, delay=lambda k: 0.025 if k == 2 else 0.0, drop={5})
    jb, out = replay(ev)
    assert [index_of(f) for _, f in out] == [None if k == 5 else k for k in range(40)]
    assert check_timeline(out, 40) == []
    assert jb.stats()["reordered"] == 1


def test_restarted_stream_continues_the_timeline():
    a = stream(30, seq0=5000)
    b = [(t + 30 * DT + 0.1, k + 30, seq, ts) for t, k, seq, ts in stream(30, seq0=200, ts0=77)]
    jb, out = replay(arrivals(a) + arrivals(b))
    assert [index_of(f) for _, f in out] == list(range(60))
    stamps = [f.timestamp for _, f in out]
    assert stamps == sorted(stamps)
    assert stamps[30] - stamps[29] == pytest.approx(STEP + 0.1 * 48000, abs=2)  # the real pause
    assert jb.stats()["restarts"] == 1


def test_a_stray_old_packet_is_dropped_not_taken_for_a_restart():
    pk = stream(60, seq0=5000)
    ev = arrivals(pk)
    ev.append((30 * DT + 0.001, (5000 - 1000) % 65536, 999, payload(999)))  # stale, alone
    jb, out = replay(ev)
    assert [index_of(f) for _, f in out] == list(range(60))
    assert check_timeline(out, 60) == []
    assert (jb.stats()["stale"], jb.stats()["restarts"]) == (1, 0)


def test_a_wide_gap_is_given_up_at_once_and_memory_is_bounded():
    pk = stream(300)
    jb, out = replay(arrivals(pk, drop=set(range(10, 200))), capacity=32)
    assert [index_of(f) for _, f in out] == list(range(10)) + list(range(200, 300))
    assert jb.stats()["depth_packets"] == 0
    rng = random.Random(3)
    jb = LowLatencyJitterBuffer(48000, conceal=True, capacity=16)
    for i in range(5000):  # hostile: random sequence numbers and timestamps, no polls
        jb.push(rng.randrange(65536), rng.randrange(1 << 32), b"\xdc", i * 0.001)
        assert jb.depth < 16 and len(jb._given_up) <= 256


def test_options_are_checked():
    with pytest.raises(ValueError):
        LowLatencyJitterBuffer(0)
    with pytest.raises(ValueError):
        LowLatencyJitterBuffer(min_wait_ms=50, max_wait_ms=10)


# --------------------------------------------------------------------------- Opus PLC
def test_concealment_frames_decode_to_opus_plc_with_aiortcs_decoder():
    """TOC-only packets through aiortc's OpusDecoder (PyAV libopus) give a full frame of
    concealment that continues the signal, with the pts the gap needs."""
    from av import AudioFrame
    from aiortc.codecs.opus import OpusDecoder, OpusEncoder
    from aiortc.jitterbuffer import JitterFrame

    enc = OpusEncoder()
    t = np.arange(48000) / 48000
    x = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    packets = []
    for i in range(0, len(x), STEP):
        f = AudioFrame.from_ndarray(np.repeat(x[i:i + STEP], 2)[None, :], format="s16", layout="stereo")
        f.sample_rate, f.pts, f.time_base = 48000, i, fractions.Fraction(1, 48000)
        packets += enc.encode(f)[0]
    n = len(packets)
    ev = [(k * DT, k, k * STEP, p) for k, p in enumerate(packets) if k not in (20, 30, 31)]

    def decode(frames):
        dec = OpusDecoder()
        return [fr for f in frames for fr in dec.decode(JitterFrame(f.data, f.timestamp))]

    jb, out = replay(ev)
    got = decode([f for _, f in out])
    ref = decode([f for _, f in replay([(k * DT, k, k * STEP, p) for k, p in enumerate(packets)])[1]])
    assert len(got) == len(ref) == n
    assert [fr.pts for fr in got] == [k * STEP for k in range(n)]
    assert all(fr.samples == STEP for fr in got)
    for k in (20, 30):
        a = got[k].to_ndarray()[0, ::2].astype(float)
        b = ref[k].to_ndarray()[0, ::2].astype(float)
        assert np.sqrt(np.mean(a**2)) > 0.3 * np.sqrt(np.mean(b**2))  # not silence
        assert np.corrcoef(a, b)[0, 1] > 0.5  # continues the tone


# --------------------------------------------------------------------------- aiortc hook
async def test_aiortc_receiver_still_has_what_the_hook_relies_on():
    """Fails when an aiortc upgrade renames or retypes the receiver internals we use.
    (async: aiortc's sender takes the running loop, whatever earlier tests left behind)"""
    from aiortc import RTCPeerConnection
    from aiortc.jitterbuffer import JitterBuffer

    pc = RTCPeerConnection()
    receiver = pc.addTransceiver("audio").receiver
    for name in RECEIVER_ATTRIBUTES:
        assert hasattr(receiver, name), f"aiortc's RTCRtpReceiver no longer has {name}"
    jb = getattr(receiver, "_RTCRtpReceiver__jitter_buffer")
    assert isinstance(jb, JitterBuffer) and (jb.capacity, jb._prefetch) == (16, 4)
    assert isinstance(getattr(receiver, "_RTCRtpReceiver__decoder_queue"), queue.Queue)
    assert isinstance(getattr(receiver, "_RTCRtpReceiver__codecs"), dict)
    assert getattr(receiver, "_RTCRtpReceiver__decoder_thread") is None
    import inspect

    from aiortc.rtcrtpreceiver import RTCRtpReceiver, decoder_worker

    src = inspect.getsource(RTCRtpReceiver._handle_rtp_packet)
    assert "self.__jitter_buffer.add(packet)" in src
    assert "codec, encoded_frame = task" in inspect.getsource(decoder_worker)
    await pc.close()


async def test_hook_switches_audio_receivers_of_that_pc_only():
    from aiortc import RTCPeerConnection
    from aiortc.jitterbuffer import JitterBuffer

    pc, other = RTCPeerConnection(), RTCPeerConnection()
    try:
        early = pc.addTransceiver("audio").receiver
        video = pc.addTransceiver("video").receiver
        low_latency_audio(pc)
        late = pc.addTransceiver("audio").receiver
        pc.emit("track", late.track)  # what setRemoteDescription does for a new receiver
        plain = other.addTransceiver("audio").receiver
        name = "_RTCRtpReceiver__jitter_buffer"
        assert isinstance(getattr(early, name), ReceiverJitterBuffer)
        assert isinstance(getattr(late, name), ReceiverJitterBuffer)
        assert isinstance(getattr(video, name), JitterBuffer)
        assert isinstance(getattr(plain, name), JitterBuffer)
        installed = getattr(early, name)
        low_latency_audio(pc)  # idempotent: the same buffer stays
        assert getattr(early, name) is installed
        with pytest.raises(ValueError):
            low_latency_audio(pc, min_wait_ms=-1)
    finally:
        await pc.close()
        await other.close()


def test_hook_refuses_a_receiver_without_the_internals():
    class NotAReceiver:
        pass

    with pytest.raises(RuntimeError, match="low_latency_audio"):
        ReceiverJitterBuffer(NotAReceiver())


# --------------------------------------------------------------------------- real calls
class LossyRelay:
    """A UDP relay between two loopback peers (each SDP's candidate is rewritten to point at
    it). It drops chosen RTP packets going from A to B, and notes when each RTP timestamp
    reached it: the moment the packet left A, on loopback."""

    def __init__(self, drop: set[int]):
        self.drop = drop  # indices of A's RTP packets to drop
        self.sent: dict[int, float] = {}  # RTP timestamp -> time it reached the relay
        self.first_ts: int | None = None
        self.rtp = 0
        self.dropped = 0
        self.a_addr = self.b_addr = None

    async def start(self):
        loop = asyncio.get_running_loop()
        relay = self

        class Side(asyncio.DatagramProtocol):
            def __init__(self, name):
                self.name = name

            def datagram_received(self, data, addr):
                if self.name == "a":  # from A, to B
                    if len(data) >= 12 and data[0] >> 6 == 2 and not 192 <= data[1] <= 223:
                        ts = int.from_bytes(data[4:8], "big")
                        relay.sent.setdefault(ts, time.monotonic())
                        if relay.first_ts is None:
                            relay.first_ts = ts
                        relay.rtp += 1
                        if relay.rtp - 1 in relay.drop:
                            relay.dropped += 1
                            return
                    relay.to_b.sendto(data, relay.b_addr)
                else:
                    relay.to_a.sendto(data, relay.a_addr)

        self.to_a, _ = await loop.create_datagram_endpoint(lambda: Side("a"), local_addr=("127.0.0.1", 0))
        self.to_b, _ = await loop.create_datagram_endpoint(lambda: Side("b"), local_addr=("127.0.0.1", 0))
        return self

    def close(self):
        self.to_a.close()
        self.to_b.close()

    @staticmethod
    def _candidate(sdp: str) -> tuple[str, int]:
        (line,) = [x for x in sdp.splitlines() if x.startswith("a=candidate:")]
        parts = line.split()
        return parts[4], int(parts[5])

    @staticmethod
    def _rewrite(sdp: str, addr: tuple[str, int], new_port: int) -> str:
        return sdp.replace(f" {addr[0]} {addr[1]} typ", f" {addr[0]} {new_port} typ").replace(
            f"m=audio {addr[1]} ", f"m=audio {new_port} "
        )

    async def connect(self, a, b, timeout: float = 20.0) -> None:
        """Offer from A, answer from B, each side told that the other is the relay."""
        from aiortc import RTCSessionDescription

        async def go():
            await a.setLocalDescription(await a.createOffer())
            self.a_addr = self._candidate(a.localDescription.sdp)
            offer = self._rewrite(a.localDescription.sdp, self.a_addr, self.to_b.get_extra_info("sockname")[1])
            await b.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            await b.setLocalDescription(await b.createAnswer())
            self.b_addr = self._candidate(b.localDescription.sdp)
            answer = self._rewrite(b.localDescription.sdp, self.b_addr, self.to_a.get_extra_info("sockname")[1])
            await a.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            while not (a.connectionState == b.connectionState == "connected"):
                assert "failed" not in (a.connectionState, b.connectionState)
                await asyncio.sleep(0.02)

        await asyncio.wait_for(go(), timeout)


CALL_FRAMES = 400  # 8 s of 20 ms packets
WARMUP = 50  # the relay drops nothing in the first second


async def relayed_call(*, ours: bool, loss: float, seed: int = 7):
    """A sends a tone; B receives it through the relay, taps it (time, pts) and filters it.
    Returns (receive delay in s by frame index, frames received, frames out of the filter,
    filter stats, buffer stats (ours only), packets dropped)."""
    from aiortc import RTCConfiguration, RTCPeerConnection
    from aiortc.mediastreams import AudioStreamTrack
    from trackutil import Tap

    from voipfilter.track import NoiseSuppressionTrack

    class Tone(AudioStreamTrack):
        async def recv(self):
            frame = await super().recv()  # paced in real time by aiortc
            t = (frame.pts + np.arange(frame.samples)) / 48000
            x = (8000 * np.sin(2 * np.pi * 330 * t)).astype(np.int16)
            frame.planes[0].update(x.tobytes())
            return frame

    rng = random.Random(seed)
    drops = set(rng.sample(range(WARMUP, CALL_FRAMES - 20), k=round(loss * (CALL_FRAMES - 20 - WARMUP))))
    relay = await LossyRelay(drops).start()
    a = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if ours:
        low_latency_audio(b)
    got: dict = {}
    done = asyncio.Event()
    received: list[tuple[float, int]] = []

    class Pump(Tap):
        """Takes every frame from the receiver as soon as it is decoded (so the delay
        measured is the receive side's, whatever the filter is doing) and records when."""

        def __init__(self, track):
            super().__init__(track, keep_audio=False)
            self.queue: asyncio.Queue = asyncio.Queue()
            self.task = asyncio.ensure_future(self._pump())

        async def _pump(self):
            while True:
                f = await Tap.recv(self)
                received.append((time.monotonic(), f.pts))
                self.queue.put_nowait(f)

        async def recv(self):
            return await self.queue.get()

    @b.on("track")
    def on_track(remote):
        tap = Pump(remote)
        ns = NoiseSuppressionTrack(tap, max_backlog_ms=None)  # every frame, however loaded
        got.update(tap=tap, ns=ns, out=[])

        async def consume():
            while True:
                f = await ns.recv()
                got["out"].append((f.pts, f.samples, f.sample_rate, f.time_base))
                if f.pts >= (CALL_FRAMES - 10) * 960:
                    done.set()
                    return

        got["task"] = asyncio.ensure_future(consume())

    try:
        a.addTrack(Tone())
        await relay.connect(a, b)
        await asyncio.wait_for(done.wait(), CALL_FRAMES * 0.02 + 20)
        buffer = getattr(b.getReceivers()[0], "_RTCRtpReceiver__jitter_buffer")
        jb_stats = buffer.stats() if ours else None
        fs = got["ns"].stats()
    finally:
        if "task" in got:
            got["task"].cancel()
            got["tap"].task.cancel()
        await asyncio.wait_for(asyncio.gather(a.close(), b.close(), return_exceptions=True), 10)
        relay.close()
    assert relay.dropped == len(drops)
    delays = {}
    for t, pts in received:
        sent = relay.sent.get((relay.first_ts + pts) % (1 << 32))
        if sent is not None:
            delays[pts // 960] = t - sent
    return delays, got["tap"].meta, got["out"], fs, jb_stats, len(drops)


def window_medians(delays: dict[int, float], frames: int = 50) -> list[float]:
    """Median receive delay per second of the call, after the first second."""
    out = []
    for start in range(WARMUP, CALL_FRAMES - 10, frames):
        vals = [d for k, d in delays.items() if start <= k < start + frames]
        if vals:
            out.append(float(np.median(vals)))
    return out


@pytest.mark.timeout(180)
async def test_lossy_call_stays_as_close_as_a_clean_one_and_aiortcs_buffer_falls_behind():
    """Four calls at once (the same load on all): ours without and with 2 % loss, aiortc's
    own buffer without and with it. Each second of a lossy call is compared with the same
    second of the clean one running beside it."""
    from voipfilter.ice import LOOPBACK, restrict_host_candidates

    with restrict_host_candidates(LOOPBACK):
        calls = await asyncio.gather(
            relayed_call(ours=True, loss=0.0),
            relayed_call(ours=True, loss=0.02),
            relayed_call(ours=False, loss=0.0),
            relayed_call(ours=False, loss=0.02),
        )
    (clean, *_), (lossy, tap, out, fs, jb, dropped), (aclean, *_), (alossy, *_) = calls
    base = window_medians(clean)
    ours_w = [round(1000 * (m - r), 1) for m, r in zip(window_medians(lossy), base)]
    aiortc_w = [round(1000 * (m - r), 1) for m, r in zip(window_medians(alossy), base)]
    aclean_w = [round(1000 * (m - r), 1) for m, r in zip(window_medians(aclean), base)]
    print(f"receive delay, clean call with ours, per second (ms): {[round(1000 * r, 1) for r in base]}; "
          f"the others minus it: ours lossy {ours_w}; aiortc clean {aclean_w}; aiortc lossy {aiortc_w}; "
          f"buffer {jb}")
    assert len(ours_w) == len(aiortc_w) >= 6
    assert dropped == 7
    assert max(ours_w) <= 40.0, ours_w
    assert aiortc_w[-1] >= 100.0, aiortc_w  # aiortc issue 543: it ends far behind
    # every loss was concealed (no pts gap reached the filter) and counted
    assert jb["lost"] == dropped and jb["concealed_frames"] == dropped and jb["gaps"] == 0
    assert fs["gaps"] == 0 and fs["frames_dropped"] == 0
    # one output frame per input frame, with its pts and size
    assert fs["frames_out"] == fs["frames_in"] == len(out) >= CALL_FRAMES - 10
    assert out == tap[: len(out)]
    pts = [m[0] for m in tap]
    assert pts == [k * 960 for k in range(len(pts))]  # contiguous: concealment filled the gaps
