"""``voipfilter average``: one checkpoint whose weights are the mean of several.

Runs branched from one state (gtcrn-v4 from gtcrn-v2's step 18750, say) can stay close
enough in weight space that the mean of their weights is a better model than either
("model soup"); so can snapshots of one run. The command averages the weights each file holds (the ones
``voipfilter export`` and ``voipfilter validate`` take: best.pt and epoch_*.pt hold the
EMA weights of a run with EMA, last.pt its raw weights) and writes a checkpoint that
those commands read. Whether the mean is better is for ``voipfilter validate`` to say.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_checkpoint, save_model
from .gtcrn import GTCRN


def average_checkpoints(paths: list[str | Path]) -> tuple[GTCRN, dict[str, Any]]:
    """The network of ``paths[0]`` with the mean of every file's weights, and its meta.

    Floating-point tensors (parameters and BatchNorm statistics) are averaged; integer
    buffers (BatchNorm's batch counters) are taken from the first file. All files must
    describe the same network configuration.
    """
    if len(paths) < 2:
        raise ValueError("averaging needs at least two checkpoints")
    models, sources = [], []
    for p in paths:
        model, cfg, meta = load_checkpoint(p)
        if models and cfg != models[0][1]:
            raise ValueError(f"{p}: its network ({cfg}) differs from {paths[0]}'s ({models[0][1]}); "
                             "only checkpoints of the same configuration can be averaged")
        models.append((model, cfg))
        sources.append({"path": str(p), **{k: meta[k] for k in ("run_dir", "step", "audio_hours") if k in meta}})
    first = models[0][0]
    states = [m.state_dict() for m, _ in models]
    mean = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            mean[key] = torch.stack([s[key].to(torch.float64) for s in states]).mean(0).to(value.dtype)
        else:
            mean[key] = value.clone()
    first.load_state_dict(mean, strict=True)
    meta = {"source": "voipfilter average", "averaged": sources,
            "audio_hours": max((s.get("audio_hours", 0.0) for s in sources), default=0.0)}
    return first, meta


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", help="two or more checkpoints of the same network")
    parser.add_argument("-o", "--output", required=True, type=Path, help="where to write the averaged checkpoint")


def run(args: argparse.Namespace) -> int:
    try:
        model, meta = average_checkpoints(args.checkpoints)
    except (FileNotFoundError, ValueError) as exc:
        print(f"voipfilter average: {exc}", file=sys.stderr)
        return 2
    save_model(args.output, model, meta)
    print(f"wrote {args.output}: the mean of {len(args.checkpoints)} checkpoints")
    return 0
