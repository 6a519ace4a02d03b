"""The batched engine (voipfilter/engine.py): many calls' model steps in one onnxruntime run.

Batched outputs must equal each call run alone (to float32 rounding of batched kernels) for
calls that start, stop, reset and change rate at different times; one call's bad input must
not change another's output; the engine's worker must end on close().
"""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from conftest import require_module
from voipfilter.denoiser import Denoiser, ModelStepError
from voipfilter.engine import BatchEngine, SlotStore, run_alone, run_batched
from voipfilter.model import Model

pytestmark = pytest.mark.timeout(120)

# Batched GEMMs round differently from batch 1: a few float32 ulps of the spectrum, carried
# through the GRU state. Measured worst over these tests: ~1e-6 of full scale.
TOL = 2e-5


@pytest.fixture(scope="module")
def gtcrn() -> Model:
    try:
        return Model.load(None)
    except FileNotFoundError:
        pytest.skip("no shipped model")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    require_module("onnx", "train")
    from modelfactory import make_identity_model

    d = tmp_path_factory.mktemp("engine-models")
    return {
        "identity": Model.load(make_identity_model(d / "identity.onnx")),
        "fail_after": Model.load(make_identity_model(d / "fail_after.onnx", fail_after=6)),
    }


def noise(n: int, seed: int, amp: float = 0.2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n + 30)
    k = np.hanning(31)
    return (amp * np.convolve(x, k / k.sum(), mode="same")[:n] / 0.2).astype(np.float32)


# ------------------------------------------------------------------------ a scripted workload
# Each call is a list of events, one per round: ("rate", R) starts a new Denoiser at R (the
# track does this on a rate change), ("reset",) resets it, ("chunk", n) feeds n samples,
# None: the call is idle (not started yet, or stopped) in that round.
def scripts() -> list[list]:
    a = [("rate", 48000)] + [("chunk", 960)] * 20
    b = [None] * 5 + [("rate", 16000)] + [("chunk", 320)] * 12 + [None] * 4  # starts late, stops early
    c = [("rate", 48000)] + [("chunk", 960)] * 6 + [("reset",)] + [("chunk", 441)] * 12
    d = [("rate", 48000)] + [("chunk", 960)] * 7 + [("rate", 16000)] + [("chunk", 160)] * 12  # rate change
    e = [None] * 3 + [("rate", 24000)] + [("chunk", 480)] * 4 + [None] * 3 + [("chunk", 700)] * 8  # pauses
    return [a, b, c, d, e]


def play(model: Model, engine: BatchEngine | None) -> list[np.ndarray]:
    """Run the scripts round by round: with an engine, each round's chunks go through
    run_batched together; without, each call's chunk runs alone. Outputs per call."""
    calls = scripts()
    dens: list = [None] * len(calls)
    outs: list[list[np.ndarray]] = [[] for _ in calls]
    pos = [0] * len(calls)
    signals = [noise(48000 * 2, seed=i) for i in range(len(calls))]
    for r in range(max(len(c) for c in calls)):
        gens, who = [], []
        for i, c in enumerate(calls):
            ev = c[r] if r < len(c) else None
            if ev is None:
                continue
            if ev[0] == "rate":
                dens[i] = Denoiser(model, sample_rate=ev[1], engine=engine)
            elif ev[0] == "reset":
                dens[i].reset()
            else:
                x = signals[i][pos[i] : pos[i] + ev[1]]
                pos[i] += ev[1]
                gens.append(dens[i].process_steps(x))
                who.append(i)
        if engine is None:
            results = [(run_alone(g), None) for g in gens]
        else:
            results = run_batched(gens)
        for i, (y, exc) in zip(who, results):
            assert exc is None
            outs[i].append(y)
    return [np.concatenate(o) for o in outs]


def test_batched_outputs_equal_each_call_alone(gtcrn):
    alone = play(gtcrn, None)
    batched = play(gtcrn, BatchEngine())
    for i, (a, b) in enumerate(zip(alone, batched)):
        assert a.shape == b.shape
        assert np.abs(a).max() > 0.01, "the call produced nothing to compare"
        np.testing.assert_allclose(b, a, rtol=0, atol=TOL, err_msg=f"call {i}")


