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


def load_checkpoint(path: str | Path) -> tuple[GTCRN, GTCRNConfig, dict[str, Any]]:
    """Build the network a checkpoint describes and load its weights strictly (eval mode).

    Returns (model, config, meta) where meta holds what the checkpoint says about itself.
    """
    ckpt = read_checkpoint(path)
    cfg = GTCRNConfig.from_dict(ckpt["config"]) if "config" in ckpt else GTCRNConfig()
    model = GTCRN(cfg)
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit a GTCRN with {cfg}: {exc}") from exc
    model.eval()
    meta = dict(ckpt.get("meta", {}))
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
