"""voipfilter.integrations.pipecat against the real pipecat-ai package (extra ``pipecat``).

The filter on its own (lengths, delay, control frames, model change, fail-open, the event
loop), then a real call: an aiortc peer plays web/sample.wav to a pipecat pipeline whose
SmallWebRTC transport has our filter as ``audio_in_filter``, over loopback only.
"""
from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from conftest import require_module
from integrationutil import noise_removed_db, require_extra, sample

require_extra("pipecat", "pipecat")

from pipecat.frames.frames import FilterEnableFrame, FilterUpdateSettingsFrame  # noqa: E402

from voipfilter import Denoiser, Model  # noqa: E402
from voipfilter.integrations.pipecat import NoiseSuppressionFilter  # noqa: E402

RATE = 16000
FRAME = RATE // 50  # pipecat's 20 ms input frames
RAMP = RATE // 100  # the Denoiser's 10 ms crossfade


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    require_module("onnx", "train")
    return tmp_path_factory.mktemp("pipecat-models")


@pytest.fixture(scope="module")
def identity_path(model_dir):
    from modelfactory import make_identity_model

    return make_identity_model(model_dir / "identity.onnx")


async def run_chunks(f: NoiseSuppressionFilter, x: np.ndarray, chunk: int = FRAME, controls=None) -> np.ndarray:
    """x through ``f.filter`` in chunks; ``controls[k]`` (a frame) is sent before chunk k."""
    out = []
    for k, i in enumerate(range(0, len(x), chunk)):
        if controls and k in controls:
            await f.process_frame(controls[k])
        part = x[i : i + chunk].tobytes()
        y = await f.filter(part)
        assert len(y) == len(part)
        out.append(np.frombuffer(y, np.int16))
    return np.concatenate(out)