def test_batched_steps_share_one_run(gtcrn, monkeypatch):
    engine = BatchEngine()
    store = engine.store(gtcrn)
    sizes = []
    real = store._run

    def counting(names, feed):
        sizes.append(feed["spec"].shape[0])
        return real(names, feed)

    monkeypatch.setattr(store, "_run", counting)
    dens = [Denoiser(gtcrn, sample_rate=16000, engine=engine) for _ in range(7)]
    run_batched(d.process_steps(noise(256, i)) for i, d in enumerate(dens))
    assert sizes == [7]


def test_slots_are_freed_and_reused(toy):
    engine = BatchEngine()
    store = engine.store(toy["identity"])
    dens = [Denoiser(toy["identity"], 16000, engine=engine) for _ in range(20)]  # grows past 8
    assert store.in_use == 20 and store.capacity >= 20
    run_batched(d.process_steps(np.zeros(256 * 3, np.float32)) for d in dens)
    assert all((store.state(d._core.slot)["h"] == 3.0).all() for d in dens)
    del dens
    import gc

    gc.collect()
    assert store.in_use == 0
    fresh = Denoiser(toy["identity"], 16000, engine=engine)
    assert (store.state(fresh._core.slot)["h"] == 0.0).all()  # a reused slot starts at zero


# ------------------------------------------------------------------------ isolation
def test_non_finite_row_does_not_change_the_others(gtcrn):
    """A NaN spectrum in one row: that row fails (state reset), the others get exactly what
    the same batch without it gives, and match batch-1 runs."""
    store = SlotStore(gtcrn)
    slots = np.array([store.alloc() for _ in range(4)])
    rng = np.random.default_rng(3)
    spec = rng.standard_normal((4, gtcrn.n_freq, 1, 2)).astype(np.float32)
    for k in range(4):  # give every slot some history
        store.step(slots[k : k + 1], spec[k : k + 1])
    before = {int(s): store.state(int(s)) for s in slots}
    ref = []
    for k in (0, 2, 3):  # the clean calls alone, from the same state
        solo = SlotStore(gtcrn)
        s = solo.alloc()
        solo.set_state(s, before[int(slots[k])])
        enh, errs = solo.step(np.array([s]), spec[k : k + 1])
        assert errs == [None]
        ref.append(enh)
    bad = spec.copy()
    bad[1] = np.nan
    enh, errs = store.step(slots, bad)
    assert errs[1] is not None and np.array_equal(enh[1:2], bad[1:2], equal_nan=True)
    assert all(np.all(v == 0) for v in store.state(int(slots[1])).values())
    for r, k in zip(ref, (0, 2, 3)):
        assert errs[k] is None
        np.testing.assert_allclose(enh[k : k + 1], r, rtol=0, atol=1e-4 * np.abs(r).max())


def test_a_failing_run_is_retried_call_by_call(toy):
    """The fail_after model raises for the whole batch once row 0 is 6 hops old; the engine
    retries each call alone, so only the old call fails and the young ones stay exact."""
    engine = BatchEngine()
    model = toy["fail_after"]
    old = Denoiser(model, 16000, engine=engine)
    run_alone(old.process_steps(np.zeros(256 * 6, np.float32)))  # 6 hops: it fails from now on
    young = [Denoiser(model, 16000, engine=engine) for _ in range(3)]
    ref = Denoiser(model, 16000)  # alone, no engine
    x = noise(256 * 4, seed=9)
    want = ref.process(x)
    results = run_batched([old.process_steps(x)] + [d.process_steps(x) for d in young])
    assert isinstance(results[0][1], ModelStepError)
    for y, exc in results[1:]:
        assert exc is None
        np.testing.assert_array_equal(y, want)


