"""One batched model step for many calls: :class:`BatchEngine`, :class:`SlotStore`.

A filter's per-frame work (:meth:`voipfilter.denoiser.Denoiser.process_steps`, the track's
mixing) is a generator that *yields a hop* ``(core, windowed frame)`` and gets
``(spec, enh, irfft(enh), error)`` back. Whoever drives the generator decides how it runs:

* :func:`run_alone` runs each step at once, batch 1 (``Denoiser.process``);
* :func:`run_batched` drives many generators in lock step and runs, per round, the hops of
  all of them that share a model as one FFT, **one** onnxruntime call (:meth:`SlotStore.step`)
  and one inverse FFT over the whole batch;
* :class:`BatchEngine` is a worker thread that does :func:`run_batched` for every job the
  event loop submits: jobs that arrive while a round runs join the next round, so at low
  load a hop runs at once and under load batches form by themselves (nothing waits for a
  batch to fill).

Per-call model state lives in a :class:`SlotStore` (one per model and engine): a row of a
batched array per state, gathered for the calls of a round with ``np.take`` and scattered
back with one fancy-indexed assignment per state. A row whose output is not finite gets
its state zeroed and an error (that call passes audio through, as a lone call would); a
batched run that raises is retried call by call, so one call's bad input cannot fail the
others. Outputs equal running each call alone up to float32 rounding of the batched
kernels (tests/test_engine.py).
"""
from __future__ import annotations

import asyncio
import atexit
import threading
import time
import weakref
from collections import deque
from typing import Any, Generator, Iterable, Optional

import numpy as np

from .model import Model
from .stft import irfft_frames, rfft_frames

__all__ = ["BatchEngine", "SlotStore", "default_engine", "run_alone", "run_batched", "step_share"]


_tls = threading.local()


def step_share() -> float:
    """Seconds of the model step just answered that are this stream's share (the batched
    run's time divided by its batch size); read right after a yield returns."""
    return getattr(_tls, "share", 0.0)


