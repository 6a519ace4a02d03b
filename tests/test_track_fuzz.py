"""Property tests for NoiseSuppressionTrack on synthetic av.AudioFrames from a fake source.

Whatever the source yields (formats, layouts, rates, frame sizes, pts jumps, silence,
full scale, NaN, knobs turned between frames, a model that fails at random), ``recv()``
never raises until the source ends, and every output frame is s16 with the input frame's
sample count, rate, pts and time_base, in a layout that never changes during the track.
"""
from __future__ import annotations

import asyncio
import fractions

import numpy as np
import pytest

from conftest import require_module
from trackutil import FakeSource, assert_invariants, drain, make_frame, out_mono

pytest.importorskip("aiortc")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from voipfilter.track import NoiseSuppressionTrack  # noqa: E402

pytestmark = pytest.mark.timeout(300)

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)

RATES = [8000, 16000, 24000, 32000, 44100, 48000, 11025, 22050, 96000]
FORMATS = ["s16", "s16p", "s32", "s32p", "flt", "fltp", "dbl", "u8"]
LAYOUTS = ["mono", "stereo", "5.1"]
CONTENT = ["silence", "full_scale", "noise", "sine", "nan", "dc_max"]


@pytest.fixture(scope="module")
def identity_model(tmp_path_factory):
    require_module("onnx", "train")
    from modelfactory import make_identity_model

    return make_identity_model(tmp_path_factory.mktemp("fuzz-models") / "identity.onnx")


def content(kind: str, n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "silence":
        return np.zeros(n, np.float32)
    if kind == "full_scale":
        return np.where(np.arange(n) % 37 < 18, 1.0, -1.0).astype(np.float32)
    if kind == "noise":
        return rng.uniform(-1, 1, n).astype(np.float32)
    if kind == "nan":
        x = rng.uniform(-1, 1, n).astype(np.float32)
        x[::7] = np.nan
        x[1::11] = np.inf
        return x
    if kind == "dc_max":
        return np.ones(n, np.float32)
    return (0.7 * np.sin(2 * np.pi * 997 * np.arange(n) / rate)).astype(np.float32)


frame_spec = st.fixed_dictionaries(
    {
        "rate": st.sampled_from(RATES),
        "fmt": st.sampled_from(FORMATS),
        "layout": st.sampled_from(LAYOUTS),
        "n": st.one_of(st.sampled_from([0, 1, 80, 160, 320, 441, 480, 882, 960, 1920, 2880]), st.integers(0, 5000)),
        "jump": st.one_of(st.just(0), st.just(0), st.integers(-10000, 100000)),
        "kind": st.sampled_from(CONTENT),
        "pts_none": st.sampled_from([False] * 9 + [True]),
        "knob": st.sampled_from([None, None, None, "toggle", "atten", "atten_none", "reset"]),
    }
)


class FlakyDenoiser:
    """Raises on a random subset of calls; otherwise a pure delay line."""

    def __init__(self, rate, rng):
        self.delay_samples = rate // 100
        self.rng = rng
        self.hist = np.zeros(self.delay_samples, np.float32)

    def process(self, x):
        if self.rng.random() < 0.2:
            raise RuntimeError("flaky")
        buf = np.concatenate([self.hist, x])
        self.hist = buf[len(buf) - self.delay_samples :]
        return buf[: len(x)]

    def reset(self):
        if self.rng.random() < 0.2:
            raise RuntimeError("flaky reset")
        self.hist[:] = 0


def build_frames(specs, rng):
    frames, pts = [], 0
    for s in specs:
        pts = max(0, pts + s["jump"])
        x = content(s["kind"], s["n"], s["rate"], rng)
        fmt = s["fmt"]
        if s["kind"] == "nan" and fmt not in ("flt", "fltp", "dbl"):
            x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
        frames.append(make_frame(x, s["rate"], None if s["pts_none"] else pts, fmt, s["layout"]))
        pts += s["n"]
    return frames


async def run_track(frames, specs, **kw):
    src = FakeSource(frames)
    # The backlog policy stays in (its code runs on every frame) with a bound no stall of a
    # loaded machine reaches: at the default 100 ms one such stall drops frames of a file.
    kw.setdefault("max_backlog_ms", 60_000.0)
    track = NoiseSuppressionTrack(src, **kw)
    out = []
    for s in specs:
        if s["knob"] == "toggle":
            track.enabled = not track.enabled
        elif s["knob"] == "atten":
            track.atten_lim_db = 12.0
        elif s["knob"] == "atten_none":
            track.atten_lim_db = None
        elif s["knob"] == "reset":
            track.reset()
        out.append(await track.recv())
    rest = await drain(track, timeout=30)
    assert rest == [] and track.readyState == "ended"
    return track, out


def check_invariants(frames, out, track):
    assert_invariants(frames, out)
    layouts = {o.layout.name for o in out}
    assert len(layouts) == 1 and layouts <= {"mono", "stereo"}
    st_ = track.stats()
    assert st_["frames_in"] == st_["frames_out"] == len(frames)
    assert st_["frames_dropped"] == 0


@settings(SETTINGS, max_examples=150)
@given(specs=st.lists(frame_spec, min_size=1, max_size=25), offload=st.booleans(), seed=st.integers(0, 2**16))
def test_recv_never_raises_and_frames_keep_invariants(identity_model, specs, offload, seed):
    rng = np.random.default_rng(seed)
    frames = build_frames(specs, rng)
    track, out = asyncio.run(run_track(frames, specs, model=identity_model, offload=offload))
    check_invariants(frames, out, track)


@settings(SETTINGS, max_examples=150)
@given(specs=st.lists(frame_spec, min_size=1, max_size=25), seed=st.integers(0, 2**16))
def test_flaky_denoiser_never_breaks_the_stream(specs, seed):
    rng = np.random.default_rng(seed)
    frames = build_frames(specs, rng)
    track, out = asyncio.run(
        run_track(frames, specs, denoiser_factory=lambda r: FlakyDenoiser(r, np.random.default_rng(seed + r)))
    )
    check_invariants(frames, out, track)


@SETTINGS
@given(
    sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=30),
    rate=st.sampled_from([8000, 16000, 48000]),
    layout=st.sampled_from(["mono", "stereo"]),
)
def test_silence_in_silence_out_and_full_scale_never_wraps(identity_model, sizes, rate, layout):
    for kind in ("silence", "dc_max"):
        frames, pts = [], 0
        for n in sizes:
            frames.append(make_frame(content(kind, n, rate, None), rate, pts, "s16", layout))
            pts += n
        track, out = asyncio.run(run_track(frames, [{"knob": None}] * len(frames), model=identity_model))
        check_invariants(frames, out, track)
        y = out_mono(out)
        if kind == "silence":
            assert not y.any()
        else:  # +full scale in: int16 overflow would show as large negative samples
            assert y.min() > -0.15 and y.max() <= 32767 / 32768


