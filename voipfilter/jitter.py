"""A low-latency RTP receive buffer for servers that forward or filter audio (aiortc).

aiortc decodes received audio behind ``JitterBuffer(capacity=16, prefetch=4)``: every
packet waits until four newer ones have arrived (80 ms at 20 ms packets), and after one lost
packet it stalls and stays about 14 packets (280 ms) behind for the rest of the call
(aiortc issue 543). A server whose output goes on to another jitter buffer (the far end's
browser smooths the playout) gains nothing from holding packets; it only adds delay.

:class:`LowLatencyJitterBuffer` holds a packet only while an earlier one is missing:

- a packet in order is released at once (added delay 0);
- a packet out of order fills its gap: it is held until the missing ones arrive, then all
  are released together;
- a gap is given up after a short adaptive wait: ``min_wait_ms`` (one 20 ms packet), or
  1.5 × the longest reordering delay measured in the last ``reorder_window_s`` (packets
  that filled a gap, and packets that came after their gap was given up), at most
  ``max_wait_ms``; the wait starts when the first packet after the gap arrives;
- the lost time is concealed with Opus's own packet loss concealment: one TOC-only Opus
  packet per missing frame (a frame of length 0, which RFC 6716 §3.2.1 tells a decoder to
  conceal; libopus does, through PyAV's ``libopus`` decoder that aiortc uses). Gaps that are
  not whole Opus frames, longer than ``max_conceal_ms`` or in another codec are handed on as
  a pts gap (``NoiseSuppressionTrack`` closes those with a dip);
- duplicates and packets that come after their gap was given up are dropped and counted;
  sequence numbers (16 bit) and timestamps (32 bit) are unwrapped; a packet more than 100
  behind is stale and dropped, unless the next packet follows it: then the sender restarted
  its stream, and a new one starts;
- a burst after a stall is released as it arrives: the buffer's depth is back to its
  target (0) with the last packet of the burst. Nothing here paces or drops audio; the
  consumer's backlog policy (``NoiseSuppressionTrack(max_backlog_ms=...)``) and the far
  end's jitter buffer deal with the burst.

:func:`low_latency_audio` puts it into the audio receivers of one ``RTCPeerConnection``
(see docs/track.md, "Low-latency receive buffer").
"""
from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Any

from .lateness import LatenessMeter

__all__ = [
    "LowLatencyJitterBuffer",
    "ReleasedFrame",
    "ReceiverJitterBuffer",
    "install_on_receiver",
    "low_latency_audio",
    "opus_packet_samples",
]

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32
MAX_MISORDER = 100  # a packet this far behind is a restarted stream (aiortc uses the same)
GIVEN_UP_MEMORY = 256  # sequence numbers remembered as given up, to tell late from duplicate
HOLD_WINDOW = 250  # packets over which hold_ms_mean is averaged (5 s at 20 ms)


def _signed(diff: int, modulus: int) -> int:
    diff %= modulus
    return diff - modulus if diff >= modulus // 2 else diff


def opus_frame_samples(toc: int) -> int:
    """Samples at 48 kHz in one frame of an Opus packet with this TOC byte (RFC 6716 §3.1)."""
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        return (480, 960, 1920, 2880)[config & 3]
    if config < 16:  # hybrid: 10, 20 ms
        return (480, 960)[config & 1]
    return (120, 240, 480, 960)[config & 3]  # CELT: 2.5, 5, 10, 20 ms


def opus_packet_samples(data: bytes) -> int | None:
    """Samples at 48 kHz in an Opus packet (all its frames), None for an empty packet."""
    if not data:
        return None
    code = data[0] & 3
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        count = data[1] & 0x3F if len(data) > 1 else 0
    return count * opus_frame_samples(data[0]) or None


@dataclass
class ReleasedFrame:
    """An encoded frame for the decoder.

    ``timestamp`` is on the buffer's output timeline: clock units since the stream's first
    packet, unwrapped, never decreasing (what aiortc's own ``TimestampMapper`` makes of RTP
    timestamps). ``concealed`` frames are TOC-only Opus packets standing in for lost ones.
    ``hold_s`` is how long the packet waited here."""

    data: bytes
    timestamp: int
    concealed: bool = False
    hold_s: float = 0.0


@dataclass
class _Held:
    ts: int  # extended RTP timestamp
    data: bytes
    arrival: float