class SlotStore:
    """The model states of many streams of one model: slot i is row i of one array per
    state, held batch-first (the model's batch axis moved to the front, so a gather is one
    fancy-indexed copy of whole rows). Thread-safe (a lock around allocation, gather and
    scatter; not around the onnxruntime run)."""

    def __init__(self, model: Model, capacity: int = 8):
        self.model = model
        self._names = list(model.state_names)
        self._axes = list(model.state_batch_axes)
        self._out_names = list(model._output_names)
        self._run = model.session.run
        # re-entrant: a Denoiser collected by the GC while this thread holds the lock frees
        # its slot from inside the lock
        self._lock = threading.RLock()
        # states whose batch axis has only 1-sized axes before it: the model's layout is a
        # reshape of the batch-first rows (no transposed copy either way)
        self._flat = [all(d == 1 for d in model.state_shapes[i][:ax]) for i, ax in enumerate(self._axes)]
        self._capacity = 0
        self._arrays: list[np.ndarray] = []
        self._free: list[int] = []
        self._grow(max(1, capacity))

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def in_use(self) -> int:
        return self._capacity - len(self._free)

    def _grow(self, capacity: int) -> None:
        old = self._capacity
        arrays = []
        for i in range(len(self._names)):
            row = list(self.model.state_shapes[i])
            del row[self._axes[i]]
            a = np.zeros([capacity] + row, np.float32)
            if old:
                a[:old] = self._arrays[i]
            arrays.append(a)
        self._arrays = arrays
        self._free.extend(range(capacity - 1, old - 1, -1))  # pop() hands out low slots first
        self._capacity = capacity

    @staticmethod
    def _select(slots):
        """A slice for consecutive ascending slots (one call, or every call of a full round:
        gathers are views, scatters block copies), else the slot array itself."""
        n = len(slots)
        run = n > 0 and int(slots[-1]) - int(slots[0]) == n - 1 and (n == 1 or bool((np.diff(slots) == 1).all()))
        return slice(int(slots[0]), int(slots[0]) + n) if run else slots

    def _gather(self, slots) -> dict[str, np.ndarray]:
        """The states of ``slots`` in the model's layout (batch on its axis), contiguous
        (views where :meth:`_select` gives a slice: the run reads them before the scatter
        writes)."""
        sel = self._select(slots)
        feed = {}
        for name, a, ax, flat in zip(self._names, self._arrays, self._axes, self._flat):
            g = a[sel]
            if ax:
                if flat:
                    g = g.reshape(g.shape[1 : ax + 1] + g.shape[:1] + g.shape[ax + 1 :])
                else:
                    g = np.ascontiguousarray(np.moveaxis(g, 0, ax))
            feed[name] = g
        return feed

    def _scatter(self, slots, states) -> None:
        sel = self._select(slots)
        for a, ax, flat, s in zip(self._arrays, self._axes, self._flat, states):
            if ax:
                s = s.reshape((-1,) + a.shape[1:]) if flat else np.moveaxis(s, ax, 0)
            a[sel] = s

    def alloc(self) -> int:
        """A zeroed slot."""
        with self._lock:
            if not self._free:
                self._grow(2 * self._capacity)
            slot = self._free.pop()
            self._zero(slot)
            return slot

    def free(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)

    def _zero(self, slot: int) -> None:
        for a in self._arrays:
            a[slot] = 0.0

    def zero(self, slot: int) -> None:
        """Reset one stream's state."""
        with self._lock:
            self._zero(slot)

    def state(self, slot: int) -> dict[str, np.ndarray]:
        """A copy of one stream's state (batch 1), by state name."""
        with self._lock:
            return self._gather([slot])

    def set_state(self, slot: int, state: dict[str, np.ndarray]) -> None:
        """Overwrite one stream's state (batch-1 arrays in the model's layout, by name)."""
        with self._lock:
            self._scatter([slot], [state[n] for n in self._names])

    def step(self, slots: np.ndarray, spec: np.ndarray) -> tuple[np.ndarray, list]:
        """One hop for len(slots) streams: ``spec`` (B, F, 1, 2) → (enh (B, F, 1, 2), errors):
        errors[k] is None, or the error of stream k, whose enh row is then its own spec."""
        with self._lock:
            feed = self._gather(slots)
        feed["spec"] = spec
        try:
            outs = self._run(self._out_names, feed)
        except Exception as exc:  # onnxruntime raises its own types
            if len(slots) == 1:
                return spec, [exc]
            # isolate: one stream's input must not fail the others
            rows = [self.step(slots[k : k + 1], spec[k : k + 1]) for k in range(len(slots))]
            return np.concatenate([r[0] for r in rows]), [r[1][0] for r in rows]
        enh = outs[0]
        finite = np.isfinite(enh.reshape(len(slots), -1)).all(axis=1)
        states = outs[1:]
        with self._lock:
            self._scatter(slots, states)
            if not finite.all():
                for a in self._arrays:
                    a[slots[~finite]] = 0.0  # a stream whose state went bad starts afresh
        if finite.all():
            return enh, [None] * len(slots)
        err = FloatingPointError("model returned non-finite values; state reset")
        enh = enh.copy()
        enh[~finite] = spec[~finite]
        return enh, [None if ok else err for ok in finite]


def run_alone(gen: Generator) -> Any:
    """Drive a step generator to its end, each model step at batch 1; its return value."""
    try:
        req = gen.send(None)
        while True:
            core, frame = req
            t = time.perf_counter()
            out = core.step_alone(frame)
            _tls.share = time.perf_counter() - t
            req = gen.send(out)
    except StopIteration as stop:
        return stop.value


def _step_group(store: SlotStore, slots: np.ndarray, frames: list[np.ndarray], cores: list) -> list:
    """One hop for the streams of one store and frame length: one FFT, one model run, one
    inverse FFT. Cores on the stream's own STFT (``in_scale`` set, voipfilter.cores) give the
    model the first bins times ``in_scale`` and build each output spectrum themselves."""
    n_fft, in_scale = cores[0].n_fft, cores[0].in_scale
    spec = rfft_frames(np.stack(frames))
    if in_scale is not None:
        model_in = np.ascontiguousarray(spec[:, : in_scale.shape[0]] * in_scale)
        enh, errs = store.step(slots, model_in)
        out = np.stack([c.output_spectrum(model_in[k : k + 1], enh[k : k + 1], spec[k], errs[k])
                        for k, c in enumerate(cores)])
        td = np.fft.irfft(out, n_fft, axis=-1)
        return [(model_in[k : k + 1], enh[k : k + 1], td[k], errs[k]) for k in range(len(slots))]
    enh, errs = store.step(slots, spec)
    td = irfft_frames(enh, n_fft)
    return [(spec[k : k + 1], enh[k : k + 1], td[k], errs[k]) for k in range(len(slots))]


