"""``voipfilter export``: a checkpoint -> a self-describing streaming ONNX model.

The file follows the contract in docs/architecture.md: input ``spec`` (B, F, 1, 2) plus
one input per state, outputs ``enh`` plus ``<state>_out``, dynamic batch, and metadata
(sample rate, STFT, window, state names/shapes, model name and card) so the run time needs
nothing but the file.
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import onnx
import onnx.numpy_helper
import torch

from .checkpoint import load_checkpoint
from .gtcrn import GTCRN
from .streaming import StreamingGTCRN

OPSET = 17
FORMAT_VERSION = "1"


def _batch_axes(shape: tuple[int, ...]) -> dict[int, str]:
    return {i: "batch" for i, d in enumerate(shape) if d == -1}


def simplify_graph(proto: onnx.ModelProto) -> None:
    """Make the exported graph leaner without changing what it computes.

    - ``Constant`` nodes become initializers;
    - a GRU whose initial hidden state is built as zeros (ConstantOfShape) gets no
      initial state instead, which ONNX defines as zeros;
    - nodes whose outputs nobody uses are removed.
    """
    graph = proto.graph
    for node in [n for n in graph.node if n.op_type == "Constant"]:
        value = next(a for a in node.attribute if a.name == "value")
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value.t)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        graph.node.remove(node)
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type == "GRU" and len(node.input) > 5 and node.input[5]:
            src = producers.get(node.input[5])
            if src is not None and src.op_type == "ConstantOfShape":
                node.input[5] = ""
    while True:  # drop dead nodes until none is left
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)


def square_sums(proto: onnx.ModelProto) -> None:
    """``ReduceSum(Mul(x, x))`` -> ``ReduceSumSquare(x)``: one node, the same sum of squares."""
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    users: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    for node in list(graph.node):
        if node.op_type != "ReduceSum" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        sq = producers.get(node.input[0])
        if sq is None or sq.op_type != "Mul" or sq.input[0] != sq.input[1] or users[sq.output[0]] != 1:
            continue
        axes = onnx.numpy_helper.to_array(inits[node.input[1]]).astype(int).tolist()
        keep = [a for a in node.attribute if a.name == "keepdims"]
        fused = onnx.helper.make_node("ReduceSumSquare", [sq.input[0]], list(node.output), name=node.name + "_square",
                                      axes=axes, keepdims=keep[0].i if keep else 1)
        graph.node.insert(list(graph.node).index(node), fused)
        graph.node.remove(node)
        graph.node.remove(sq)


def declare_output_shapes(proto: onnx.ModelProto, n_freqs: int, state_shapes: dict[str, tuple[int, ...]]) -> None:
    """Give every output the contract's shape: ``enh`` (batch, F, 1, 2), ``<state>_out`` the
    state's shape, batch axes named "batch" (the exporter leaves its own dim names there,
    which vary with the graph's last node)."""
    shapes = {"enh": (-1, n_freqs, 1, 2), **{f"{k}_out": v for k, v in state_shapes.items()}}
    for out in proto.graph.output:
        dims = out.type.tensor_type.shape.dim
        del dims[:]
        for d in shapes[out.name]:
            dim = dims.add()
            if d == -1:
                dim.dim_param = "batch"
            else:
                dim.dim_value = d


def export_onnx(model: GTCRN, path: str | Path, *, model_name: str = "gtcrn", model_card: str = "",
                extra_metadata: dict[str, Any] | None = None, fast: bool = True) -> Path:
    """Write the streaming form of ``model`` to ``path`` and return the path.

    ``fast=False`` writes the previous graph form (``StreamingGTCRN(fast=False)``): the same
    function with the same inputs, outputs and metadata, slower in onnxruntime.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = StreamingGTCRN.from_model(model, fast)
    cfg = stream.cfg
    specs = stream.state_specs()
    names_in = ["spec"] + [s.name for s in specs]
    names_out = ["enh"] + [f"{s.name}_out" for s in specs]
    dynamic = {"spec": {0: "batch"}, "enh": {0: "batch"}}
    for s in specs:
        dynamic[s.name] = _batch_axes(s.shape)
        dynamic[f"{s.name}_out"] = _batch_axes(s.shape)
    example = (torch.zeros(2, cfg.n_freqs, 1, 2), *stream.initial_states(2))
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            stream, example, str(tmp), input_names=names_in, output_names=names_out,
            dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    proto = onnx.load(str(tmp))
    simplify_graph(proto)
    if fast:
        square_sums(proto)
        simplify_graph(proto)  # drops the axes tensors ReduceSum had as inputs
    declare_output_shapes(proto, cfg.n_freqs, {s.name: s.shape for s in specs})
    meta = {
        "voipfilter.format": FORMAT_VERSION,
        "sample_rate": str(cfg.sample_rate),
        **cfg.window_pair().metadata(),
        "state_names": json.dumps([s.name for s in specs]),
        "state_shapes": json.dumps([list(s.shape) for s in specs]),
        "model_name": model_name,
        "model_card": model_card,
        "gtcrn_config": json.dumps(cfg.to_dict()),
    }
    meta.update({k: str(v) for k, v in (extra_metadata or {}).items()})
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "voipfilter"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    tmp.unlink(missing_ok=True)
    return path


def default_card(ckpt_path: Path, meta: dict[str, Any]) -> str:
    lines = [f"GTCRN streaming model exported from `{ckpt_path.name}`."]
    for key in ("source", "epoch", "step", "weights", "training_data", "licence"):
        if key in meta:
            lines.append(f"- {key}: {meta[key]}")
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="upstream or voipfilter checkpoint (.tar/.pt)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="where to write the .onnx file")
    parser.add_argument("--name", default=None, help="model name stored in the file (default: checkpoint stem)")
    parser.add_argument("--card", type=Path, default=None, help="markdown model card to embed")
    parser.add_argument("--ema", action="store_true",
                        help="export the trainer's moving average of the weights (the 'ema' a run's last.pt "
                             "keeps with optim.ema_decay set) instead of the raw weights; the card and the "
                             "metadata key 'weights' say which")
    parser.add_argument("--previous-graph", action="store_true",
                        help="write the previous, slower graph form of the same function (to compare against)")


def run(args: argparse.Namespace) -> int:
    try:
        model, _, meta = load_checkpoint(args.checkpoint, ema=args.ema)
    except (FileNotFoundError, ValueError) as exc:
        print(f"voipfilter export: {exc}")
        return 2
    weights = f"{meta['weights']} of `{args.checkpoint.name}`"
    if args.card:
        card = args.card.read_text().rstrip("\n") + f"\n\n**Exported weights:** {weights}.\n"
    else:
        card = default_card(args.checkpoint, meta)
    out = export_onnx(model, args.output, model_name=args.name or args.checkpoint.stem, model_card=card,
                      extra_metadata={"weights": meta["weights"]}, fast=not args.previous_graph)
    n_nodes = len(onnx.load(str(out)).graph.node)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB, {n_nodes} nodes; weights: {meta['weights']})")
    return 0