class LowLatencyJitterBuffer:
    """Reorders one RTP stream, holding packets only while an earlier one is missing.

    Feed it with :meth:`push` for every packet and call :meth:`poll` at :attr:`deadline`
    (when a gap is due to be given up); both return the frames to decode now, in order.
    Time is whatever monotonic clock the caller passes (seconds), so traces can be replayed
    deterministically.

    :param clock_rate: the RTP clock (48000 for Opus, 8000 for G.711).
    :param conceal: the stream is Opus: conceal lost frames (see the module docstring).
    :param min_wait_ms: the shortest wait before a gap is given up.
    :param max_wait_ms: the longest, however much reordering is measured.
    :param max_conceal_ms: longer gaps are handed on as pts gaps, not concealed.
    :param capacity: at most this many packets are held; a gap wider than this is given up
        at once (memory is bounded whatever a peer sends).
    :param reorder_window_s: how long a measured reordering delay counts for the wait.
    """

    def __init__(
        self,
        clock_rate: int = 48000,
        *,
        conceal: bool = False,
        min_wait_ms: float = 20.0,
        max_wait_ms: float = 60.0,
        max_conceal_ms: float = 120.0,
        capacity: int = 64,
        reorder_window_s: float = 10.0,
    ) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock_rate must be positive, not {clock_rate}")
        if not 0 <= min_wait_ms <= max_wait_ms:
            raise ValueError("give 0 <= min_wait_ms <= max_wait_ms")
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.clock_rate = clock_rate
        self.conceal = conceal
        self.min_wait_s = min_wait_ms / 1000.0
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_conceal = int(max_conceal_ms * clock_rate / 1000)
        self.capacity = capacity
        self.reorder_window_s = reorder_window_s

        self._next: int | None = None  # extended sequence number to release next
        self._highest = 0  # extended sequence number of the newest packet
        self._ts_ref = 0  # extended timestamp of the newest packet
        self._held: dict[int, _Held] = {}
        self._given_up: collections.OrderedDict[int, float] = collections.OrderedDict()
        self._reorder: collections.deque[tuple[float, float]] = collections.deque()
        self._wait_s = self.min_wait_s
        self._in_base = 0  # extended timestamp that maps to output timestamp _out_base
        self._out_base = 0
        self._last_end: int | None = None  # output timestamp where the last frame ends
        self._last_ts: int | None = None  # output timestamp of the last real frame
        self._last_step: int | None = None
        self._last_toc: int | None = None
        self._last_release = 0.0
        self._restart_candidate: tuple[int, int, bytes, float] | None = None
        self._holds: collections.deque[float] = collections.deque(maxlen=HOLD_WINDOW)
        self.counts = dict(
            packets=0, released=0, reordered=0, late=0, duplicates=0, stale=0, lost=0,
            concealed_frames=0, gaps=0, restarts=0,
        )
        self.concealed_ms = 0.0
        self.gap_ms = 0.0
        self.hold_ms_max = 0.0
        # RFC 3550 interarrival jitter (seconds): how unevenly the sender's packets arrive
        self.arrival_jitter_s = 0.0
        self._prev_transit: float | None = None
        # how late packets arrive against the earliest of the last 2 s (NetEQ's measure)
        self.arrival = LatenessMeter()

    # ---- state

    @property
    def wait_ms(self) -> float:
        """How long a gap is waited for now (adaptive)."""
        return 1000.0 * self._wait_s

    @property
    def depth(self) -> int:
        """Packets held now (waiting behind a gap)."""
        return len(self._held)

    @property
    def deadline(self) -> float | None:
        """When :meth:`poll` must next be called (a gap is due to be given up), or None."""
        if not self._held or self._next in self._held:
            return None
        return min(h.arrival for h in self._held.values()) + self._wait_s

    def stats(self) -> dict[str, Any]:
        """Counters and the current depth and wait, for logs and the demo's latency panel."""
        step = self._last_step or int(0.02 * self.clock_rate)
        out: dict[str, Any] = dict(self.counts)
        out.update(
            depth_packets=len(self._held),
            depth_ms=round(1000.0 * len(self._held) * step / self.clock_rate, 1),
            wait_ms=round(self.wait_ms, 1),
            hold_ms_mean=round(1000.0 * sum(self._holds) / len(self._holds), 2) if self._holds else 0.0,
            hold_ms_max=round(self.hold_ms_max, 1),
            concealed_ms=round(self.concealed_ms, 1),
            gap_ms=round(self.gap_ms, 1),
            arrival_jitter_ms=round(1000.0 * self.arrival_jitter_s, 2),
            arrival_lateness=self.arrival.stats(),
        )
        return out

    # ---- input

    def push(self, sequence_number: int, timestamp: int, data: bytes, now: float) -> list[ReleasedFrame]:
        """Take one RTP packet (its 16-bit sequence number, 32-bit timestamp and payload)
        that arrived at ``now``; return the frames that can be decoded now."""
        self.counts["packets"] += 1
        if self._next is None:
            self._start(sequence_number, timestamp)
        seq = self._highest + _signed(sequence_number - self._highest, SEQ_MOD)
        out: list[ReleasedFrame] = []
        if seq < self._next:
            if self._next - seq <= MAX_MISORDER:
                noticed = self._given_up.get(seq)
                if noticed is not None:
                    self.counts["late"] += 1
                    del self._given_up[seq]
                    self._note_reorder(now - noticed, now)
                else:
                    self.counts["duplicates"] += 1
                return []
            # Far behind: a stray old packet, or the sender restarted its stream. Only a
            # second packet right after it makes it a restart; what is held then belongs to
            # the old stream, and the new one goes on the output timeline after the pause.
            cand = self._restart_candidate
            if cand is None or sequence_number != (cand[0] + 1) % SEQ_MOD:
                self._drop_restart_candidate()
                self._restart_candidate = (sequence_number, timestamp, bytes(data), now)
                return []
            self._restart_candidate = None
            pause = max(0.0, cand[3] - self._last_release)
            out = self._flush(now)
            self.counts["restarts"] += 1
            end = self._last_end if self._last_end is not None else 0
            self._start(cand[0], cand[1])
            self._out_base = max(end, (self._last_ts or 0) + int(pause * self.clock_rate))
            self._held[self._next] = _Held(cand[1], cand[2], cand[3])
            self._highest += 1
            self._ts_ref = self._ts_ref + _signed(timestamp - self._ts_ref, TS_MOD)
            self._prev_transit = None  # a new stream: its own timeline
            self.arrival.reset()
            seq = self._highest
        else:
            self._drop_restart_candidate()
        if seq in self._held:
            self.counts["duplicates"] += 1
            return []
        ts = self._ts_ref + _signed(timestamp - self._ts_ref, TS_MOD)
        transit = now - ts / self.clock_rate
        if self._prev_transit is not None:
            self.arrival_jitter_s += (abs(transit - self._prev_transit) - self.arrival_jitter_s) / 16.0
        self._prev_transit = transit
        self.arrival.add(now, ts / self.clock_rate)
        if seq > self._highest:
            self._highest, self._ts_ref = seq, ts
        elif seq < self._highest:  # out of order: how long it kept its gap open
            self.counts["reordered"] += 1
            self._note_reorder(now - min(h.arrival for s, h in self._held.items() if s > seq), now)
        self._held[seq] = _Held(ts, bytes(data), now)
        return out + self.poll(now)

    def poll(self, now: float) -> list[ReleasedFrame]:
        """Release what is due at ``now``: packets in order, and gaps whose wait is over."""
        self._expire_reorder(now)
        out: list[ReleasedFrame] = []
        while self._held:
            if self._next in self._held:
                out.append(self._release(self._next, now))
                self._next += 1
                continue
            first = min(self._held)
            noticed = min(h.arrival for h in self._held.values())
            if (
                len(self._held) < self.capacity
                and first - self._next < self.capacity
                and now < noticed + self._wait_s
            ):
                break
            out.extend(self._give_up(first, noticed))
        return out

    # ---- internals

    def _start(self, sequence_number: int, timestamp: int) -> None:
        self._next = self._highest = sequence_number
        self._ts_ref = self._in_base = timestamp
        self._held.clear()
        self._given_up.clear()

    def _drop_restart_candidate(self) -> None:
        if self._restart_candidate is not None:
            self._restart_candidate = None
            self.counts["stale"] += 1

    def _flush(self, now: float) -> list[ReleasedFrame]:
        out: list[ReleasedFrame] = []
        while self._held:
            first = min(self._held)
            if first != self._next:
                out.extend(self._give_up(first, now))
            out.append(self._release(first, now))
            self._next = first + 1
        return out

    def _give_up(self, first: int, noticed: float) -> list[ReleasedFrame]:
        """Stop waiting for the packets before ``first``: conceal them or leave a pts gap."""
        self.counts["lost"] += first - self._next
        for seq in range(max(self._next, first - GIVEN_UP_MEMORY), first):
            self._given_up[seq] = noticed
        while len(self._given_up) > GIVEN_UP_MEMORY:
            self._given_up.popitem(last=False)
        self._next = first
        return self._bridge(self._out_ts(self._held[first].ts))

    def _bridge(self, next_ts: int) -> list[ReleasedFrame]:
        if self._last_end is None:
            return []
        gap = next_ts - self._last_end
        if gap <= 0:
            return []
        if self.conceal and self._last_toc is not None:
            frame = opus_frame_samples(self._last_toc)
            if gap % frame == 0 and gap <= self.max_conceal:
                toc = bytes([self._last_toc & 0xFC])  # code 0: one frame, of length 0
                start = self._last_end
                out = [ReleasedFrame(toc, start + i * frame, concealed=True) for i in range(gap // frame)]
                self.counts["concealed_frames"] += len(out)
                self.concealed_ms += 1000.0 * gap / self.clock_rate
                self._last_end = next_ts
                return out
        self.counts["gaps"] += 1
        self.gap_ms += 1000.0 * gap / self.clock_rate
        return []

    def _out_ts(self, ts: int) -> int:
        return ts - self._in_base + self._out_base

    def _release(self, seq: int, now: float) -> ReleasedFrame:
        held = self._held.pop(seq)
        out_ts = self._out_ts(held.ts)
        if self._last_ts is not None and out_ts > self._last_ts:
            self._last_step = out_ts - self._last_ts
        duration = None
        if self.conceal and held.data:
            self._last_toc = held.data[0]
            duration = opus_packet_samples(held.data)
        if duration is None:
            duration = self._last_step or 0
        self._last_ts = out_ts
        self._last_end = max(out_ts + duration, self._last_end or 0)
        self._last_release = now
        hold = now - held.arrival
        self._holds.append(hold)
        self.hold_ms_max = max(self.hold_ms_max, 1000.0 * hold)
        self.counts["released"] += 1
        return ReleasedFrame(held.data, out_ts, hold_s=hold)

    def _note_reorder(self, delay: float, now: float) -> None:
        self._reorder.append((now, max(0.0, delay)))
        self._expire_reorder(now)

    def _expire_reorder(self, now: float) -> None:
        while self._reorder and self._reorder[0][0] < now - self.reorder_window_s:
            self._reorder.popleft()
        longest = max((d for _, d in self._reorder), default=0.0)
        self._wait_s = min(self.max_wait_s, max(self.min_wait_s, 1.5 * longest + 0.002))


# --------------------------------------------------------------------------- aiortc

# The private attributes of aiortc's RTCRtpReceiver this relies on (aiortc 1.16; the same
# since 1.x): the buffer it calls for every RTP packet, the queue its decoder thread reads
# ``(codec, JitterFrame)`` from, the negotiated codecs by payload type, and the decoder
# thread (None when not running). tests/test_jitter.py fails if an upgrade moves them.
_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"
_CODECS = "_RTCRtpReceiver__codecs"
_DECODER_THREAD = "_RTCRtpReceiver__decoder_thread"
RECEIVER_ATTRIBUTES = (_JITTER_BUFFER, _DECODER_QUEUE, _CODECS, _DECODER_THREAD)


class ReceiverJitterBuffer:
    """Takes the place of aiortc's ``JitterBuffer`` inside one audio ``RTCRtpReceiver``.

    aiortc's contract lets a buffer hand back at most one frame per arriving packet, and
    only when a packet arrives. Filling a gap releases several frames at once, and giving a
    gap up must happen on a timer, so this buffer puts its frames on the receiver's decoder
    queue itself (with the receiver's codec and unwrapped timestamps, as aiortc does) and
    always answers ``add()`` with no frame. One :class:`LowLatencyJitterBuffer` per codec,
    made at the first packet (Opus streams conceal losses).
    """

    def __init__(self, receiver: Any, **options: Any) -> None:
        missing = [name for name in RECEIVER_ATTRIBUTES if not hasattr(receiver, name)]
        if missing:
            import aiortc

            raise RuntimeError(
                f"aiortc {getattr(aiortc, '__version__', '?')} has no RTCRtpReceiver."
                f"{', '.join(missing)}: voipfilter's low-latency buffer cannot be installed "
                "(it supports aiortc 1.16). Leave low_latency_audio() out to use aiortc's own buffer."
            )
        self._receiver = receiver
        self._queue = getattr(receiver, _DECODER_QUEUE)
        self._options = options
        self._codec: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.buffer: LowLatencyJitterBuffer | None = None
        LowLatencyJitterBuffer(**options)  # bad options fail here, not at the first packet

    @property
    def capacity(self) -> int:
        return self.buffer.capacity if self.buffer is not None else self._options.get("capacity", 64)

    def stats(self) -> dict[str, Any]:
        """The buffer's :meth:`LowLatencyJitterBuffer.stats` (zeros before the first packet)."""
        return (self.buffer or LowLatencyJitterBuffer(**self._options)).stats()

    def add(self, packet: Any) -> tuple[bool, None]:
        """aiortc's entry point: one depayloaded RTP packet (``packet._data``)."""
        codec = getattr(self._receiver, _CODECS).get(packet.payload_type)
        if codec is None:
            return False, None
        if self.buffer is None or codec is not self._codec:
            if self._codec is None or (codec.name, codec.clockRate) != (self._codec.name, self._codec.clockRate):
                self._cancel_timer()
                self.buffer = LowLatencyJitterBuffer(
                    codec.clockRate, conceal=codec.name.lower() == "opus", **self._options
                )
            self._codec = codec
        self._loop = asyncio.get_running_loop()
        data = getattr(packet, "_data", packet.payload)
        self._deliver(self.buffer.push(packet.sequence_number, packet.timestamp, data, self._loop.time()))
        return False, None

    def _deliver(self, frames: list[ReleasedFrame]) -> None:
        if frames and getattr(self._receiver, _DECODER_THREAD, None) is not None:
            from aiortc.jitterbuffer import JitterFrame

            for frame in frames:
                self._queue.put((self._codec, JitterFrame(data=frame.data, timestamp=frame.timestamp)))
        deadline = self.buffer.deadline if self.buffer is not None else None
        if self._timer is not None and (deadline is None or self._timer.when() != deadline):
            self._cancel_timer()
        if deadline is not None and self._timer is None and self._loop is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.buffer is not None and self._loop is not None:
            self._deliver(self.buffer.poll(self._loop.time()))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def install_on_receiver(receiver: Any, **options: Any) -> ReceiverJitterBuffer:
    """Replace one audio receiver's jitter buffer with ours (idempotent); returns it.

    Do it before RTP flows (before the offer/answer is applied, or in ``pc.on("track")``):
    packets already held by aiortc's buffer at the swap are dropped."""
    current = getattr(receiver, _JITTER_BUFFER, None)
    if isinstance(current, ReceiverJitterBuffer):
        return current
    buffer = ReceiverJitterBuffer(receiver, **options)
    setattr(receiver, _JITTER_BUFFER, buffer)
    return buffer


def low_latency_audio(pc: Any, **options: Any) -> None:
    """Use :class:`LowLatencyJitterBuffer` for every audio receiver of ``pc``.

    Call it right after creating the ``RTCPeerConnection``, before the offer or answer is
    applied: receivers that exist now are switched at once, later ones when their
    ``"track"`` event fires (before any RTP reaches them). Video receivers and other peer
    connections keep aiortc's buffer. ``options`` go to :class:`LowLatencyJitterBuffer`.
    Raises ``RuntimeError`` if the installed aiortc lacks the receiver internals it needs.
    """
    ReceiverJitterBuffer(_probe_receiver(), **options)  # fail now, not when a call starts

    def _install_all(*_: Any) -> None:
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "audio":
                install_on_receiver(transceiver.receiver, **options)

    _install_all()
    pc.on("track", _install_all)


def _probe_receiver() -> Any:
    """A real aiortc audio ``RTCRtpReceiver`` (on a stand-in transport, never started), to
    check the installed aiortc before any call depends on it."""
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    class _Transport:
        state = "new"

    return RTCRtpReceiver("audio", _Transport())
