"""``voipfilter validate``: score checkpoints on a run's held-out validation mixes.

The trainer validates on a small fixed set (``data.val_items``, 48 mixes) so that an epoch
stays quick; choosing between runs or checkpoints whose scores differ by less than that
set's noise needs more mixes. This command draws ``--items`` mixes from the same held-out
files with the same seeds (the first ``val_items`` of them are the trainer's own set),
scores the weights each checkpoint holds (the ones ``voipfilter export`` takes), and
prints each one's means with the paired per-mix difference to the first checkpoint and
its standard error. The dev sets are never touched.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time
from pathlib import Path

import torch

from voipfilter.evaluate.metrics import INTRUSIVE, intrusive_lists, nanmean, paired
from voipfilter.nn.checkpoint import load_checkpoint
from .config import load_config
from .data import build_data
from .loss import HybridLoss, hybrid_loss
from .trainer import score_mixes


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", help="checkpoints to score (best.pt, last.pt, epoch_*.pt)")
    parser.add_argument("--config", required=True, help="the training configuration whose held-out files to mix")
    parser.add_argument("--items", type=int, default=400, help="validation mixes (default 400)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--tsv", help="write per-mix scores here")


def run(args: argparse.Namespace) -> int:
    if args.items < 2:
        print("voipfilter validate: --items must be at least 2", file=sys.stderr)
        return 2
    missing = [c for c in args.checkpoints if not Path(c).is_file()]
    if missing:
        print(f"voipfilter validate: checkpoint not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    cfg = load_config(args.config)
    data_cfg = dataclasses.replace(cfg.data, val_items=args.items)
    t0 = time.time()
    bundle = build_data(data_cfg, cfg.augment, cfg.seed, log_fn=lambda *_: None)
    mixes = bundle.val
    if not mixes:
        print(f"voipfilter validate: {args.config} holds out no validation files "
              "(data.val_fraction_speech / val_fraction_noise)", file=sys.stderr)
        return 2
    print(f"{len(mixes)} validation mixes of {data_cfg.val_segment_seconds:g} s from {bundle.n_speech_val} held-out "
          f"speech and {bundle.n_noise_val} noise files ({time.time() - t0:.1f} s)", flush=True)
    rows = {"noisy": intrusive_lists(((c, n) for n, c in mixes), data_cfg.sample_rate)}
    losses: dict[str, float] = {"noisy": float("nan")}
    steps: dict[str, str] = {"noisy": "-"}
    l = cfg.loss
    for path in args.checkpoints:
        t0 = time.time()
        try:
            model, model_cfg, meta = load_checkpoint(path)
        except ValueError as exc:  # not a checkpoint, or weights of another network
            print(f"voipfilter validate: {exc}", file=sys.stderr)
            return 2
        loss_fn = hybrid_loss(model_cfg, l)
        losses[path], rows[path], _ = score_mixes(model, mixes, loss_fn, torch.device("cpu"))
        steps[path] = str(meta.get("step", "?"))
        print(f"scored {path} ({time.time() - t0:.0f} s)", flush=True)
    first = args.checkpoints[0]
    print(f"{'checkpoint':<48} {'step':>6} {'loss':>7} {'PESQ-WB':>8} {'STOI':>7} {'SI-SDR':>7}  "
          f"PESQ-WB - first (paired, ± s.e.)")
    for name, sc in rows.items():
        diff = "" if name in ("noisy", first) else "%+.4f ± %.4f" % paired(sc["pesq"], rows[first]["pesq"])
        print(f"{name:<48} {steps[name]:>6} {losses[name]:>7.3f} {nanmean(sc['pesq']):>8.3f} "
              f"{nanmean(sc['stoi']):>7.3f} {nanmean(sc['si_sdr']):>7.2f}  {diff}")
    if args.tsv:
        with open(args.tsv, "w", newline="") as f:
            w = csv.writer(f, delimiter="\t")
            w.writerow(["model", "mix", *INTRUSIVE])
            for name, sc in rows.items():
                for i in range(len(mixes)):
                    w.writerow([name, i, *(f"{sc[k][i]:.4f}" for k in INTRUSIVE)])
    return 0
