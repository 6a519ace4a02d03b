"""The thread pool every filter of the process runs on, and the model's warm-up.

Filters (the aiortc track, the pipecat and LiveKit integrations) run the model off the event
loop in :func:`shared_executor`. The first filter per model and rate warms it in that pool
(:func:`prewarm_in_background`); a server warms it at start-up with :func:`prewarm`.
"""
from __future__ import annotations

import concurrent.futures
import os
import threading
from typing import Any

import numpy as np

_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def shared_executor() -> concurrent.futures.ThreadPoolExecutor:
    """One small thread pool for every track in the process (onnxruntime releases the GIL
    while it runs, so tracks use several cores; each track still runs one frame at a time)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            workers = max(1, min(8, os.cpu_count() or 1))
            _executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="voipfilter-track")
        return _executor


_prewarmed: set = set()


def _warm(model: Any, rate: int) -> None:
    """Build (and throw away) a Denoiser at ``rate``: the first one per rate measures its
    resampler timing (~100-200 ms) and the first inference warms onnxruntime (~15 ms).
    Done in the thread pool when a track is created, so the call's first frame is not late."""
    try:
        from .denoiser import Denoiser

        den = Denoiser(model, sample_rate=rate)
        for _ in range(5):  # 100 ms: several hops through the model, not only the first
            den.process(np.zeros(rate // 50, np.float32))
    except Exception:  # the track reports real errors when it meets them
        pass


def prewarm(model: Any, rate: int = 48000) -> None:
    """Warm ``model`` at ``rate`` now, in this thread (a server calls it once at start-up).

    Without it the first track's first frames race the background warm-up and one of them
    can take ~100 ms (the resampler timing and onnxruntime's first runs)."""
    key = (id(model), rate)
    if key not in _prewarmed:
        _prewarmed.add(key)
        _warm(model, rate)


def prewarm_in_background(model: Any, rate: int) -> None:
    """Warm ``model`` at ``rate`` in the shared pool, once per process (a filter calls it
    when it is created, so that its first frame is not late)."""
    key = (id(model), rate)
    if key not in _prewarmed:
        _prewarmed.add(key)
        shared_executor().submit(_warm, model, rate)
