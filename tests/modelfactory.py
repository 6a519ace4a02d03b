"""Tiny synthetic ONNX models that follow the streaming ONNX contract (docs/architecture.md).

``make_identity_model(path)`` writes a model whose enhanced spectrum is ``gain * spec`` and
whose single state ``h`` (B, 4) comes back as ``h_out = h + 1``, so a test can see that
state is carried from hop to hop (after k hops of one stream, every element of h is k).
``bin_gains`` (one real gain per frequency bin) makes it a fixed mask instead: ``enh[f] =
bin_gains[f] * spec[f]``, e.g. to pass or attenuate the top bins.

``window`` picks the STFT framing written to the metadata (``sqrt_hann_periodic`` or
``asymmetric_sqrt_hann``, e.g. ``n_fft=512, hop=128, window="asymmetric_sqrt_hann"``).

``fail=True`` gives a model that loads fine but raises inside ``InferenceSession.run`` on
every hop; ``fail_after=N`` runs normally for N hops of a stream (state h < N) and raises
from hop N on. Both are for testing that a failing model step loses no audio.

Needs the ``onnx`` package (extra ``train``; it is in the dev venv). Run-time code never
imports this module.
"""
from __future__ import annotations

import json
from pathlib import Path

STATE_NAME = "h"
STATE_SIZE = 4


def _failing_branch(helper, TensorProto, name: str, x: str, out: str):
    """A subgraph (or node list) that reshapes x (B, F, 1, 2) to (-1, 7): F*2 = 514 is not a
    multiple of 7, so it fails at run time, never at load time (B is symbolic)."""
    import numpy as np
    from onnx import numpy_helper

    bad = numpy_helper.from_array(np.array([-1, 7], dtype=np.int64), name=f"{name}_bad_shape")
    shape_node = helper.make_node("Constant", [], [f"{name}_bad_shape_c"], value=bad)
    reshape = helper.make_node("Reshape", [x, f"{name}_bad_shape_c"], [f"{name}_flat"])
    back_shape = helper.make_node("Shape", [x], [f"{name}_x_shape"])
    back = helper.make_node("Reshape", [f"{name}_flat", f"{name}_x_shape"], [out])
    return [shape_node, reshape, back_shape, back]


def make_identity_model(
    path: str | Path,
    n_fft: int = 512,
    hop: int = 256,
    sample_rate: int = 16000,
    gain: float = 1.0,
    fail: bool = False,
    fail_after: int | None = None,
    model_name: str = "identity",
    opset: int = 17,
    bin_gains=None,
    window: str = "sqrt_hann_periodic",
) -> Path:
    """Write a contract-following identity model to ``path`` and return the path."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from voipfilter.stft import window_pair

    path = Path(path)
    n_freq = n_fft // 2 + 1
    spec = helper.make_tensor_value_info("spec", TensorProto.FLOAT, ["B", n_freq, 1, 2])
    h = helper.make_tensor_value_info(STATE_NAME, TensorProto.FLOAT, ["B", STATE_SIZE])
    enh = helper.make_tensor_value_info("enh", TensorProto.FLOAT, ["B", n_freq, 1, 2])
    h_out = helper.make_tensor_value_info(f"{STATE_NAME}_out", TensorProto.FLOAT, ["B", STATE_SIZE])

    if bin_gains is not None:
        bin_gains = np.asarray(bin_gains, dtype=np.float32)
        if bin_gains.shape != (n_freq,):
            raise ValueError(f"bin_gains must have {n_freq} values, got shape {bin_gains.shape}")
        gain_array = gain * bin_gains.reshape(1, n_freq, 1, 1)
    else:
        gain_array = np.array(gain, dtype=np.float32)
    inits = [
        numpy_helper.from_array(gain_array.astype(np.float32), name="gain"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), name="one"),
    ]
    nodes = [helper.make_node("Add", [STATE_NAME, "one"], [f"{STATE_NAME}_out"])]

    if fail:
        nodes += _failing_branch(helper, TensorProto, "f", "spec", "spec_checked")
    elif fail_after is not None:
        # If h[0, 0] >= fail_after: the failing reshape; else: pass spec through.
        inits.append(numpy_helper.from_array(np.array(float(fail_after), dtype=np.float32), name="limit"))
        inits.append(numpy_helper.from_array(np.array([0], dtype=np.int64), name="zero_idx"))
        nodes += [
            helper.make_node("Gather", [STATE_NAME, "zero_idx"], ["h_row"], axis=0),  # (1, 4)
            helper.make_node("ReduceMax", ["h_row"], ["h_max"], keepdims=0),
            helper.make_node("GreaterOrEqual", ["h_max", "limit"], ["do_fail"]),
        ]
        out_then = helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)
        then_graph = helper.make_graph(
            _failing_branch(helper, TensorProto, "t", "spec", "then_out"), "fail_branch", [], [out_then]
        )
        out_else = helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)
        else_graph = helper.make_graph(
            [helper.make_node("Identity", ["spec"], ["else_out"])], "pass_branch", [], [out_else]
        )
        nodes.append(
            helper.make_node("If", ["do_fail"], ["spec_checked"], then_branch=then_graph, else_branch=else_graph)
        )
    else:
        nodes.append(helper.make_node("Identity", ["spec"], ["spec_checked"]))
    nodes.append(helper.make_node("Mul", ["spec_checked", "gain"], ["enh"]))

    graph = helper.make_graph(nodes, model_name, [spec, h], [enh, h_out], initializer=inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="voipfilter-tests"
    )
    model.ir_version = 8
    meta = {
        "voipfilter.format": "1",
        "sample_rate": str(sample_rate),
        **window_pair(window, n_fft, hop).metadata(),
        "state_names": json.dumps([STATE_NAME]),
        "state_shapes": json.dumps([[-1, STATE_SIZE]]),  # -1 marks the batch axis
        "model_name": model_name,
        "model_card": f"# {model_name}\n\nSynthetic test model: enh = {'bin_gains * ' if bin_gains is not None else ''}{gain} * spec.\n",
    }
    onnx.helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_model_with_metadata(path: str | Path, metadata: dict[str, str] | None, **kwargs) -> Path:
    """An identity model whose metadata is replaced by ``metadata`` (None: no metadata at
    all), for testing how a run time reports bad files."""
    import onnx

    path = make_identity_model(path, **kwargs)
    model = onnx.load(str(path))
    del model.metadata_props[:]
    if metadata:
        onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(path))
    return Path(path)
