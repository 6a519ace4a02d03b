"""voipfilter.ptime: a=ptime in answers, aiortc's Opus encoder at 10 ms, and the sender slot
it relies on. The real call with 10 ms packets both ways is in tests/test_server.py."""
from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from voipfilter.jitter import opus_packet_samples
from voipfilter.ptime import OPUS_PTIMES_MS, PtimeOpusEncoder, answer_with_ptime, send_opus_packets_of

SDP = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0", "c=IN IP4 0.0.0.0", "a=rtpmap:111 opus/48000/2", "a=ptime:20",
    "a=maxptime:120",
    "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=rtpmap:96 VP8/90000",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=rtpmap:111 opus/48000/2", "",
])


def sections(sdp: str) -> list[list[str]]:
    out: list[list[str]] = []
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def test_answer_gets_one_ptime_per_audio_section():
    got = answer_with_ptime(SDP, 10)
    audio1, video, audio2 = sections(got)
    assert [l for l in audio1 if "ptime" in l] == ["a=ptime:10"]  # 20 and maxptime replaced
    assert [l for l in audio2 if "ptime" in l] == ["a=ptime:10"]
    assert not any("ptime" in l for l in video)
    assert got.endswith("a=ptime:10\r\n")  # the SDP still ends with CRLF
    keep = [l for l in SDP.split("\r\n") if "ptime" not in l]
    assert [l for l in got.split("\r\n") if "ptime" not in l] == keep  # nothing else touched
    assert answer_with_ptime(got, 10) == got  # idempotent


@pytest.mark.parametrize("bad", [0, 5, 15, 30, 120, "10"])
def test_unsupported_ptime_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="must be one of"):
        answer_with_ptime(SDP, bad)
    with pytest.raises(ValueError, match="must be one of"):
        PtimeOpusEncoder(bad)


@pytest.mark.parametrize("ptime", OPUS_PTIMES_MS)
def test_encoder_makes_packets_of_ptime(ptime):
    enc = PtimeOpusEncoder(ptime)
    t = np.arange(48000 * 3 // 10) / 48000
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    packets, stamps = [], []
    for i in range(0, len(tone), 960):  # 20 ms frames, as a track gives them
        frame = av.AudioFrame.from_ndarray(tone[None, i:i + 960], format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = i
        frame.time_base = fractions.Fraction(1, 48000)
        payloads, ts = enc.encode(frame)
        packets += payloads
        if payloads:
            stamps.append(ts)
    assert {opus_packet_samples(p) for p in packets} == {48 * ptime}
    assert len(packets) == len(tone) // (48 * ptime)
    decoded = av.CodecContext.create("libopus", "r")
    assert sum(f.samples for p in packets for f in decoded.decode(av.Packet(p))) == len(packets) * 48 * ptime


async def test_sender_slot_is_where_aiortc_looks():
    """Fails if an aiortc upgrade moves the encoder slot this module fills (and so would stop
    sending our packets without notice)."""
    import inspect

    from aiortc.rtcrtpsender import RTCRtpSender

    src = inspect.getsource(RTCRtpSender._next_encoded_frame)
    assert "if self.__encoder is None:" in src and "self.__encoder = get_encoder(codec)" in src
    loop = inspect.getsource(RTCRtpSender._run_rtp)
    assert "enc_frame = await self._next_encoded_frame(codec)" in loop  # the method we wrap
    assert "timestamp = uint32_add(timestamp_origin, enc_frame.timestamp)" in loop  # one per frame

    class _Transport:
        state = "new"

    assert getattr(RTCRtpSender("audio", _Transport()), "_RTCRtpSender__encoder", "missing") is None


async def test_only_opus_senders_change():
    from aiortc import RTCPeerConnection
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    pc = RTCPeerConnection()
    try:
        opus = pc.addTransceiver("audio")
        pcmu = pc.addTransceiver("audio")
        video = pc.addTransceiver("video")
        opus._codecs = [RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)]
        pcmu._codecs = [RTCRtpCodecParameters(mimeType="audio/PCMU", clockRate=8000, payloadType=0)]
        assert send_opus_packets_of(pc, 10) == 1
        assert isinstance(opus.sender._RTCRtpSender__encoder, PtimeOpusEncoder)
        assert pcmu.sender._RTCRtpSender__encoder is None
        assert video.sender._RTCRtpSender__encoder is None
    finally:
        await pc.close()
