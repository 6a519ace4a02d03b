"""What the demo server accepts in an offer, checked on the SDP text before aiortc sees it.

An offer comes from anyone who can reach the server, so it is treated as hostile: every
media section aiortc accepts gets an ICE transport, and every receiving audio or video
section a decoder thread feeding a queue nobody reads; every remote candidate gets
connectivity checks sent to it. The server therefore

- refuses an offer over ``max_sdp_bytes``, with more than ``max_media_sections`` media
  sections or more than ``max_candidates`` remote candidates (HTTP 400, naming the limit);
- refuses sections it cannot answer at all (a second data channel section, kinds other than
  audio, video and application);
- filters exactly one audio section (the first one the caller sends on) and answers every
  other audio or video section ``inactive``, so no decoder runs for it.

:func:`check_offer` does the counting; :class:`voipfilter.call.Call` applies the result,
and :func:`pin_audio_stream` keeps RTP sent on the other sections out of the filtered one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_SDP_BYTES = 32 * 1024  # a browser's non-trickle offer is ~5-10 KB
DEFAULT_MAX_MEDIA_SECTIONS = 4  # the page sends 2 (audio + data channel)
DEFAULT_MAX_CANDIDATES = 32  # a browser lists a few per interface and section

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class OfferRejected(ValueError):
    """The offer breaks a limit or asks for something the server does not answer.

    ``code`` is the API error code; the message says what was exceeded and what to do."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class OfferLimits:
    """Caps on one offer (the defaults fit every browser offer seen so far)."""

    max_sdp_bytes: int = DEFAULT_MAX_SDP_BYTES
    max_media_sections: int = DEFAULT_MAX_MEDIA_SECTIONS
    max_candidates: int = DEFAULT_MAX_CANDIDATES


@dataclass
class MediaSection:
    """One ``m=`` section as the caller offered it."""

    kind: str
    port: int
    mid: str | None = None
    direction: str = "sendrecv"

    @property
    def caller_sends(self) -> bool:
        return self.port != 0 and self.direction in ("sendrecv", "sendonly")


@dataclass
class OfferShape:
    """The counted offer: its sections and the one audio section that will be filtered."""

    sections: list[MediaSection] = field(default_factory=list)
    audio_index: int | None = None

    @property
    def audio(self) -> MediaSection | None:
        return self.sections[self.audio_index] if self.audio_index is not None else None

    @property
    def ignored(self) -> list[MediaSection]:
        """Audio/video sections that are answered ``inactive`` (nothing decoded)."""
        return [s for i, s in enumerate(self.sections) if s.kind in ("audio", "video") and i != self.audio_index]


def check_offer(sdp: str, limits: OfferLimits = OfferLimits()) -> OfferShape:
    """Count ``sdp``'s sections and candidates against ``limits``; raise OfferRejected.

    Only counts lines: aiortc parses and validates the rest, and its errors still come
    back as HTTP 400."""
    size = len(sdp.encode("utf-8", "surrogatepass"))
    if size > limits.max_sdp_bytes:
        raise OfferRejected(
            "sdp_too_large",
            f"the offer's SDP is {size} bytes, over the server's limit of {limits.max_sdp_bytes}",
        )
    shape = OfferShape()
    session_direction = "sendrecv"
    candidates = 0
    current: MediaSection | None = None
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            parts = line[2:].split()
            try:
                port = int(parts[1].split("/")[0])
            except (IndexError, ValueError):
                raise OfferRejected("invalid_sdp", f"malformed media line {line[:80]!r}") from None
            current = MediaSection(kind=parts[0].lower(), port=port, direction=session_direction)
            shape.sections.append(current)
            if len(shape.sections) > limits.max_media_sections:
                raise OfferRejected(
                    "too_many_media_sections",
                    f"the offer has more than {limits.max_media_sections} media sections (m= lines); "
                    "the server takes one audio section and one data channel",
                )
        elif line.startswith("a="):
            attr = line[2:]
            name = attr.split(":", 1)[0]
            if name == "candidate":
                candidates += 1
                if candidates > limits.max_candidates:
                    raise OfferRejected(
                        "too_many_candidates",
                        f"the offer lists more than {limits.max_candidates} ICE candidates",
                    )
            elif name in DIRECTIONS:
                if current is None:
                    session_direction = name
                else:
                    current.direction = name
            elif name == "mid" and current is not None:
                current.mid = attr.split(":", 1)[1].strip() if ":" in attr else ""

    kinds = [s.kind for s in shape.sections]
    unknown = sorted({k for k in kinds if k not in ("audio", "video", "application")})
    if unknown:
        raise OfferRejected(
            "unsupported_media", f"the offer has {', '.join(unknown)} sections; the server answers audio only"
        )
    if kinds.count("application") > 1:
        raise OfferRejected("unsupported_media", "the offer has more than one data channel (application) section")
    for i, section in enumerate(shape.sections):
        if section.kind == "audio" and section.caller_sends:
            shape.audio_index = i
            break
    if shape.audio_index is None:
        raise OfferRejected("no_audio", "the offer has no audio to filter (add an audio track, sendrecv)")
    return shape


def pin_audio_stream(receiver: Any, mid: str | None) -> bool:
    """Let only one RTP stream reach ``receiver`` (the filtered audio section's).

    aiortc routes a packet with an unknown SSRC to the one receiver that has its payload
    type, so RTP a caller sends on an ``inactive`` audio section (same Opus payload type)
    would be fed into the filtered call's jitter buffer and decoder. This wraps the
    transport's router (aiortc 1.16's ``RTCDtlsTransport._rtp_router``) so that packets
    for ``receiver`` are dropped when their ``mid`` header extension names another section,
    or when they come from another SSRC than the one the offer signalled for it (where it
    signalled none: the first one accepted). Returns False (and
    changes nothing) where that router is not there."""
    router = getattr(getattr(receiver, "transport", None), "_rtp_router", None)
    route = getattr(router, "route_rtp", None)
    if route is None:
        return False
    state: dict[str, int] = {}
    scanned = False

    def route_rtp(packet):
        nonlocal scanned
        if not scanned and receiver in router.receivers:
            # registered, and route() has not yet added SSRCs it guessed: the signalled ones
            scanned = True
            signalled = [ssrc for ssrc, r in router.ssrc_table.items() if r is receiver]
            if signalled:
                state["ssrc"] = signalled[0]
        target = route(packet)
        if target is not receiver:
            return target
        packet_mid = getattr(packet.extensions, "mid", None)
        if packet_mid is not None and mid is not None and packet_mid != mid:
            return None
        ssrc = state.setdefault("ssrc", packet.ssrc)
        return target if packet.ssrc == ssrc else None

    router.route_rtp = route_rtp
    return True