async def test_garbage_track_does_not_change_another_track(gtcrn):
    """Two tracks on one engine, one fed NaN/inf/huge float frames: the clean one's output
    is what it gives on an engine of its own."""
    require_module("aiortc", "server")
    from trackutil import FakeSource, drain, frames_of, out_mono

    from voipfilter.track import NoiseSuppressionTrack

    rate, n = 48000, 960
    clean = noise(rate, seed=1)
    garbage = noise(rate, seed=2)
    garbage[::7] = np.nan
    garbage[3::11] = np.inf
    garbage[5::13] = 1e30

    async def run(with_garbage: bool) -> np.ndarray:
        engine = BatchEngine()
        a = NoiseSuppressionTrack(FakeSource(frames_of(clean, rate, n, fmt="flt")), model=gtcrn,
                                  engine=engine, max_backlog_ms=None)
        tasks = [drain(a)]
        if with_garbage:
            b = NoiseSuppressionTrack(FakeSource(frames_of(garbage, rate, n, fmt="flt")), model=gtcrn,
                                      engine=engine, max_backlog_ms=None)
            tasks.append(drain(b))
        outs = await asyncio.gather(*tasks)
        engine.close()
        assert engine.steps > 0
        if with_garbage:
            assert engine.rounds < engine.steps, "the two tracks never shared a batch"
        return out_mono(outs[0])

    alone = await run(False)
    together = await run(True)
    assert np.abs(alone).max() > 0.01
    np.testing.assert_allclose(together, alone, rtol=0, atol=2 / 32768)  # s16 rounding of float noise


# ------------------------------------------------------------------------ life cycle
def engine_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


async def test_engine_shuts_down_with_no_thread_left(toy):
    name = "voipfilter-engine-test-shutdown"
    engine = BatchEngine(name=name)
    dens = [Denoiser(toy["identity"], 16000, engine=engine) for _ in range(3)]
    futs = [engine.submit(d.process_steps(np.zeros(700, np.float32))) for d in dens]
    outs = await asyncio.gather(*futs)
    assert [len(y) for y in outs] == [700] * 3
    assert len(engine_threads(name)) == 1
    engine.close()
    assert engine_threads(name) == []
    # submit after close starts a worker again; close ends it again
    assert len(await engine.submit(dens[0].process_steps(np.zeros(10, np.float32)))) == 10
    engine.close()
    assert engine_threads(name) == []


async def test_two_workers_equal_each_call_alone_and_shut_down(gtcrn):
    """BatchEngine(workers=2): six calls submitting their frames concurrently come out as
    each alone would, on two worker threads, and close() ends both."""
    name = "voipfilter-engine-test-two-workers"
    engine = BatchEngine(name=name, workers=2)
    signals = [noise(960 * 12, seed=10 + i) for i in range(6)]

    async def call(x: np.ndarray) -> np.ndarray:
        d = Denoiser(gtcrn, sample_rate=48000, engine=engine)
        outs = []
        for i in range(0, len(x), 960):
            outs.append(await engine.submit(d.process_steps(x[i : i + 960])))
        return np.concatenate(outs)

    together = await asyncio.gather(*(call(x) for x in signals))
    assert len(engine_threads(name)) == 2
    assert engine.steps > engine.rounds, "the calls never shared a batch"
    for i, (x, y) in enumerate(zip(signals, together)):
        ref = Denoiser(gtcrn, sample_rate=48000)
        want = np.concatenate([ref.process(x[j : j + 960]) for j in range(0, len(x), 960)])
        assert np.abs(want).max() > 0.01
        np.testing.assert_allclose(y, want, rtol=0, atol=TOL, err_msg=f"call {i}")
    engine.close()
    assert engine_threads(name) == []
    assert len(await call(signals[0][:960])) == 960  # opens again after close
    assert len(engine_threads(name)) == 2
    engine.close()
    assert engine_threads(name) == []


async def test_job_exceptions_reach_their_caller_only(toy):
    engine = BatchEngine()
    d = Denoiser(toy["identity"], 16000, engine=engine)
    ok = Denoiser(toy["identity"], 16000, engine=engine)
    bad = engine.submit(d.process_steps(np.zeros((2, 2), np.float32)))  # not mono: ValueError
    good = engine.submit(ok.process_steps(np.ones(512, np.float32)))
    with pytest.raises(ValueError):
        await bad
    assert len(await good) == 512
    engine.close()