def _run_requests(reqs: list) -> tuple[list, list[float]]:
    """Run one hop per request ``(core, windowed frame)``: the requests of cores that share a
    SlotStore batched (FFT, model, inverse FFT), the others alone. Each answer is
    ``(spec, enh, irfft(enh), error)``; also each request's share of the time."""
    results: list = [None] * len(reqs)
    shares = [0.0] * len(reqs)
    groups: dict[tuple[int, int], tuple[SlotStore, list[int]]] = {}
    for k, (core, frame) in enumerate(reqs):
        store = getattr(core, "store", None)
        if store is None:
            t = time.perf_counter()
            results[k] = core.step_alone(frame)
            shares[k] = time.perf_counter() - t
        else:
            # one group per model and framing (streams at a native rate frame at theirs)
            groups.setdefault((id(store), core.n_fft), (store, []))[1].append(k)
    for store, ks in groups.values():
        t = time.perf_counter()
        if len(ks) > 1:
            ks.sort(key=lambda k: reqs[k][0].slot)  # ascending slots: often one run, gathered as views
        slots = np.fromiter((reqs[k][0].slot for k in ks), dtype=np.intp, count=len(ks))
        cores = [reqs[k][0] for k in ks]
        try:
            outs = _step_group(store, slots, [reqs[k][1] for k in ks], cores)
        except Exception:  # a malformed request (shape, dtype): run each on its own
            outs = []
            for j, k in enumerate(ks):
                try:
                    outs.append(_step_group(store, slots[j : j + 1], [reqs[k][1]], cores[j : j + 1])[0])
                except Exception as exc:
                    outs.append((None, None, None, exc))
        share = (time.perf_counter() - t) / len(ks)
        for k, r in zip(ks, outs):
            results[k] = r
            shares[k] = share
    return results, shares


def _advance(gen: Generator, value: Any) -> tuple[bool, Any]:
    """(True, next request) or (False, (result, exception))."""
    try:
        return True, gen.send(value)
    except StopIteration as stop:
        return False, (stop.value, None)
    except Exception as exc:
        return False, (None, exc)


def _step_round(active: list) -> tuple[list, list]:
    """One round for ``active`` = [(tag, generator, its pending request)]: run the requests
    (batched where they share a store), send each generator its answer. Returns the
    generators still going, as (tag, generator, next request), and the finished ones, as
    (tag, (return value, None) or (None, exception))."""
    outs, shares = _run_requests([req for _, _, req in active])
    going_on, finished = [], []
    for (tag, gen, _), out, share in zip(active, outs, shares):
        _tls.share = share
        going, v = _advance(gen, out)
        if going:
            going_on.append((tag, gen, v))
        else:
            finished.append((tag, v))
    return going_on, finished


def run_batched(gens: Iterable[Generator]) -> list[tuple[Any, Optional[BaseException]]]:
    """Drive many step generators in lock step, batching each round's model steps;
    per generator (return value, None) or (None, the exception it raised)."""
    gens = list(gens)
    results: list = [None] * len(gens)
    active: list[tuple[int, Generator, Any]] = []
    for i, g in enumerate(gens):
        going, v = _advance(g, None)
        if going:
            active.append((i, g, v))
        else:
            results[i] = v
    while active:
        active, finished = _step_round(active)
        for i, v in finished:
            results[i] = v
    return results


