"""A streaming ONNX model: one shared onnxruntime session, its metadata, per-hop stepping.

The file format is the "Streaming ONNX contract" in docs/architecture.md: input ``spec``
(B, F, 1, 2) float32, then one input per state (metadata ``state_names`` order), outputs
``enh`` then ``<state>_out``; configuration in ``metadata_props``. Nothing but the file is
needed at run time (no torch).

``Model.load(path)`` caches one instance per resolved path (and thread count), so any number
of :class:`~voipfilter.denoiser.Denoiser` objects share one session (weights shared, state
per stream). ``InferenceSession.run`` is thread-safe, so they may run in different threads.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Mapping

import numpy as np

from .stft import SYMMETRIC, WINDOW_KINDS, WindowPair, window_pair_from_metadata

__all__ = [
    "Model",
    "ModelNotFoundError",
    "default_model_path",
    "resolve_model_path",
    "shipped_models",
    "FORMAT_VERSION",
    "WINDOW",
]

FORMAT_VERSION = "1"
WINDOW = SYMMETRIC  # the default framing; WINDOW_KINDS lists all that load
DEFAULT_MODEL_NAME = "gtcrn-voipfilter.onnx"
REQUIRED_KEYS = (
    "voipfilter.format",
    "sample_rate",
    "n_fft",
    "hop",
    "window",
    "state_names",
    "state_shapes",
    "model_name",
)


class ModelNotFoundError(FileNotFoundError):
    """No model file: the default model is not installed, or a given path does not exist."""


def default_model_path() -> Path:
    """Where the shipped default model lives: ``voipfilter/models/gtcrn-voipfilter.onnx``."""
    return Path(__file__).resolve().parent / "models" / DEFAULT_MODEL_NAME


def shipped_models() -> dict[str, Path]:
    """The models installed with voipfilter, by name (``voipfilter/models/NAME.onnx``; each
    has its card ``NAME.md`` beside it)."""
    folder = default_model_path().parent
    return {p.stem: p for p in sorted(folder.glob("*.onnx"))} if folder.is_dir() else {}


def _shipped_names() -> str:
    names = list(shipped_models())
    return ", ".join(names) if names else "none installed"


def resolve_model_path(model: "str | os.PathLike | None") -> Path:
    """The file a model argument means: None (the default model), the name of a shipped
    model (``gtcrn-voipfilter``), or a path. An existing file wins over a shipped name.
    ModelNotFoundError lists the shipped names."""
    if model is None:
        path = default_model_path()
        if not path.is_file():
            raise ModelNotFoundError(_no_default_model_message(path))
        return path
    path = Path(model).expanduser()
    if path.is_file():
        return path
    shipped = shipped_models()
    if str(model) in shipped:
        return shipped[str(model)]
    if path.suffix.lower() != ".onnx" and path.parent == Path("."):
        raise ModelNotFoundError(
            f"no shipped model named {str(model)!r} and no such file; shipped models: {_shipped_names()} "
            "(or pass the path of a streaming .onnx file)"
        )
    raise ModelNotFoundError(
        f"model file not found: {model}: no such file (a model is a shipped model's name: "
        f"{_shipped_names()}, or the path of a streaming .onnx file)"
    )


def _no_default_model_message(path: Path) -> str:
    return (
        f"no default model: {path} does not exist (this install ships no trained model yet). "
        "Pass one explicitly, e.g. Denoiser(model='model.onnx') or --model model.onnx, or export "
        "one from a checkpoint with: voipfilter export --checkpoint CKPT -o model.onnx "
        "(needs pip install 'voipfilter[train]')"
    )


class Model:
    """A loaded streaming ONNX model.

    Attributes: ``path``, ``sample_rate``, ``n_fft``, ``hop``, ``n_freq``, ``window`` (the
    kind), ``windows`` (the :class:`~voipfilter.stft.WindowPair`),
    ``state_names``, ``state_shapes`` (batch-1 shapes), ``state_batch_axes`` (the batch
    axis of each state: 0 in the contract), ``model_name``, ``model_card``,
    ``metadata`` (all metadata strings), ``session``.
    """

    _cache: dict[tuple[str, int], "Model"] = {}
    _cache_lock = threading.Lock()

    def __init__(self, path: str | os.PathLike, intra_op_num_threads: int = 1):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ModelNotFoundError(f"model file not found: {path}")
        self.path = path.resolve()
        self.intra_op_num_threads = int(intra_op_num_threads)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_num_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.intra_op_num_threads == 1:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"{self.path}: not a loadable ONNX model ({exc})") from exc
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self._parse_metadata()
        self._check_io()
        self._output_names = ["enh"] + [f"{n}_out" for n in self.state_names]
        self._run = self.session.run

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: "str | os.PathLike | Model | None" = None, intra_op_num_threads: int = 1) -> "Model":
        """A shared Model for ``path``: None (the default model), a shipped model's name
        (:func:`shipped_models`) or a file path; cached per resolved path."""
        if isinstance(path, Model):
            return path
        resolved = resolve_model_path(path).resolve()
        key = (str(resolved), int(intra_op_num_threads))
        with cls._cache_lock:
            model = cls._cache.get(key)
            if model is None:
                model = cls(resolved, intra_op_num_threads=intra_op_num_threads)
                cls._cache[key] = model
            return model

    @classmethod
    def clear_cache(cls) -> None:
        with cls._cache_lock:
            cls._cache.clear()

    def _bad(self, what: str) -> ValueError:
        return ValueError(
            f"{self.path}: not a voipfilter streaming model: {what} "
            "(see 'Streaming ONNX contract' in docs/architecture.md; export one with "
            "voipfilter export --checkpoint CKPT -o model.onnx)"
        )

    def _parse_metadata(self) -> None:
        meta = self.metadata
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise self._bad(f"metadata lacks {', '.join(missing)}")
        if meta["voipfilter.format"] != FORMAT_VERSION:
            raise self._bad(f"metadata voipfilter.format={meta['voipfilter.format']!r}, expected {FORMAT_VERSION!r}")
        try:
            self.sample_rate = int(meta["sample_rate"])
            self.n_fft = int(meta["n_fft"])
            self.hop = int(meta["hop"])
        except ValueError as exc:
            raise self._bad(f"sample_rate/n_fft/hop must be integers ({exc})") from None
        if self.sample_rate <= 0 or self.n_fft <= 0 or self.hop <= 0 or self.n_fft % 2 or self.n_fft % self.hop:
            raise self._bad(f"bad sample_rate={self.sample_rate}, n_fft={self.n_fft}, hop={self.hop}")
        self.window = meta["window"]
        try:
            self.windows: WindowPair = window_pair_from_metadata(meta)
        except ValueError as exc:
            raise ValueError(
                f"{self.path}: cannot run this model: {exc}. Its STFT framing is one this voipfilter "
                f"does not implement (known windows: {', '.join(WINDOW_KINDS)}); upgrade voipfilter "
                "or re-export the model with a known window"
            ) from None
        try:
            names = json.loads(meta["state_names"])
            shapes = json.loads(meta["state_shapes"])
        except json.JSONDecodeError as exc:
            raise self._bad(f"state_names/state_shapes are not JSON ({exc})") from None
        if not (isinstance(names, list) and all(isinstance(n, str) and n for n in names)):
            raise self._bad("state_names must be a JSON list of names")
        if not (
            isinstance(shapes, list)
            and len(shapes) == len(names)
            and all(
                isinstance(s, list)
                and s
                and all(isinstance(d, int) and (d > 0 or d == -1) for d in s)
                and s.count(-1) <= 1
                for s in shapes
            )
        ):
            raise self._bad(
                "state_shapes must be a JSON list of integer shapes (batch 1, or -1 marking the "
                "batch axis), one per state"
            )
        if len(set(names)) != len(names) or "spec" in names:
            raise self._bad("state names must be unique and differ from 'spec'")
        self.state_names: list[str] = names
        # The contract writes the batch axis as -1 (a GRU hidden state is (1, B, H)); a shape
        # without -1 has its batch first (size 1). Shapes are stored with batch 1.
        self.state_batch_axes: list[int] = [s.index(-1) if -1 in s else 0 for s in shapes]
        self.state_shapes: list[tuple[int, ...]] = [tuple(1 if d == -1 else d for d in s) for s in shapes]
        self.model_name: str = meta["model_name"]
        self.model_card: str = meta.get("model_card", "")
        self.n_freq = self.n_fft // 2 + 1

    def _check_io(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        want_in = ["spec"] + self.state_names
        want_out = ["enh"] + [f"{n}_out" for n in self.state_names]
        if set(inputs) != set(want_in):
            raise self._bad(f"inputs are {sorted(inputs)}, metadata implies {want_in}")
        missing = [n for n in want_out if n not in outputs]
        if missing:
            raise self._bad(f"outputs lack {missing}")
        spec_shape = inputs["spec"].shape
        if len(spec_shape) != 4 or spec_shape[1:] != [self.n_freq, 1, 2]:
            raise self._bad(f"input spec has shape {spec_shape}, expected (B, {self.n_freq}, 1, 2)")
        for i, (name, shape) in enumerate(zip(self.state_names, self.state_shapes)):
            got = inputs[name].shape
            symbolic = [k for k, g in enumerate(got) if not isinstance(g, int)]
            if len(symbolic) == 1 and self.state_batch_axes[i] == 0 and symbolic[0] != 0:
                self.state_batch_axes[i] = symbolic[0]  # metadata said nothing; trust the graph
            axis = self.state_batch_axes[i]
            if len(got) != len(shape) or any(
                isinstance(g, int) and g != s for k, (g, s) in enumerate(zip(got, shape)) if k != axis
            ):
                raise self._bad(f"state {name} has shape {got} in the graph, metadata says {list(shape)}")

    # ------------------------------------------------------------------ running
    @property
    def delay_samples(self) -> int:
        """Delay of a sample-level stream at the model's rate: synthesis window length - 1
        (511 at sqrt-Hann 512/256, 255 for the asymmetric 512/256 pair at hop 128)."""
        return self.windows.delay_samples

    def initial_state(self, batch: int = 1) -> dict[str, np.ndarray]:
        """Zero state for ``batch`` streams (each state's first dimension is the batch)."""
        return {
            name: np.zeros(self._batched(i, batch), dtype=np.float32)
            for i, name in enumerate(self.state_names)
        }

    def _batched(self, i: int, batch: int) -> tuple[int, ...]:
        shape = list(self.state_shapes[i])
        shape[self.state_batch_axes[i]] = batch
        return tuple(shape)

    def step(self, spec: np.ndarray, state: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One hop: spec (B, F, 1, 2) float32 and state → (enh (B, F, 1, 2), new state)."""
        feed = dict(state)
        feed["spec"] = spec
        outs = self._run(self._output_names, feed)
        return outs[0], dict(zip(self.state_names, outs[1:]))

    def __repr__(self) -> str:
        return (
            f"Model({self.model_name!r}, path={str(self.path)!r}, sample_rate={self.sample_rate}, "
            f"n_fft={self.n_fft}, hop={self.hop}, states={self.state_names})"
        )