@SETTINGS
@given(sizes=st.lists(st.integers(1, 2000), min_size=2, max_size=40), seed=st.integers(0, 2**16))
def test_chunking_never_changes_the_output(identity_model, sizes, seed):
    """16 kHz identity model: output is the input delayed by exactly delay_samples, bit for
    bit, however the stream is cut into frames."""
    rng = np.random.default_rng(seed)
    total = sum(sizes)
    x = (np.rint(rng.uniform(-0.5, 0.5, total) * 32768) / 32768).astype(np.float32)
    frames, pos = [], 0
    for n in sizes:
        frames.append(make_frame(x[pos : pos + n], 16000, pos, "s16", "mono"))
        pos += n
    track, out = asyncio.run(run_track(frames, [{"knob": None}] * len(frames), model=identity_model))
    check_invariants(frames, out, track)
    y = out_mono(out)
    D = track.delay_samples
    assert D == 511
    np.testing.assert_allclose(y[D:], x[: max(total - D, 0)], rtol=0, atol=1.01 / 32768)
    assert not y[: min(D, total)].any()


def test_time_base_other_than_one_over_rate(identity_model):
    """pts in a 1/90000 time base (as some sources use): gaps are measured in seconds."""
    rate, n = 48000, 960
    tb = fractions.Fraction(1, 90000)
    x = np.zeros(n * 10, np.float32)
    frames = [make_frame(x[i * n : (i + 1) * n], rate, i * 1800, "s16", "stereo", time_base=tb) for i in range(10)]
    frames += [make_frame(x[:n], rate, 30 * 1800, "s16", "stereo", time_base=tb)]
    track, out = asyncio.run(run_track(frames, [{"knob": None}] * len(frames), model=identity_model))
    check_invariants(frames, out, track)
    assert track.stats()["gaps"] == 1 and track.stats()["gap_ms"] == pytest.approx(400.0)