class BatchEngine:
    """Worker thread(s) that run submitted step generators, batching their model steps.

    ``submit(gen)`` (on an event loop) returns an asyncio future for the generator's return
    value. Each round the worker takes every job waiting, advances each to its next model
    step, runs the steps that share a model in one onnxruntime call, and hands the finished
    jobs back to their loop in one ``call_soon_threadsafe`` per loop. ``store(model)`` is
    the SlotStore its Denoisers keep their state in. ``close()`` ends the worker (it is also
    started again by the next ``submit``).

    ``workers`` (default 1): worker threads, each running rounds of its own (a worker takes
    every job waiting when it starts a round, so with two, a round forms while the other
    runs). A call has one job in flight at a time, so its steps stay in order on any
    worker. The workers share the GIL for the Python part of a round; onnxruntime runs
    release it. On two cores a second worker kept no more calls than one
    (docs/benchmarks-tracks.md, run 5): the default stays 1.
    """

    def __init__(self, name: str = "voipfilter-engine", workers: int = 1):
        self.name = name
        self.workers = max(1, int(workers))
        self._stores: dict[int, SlotStore] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._jobs: deque = deque()
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._idle = 0  # workers waiting for a job
        self.rounds = 0  # model-step rounds run (a round is one onnxruntime call per model)
        self.steps = 0  # model steps run (one per call-hop)

    # ---------------------------------------------------------------- state
    def store(self, model: Model) -> SlotStore:
        """The SlotStore for ``model`` in this engine (created on first use)."""
        with self._lock:
            st = self._stores.get(id(model))
            if st is None or st.model is not model:
                st = self._stores[id(model)] = SlotStore(model)
            return st

    # ---------------------------------------------------------------- jobs
    def submit(self, gen: Generator, loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future:
        """Run ``gen`` on the worker; the future (of ``loop``, default the running one) gets
        its return value or exception."""
        loop = loop or asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            if self._closing or len(self._threads) < self.workers or not all(t.is_alive() for t in self._threads):
                self._start_workers()
            self._jobs.append((gen, fut, loop))
            if self._idle:
                self._wake.notify()
        return fut

    def _start_workers(self) -> None:
        """(Under the lock) start the missing workers; a closed engine opens again."""
        self._closing = False
        self._threads = [t for t in self._threads if t.is_alive()]
        while len(self._threads) < self.workers:
            t = threading.Thread(target=self._work, name=self.name, daemon=True)
            t.start()
            self._threads.append(t)

    @property
    def threads(self) -> list[threading.Thread]:
        """The worker threads now started."""
        with self._lock:
            return list(self._threads)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker and wait for it (jobs still queued get a RuntimeError)."""
        with self._lock:
            self._closing = True
            self._wake.notify_all()
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            if self._closing:
                self._threads = [t for t in self._threads if t not in threads]

    def _take(self, block: bool) -> list:
        with self._lock:
            while block and not self._jobs and not self._closing:
                self._idle += 1
                try:
                    self._wake.wait()
                finally:
                    self._idle -= 1
            jobs = list(self._jobs)
            self._jobs.clear()
            return jobs

    def _work(self) -> None:
        active: list[tuple[tuple, Generator, Any]] = []  # ((fut, loop), gen, request)
        while True:
            new = self._take(block=not active)
            if self._closing:
                for (fut, loop), gen, *_ in active + [((f, lp), g) for g, f, lp in new]:
                    _deliver({loop: [(fut, None, RuntimeError("voipfilter engine closed"))]})
                    gen.close()
                return
            done: dict = {}
            try:
                active = self._round(active, new, done)
            except Exception as exc:  # a bug here must not leave callers waiting forever
                for (fut, loop), gen, *_ in active + [((f, lp), g) for g, f, lp in new]:
                    if not fut.done():
                        done.setdefault(loop, []).append((fut, None, exc))
                    gen.close()
                active = []
            if done:
                _deliver(done)

    def _round(self, active: list, new: list, done: dict) -> list:
        """Start the new jobs, run one batched step for every job waiting on one, advance
        them; finished jobs go to ``done`` (per loop). Returns the jobs still going."""
        for gen, fut, loop in new:
            going, v = _advance(gen, None)
            if going:
                active.append(((fut, loop), gen, v))
            else:
                done.setdefault(loop, []).append((fut,) + v)
        if not active:
            return active
        with self._lock:
            self.rounds += 1
            self.steps += len(active)
        active, finished = _step_round(active)
        for (fut, loop), v in finished:
            done.setdefault(loop, []).append((fut,) + v)
        return active


def _resolve(items: list) -> None:
    for fut, value, exc in items:
        if fut.done():  # cancelled by its awaiter
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


def _deliver(done: dict) -> None:
    """One hand-over per event loop for all the jobs of a round."""
    for loop, items in done.items():
        try:
            loop.call_soon_threadsafe(_resolve, items)
        except RuntimeError:  # that loop is closed: nobody waits for these
            pass


_default: BatchEngine | None = None
_default_lock = threading.Lock()


def default_engine() -> BatchEngine:
    """The process's engine (the one ``NoiseSuppressionTrack`` uses by default)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = BatchEngine()
            atexit.register(_default.close)
        return _default


def bind_slot(owner: object, engine: BatchEngine, model: Model) -> tuple[SlotStore, int]:
    """A slot of ``engine``'s store for ``model``, freed when ``owner`` is collected."""
    store = engine.store(model)
    slot = store.alloc()
    weakref.finalize(owner, store.free, slot)
    return store, slot
