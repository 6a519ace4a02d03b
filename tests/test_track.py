"""NoiseSuppressionTrack (voipfilter/track.py) and the ICE helper (voipfilter/ice.py).

Offline tests drive the track with synthetic frames from fake source tracks and the
synthetic identity model of tests/modelfactory.py (wet == input, so the output must be the
input delayed by exactly ``delay_samples``). Call tests connect two real
RTCPeerConnections over loopback (no STUN, host candidates limited to 127.0.0.1): peer A
plays a noisy speech file with MediaPlayer, peer B wraps the incoming track and records
or echoes it. The "cleaner" test uses the real upstream model (fixture ``upstream_onnx``).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import require_module
from trackutil import FakeSource, LiveSource, Tap, assert_invariants, drain, frames_of, make_frame, out_mono

aiortc = pytest.importorskip("aiortc")
from aiortc.contrib.media import MediaPlayer, MediaRecorder, MediaRelay  # noqa: E402
from aiortc.mediastreams import MediaStreamError  # noqa: E402

import voipfilter  # noqa: E402
from voipfilter.ice import LOOPBACK, current_restriction, restrict_host_candidates  # noqa: E402
from voipfilter.track import NoiseSuppressionTrack  # noqa: E402

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    require_module("onnx", "train")
    from modelfactory import make_identity_model

    d = tmp_path_factory.mktemp("track-models")
    return {
        "identity": make_identity_model(d / "identity.onnx"),
        "half": make_identity_model(d / "half.onnx", gain=0.5),
        "zero": make_identity_model(d / "zero.onnx", gain=0.0),
        "fail": make_identity_model(d / "fail.onnx", fail=True),
        "fail_after": make_identity_model(d / "fail_after.onnx", fail_after=40),
    }


def tone(rate: int, seconds: float, freq: float = 440.0, amp: float = 0.25) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def speechlike(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Band-limited noise bursts (below 7 kHz, so the 16 kHz model path keeps all of it)."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    x = rng.standard_normal(n + 64)
    k = np.hanning(31)
    x = np.convolve(x, k / k.sum(), mode="same")[:n]
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * np.arange(n) / rate)
    x = x * env
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


# Frame-exact tests turn the backlog policy off (as docs/track.md advises for offline
# pipelines): with it, one 120 ms stall of a loaded machine in the first second of a file
# (before the track has seen it run ahead of real time) drops frames. The policy has its
# own tests below.
OFFLINE = {"max_backlog_ms": None}


async def run_offline(frames, **kw) -> tuple[NoiseSuppressionTrack, list]:
    track = NoiseSuppressionTrack(FakeSource(frames), **{**OFFLINE, **kw})
    out = await drain(track)
    return track, out


# --------------------------------------------------------------------------- API, frames, delay
def test_public_name_and_kind(models):
    src = FakeSource([])
    track = voipfilter.NoiseSuppressionTrack(src, model=models["identity"])
    assert isinstance(track, NoiseSuppressionTrack)
    assert track.kind == "audio"
    assert track.readyState == "live"
    assert track.delay_ms == pytest.approx(1000 * 1535 / 48000)  # 48 kHz before any frame
    with pytest.raises(ValueError):
        NoiseSuppressionTrack(src, model=models["identity"], atten_lim_db=-3)
    # one model (one onnxruntime session) for every track of the process; state per track
    other = NoiseSuppressionTrack(FakeSource([]), model=str(models["identity"]))
    assert other.model is track.model


def test_missing_model_fails_at_construction(tmp_path):
    with pytest.raises(FileNotFoundError):
        NoiseSuppressionTrack(FakeSource([]), model=tmp_path / "nope.onnx")


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 32000, 44100, 48000])
async def test_identity_output_is_input_delayed(models, rate):
    n = rate // 50
    x = speechlike(rate, 1.0) if rate == 16000 else tone(rate, 1.0, 300.0)
    inp = frames_of(x, rate, n)
    track, out = await run_offline(inp, model=models["identity"])
    assert_invariants(inp, out)
    y = out_mono(out)
    D = track.delay_samples
    assert track.delay_ms == pytest.approx(1000 * D / rate)
    assert 20 < track.delay_ms < 40
    # after the first 100 ms (resampler start-up), y[t] == x[t - D] within a few LSB
    s = rate // 10
    err = np.abs(y[D + s :] - x[s : len(y) - D])
    assert err.max() < (2.5 / 32768 if rate == 16000 else 3e-3), err.max()
    assert np.abs(y[: D - 5]).max() < 1e-3  # the delay line starts silent
    st = track.stats()
    assert st["frames_in"] == st["frames_out"] == len(inp)
    assert st["errors"] == 0 and st["frames_dropped"] == 0
    assert st["delay_samples"] == D and st["sample_rate"] == rate


@pytest.mark.parametrize("fmt", ["s16", "s16p", "s32", "s32p", "flt", "fltp", "dbl", "u8"])
@pytest.mark.parametrize("layout", ["mono", "stereo"])
async def test_formats_and_layouts(models, fmt, layout):
    rate, n = 16000, 320
    x = speechlike(rate, 0.5, seed=1)
    inp = frames_of(x, rate, n, fmt=fmt, layout=layout)
    track, out = await run_offline(inp, model=models["identity"])
    assert_invariants(inp, out)
    # mono in → mono out; anything else → stereo with identical channels
    want = "mono" if layout == "mono" else "stereo"
    assert all(o.layout.name == want for o in out)
    if want == "stereo":
        a = np.concatenate([o.to_ndarray().reshape(-1, 2) for o in out])
        assert np.array_equal(a[:, 0], a[:, 1])
    y = out_mono(out)
    D = track.delay_samples
    tol = 2 / 128 if fmt == "u8" else 3 / 32768
    assert np.abs(y[D:] - x[: len(y) - D]).max() < tol


async def test_stereo_downmix_keeps_level_and_averages(models):
    rate, n = 16000, 320
    left = speechlike(rate, 0.5, seed=2)
    right = -left * 0.5
    inp = [make_frame(np.stack([left[i : i + n], right[i : i + n]]), rate, i, "fltp", "stereo") for i in range(0, len(left), n)]
    track, out = await run_offline(inp, model=models["identity"])
    y = out_mono(out)
    D = track.delay_samples
    np.testing.assert_allclose(y[D:], ((left + right) / 2)[: len(y) - D], atol=2 / 32768)


async def test_full_scale_and_out_of_range_float_input_clip_cleanly(models):
    rate, n = 48000, 960
    x = np.where(np.arange(rate) % 200 < 100, 1.0, -1.0).astype(np.float32)  # full-scale square
    inp = frames_of(x * 1.5, rate, n, fmt="flt", layout="mono")  # beyond full scale
    inp[3] = make_frame(np.full(n, np.nan, np.float32), rate, 3 * n, "flt", "mono")
    track, out = await run_offline(inp, model=models["identity"])
    assert_invariants(inp, out)
    y = out_mono(out)
    assert np.isfinite(y).all() and np.abs(y).max() <= 1.0
    assert track.stats()["errors"] == 0


async def test_frame_sizes_vary_and_empty_frames(models):
    rate = 48000
    x = tone(rate, 1.0, 200.0)
    sizes = [960, 480, 2880, 1, 0, 1440, 7, 960, 123, 0, 960]
    inp, pos = [], 0
    for k in sizes:
        inp.append(make_frame(x[pos : pos + k], rate, pos))
        pos += k
    track, out = await run_offline(inp, model=models["identity"])
    assert_invariants(inp, out)
    assert track.stats()["gaps"] == 0


async def test_source_end_ends_track(models):
    track = NoiseSuppressionTrack(FakeSource(frames_of(tone(16000, 0.1), 16000, 320)), model=models["identity"], **OFFLINE)
    ended = asyncio.Event()
    track.on("ended", ended.set)
    out = await drain(track)
    assert len(out) == 5
    assert track.readyState == "ended" and ended.is_set()
    with pytest.raises(MediaStreamError):
        await track.recv()


# --------------------------------------------------------------------------- knobs
def max_step(y: np.ndarray) -> float:
    return float(np.abs(np.diff(y)).max())


async def test_enabled_toggle_crossfades_without_click(models):
    rate, n = 48000, 960
    x = tone(rate, 2.0, 100.0, amp=0.5)  # slow sine: natural steps <= 0.0066
    frames = frames_of(x, rate, n)
    track = NoiseSuppressionTrack(FakeSource(frames), model=models["half"], **OFFLINE)
    out = []
    for i in range(len(frames)):
        if i in (20, 45, 47, 70):  # off, on, off again right away, on
            track.enabled = not track.enabled
        out.append(await track.recv())
    y = out_mono(out)
    D = track.delay_samples
    ratio_region = y[D:] / np.where(np.abs(x[: len(y) - D]) > 0.2, x[: len(y) - D], np.nan)
    assert max_step(y) < 0.012  # a switch without crossfade would step by up to 0.25
    # the output visits both the filtered (x0.5) and the bypassed (x1.0) gains
    assert np.nanmin(ratio_region) == pytest.approx(0.5, abs=0.01)
    assert np.nanmax(ratio_region) == pytest.approx(1.0, abs=0.01)
    assert track.stats()["errors"] == 0


async def test_disabled_from_start_is_exact_bypass_and_skips_the_model(models):
    rate, n = 16000, 320
    x = speechlike(rate, 1.0)
    inp = frames_of(x, rate, n)
    track, out = await run_offline(inp, model=models["zero"], enabled=False)
    y = out_mono(out)
    D = track.delay_samples
    assert np.array_equal(y[D:], np.rint(x[: len(y) - D] * 32768) / 32768)
    assert track.stats()["mode"] == "bypass"


async def test_atten_lim_db_mixes_dry_back(models):
    rate, n = 16000, 320
    x = tone(rate, 1.5, 300.0, amp=0.5)
    frames = frames_of(x, rate, n)
    track = NoiseSuppressionTrack(FakeSource(frames), model=models["zero"], atten_lim_db=6.0, **OFFLINE)
    out = [await track.recv() for _ in range(40)]
    track.atten_lim_db = None
    out += await drain(track)
    y = out_mono(out)
    D = track.delay_samples
    a = 10 ** (-6 / 20)
    seg = slice(D + 3200, D + 12000)  # 0.2 .. 0.75 s: limited to 6 dB
    np.testing.assert_allclose(y[seg], a * x[seg.start - D : seg.stop - D], atol=3e-4)
    assert np.abs(y[D + 16000 :]).max() < 1e-4  # limit lifted: the zero model's silence
    assert max_step(y) < 0.05


async def test_reset_is_click_free_and_recovers(models):
    rate, n = 16000, 320
    x = tone(rate, 2.0, 100.0, amp=0.5)
    frames = frames_of(x, rate, n)
    track = NoiseSuppressionTrack(FakeSource(frames), model=models["half"], **OFFLINE)
    out = []
    for i in range(len(frames)):
        if i == 30:
            track.reset()
        out.append(await track.recv())
    y = out_mono(out)
    D = track.delay_samples
    assert max_step(y) < 0.04
    ref = x[: len(y) - D]
    tail = slice(len(y) - 4000, len(y))
    np.testing.assert_allclose(y[tail], 0.5 * ref[tail.start - D : tail.stop - D], atol=2e-4)
    assert track.stats()["resets"] == 1


# --------------------------------------------------------------------------- fail-open
async def test_failing_model_passes_audio_unchanged(models, caplog):
    rate, n = 48000, 960
    x = speechlike(rate, 1.0, seed=3)
    inp = frames_of(x, rate, n)
    with caplog.at_level(logging.WARNING, logger="voipfilter.track"):
        track, out = await run_offline(inp, model=models["fail"])
    assert_invariants(inp, out)
    y = out_mono(out)
    D = track.delay_samples
    assert np.array_equal(y[D:], np.rint(x[: len(y) - D] * 32768) / 32768)  # bit-exact, delayed
    st = track.stats()
    assert st["errors"] >= 1 and st["fail_open_frames"] >= len(inp) - 1
    assert st["mode"] == "fail-open" and "model" in st["last_error"]
    warnings = [r for r in caplog.records if r.name == "voipfilter.track" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1  # logged once


async def test_model_failing_mid_call_fades_to_dry_and_retries(models):
    rate, n = 16000, 320
    x = tone(rate, 4.0, 100.0, amp=0.5)
    inp = frames_of(x, rate, n)
    track, out = await run_offline(inp, model=models["fail_after"])
    y = out_mono(out)
    D = track.delay_samples
    assert max_step(y) < 0.021  # the 100 Hz tone's own largest step at 16 kHz is 0.0196
    # after the failure the audio is the dry input, bit-exact once faded
    np.testing.assert_array_equal(y[-8000:], np.rint(x[len(y) - 8000 - D : len(y) - D] * 32768) / 32768)
    st = track.stats()
    assert st["errors"] >= 2  # failed, retried after 1 s, failed again (fail_after counts hops)


class RaisingDenoiser:
    """A denoiser that works, then raises a plain exception (no aligned output to fade from)."""

    def __init__(self, rate, fail_from=10, gain=0.5):
        self.delay_samples = 100
        self.calls = 0
        self.fail_from = fail_from
        self.gain = gain
        self.hist = np.zeros(100, np.float32)

    def process(self, x):
        self.calls += 1
        if self.calls >= self.fail_from:
            raise RuntimeError("boom")
        buf = np.concatenate([self.hist, x])
        self.hist = buf[-100:]
        return self.gain * buf[: len(x)]

    def reset(self):
        self.hist[:] = 0
        self.calls = 0


async def test_plain_exception_switches_to_dry_without_step():
    rate, n = 16000, 320
    x = tone(rate, 1.0, 100.0, amp=0.5)
    inp = frames_of(x, rate, n)
    track, out = await run_offline(inp, denoiser_factory=lambda r: RaisingDenoiser(r))
    assert_invariants(inp, out)
    y = out_mono(out)
    assert max_step(y) < 0.025  # tone's own: 0.0196; a 0.5 -> 1.0 gain jump: up to 0.25
    assert track.stats()["errors"] >= 1


async def test_unsupported_rate_passes_through(models):
    rate, n = 22050, 441
    x = tone(rate, 0.5)
    inp = frames_of(x, rate, n)
    track, out = await run_offline(inp, model=models["identity"])
    assert_invariants(inp, out)
    y = out_mono(out)
    assert track.delay_samples == 0
    np.testing.assert_array_equal(y, np.rint(x[: len(y)] * 32768) / 32768)
    st = track.stats()
    assert st["errors"] == 1 and st["mode"] == "passthrough"


# --------------------------------------------------------------------------- gaps and format changes
async def test_pts_gap_is_closed_with_a_dip_and_delay_kept(models):
    rate, n = 48000, 960
    x = tone(rate, 2.0, 150.0, amp=0.5)
    frames = frames_of(x, rate, n)
    # lose frames 30..32 (60 ms): the source skips them, pts jump
    inp = frames[:30] + frames[33:]
    track, out = await run_offline(inp, model=models["identity"])
    assert_invariants(inp, out)
    y = out_mono(out)
    D = track.delay_samples
    st = track.stats()
    assert st["gaps"] == 1 and st["gap_ms"] == pytest.approx(60.0)
    assert max_step(y) < 0.02  # splice of two unrelated phases, dipped: no click
    # post-gap audio keeps exactly the reported delay (relative to the source's own pts)
    post = 30 * n  # index in the closed stream of the first post-gap sample
    seg = slice(post + D + 480, post + D + 20000)
    src = x[33 * n + 480 : 33 * n + 20000]
    assert np.abs(y[seg] - src).max() < 3e-3


async def test_pts_going_back_and_none(models):
    rate, n = 16000, 320
    x = tone(rate, 1.0, 150.0)
    frames = frames_of(x, rate, n)
    inp = frames[:10] + [make_frame(x[i : i + n], rate, i) for i in range(0, 10 * n, n)] + [
        make_frame(x[:n], rate, None) for _ in range(3)
    ]
    track, out = await run_offline(inp, model=models["identity"])
    assert_invariants(inp, out)
    assert track.stats()["pts_jumps_back"] == 1


async def test_rate_and_layout_changes_mid_call(models):
    inp = []
    pts = 0
    for rate, fmt, layout, k in [(48000, "s16", "stereo", 20), (48000, "fltp", "mono", 10), (16000, "s16", "mono", 20), (8000, "s32", "stereo", 10), (48000, "s16", "stereo", 20)]:
        n = rate // 50
        x = tone(rate, k * 0.02, 200.0)
        for i in range(k):
            inp.append(make_frame(x[i * n : (i + 1) * n], rate, pts + i * n, fmt, layout))
        pts += k * n
    track, out = await run_offline(inp, model=models["identity"])
    assert_invariants(inp, out)
    assert {o.layout.name for o in out} == {"stereo"}  # locked to the first frame's layout
    st = track.stats()
    assert st["rate_changes"] == 3 and st["format_changes"] >= 3 and st["errors"] == 0
    # no step larger than the tone's own at any rate change (8 kHz: 0.0394 per sample)
    assert max_step(out_mono(out)) < 0.06


# --------------------------------------------------------------------------- event loop, backlog, cancel
class SlowDenoiser(RaisingDenoiser):
    def __init__(self, rate, seconds):
        super().__init__(rate, fail_from=10**9, gain=1.0)
        self.seconds = seconds

    def process(self, x):
        time.sleep(self.seconds)  # like a heavy model; time.sleep releases the GIL as ORT does
        return super().process(x)


class LoopHandshakeDenoiser(RaisingDenoiser):
    """Each process() asks the event loop to answer and waits (bounded) for the answer: the
    loop can answer only if it keeps running while the frame is being filtered."""

    def __init__(self, rate, loop, wait_s):
        super().__init__(rate, fail_from=10**9, gain=1.0)
        self.loop, self.wait_s = loop, wait_s
        self.answered = 0

    def process(self, x):
        answer = threading.Event()
        self.loop.call_soon_threadsafe(answer.set)
        if answer.wait(self.wait_s):
            self.answered += 1
        return super().process(x)


async def test_offload_keeps_event_loop_free():
    rate, n = 48000, 960
    loop = asyncio.get_running_loop()
    frames = frames_of(tone(rate, 0.4), rate, n)
    den: list[LoopHandshakeDenoiser] = []
    factory = lambda r: den.append(LoopHandshakeDenoiser(r, loop, wait_s=10.0)) or den[-1]  # noqa: E731
    track = NoiseSuppressionTrack(FakeSource(frames), denoiser_factory=factory, **OFFLINE)
    out = await drain(track)
    assert len(out) == len(frames)
    assert den[0].answered == den[0].calls == len(frames)  # the loop ran during every frame
    # inline (offload=False) blocks the loop for the whole model time: no answer ever comes
    # (each wait gives up after 0.2 s), the reason inline is off by default
    frames = frames_of(tone(rate, 0.1), rate, n)
    den.clear()
    den_wait = 0.2
    factory = lambda r: den.append(LoopHandshakeDenoiser(r, loop, wait_s=den_wait)) or den[-1]  # noqa: E731
    inline = NoiseSuppressionTrack(FakeSource(frames), offload=False, denoiser_factory=factory, **OFFLINE)
    assert len(await drain(inline)) == len(frames)
    assert den[0].calls == len(frames) and den[0].answered == 0
    # and the track reports it: inline, the loop was held for the 0.2 s wait; offloaded,
    # only for the bookkeeping around each frame
    assert inline.stats()["loop_block_ms_max"] >= 1000 * den_wait
    assert track.stats()["loop_block_ms_max"] < inline.stats()["loop_block_ms_max"]


async def test_backlog_is_bounded_and_drops_are_counted():
    rate, n = 48000, 960
    frames = frames_of(tone(rate, 3.0), rate, n)
    src = LiveSource(frames)
    # 26 ms of work per 20 ms frame: 1.3x slower than real time
    track = NoiseSuppressionTrack(src, max_backlog_ms=100, denoiser_factory=lambda r: SlowDenoiser(r, 0.026))
    latency = []
    out = []
    while True:
        try:
            f = await asyncio.wait_for(track.recv(), 5)
        except MediaStreamError:
            break
        latency.append(time.monotonic() - src.sent[f.pts])
        out.append(f)
    st = track.stats()
    assert st["frames_dropped"] > 0
    assert st["frames_in"] == len(frames) and st["frames_out"] == len(out) == len(frames) - st["frames_dropped"]
    # bounded: without the policy the last frames come ~0.9 s late (3 s at 1.3x); with it
    # 0.1 s + a frame's work, and a loaded machine's scheduling may add some: half of 0.9 s
    # still tells the two apart
    assert max(latency) < 0.45, max(latency)
    # every output frame still carries its own input's pts, in order
    pts = [f.pts for f in out]
    assert pts == sorted(pts)


class HiccupDenoiser(SlowDenoiser):
    """Fast, except one long stall (a GC pause, a busy machine) at the first call for which
    ``when()`` is true."""

    def __init__(self, rate, seconds, when, stall):
        super().__init__(rate, seconds)
        self.when, self.stall = when, stall
        self.stalled_at = None

    def process(self, x):
        if self.stalled_at is None and self.when():
            self.stalled_at = self.calls + 1
            time.sleep(self.stall)
        return super().process(x)


async def test_file_read_faster_than_real_time_is_never_dropped_from():
    rate, n = 48000, 960
    frames = frames_of(tone(rate, 4.0), rate, n)
    den = []
    track = NoiseSuppressionTrack(
        FakeSource(frames),
        denoiser_factory=lambda r: den.append(HiccupDenoiser(r, 0.004, lambda: track._offline, 0.4)) or den[-1],
    )
    out = await drain(track)
    assert den[0].stalled_at is not None, "the file never ran a second ahead of real time"
    assert den[0].stalled_at < len(frames)  # the stall came mid-file, with frames after it
    assert len(out) == len(frames) and track.stats()["frames_dropped"] == 0


class EnteredDenoiser(SlowDenoiser):
    """Counts process() calls as they start (SlowDenoiser counts them after its sleep)."""

    def __init__(self, rate, seconds):
        super().__init__(rate, seconds)
        self.entered = 0

    def process(self, x):
        self.entered += 1
        return super().process(x)


async def test_cancelled_recv_keeps_order(models):
    rate, n = 48000, 960
    frames = frames_of(tone(rate, 0.5), rate, n)
    den = []
    track = NoiseSuppressionTrack(FakeSource(frames), **OFFLINE,
                                  denoiser_factory=lambda r: den.append(EnteredDenoiser(r, 0.05)) or den[-1])
    first = await track.recv()
    task = asyncio.ensure_future(track.recv())
    deadline = time.monotonic() + 10
    while den[0].entered < 2:  # the second frame is being filtered in the thread pool
        assert time.monotonic() < deadline, "the second frame never reached the filter"
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rest = await drain(track)
    pts = [first.pts] + [f.pts for f in rest]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)
    assert len(rest) == len(frames) - 2  # the abandoned frame is the only one missing


# --------------------------------------------------------------------------- stats
async def test_stats_report_levels_and_timing(models):
    rate, n = 16000, 320
    x = speechlike(rate, 1.0)
    track, out = await run_offline(frames_of(x, rate, n), model=models["half"])
    st = track.stats()
    for key in ["frames_in", "frames_out", "proc_ms_p50", "proc_ms_p95", "proc_ms_max", "rtf", "delay_ms",
                "gaps", "frames_dropped", "errors", "input_level_dbfs", "output_level_dbfs", "removed_db"]:
        assert key in st
    assert st["proc_ms_p50"] <= st["proc_ms_p95"] <= st["proc_ms_max"]
    assert st["rtf"] > 0
    assert st["removed_db"] == pytest.approx(6.02, abs=0.3)  # half gain


# --------------------------------------------------------------------------- aiortc media helpers
@pytest.fixture(scope="module")
def noisy_wav(data_dir, tmp_path_factory) -> tuple[Path, Path]:
    """~3.5 s of VoiceBank-DEMAND dev noisy speech (and its clean pair) as 16 kHz wav files:
    the two noisiest dev utterances (lowest SI-SDR of noisy against clean), so the effect of
    the filter stands well clear of what Opus and resampling do to the waveform."""
    import soundfile as sf

    vbd = data_dir / "dev" / "vbd"
    pairs = []
    for path in sorted((vbd / "noisy").glob("*.flac")):
        a, sr = sf.read(path, dtype="float32")
        b, _ = sf.read(vbd / "clean" / path.name, dtype="float32")
        assert sr == 16000 and len(a) == len(b)
        pairs.append((_si_sdr(a, b), path.name, a, b))
    pairs.sort(key=lambda p: (p[0], p[1]))
    chosen = pairs[:2]
    d = tmp_path_factory.mktemp("call-audio")
    sf.write(d / "noisy.wav", np.concatenate([p[2] for p in chosen]), 16000, subtype="PCM_16")
    sf.write(d / "clean.wav", np.concatenate([p[3] for p in chosen]), 16000, subtype="PCM_16")
    return d / "noisy.wav", d / "clean.wav"


async def test_mediaplayer_to_track_to_mediarecorder(models, noisy_wav, tmp_path):
    import soundfile as sf

    player = MediaPlayer(str(noisy_wav[0]))
    tap = Tap(player.audio)
    track = NoiseSuppressionTrack(tap, model=models["identity"], **OFFLINE)
    ended = asyncio.Event()
    track.on("ended", ended.set)
    out_path = tmp_path / "out.wav"
    recorder = MediaRecorder(str(out_path))
    recorder.addTrack(track)
    await recorder.start()
    await asyncio.wait_for(ended.wait(), 30)  # the file's end ends the track
    await recorder.stop()
    assert track.readyState == "ended"
    y, sr = sf.read(out_path, dtype="float32")
    y = y.mean(axis=1) if y.ndim == 2 else y
    x = tap.mono()
    assert sr == 48000 and len(x) > 2 * sr
    D = track.delay_samples
    assert D == 1535
    m = min(len(y) - D, len(x))
    c = np.corrcoef(y[D : D + m], x[:m])[0, 1]
    assert c > 0.995, c  # the recording is the player's audio, delayed by exactly D
    st = track.stats()
    assert st["frames_in"] == st["frames_out"] == len(tap.meta) and st["errors"] == 0


async def test_mediarelay_subscribers(models, noisy_wav):
    player = MediaPlayer(str(noisy_wav[0]))
    relay = MediaRelay()
    a = NoiseSuppressionTrack(relay.subscribe(player.audio), model=models["identity"], **OFFLINE)
    b = NoiseSuppressionTrack(relay.subscribe(player.audio), model=models["half"], enabled=False, **OFFLINE)
    fa, fb = await asyncio.gather(drain(a, limit=25), drain(b, limit=25))
    assert [f.pts for f in fa] == [f.pts for f in fb]
    assert a.model is not b.model
    player.audio.stop()


# --------------------------------------------------------------------------- ICE helper
async def test_restrict_host_candidates_loopback_only():
    from aiortc import RTCPeerConnection
    from rtcloop import candidate_hosts, make_pc

    assert current_restriction() is None
    with restrict_host_candidates(["127.0.0.1", "::1"]) as r:
        assert current_restriction() is r
        assert r.host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
        pc = make_pc()
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())
        assert candidate_hosts(pc) <= {"127.0.0.1", "::1"} and "127.0.0.1" in candidate_hosts(pc)
        await pc.close()
    assert current_restriction() is None
    with pytest.raises(ValueError):
        restrict_host_candidates(["localhost"])
    with pytest.raises(ValueError):
        restrict_host_candidates([])
    with pytest.raises(TypeError):
        restrict_host_candidates("127.0.0.1")
    outer = restrict_host_candidates(LOOPBACK)
    inner = restrict_host_candidates(["::1"])
    assert current_restriction() is inner
    inner()  # the handle is also a plain "restore" callable
    assert current_restriction() is outer
    restrict_host_candidates(None)
    assert current_restriction() is None and not outer.active
    assert isinstance(RTCPeerConnection, type)


# --------------------------------------------------------------------------- real calls
async def call(noisy: Path, seconds: float, *, echo: bool, knob_task=None, **track_kw):
    """A plays ``noisy``; B wraps the incoming track (tapped before and after the filter)
    and echoes it back to A (``echo``) or consumes it like a recorder. Returns
    (track, in_tap, out_tap, frames A got back)."""
    from rtcloop import candidate_hosts, connect, loopback_pair

    track_kw = {**OFFLINE, **track_kw}  # frame for frame: no drops under a loaded machine
    result = {}
    echoed = []
    consumers = []

    async with loopback_pair() as (a, b):
        player = MediaPlayer(str(noisy))
        a.addTrack(player.audio)

        @b.on("track")
        def on_track(remote):
            in_tap = Tap(remote)
            track = NoiseSuppressionTrack(in_tap, **track_kw)
            out_tap = Tap(track)
            result.update(track=track, in_tap=in_tap, out_tap=out_tap)
            if echo:
                b.addTrack(out_tap)
            else:
                consumers.append(asyncio.ensure_future(drain(out_tap, timeout=seconds + 10)))

        @a.on("track")
        def on_echo(remote):
            async def pull():
                while True:
                    try:
                        echoed.append(await remote.recv())
                    except MediaStreamError:
                        return

            consumers.append(asyncio.ensure_future(pull()))

        await connect(a, b)
        assert candidate_hosts(a) == {"127.0.0.1"} and candidate_hosts(b) == {"127.0.0.1"}
        knobs = asyncio.ensure_future(knob_task(result)) if knob_task else None
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds and player.audio.readyState == "live":
            await asyncio.sleep(0.05)
        # the filter has caught up with what B received (one frame may be in it)
        deadline = time.monotonic() + 10
        while len(result["out_tap"].meta) < len(result["in_tap"].meta) - 1:
            assert time.monotonic() < deadline, "the filter fell behind what B received"
            await asyncio.sleep(0.02)
        if knobs:
            knobs.cancel()
            with pytest.raises(asyncio.CancelledError):
                await knobs
    for c in consumers:
        c.cancel()
    return result["track"], result["in_tap"], result["out_tap"], echoed


def assert_frame_for_frame(in_tap: Tap, out_tap: Tap):
    """Every frame B received came out of the filter as one frame with the same pts and size
    (the last one or two may still have been in flight when the call closed)."""
    assert len(in_tap.meta) > 50
    assert len(in_tap.meta) - 2 <= len(out_tap.meta) <= len(in_tap.meta)
    assert out_tap.meta == in_tap.meta[: len(out_tap.meta)]
    assert {m[2] for m in in_tap.meta} == {48000} and {m[1] for m in in_tap.meta} == {960}


async def test_call_echo_frame_for_frame_with_knobs_toggled(models, noisy_wav):
    async def knobs(res):
        k = 0
        while True:
            await asyncio.sleep(0.07)
            t = res.get("track")
            if t is None:
                continue
            k += 1
            t.enabled = k % 3 != 0
            t.atten_lim_db = [None, 6.0, 20.0, 0.0][k % 4]
            if k % 5 == 0:
                t.reset()
            t.stats()

    track, in_tap, out_tap, echoed = await call(noisy_wav[0], 3.5, echo=True, knob_task=knobs, model=models["half"])
    assert_frame_for_frame(in_tap, out_tap)
    assert len(echoed) > 50  # A hears the filtered audio come back
    st = track.stats()
    assert st["errors"] == 0 and st["resets"] >= 3
    assert 0 < st["proc_ms_p50"] <= st["proc_ms_p95"] <= st["proc_ms_max"] and st["rtf"] > 0
    y = out_tap.mono()
    assert np.isfinite(y).all() and np.abs(y).max() > 0.01


async def test_call_with_failing_model_keeps_audio_flowing_unchanged(models, noisy_wav):
    track, in_tap, out_tap, echoed = await call(noisy_wav[0], 3.0, echo=True, model=models["fail"])
    assert_frame_for_frame(in_tap, out_tap)
    x, y = in_tap.mono(), out_tap.mono()
    D = track.delay_samples
    m = len(y) - D
    # exactly the received audio, delayed by D (to the rounding of the L/R average)
    np.testing.assert_allclose(y[D:], x[:m], rtol=0, atol=1.01 / 32768)
    assert np.abs(y).max() > 0.01
    st = track.stats()
    assert st["errors"] >= 1 and st["mode"] == "fail-open"
    assert len(echoed) > 50


def _si_sdr(est: np.ndarray, ref: np.ndarray) -> float:
    a = np.dot(est, ref) / np.dot(ref, ref)
    e = est - a * ref
    return 10 * np.log10(np.dot(a * ref, a * ref) / np.dot(e, e))


def _align_to(ref: np.ndarray, sig: np.ndarray, max_lag: int) -> int:
    """Lag L (samples) with sig[t + L] ~ ref[t], by cross-correlation."""
    n = len(ref) + len(sig)
    nfft = 1 << (n - 1).bit_length()
    c = np.fft.irfft(np.fft.rfft(sig, nfft) * np.conj(np.fft.rfft(ref, nfft)), nfft)
    c = np.concatenate([c[-max_lag:], c[: max_lag + 1]])
    return int(np.argmax(c)) - max_lag


async def test_call_output_is_cleaner_than_bypass(noisy_wav, upstream_onnx):
    """Real model: the audio B's filter sends, aligned by the reported delay, is closer to the
    clean speech than with the filter disabled (SI-SDR and PESQ-WB at 16 kHz)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    pesq = pytest.importorskip("pesq").pesq
    clean16, _ = sf.read(noisy_wav[1], dtype="float32")
    clean = resample_poly(clean16, 3, 1).astype(np.float32)  # compare at the call's 48 kHz
    scores = {}
    for enabled in (True, False):
        track, in_tap, out_tap, _ = await call(noisy_wav[0], 4.5, echo=False, model=upstream_onnx, enabled=enabled)
        assert_frame_for_frame(in_tap, out_tap)
        x, y = in_tap.mono(), out_tap.mono()
        D = track.delay_samples
        # where the clean speech sits in what B received (player start, Opus), by
        # cross-correlation; the filter output is then taken exactly D samples later: the
        # reported delay, not a search
        L = _align_to(clean, x, 48000)
        y = y[D:]
        start = max(L, 0)
        m = min(len(y) - start, len(clean) - (start - L)) - 4800
        ref = clean[start - L : start - L + m]
        est = y[start : start + m]
        noisy = x[start : start + m]
        to16 = lambda a: resample_poly(a, 1, 3).astype(np.float32)  # noqa: E731
        scores[enabled] = dict(
            si_sdr=_si_sdr(est, ref),
            pesq=pesq(16000, to16(ref), to16(est), "wb"),
            noisy_si_sdr=_si_sdr(noisy, ref),
            seconds=m / 48000,
            stats=track.stats(),
        )
        if not enabled:  # bypass is the received audio itself, delayed by D
            np.testing.assert_allclose(est, noisy, atol=2e-4)
    on, off = scores[True], scores[False]
    print({k: {kk: vv for kk, vv in v.items() if kk != "stats"} for k, v in scores.items()})
    assert on["seconds"] > 2.0 and off["seconds"] > 2.0
    assert on["si_sdr"] > off["si_sdr"] + 3.0, scores
    assert on["pesq"] > off["pesq"] + 0.3, scores
    assert on["stats"]["removed_db"] > 1.0 and on["stats"]["errors"] == 0
