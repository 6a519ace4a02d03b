"""``BatchDenoiser``: many independent mono streams filtered together, offline.

Each stream is a :class:`~voipfilter.denoiser.Denoiser` whose model state is a slot of one
:class:`~voipfilter.engine.SlotStore`; ``process(chunks)`` runs the hops of all streams in
batched onnxruntime calls (:func:`~voipfilter.engine.run_batched`) in the calling thread.
Stream k's output is what ``Denoiser.process`` gives for stream k alone, to float32
rounding of batched kernels. For live calls use ``NoiseSuppressionTrack`` (it batches on the
process's engine by itself).

::

    bd = BatchDenoiser(None, sample_rate=16000, streams=64)
    outs = bd.process([chunk_0, chunk_1, ...])   # one chunk per stream, any lengths
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .denoiser import Denoiser, ModelStepError
from .engine import BatchEngine, run_batched
from .model import Model

__all__ = ["BatchDenoiser"]


class BatchDenoiser:
    """``streams`` Denoisers at ``sample_rate`` stepped together (kwargs as for Denoiser).

    ``process(chunks)`` takes one array per stream (float32 or int16, any lengths, 0 for a
    stream with nothing this time) and returns one output per stream, each delayed by
    ``delay_samples``. A stream whose model step failed gets its passed-through output, and
    its error is in ``errors[k]`` (None otherwise); an invalid chunk (not 1-D, NaN...) raises
    ValueError after the other streams were processed, and leaves its own stream unchanged.
    """

    def __init__(self, model: "Model | str | os.PathLike | None" = None, sample_rate: int = 16000,
                 streams: int = 1, **kwargs):
        if int(streams) < 1:
            raise ValueError(f"streams must be >= 1, got {streams!r}")
        model = Model.load(model)
        self.engine = BatchEngine(name="voipfilter-batch")  # a slot store only: its worker never starts
        self.denoisers = [Denoiser(model, sample_rate=sample_rate, engine=self.engine, **kwargs)
                          for _ in range(int(streams))]
        self.errors: list[BaseException | None] = [None] * len(self.denoisers)

    @property
    def delay_samples(self) -> int:
        return self.denoisers[0].delay_samples

    @property
    def streams(self) -> int:
        return len(self.denoisers)

    def reset(self, stream: int | None = None) -> None:
        """Reset one stream (or all)."""
        for d in self.denoisers if stream is None else [self.denoisers[stream]]:
            d.reset()

    def process(self, chunks: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(chunks) != len(self.denoisers):
            raise ValueError(f"expected {len(self.denoisers)} chunks (one per stream), got {len(chunks)}")
        results = run_batched(d.process_steps(x) for d, x in zip(self.denoisers, chunks))
        outs: list[np.ndarray] = []
        invalid = None
        for k, (y, exc) in enumerate(results):
            self.errors[k] = exc
            if isinstance(exc, ModelStepError):
                y = exc.output
            elif exc is not None:
                invalid = invalid or (k, exc)
                y = None
            outs.append(y)
        if invalid is not None:
            k, exc = invalid
            raise ValueError(f"stream {k}: {exc}") from exc
        return outs
