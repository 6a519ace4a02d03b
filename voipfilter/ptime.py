"""Shorter Opus packets for aiortc calls: 10 ms instead of 20 ms, both ways.

A packet cannot leave before its last sample exists, so each direction of a call pays one
packet duration of waiting, and the far end's jitter buffer works in whole packets. aiortc
encodes 20 ms Opus frames (its ``OpusEncoder`` cuts 960-sample frames; libopus's default
``frame_duration`` is 20 ms) and writes no ``a=ptime`` in its SDP, so a browser calling it
sends 20 ms packets too. 10 ms packets shorten that wait, at twice the packet rate (100
instead of 50 packets a second, each with its own IP/UDP/RTP/SRTP headers).

- :func:`answer_with_ptime` writes ``a=ptime:N`` into the audio sections of an SDP (an answer
  the server sends): Chromium's and Firefox's Opus encoders follow the remote description's
  ptime.
- :class:`PtimeOpusEncoder` is aiortc's Opus encoder with N ms frames.
- :func:`send_opus_packets_of` gives that encoder to the audio senders of a peer connection
  whose negotiated codec is Opus (call it after ``setLocalDescription``, before media flows).

aiortc has no public hook for its encoder. This sets the sender's private encoder slot, which
aiortc fills with its own only while it is empty, and wraps the sender's
``_next_encoded_frame``: aiortc sends all payloads of one encoded frame under one RTP
timestamp (right for video fragments, wrong for two audio packets), so a track frame longer
than ``ptime_ms`` (20 ms frames from another aiortc peer) leaves as consecutive packets with
consecutive timestamps. ``tests/test_ptime.py`` fails if an aiortc upgrade moves either.
"""
from __future__ import annotations

import collections
import re
from typing import Any

from aiortc.codecs.opus import OpusEncoder
from aiortc.rtcrtpsender import RTCEncodedFrame

OPUS_PTIMES_MS = (10, 20, 40, 60)  # whole-packet durations RTP Opus senders commonly use
_ENCODER = "_RTCRtpSender__encoder"


def check_ptime_ms(ptime_ms: int) -> int:
    """``ptime_ms`` as an int, or ValueError naming the allowed values."""
    if ptime_ms not in OPUS_PTIMES_MS:
        raise ValueError(f"Opus packet duration must be one of {OPUS_PTIMES_MS} ms, got {ptime_ms!r}")
    return int(ptime_ms)


def answer_with_ptime(sdp: str, ptime_ms: int) -> str:
    """``sdp`` with ``a=ptime:<ptime_ms>`` in every audio media section (replacing any there)."""
    ptime_ms = check_ptime_ms(ptime_ms)
    newline = "\r\n" if "\r\n" in sdp else "\n"
    out: list[str] = []
    in_audio = False
    for line in sdp.split(newline):
        if line.startswith("m="):
            if in_audio:
                _insert_ptime(out, ptime_ms)
            in_audio = line.startswith("m=audio ")
        elif in_audio and re.match(r"a=(max)?ptime:", line):
            continue  # ours replaces it
        out.append(line)
    if in_audio:
        _insert_ptime(out, ptime_ms)
    return newline.join(out)


def _insert_ptime(lines: list[str], ptime_ms: int) -> None:
    """Append the attribute to the section ending ``lines`` (before any trailing empty line)."""
    at = len(lines)
    while at > 0 and lines[at - 1] == "":
        at -= 1
    lines.insert(at, f"a=ptime:{ptime_ms}")


class PtimeOpusEncoder(OpusEncoder):
    """aiortc's Opus encoder (48 kHz stereo s16, 96 kbit/s, VoIP mode) with ``ptime_ms`` frames."""

    def __init__(self, ptime_ms: int = 10) -> None:
        super().__init__()
        self.ptime_ms = check_ptime_ms(ptime_ms)
        self.codec.options = {**self.codec.options, "frame_duration": str(self.ptime_ms)}
        self.resampler = type(self.resampler)(
            format="s16", layout="stereo", rate=self.codec.sample_rate,
            frame_size=self.frame_samples,
        )

    @property
    def frame_samples(self) -> int:
        """RTP timestamp units (48 kHz samples) per packet."""
        return self.codec.sample_rate * self.ptime_ms // 1000


def send_opus_packets_of(pc: Any, ptime_ms: int) -> int:
    """Make every audio sender of ``pc`` whose negotiated codec is Opus send ``ptime_ms``
    packets; returns how many senders were set. Call after ``setLocalDescription`` (the
    codecs are negotiated then) and before media flows. 20 ms leaves aiortc's own encoder.

    Raises ``RuntimeError`` if the installed aiortc's sender lacks the encoder slot."""
    ptime_ms = check_ptime_ms(ptime_ms)
    n = 0
    for transceiver in pc.getTransceivers():
        if transceiver.kind != "audio" or not transceiver._codecs:
            continue
        if transceiver._codecs[0].mimeType.lower() != "audio/opus":
            continue  # PCMU, G722...: their packets stay aiortc's
        sender = transceiver.sender
        if not hasattr(sender, _ENCODER):
            raise RuntimeError(
                "this aiortc's RTCRtpSender has no encoder slot (" + _ENCODER + "); "
                "voipfilter.ptime needs updating for it (or use 20 ms packets)"
            )
        if ptime_ms != 20:
            encoder = PtimeOpusEncoder(ptime_ms)
            setattr(sender, _ENCODER, encoder)
            _one_timestamp_per_packet(sender, encoder.frame_samples)
        n += 1
    return n


def _one_timestamp_per_packet(sender: Any, frame_samples: int) -> None:
    """Make ``sender`` hand its RTP loop one packet at a time, each with its own timestamp
    (the packets of one track frame go out back to back, as before)."""
    original = sender._next_encoded_frame
    queued: collections.deque[RTCEncodedFrame] = collections.deque()

    async def next_encoded_frame(codec: Any) -> RTCEncodedFrame | None:
        if queued:
            return queued.popleft()
        frame = await original(codec)
        if frame is None or len(frame.payloads) <= 1:
            return frame
        for k, payload in enumerate(frame.payloads[1:], start=1):
            queued.append(RTCEncodedFrame([payload], frame.timestamp + k * frame_samples, frame.audio_level))
        return RTCEncodedFrame(frame.payloads[:1], frame.timestamp, frame.audio_level)

    sender._next_encoded_frame = next_encoded_frame
