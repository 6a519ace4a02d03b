"""Load and save GTCRN checkpoints: upstream's and our own.

Both are torch files holding a dict with a ``model`` state_dict. Ours also carry
``config`` (a GTCRNConfig dict) and ``meta`` (training provenance); upstream's have
neither and use the default configuration.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import GTCRNConfig
from .gtcrn import GTCRN


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for corrupt files
        raise ValueError(f"{path} is not a readable torch checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    if "model" not in ckpt:  # a bare state_dict
        ckpt = {"model": ckpt}
    return ckpt


def ema_weights(ckpt: dict[str, Any], path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The trainer's moving average of the weights in a checkpoint (``ckpt["ema"]``, the
    state_dict of a ``torch.optim.swa_utils.AveragedModel``: ``module.<name>`` entries and
    ``n_averaged``) as a plain GTCRN state_dict, and a description of it."""
    ema = ckpt.get("ema")
    if not isinstance(ema, dict) or not any(k.startswith("module.") for k in ema):
        raise ValueError(
            f"{path}: no moving average of the weights ('ema') in this checkpoint; only a run's "
            "checkpoints/last.pt keeps it, and only with optim.ema_decay set (best.pt and the "
            "epoch snapshots of such a run hold the average as their weights already: export "
            "them without --ema)"
        )
    weights = {k[len("module.") :]: v for k, v in ema.items() if k.startswith("module.")}
    n = ema.get("n_averaged")
    decay = ((ckpt.get("train_config") or {}).get("optim") or {}).get("ema_decay")
    parts = ([f"decay {decay:g}"] if decay else []) + ([f"{int(n)} updates"] if n is not None else [])
    return weights, "EMA" + (f" ({', '.join(parts)})" if parts else "")


def load_checkpoint(path: str | Path, ema: bool = False) -> tuple[GTCRN, GTCRNConfig, dict[str, Any]]:
    """Build the network a checkpoint describes and load its weights strictly (eval mode).

    ``ema=True`` loads the trainer's moving average of the weights instead of the raw ones
    (ValueError if the checkpoint keeps none). Returns (model, config, meta) where meta
    holds what the checkpoint says about itself; ``meta["weights"]`` says which weights
    were loaded ("raw" unless the checkpoint's own meta says otherwise, e.g. best.pt of an
    EMA run).
    """
    ckpt = read_checkpoint(path)
    cfg = GTCRNConfig.from_dict(ckpt["config"]) if "config" in ckpt else GTCRNConfig()
    model = GTCRN(cfg)
    state = ckpt["model"]
    meta = dict(ckpt.get("meta", {}))
    if ema:
        state, meta["weights"] = ema_weights(ckpt, path)
    else:
        meta.setdefault("weights", "raw")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit a GTCRN with {cfg}: {exc}") from exc
    model.eval()
    meta.setdefault("source", "voipfilter" if "config" in ckpt else "upstream GTCRN checkpoint")
    if "epoch" in ckpt:
        meta.setdefault("epoch", ckpt["epoch"])
    return model, cfg, meta


def save_model(path: str | Path, model: GTCRN, meta: dict[str, Any] | None = None, **extra: Any) -> None:
    """Write a checkpoint that :func:`load_checkpoint` reads back (extra keys kept, e.g. optimizer)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict(), "meta": meta or {}, **extra}, tmp)
    tmp.replace(path)
