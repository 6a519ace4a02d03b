"""voipfilter.integrations.livekit against the real LiveKit Python SDK (extra ``livekit``).

Frames are made by the SDK (``rtc.AudioFrame``) and go through the processor as LiveKit's
``AudioStream`` hands them over; a second part runs a real ``rtc.AudioStream`` on a local
track fed by an ``rtc.AudioSource`` (the SDK's native media engine, no server: none can run
here), with and without the processor.
"""
from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from integrationutil import noise_removed_db, require_extra, sample

require_extra("livekit", "livekit")

from livekit import rtc  # noqa: E402

from voipfilter import Denoiser  # noqa: E402
from voipfilter.integrations.livekit import NoiseSuppression  # noqa: E402

FORMATS = [(r, c) for r in (16000, 24000, 48000) for c in (1, 2)]


def noisy(rate: int, channels: int, seconds: float = 4.0) -> np.ndarray:
    """(n, channels) int16: the noisy sample; channel 1 is it 6 dB down and 0.3 s later, so
    the channels differ."""
    x = sample(rate, seconds=seconds)
    if channels == 1:
        return x[:, None]
    shift = int(0.3 * rate)
    x1 = np.concatenate([np.zeros(shift, np.int16), (x[:-shift] // 2).astype(np.int16)])
    return np.stack([x, x1], axis=1)


def frames(x: np.ndarray, rate: int, sizes=(10, 50)) -> list[rtc.AudioFrame]:
    """SDK frames of alternately ``sizes`` ms (LiveKit's default 10 ms, the agents' 50 ms)."""
    out, pos, k = [], 0, 0
    while pos < len(x):
        n = min(rate * sizes[k % len(sizes)] // 1000, len(x) - pos)
        frame = rtc.AudioFrame.create(rate, x.shape[1], n)
        np.frombuffer(frame.data, np.int16)[:] = x[pos : pos + n].reshape(-1)
        out.append(frame)
        pos += n
        k += 1
    return out


def samples(frames_: list[rtc.AudioFrame]) -> np.ndarray:
    return np.concatenate([np.frombuffer(f.data, np.int16).reshape(-1, f.num_channels) for f in frames_])


@pytest.mark.parametrize("rate,channels", FORMATS)
def test_frames_keep_shape_state_and_lose_noise(rate, channels):
    x = noisy(rate, channels)
    nc = NoiseSuppression()
    ins = frames(x, rate)
    outs = [nc._process(f) for f in ins]
    for i, o in zip(ins, outs):
        assert isinstance(o, rtc.AudioFrame)
        assert (o.sample_rate, o.num_channels, o.samples_per_channel) == (i.sample_rate, i.num_channels, i.samples_per_channel)
    y = samples(outs)
    d = nc.delay_samples
    assert d == Denoiser(sample_rate=rate).delay_samples and nc.sample_rate == rate
    for c in range(channels):
        # state kept across frames, one per channel: identical to one Denoiser on the whole channel
        np.testing.assert_array_equal(y[:, c], Denoiser(sample_rate=rate).process(np.ascontiguousarray(x[:, c])))
        assert noise_removed_db(x[:, c], y[:, c], rate, d) > 15


def test_fresh_state_per_frame_would_differ():
    """The exactness above needs state carried between frames: restarting it every frame
    gives another (worse) signal."""
    rate = 16000
    x = noisy(rate, 1, seconds=2)
    ins = frames(x, rate, sizes=(10,))
    nc = NoiseSuppression()
    kept = samples([nc._process(f) for f in ins])
    fresh = samples([NoiseSuppression()._process(f) for f in ins])
    assert not np.array_equal(kept, fresh)
    assert np.abs(fresh).max() == 0  # a fresh state outputs its delay line: silence for 10 ms frames


@pytest.mark.parametrize("rate,channels", [(48000, 2), (16000, 1)])
def test_disabled_passes_input_through_delay_aligned(rate, channels):
    x = noisy(rate, channels)
    nc = NoiseSuppression()
    ins = frames(x, rate, sizes=(10,))
    off, on = 100, 250  # frames: 1 s, 2.5 s
    outs = []
    for k, f in enumerate(ins):
        if k == off:
            nc.enabled = False
        if k == on:
            nc.enabled = True
        outs.append(nc._process(f))
    assert nc.enabled
    y = samples(outs)
    d, n = nc.delay_samples, rate // 100
    a, b = off * n + rate // 100, on * n  # after the 10 ms crossfade
    np.testing.assert_array_equal(y[a:b], x[a - d : b - d])
    s = (on + 50) * n  # 0.5 s after re-enabling: the noise is removed again
    assert noise_removed_db(x[s - d :, 0], y[s:, 0], rate, 0) > 15
    # toggling with frames still coming is seamless: the same as one Denoiser toggled alike
    ref = Denoiser(sample_rate=rate)
    expect = []
    for k, i in enumerate(range(0, len(x), n)):
        ref.enabled = not (off <= k < on)
        expect.append(ref.process(np.ascontiguousarray(x[i : i + n, 0])))
    np.testing.assert_array_equal(y[:, 0], np.concatenate(expect))


def test_atten_lim_db_limits_the_suppression():
    rate = 24000
    x = noisy(rate, 1)
    nc = NoiseSuppression(atten_lim_db=6)
    y = samples([nc._process(f) for f in frames(x, rate)])
    assert 4.0 < noise_removed_db(x[:, 0], y[:, 0], rate, nc.delay_samples) < 6.5
    with pytest.raises(ValueError, match="atten_lim_db"):
        nc.atten_lim_db = -1


def test_streams_are_independent_and_formats_restart():
    rate = 24000
    a, b = noisy(rate, 1), noisy(rate, 2)[:, 1:].copy()
    fa, fb = frames(a, rate), frames(b, rate)
    na, nb = NoiseSuppression(), NoiseSuppression()
    ya, yb = [], []
    for f, g in zip(fa, fb):  # interleaved, as two AudioStreams on one event loop
        ya.append(na._process(f))
        yb.append(nb._process(g))
    ref = NoiseSuppression()
    np.testing.assert_array_equal(samples(ya), samples([ref._process(f) for f in fa]))
    assert not np.array_equal(samples(ya), samples(yb))
    # a new rate or channel count mid-stream: a fresh state of the right shape
    g = frames(noisy(48000, 2, seconds=0.5), 48000)
    out = [na._process(f) for f in g]
    assert all((o.sample_rate, o.num_channels) == (48000, 2) for o in out)
    assert na.sample_rate == 48000 and na.delay_samples == Denoiser(sample_rate=48000).delay_samples
    np.testing.assert_array_equal(samples(out)[:, 0], Denoiser(sample_rate=48000).process(noisy(48000, 2, 0.5)[:, 0].copy()))


def test_unsupported_rate_passes_through(caplog):
    nc = NoiseSuppression()
    f = rtc.AudioFrame.create(22050, 1, 220)
    np.frombuffer(f.data, np.int16)[:] = np.arange(220, dtype=np.int16)
    with caplog.at_level(logging.WARNING, logger="voipfilter.integrations.livekit"):
        assert nc._process(f) is f
        assert nc._process(f) is f
    assert caplog.text.count("22050 Hz is not a rate") == 1
    assert nc.delay_samples == 0


def test_failing_model_keeps_audio_flowing_aligned(tmp_path):
    from conftest import require_module

    require_module("onnx", "train")
    from modelfactory import make_identity_model

    rate = 16000  # the model's rate: the pass-through is exact (to 1 LSB)
    nc = NoiseSuppression(make_identity_model(tmp_path / "fail.onnx", fail=True))
    x = noisy(rate, 2, seconds=1)
    y = samples([nc._process(f) for f in frames(x, rate)]).astype(np.int32)
    d = nc.delay_samples
    assert nc.errors > 0
    assert np.abs(y[d:] - x[:-d].astype(np.int32)).max() <= 1


# ------------------------------------------------------------------------------- AudioStream
async def _stream_pair(rate: int, channels: int, x: np.ndarray, nc: NoiseSuppression, toggle=None):
    """Play x (at ``rate``, ``channels``) into an rtc.AudioSource; read it back through two
    rtc.AudioStreams on its local track, one with ``nc``: (raw, processed) int16 arrays.
    ``toggle(frames_processed)`` is called after each processed frame is read."""
    source = rtc.AudioSource(rate, channels)
    track = rtc.LocalAudioTrack.create_audio_track("mic", source)
    raw_stream = rtc.AudioStream(track, sample_rate=rate, num_channels=channels)
    nc_stream = rtc.AudioStream(track, sample_rate=rate, num_channels=channels, noise_cancellation=nc)
    want = len(x) - rate // 10  # the streams may start a few frames late

    async def feed():
        for f in frames(x, rate, sizes=(10,)):
            await source.capture_frame(f)

    async def read(stream, on_frame=None):
        got, n = [], 0
        async for ev in stream:
            f = ev.frame
            assert (f.sample_rate, f.num_channels) == (rate, channels)
            got.append(np.frombuffer(f.data, np.int16).reshape(-1, channels).copy())
            n += f.samples_per_channel
            if on_frame:
                on_frame(len(got))
            if n >= want:
                break
        return np.concatenate(got)

    feeder = asyncio.create_task(feed())
    try:
        raw, out = await asyncio.wait_for(asyncio.gather(read(raw_stream), read(nc_stream, toggle)), 30)
        await asyncio.wait_for(feeder, 10)
    finally:
        feeder.cancel()
        await raw_stream.aclose()
        await nc_stream.aclose()
        await source.aclose()
    return raw, out


@pytest.mark.parametrize("rate,channels", [(48000, 2), (24000, 1)])
async def test_real_audiostream_with_the_processor(rate, channels):
    """rtc.AudioStream(track, noise_cancellation=NoiseSuppression()): the frames the app reads
    have the stream's format and the noise removed, against a plain AudioStream of the track."""
    x = noisy(rate, channels, seconds=3)
    nc = NoiseSuppression()
    raw, out = await _stream_pair(rate, channels, x, nc)
    n = min(len(raw), len(out))
    assert n > 2 * rate
    for c in range(channels):
        assert noise_removed_db(raw[:n, c], out[:n, c], rate, nc.delay_samples) > 15
    assert nc.sample_rate == rate


async def test_real_audiostream_skips_a_disabled_processor():
    """LiveKit does not call a disabled processor: the app then reads the track's audio
    unprocessed; enabled again, the processor starts a fresh state and filters."""
    rate = 24000
    x = noisy(rate, 1, seconds=3)
    nc = NoiseSuppression()
    spans = {}

    def toggle(k):
        if k == 50:
            nc.enabled = False
            spans["off"] = k
        elif k == 150:
            nc.enabled = True
            spans["on"] = k

    raw, out = await _stream_pair(rate, 1, x, nc, toggle)
    n = rate // 100
    a, b = (spans["off"] + 1) * n, spans["on"] * n
    assert abs(noise_removed_db(raw[a:b, 0], out[a:b, 0], rate, 0)) < 0.5
    s = (spans["on"] + 50) * n
    assert noise_removed_db(raw[s:, 0], out[s:, 0], rate, nc.delay_samples) > 15