async def test_tracks_default_to_the_process_engine(toy):
    require_module("aiortc", "server")
    from trackutil import FakeSource, drain, frames_of

    from voipfilter.engine import default_engine
    from voipfilter.track import NoiseSuppressionTrack

    rate, n = 48000, 960
    x = noise(rate // 2, seed=4)
    before = default_engine().steps
    tracks = [NoiseSuppressionTrack(FakeSource(frames_of(x, rate, n)), model=toy["identity"], max_backlog_ms=None)
              for _ in range(4)]
    outs = await asyncio.gather(*(drain(t) for t in tracks))
    assert all(len(o) == len(x) // n for o in outs)
    assert default_engine().steps > before
    assert all(t._engine is default_engine() for t in tracks)


# ------------------------------------------------------------------------ BatchDenoiser
def test_batch_denoiser_equals_denoisers_alone(gtcrn):
    from voipfilter.batch import BatchDenoiser

    bd = BatchDenoiser(gtcrn, sample_rate=48000, streams=3)
    alone = [Denoiser(gtcrn, sample_rate=48000) for _ in range(3)]
    xs = [noise(48000, seed=20 + k) for k in range(3)]
    sizes = [(960, 480, 0), (960, 1500, 333), (960, 960, 960)]  # per round, per stream
    pos = [0, 0, 0]
    for round_sizes in sizes:
        chunks = [xs[k][pos[k] : pos[k] + round_sizes[k]] for k in range(3)]
        outs = bd.process(chunks)
        for k in range(3):
            want = alone[k].process(chunks[k])
            assert outs[k].shape == want.shape
            np.testing.assert_allclose(outs[k], want, rtol=0, atol=TOL)
            pos[k] += round_sizes[k]
    assert bd.errors == [None, None, None]
    with pytest.raises(ValueError, match="stream 1"):
        bd.process([xs[0][:960], np.full(960, np.nan, np.float32), xs[2][:960]])


async def test_a_failing_engine_fails_open_in_the_track(toy):
    """If the engine itself fails a frame (e.g. closed while the frame was queued), the frame
    comes out unfiltered and counted, not as an exception from recv()."""
    require_module("aiortc", "server")
    from trackutil import FakeSource, drain, frames_of

    from voipfilter.track import NoiseSuppressionTrack

    class ClosedEngine(BatchEngine):
        def submit(self, gen, loop=None):
            gen.close()
            fut = (loop or asyncio.get_running_loop()).create_future()
            fut.set_exception(RuntimeError("voipfilter engine closed"))
            return fut

    rate, n = 48000, 960
    x = noise(rate // 5, seed=5)
    track = NoiseSuppressionTrack(FakeSource(frames_of(x, rate, n)), model=toy["identity"], engine=ClosedEngine(),
                                  max_backlog_ms=None)
    out = await drain(track)
    assert len(out) == len(x) // n
    st = track.stats()
    assert st["fail_open_frames"] == len(out) and "engine closed" in st["last_error"]


async def test_engine_survives_a_bad_job_and_keeps_serving(toy, monkeypatch):
    """A failure in the engine's own round (not in a job) fails that round's jobs and the
    worker goes on with the next ones."""
    import voipfilter.engine as eng

    engine = BatchEngine(name="voipfilter-engine-test-bad-round")
    d = Denoiser(toy["identity"], 16000, engine=engine)
    real = eng._run_requests
    calls = {"n": 0}

    def flaky(reqs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise MemoryError("simulated")
        return real(reqs)

    monkeypatch.setattr(eng, "_run_requests", flaky)
    with pytest.raises(MemoryError):
        await engine.submit(d.process_steps(np.zeros(256, np.float32)))
    assert len(await engine.submit(d.process_steps(np.zeros(256, np.float32)))) == 256
    engine.close()
    assert engine_threads(engine.name) == []