# ------------------------------------------------------------------------------- the filter
async def test_default_model_without_arguments():
    f = NoiseSuppressionFilter()
    assert f.model is Model.load(None)
    await f.start(RATE)
    assert f.delay_samples == Denoiser(sample_rate=RATE).delay_samples == 511
    assert len(await f.filter(bytes(2 * FRAME))) == 2 * FRAME
    await f.stop()


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
async def test_same_length_out_and_exact_delay(identity_path, rate):
    """Any chunking gives as many bytes back; with the identity model the output is the
    input delayed by exactly ``delay_samples`` (to 1 LSB; band-limited input)."""
    f = NoiseSuppressionFilter(identity_path)
    await f.start(rate)
    t = np.arange(rate) / rate
    x = (0.2 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 2500 * t)) * 32767
    x = np.rint(x).astype(np.int16)
    out, pos = [], 0
    for n in [1, 7, 160, 0, 480, 333, 960, 4096] * 40:
        if pos >= len(x):
            break
        part = x[pos : pos + n].tobytes()
        y = await f.filter(part)
        assert len(y) == len(part)
        out.append(np.frombuffer(y, np.int16))
        pos += n
    y = np.concatenate(out).astype(np.int32)
    d = f.delay_samples
    assert d == Denoiser(identity_path, rate).delay_samples
    tol = 1 if rate == RATE else 40  # resampled rates: up to the resamplers' band limit
    assert np.abs(y[d + rate // 10 :] - x[rate // 10 : len(y) - d].astype(np.int32)).max() <= tol


async def test_enable_frame_bypasses_delay_aligned_and_comes_back():
    """FilterEnableFrame(False): after the 10 ms crossfade the output is the input delayed
    by delay_samples, bit-exact; FilterEnableFrame(True): the noise is removed again."""
    x = sample(RATE)
    f = NoiseSuppressionFilter()
    await f.start(RATE)
    off, on = 150, 300  # chunks (3 s, 6 s)
    y = await run_chunks(f, x, controls={off: FilterEnableFrame(enable=False), on: FilterEnableFrame(enable=True)})
    d = f.delay_samples
    a, b = off * FRAME + RAMP, on * FRAME
    np.testing.assert_array_equal(y[a:b], x[a - d : b - d])
    assert noise_removed_db(x[: off * FRAME], y[: off * FRAME], RATE, d) > 15
    s = (on + 25) * FRAME  # 0.5 s after re-enabling
    assert noise_removed_db(x[s - d :], y[s:], RATE, 0) > 15
    ref = Denoiser(sample_rate=RATE)
    np.testing.assert_array_equal(y[: off * FRAME], ref.process(x[: off * FRAME]))


async def test_update_settings_atten_lim_db(caplog):
    x = sample(RATE, seconds=5)
    f = NoiseSuppressionFilter()
    await f.start(RATE)
    await f.process_frame(FilterUpdateSettingsFrame(settings={"atten_lim_db": 6}))
    assert f.atten_lim_db == 6.0
    limited = noise_removed_db(x, await run_chunks(f, x), RATE, f.delay_samples)
    assert 4.0 < limited < 6.5
    with caplog.at_level(logging.WARNING, logger="voipfilter.integrations.pipecat"):
        await f.process_frame(FilterUpdateSettingsFrame(settings={"atten_lim_db": -3, "colour": "blue"}))
    assert f.atten_lim_db == 6.0
    assert "atten_lim_db must be None or a number >= 0" in caplog.text and "colour" in caplog.text
    await f.process_frame(FilterUpdateSettingsFrame(settings={"atten_lim_db": None}))
    f2 = NoiseSuppressionFilter()
    await f2.start(RATE)
    full = noise_removed_db(x, await run_chunks(f2, x), RATE, f2.delay_samples)
    assert full > limited + 10


async def test_update_settings_model_swaps_with_crossfade(identity_path, model_dir, caplog):
    """{"model": path} loads it off the loop, runs it beside the current one, crossfades:
    afterwards the output is the new model's (identity: the delayed input)."""
    from modelfactory import make_identity_model

    x = sample(RATE, seconds=3)
    f = NoiseSuppressionFilter()
    await f.start(RATE)
    d = f.delay_samples
    await f.filter(x[:FRAME].tobytes())
    await f.process_frame(FilterUpdateSettingsFrame(settings={"model": str(identity_path)}))
    assert f.model is Model.load(identity_path)
    y = await run_chunks(f, x[FRAME:])
    done = FRAME + 10 + round(0.22 * RATE)  # warm-up 0.2 s + 20 ms crossfade, whole chunks
    done = -(-done // FRAME) * FRAME
    err = np.abs(y[done:].astype(np.int32) - x[FRAME - d + done : len(x) - d].astype(np.int32))
    assert err.max() <= 1
    with caplog.at_level(logging.ERROR, logger="voipfilter.integrations.pipecat"):
        other = make_identity_model(model_dir / "short.onnx", n_fft=320, hop=160)
        await f.process_frame(FilterUpdateSettingsFrame(settings={"model": str(other)}))
        await f.process_frame(FilterUpdateSettingsFrame(settings={"model": str(model_dir / "missing.onnx")}))
    assert f.model is Model.load(identity_path)
    assert "delay" in caplog.text and "missing.onnx" in caplog.text


async def test_failing_model_passes_audio_through_aligned(model_dir):
    from modelfactory import make_identity_model

    f = NoiseSuppressionFilter(make_identity_model(model_dir / "fail.onnx", fail=True))
    await f.start(RATE)
    x = sample(RATE, seconds=1)
    y = await run_chunks(f, x)
    d = f.delay_samples
    assert np.abs(y[d:].astype(np.int32) - x[:-d].astype(np.int32)).max() <= 1


async def test_filter_runs_off_the_event_loop():
    """While the model works on a chunk the event loop runs other tasks."""
    f = NoiseSuppressionFilter()
    await f.start(RATE)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    await f.filter(sample(RATE, seconds=1).tobytes())
    during = ticks - before
    task.cancel()
    assert during > 0


async def test_before_start_and_after_stop_audio_passes_through():
    f = NoiseSuppressionFilter()
    x = sample(RATE, seconds=0.1).tobytes()
    assert await f.filter(x) == x
    await f.start(RATE)
    assert await f.filter(x) != x
    await f.stop()
    assert await f.filter(x) == x and f.delay_samples == 511
    await f.start(RATE)  # a fresh stream: same output as the first time
    f2 = NoiseSuppressionFilter()
    await f2.start(RATE)
    assert await f.filter(x) == await f2.filter(x)


# ------------------------------------------------------------------------------- a real call
class TapFilter(NoiseSuppressionFilter):
    """Our filter, recording what the transport hands it and what it returns."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[bytes, bytes, bool]] = []

    async def filter(self, audio: bytes) -> bytes:
        enabled = self.enabled
        out = await super().filter(audio)
        self.calls.append((audio, out, enabled))
        return out


async def test_smallwebrtc_call_records_filtered_audio_and_toggles_mid_call(tmp_path):
    """Caller (aiortc) plays noisy speech; pipeline = SmallWebRTC input transport with our
    filter as audio_in_filter -> a recorder. Filtered for 3 s, bypassed for 3 s, filtered."""
    import soundfile as sf
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer
    from pipecat.frames.frames import InputAudioRawFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameProcessor
    from pipecat.transports.base_transport import TransportParams
    from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
    from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
    from pipecat.workers.runner import WorkerRunner

    from voipfilter.ice import restrict_host_candidates

    marks = {"off": 3 * RATE, "on": 6 * RATE, "end": 9 * RATE}

    class Recorder(FrameProcessor):
        def __init__(self):
            super().__init__()
            self.audio: list[bytes] = []
            self.n = 0
            self.reached = {k: asyncio.Event() for k in marks}

        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            if isinstance(frame, InputAudioRawFrame):
                self.audio.append(frame.audio)
                self.n += len(frame.audio) // 2
                for k, n in marks.items():
                    if self.n >= n:
                        self.reached[k].set()
            await self.push_frame(frame, direction)

    wav = tmp_path / "caller.wav"
    sf.write(wav, sample(RATE, seconds=10), RATE, subtype="PCM_16")
    filt = TapFilter()
    rec = Recorder()
    with restrict_host_candidates(["127.0.0.1"]):
        caller = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        player = MediaPlayer(str(wav))
        caller.addTrack(player.audio)
        runner_task = None
        try:
            await caller.setLocalDescription(await caller.createOffer())
            conn = SmallWebRTCConnection(ice_servers=[])
            await conn.initialize(sdp=caller.localDescription.sdp, type=caller.localDescription.type)
            transport = SmallWebRTCTransport(conn, TransportParams(audio_in_enabled=True, audio_in_filter=filt))
            worker = PipelineWorker(
                Pipeline([transport.input(), rec]),
                params=PipelineParams(audio_in_sample_rate=RATE),
                idle_timeout_secs=None,
            )
            runner = WorkerRunner(handle_sigint=False)
            await runner.add_workers(worker)
            runner_task = asyncio.create_task(runner.run())
            answer = conn.get_answer()
            await caller.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
            await asyncio.wait_for(rec.reached["off"].wait(), 30)
            await worker.queue_frame(FilterEnableFrame(enable=False))
            await asyncio.wait_for(rec.reached["on"].wait(), 30)
            await worker.queue_frame(FilterEnableFrame(enable=True))
            await asyncio.wait_for(rec.reached["end"].wait(), 30)
            await worker.cancel()
            await asyncio.wait_for(runner_task, 15)
        finally:
            if runner_task is not None and not runner_task.done():
                runner_task.cancel()
            await caller.close()
            player.audio.stop()

    recorded = np.frombuffer(b"".join(rec.audio), np.int16)
    ins = [np.frombuffer(c[0], np.int16) for c in filt.calls]
    outs = [np.frombuffer(c[1], np.int16) for c in filt.calls]
    assert all(len(i) == len(o) for i, o in zip(ins, outs))
    x, y = np.concatenate(ins), np.concatenate(outs)
    # the pipeline delivers exactly what the filter returned
    np.testing.assert_array_equal(recorded, y[: len(recorded)])
    # ... which is the Denoiser's output on the transport's audio, toggled where the frames
    # reached the filter
    ref = Denoiser(sample_rate=RATE)
    replay = []
    for i, (_, _, enabled) in zip(ins, filt.calls):
        ref.enabled = enabled
        replay.append(ref.process(i))
    np.testing.assert_array_equal(np.concatenate(replay), y)

    enabled = np.concatenate([np.full(len(i), c[2]) for i, c in zip(ins, filt.calls)])
    off = int(np.argmin(enabled))  # first sample filtered while disabled
    on = off + int(np.argmax(enabled[off:]))  # first sample re-enabled
    assert 2 * RATE < off < on < len(recorded) - 2 * RATE
    d = filt.delay_samples
    # filtered: the noise floor down by what the Denoiser gives (> 15 dB)
    removed = noise_removed_db(x[RATE // 2 : off], recorded[RATE // 2 : off], RATE, d)
    offline = noise_removed_db(sample(RATE), Denoiser(sample_rate=RATE).process(sample(RATE)), RATE, d)
    print(f"noise removed: {removed:.1f} dB in the call, {offline:.1f} dB offline on the played file")
    assert removed > 15 and offline > 15, (removed, offline)
    # bypassed mid-call: the transport's audio delayed by exactly delay_samples
    np.testing.assert_array_equal(recorded[off + RAMP : on], x[off + RAMP - d : on - d])
    assert abs(noise_removed_db(x[off : on - d], recorded[off + d : on], RATE, 0)) < 1.0
    # back on: the noise removed again
    back = noise_removed_db(x[on + RATE // 2 : len(recorded) - d], recorded[on + RATE // 2 :], RATE, d)
    assert back > 15, back
