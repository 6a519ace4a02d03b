"""``voipfilter train --config FILE``: train GTCRN on on-the-fly mixes, resumably.

What one step does (the seed questions, answered by this code):

* **In**: a batch of noisy waveforms (B, N) → :func:`voipfilter.nn.stft.stft`, the very
  framing of the streaming path (the config's window pair and hop; frame k covers samples
  [hop·(k+1) − n_fft, hop·(k+1)), zeros before the start) → (B, F, T, 2). **Out**: the enhanced spectrum (B, F, T, 2) (complex mask ×
  noisy spectrum).
* **Which frame is compared**: :class:`~voipfilter.train.loss.HybridLoss` scores enhanced
  frame t against clean frame t of the *same* STFT of the sample-aligned clean signal; no
  shift, no dropped frames. Frame 0 (half zeros, no history) is in the loss like any other.
* The model is causal, so frame t of training is frame t of a live stream.

Run folder (``run_dir``)::

    config.yaml            the resolved configuration in force (rewritten on resume)
    split.json             the files held out for validation
    train.log              text log (also printed)
    metrics.jsonl          one JSON line per log interval and per validation
    checkpoints/last.pt    everything needed to resume exactly (rolling)
    checkpoints/best.pt    the weights with the best validation score (no optimizer)
    checkpoints/epoch_NNNN.pt  per-epoch snapshots (the newest few are kept)
    tb/                    TensorBoard scalars and audio

With ``optim.ema_decay`` set, an exponential moving average of the weights is kept beside
them: validation scores the average (the raw weights appear as ``raw_*``), and best.pt
and the epoch snapshots hold it; a run at a high constant rate gets much of a cool-down's
gain this way without stopping its stable phase.

``--resume`` continues from ``checkpoints/last.pt``: model, optimizer, schedule, RNG
states, step and data position (the index of the next training item) are restored, so
the losses that follow are the ones an uninterrupted run would have produced. A resume
may change ``train.batch_size`` (say, to use more threads per step): the items go on from
the data position, so none is seen twice or skipped, and audio hours stay counted right.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from voipfilter.nn.checkpoint import load_checkpoint, read_checkpoint, save_model
from voipfilter.nn.config import GTCRNConfig
from voipfilter.nn.gtcrn import GTCRN, count_parameters
from voipfilter.nn.stft import istft, stft

from .config import TrainConfig, load_config
from .data import IndexSampler, build_data
from .loss import HybridLoss, hybrid_loss

log = logging.getLogger("voipfilter.train")

KEEP_EPOCH_SNAPSHOTS = 3


# --------------------------------------------------------------------------- schedule
class LRSchedule:
    """Linear warm-up, then cosine decay, warm-up-stable-decay, or halving on plateau."""

    def __init__(self, optim_cfg):
        self.c = optim_cfg
        self.factor = 1.0  # plateau factor
        self.best = math.inf
        self.bad_epochs = 0
        if self.c.schedule not in ("plateau", "cosine", "wsd", "constant"):
            raise ValueError(f"optim.schedule must be plateau, cosine, wsd or constant, got {self.c.schedule!r}")
        if self.c.schedule == "wsd" and not (self.c.warmup_steps <= self.c.decay_start < self.c.total_steps):
            raise ValueError(f"optim.schedule wsd needs warmup_steps <= decay_start < total_steps, got "
                             f"{self.c.warmup_steps}, {self.c.decay_start}, {self.c.total_steps}")

    def lr(self, step: int) -> float:
        c = self.c
        warm = min(1.0, (step + 1) / c.warmup_steps) if c.warmup_steps > 0 else 1.0
        if c.schedule in ("cosine", "wsd"):
            start = c.decay_start if c.schedule == "wsd" else c.warmup_steps
            t = min(1.0, max(0.0, (step - start) / max(1, c.total_steps - start)))
            shape = c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
            return c.lr * warm * shape
        return max(c.lr * self.factor, c.min_lr if self.factor < 1 else 0.0) * warm

    def epoch_end(self, val_loss: float) -> bool:
        """Plateau bookkeeping; True when the rate was just lowered."""
        if self.c.schedule != "plateau" or not math.isfinite(val_loss):
            return False
        if not math.isfinite(self.best) or val_loss < self.best - 1e-4 * abs(self.best):
            self.best = val_loss
            self.bad_epochs = 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs > self.c.plateau_patience:
            self.factor *= self.c.plateau_factor
            self.bad_epochs = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"factor": self.factor, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.factor, self.best, self.bad_epochs = d["factor"], d["best"], d["bad_epochs"]


# --------------------------------------------------------------------------- helpers
def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every setting that differs between two config dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def collate(batch):
    noisy = torch.from_numpy(np.stack([b[0] for b in batch]))
    clean = torch.from_numpy(np.stack([b[1] for b in batch]))
    return noisy, clean


def _worker_init(_):
    torch.set_num_threads(1)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _fmt(d: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())


# --------------------------------------------------------------------------- trainer
@torch.no_grad()
def score_mixes(net: GTCRN, mixes: list[tuple[np.ndarray, np.ndarray]], loss_fn: HybridLoss,
                device: torch.device, batch: int = 8) -> tuple[float, dict[str, list[float]], list[np.ndarray]]:
    """Mean loss, per-mix PESQ-WB / STOI / SI-SDR and the enhanced waveforms of ``net`` on
    (noisy, clean) mixes of one length, run ``batch`` at a time (eval mode)."""
    from voipfilter.evaluate.metrics import intrusive_lists

    cfg = net.cfg
    net.eval()
    loss_sum, enhanced = 0.0, []
    for i in range(0, len(mixes), batch):
        chunk = mixes[i : i + batch]
        noisy = torch.from_numpy(np.stack([c[0] for c in chunk])).to(device)
        clean = torch.from_numpy(np.stack([c[1] for c in chunk])).to(device)
        enh_spec = net(stft(noisy, cfg))
        loss_sum += float(loss_fn(enh_spec, stft(clean, cfg), noisy.shape[-1])) * len(chunk)
        enhanced += list(istft(enh_spec, cfg, noisy.shape[-1]).cpu().numpy())
    scores = intrusive_lists(((c[1], e) for c, e in zip(mixes, enhanced)), cfg.sample_rate)
    return loss_sum / max(1, len(mixes)), scores, enhanced


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: str | Path | None = None, device: str | None = None,
                 progress: bool | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir or cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.device = pick_device(device or cfg.train.device)
        self.progress = sys.stderr.isatty() if progress is None else progress
        torch.set_num_threads(max(1, int(cfg.train.threads)))
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % (2**32))
        random.seed(cfg.seed)
        self.model_cfg = GTCRNConfig.from_dict(cfg.model)
        self.model = GTCRN(self.model_cfg).to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg.optim
        self.opt = torch.optim.Adam(self.params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.sched = LRSchedule(o)
        self.ema = self._new_ema()
        l = cfg.loss
        self.loss_fn = hybrid_loss(self.model_cfg, l)
        self.step = 0
        self.epoch = 0
        self.data_position = 0  # training items consumed: the next item's index
        self.best_score = -math.inf
        self.history: list[dict[str, Any]] = []
        self._stop = False
        self._writer = None
        self.data = None
        self.val_noisy_metrics: dict[str, float] | None = None

    def _new_ema(self) -> AveragedModel | None:
        """An exponential moving average of the weights (and BatchNorm statistics), or None."""
        decay = self.cfg.optim.ema_decay
        if not decay:
            return None
        if not 0.0 < decay < 1.0:
            raise ValueError(f"optim.ema_decay must be 0 (off) or in (0, 1), got {decay}")
        return AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @property
    def scored_model(self) -> GTCRN:
        """The weights validation scores and best.pt keeps: the average when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    # -- persistence
    def state(self) -> dict[str, Any]:
        return {
            "optimizer": self.opt.state_dict(),
            "schedule": self.sched.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "data_position": self.data_position,
            "best_score": self.best_score,
            "rng": rng_state(),
            "train_config": self.cfg.to_dict(),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        }

    def _meta(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        m = {"source": "voipfilter train", "run_dir": str(self.run_dir), "step": self.step, "epoch": self.epoch,
             "audio_hours": self.data_position * self.cfg.data.segment_seconds / 3600.0}
        if extra:
            m.update(extra)
        return m

    def save_last(self) -> Path:
        path = self.ckpt_dir / "last.pt"
        save_model(path, self.model, self._meta(), **self.state())
        return path

    def load(self, path: str | Path) -> None:
        ckpt = read_checkpoint(path)
        self.model.load_state_dict(ckpt["model"], strict=True)
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["schedule"])
        self.step = int(ckpt["step"])
        self.epoch = int(ckpt["epoch"])
        self.best_score = float(ckpt["best_score"])
        set_rng_state(ckpt["rng"])
        if self.ema is not None:
            if "ema" in ckpt:
                self.ema.load_state_dict(ckpt["ema"])
            else:  # EMA switched on for a running run: the average starts from the weights now
                self.ema = self._new_ema()
                log.info("EMA of the weights (decay %g) starts at step %d", self.cfg.optim.ema_decay, self.step)
        for change in config_changes(ckpt.get("train_config") or {}, self.cfg.to_dict()):
            log.info("config changed since the checkpoint: %s", change)
        position = ckpt.get("data_position")
        if not isinstance(position, int) or position < 0:
            raise ValueError(f"{path}: no valid data position ({position!r}); it is not a last.pt of this trainer")
        self.data_position = position
        old_batch = (ckpt.get("train_config") or {}).get("train", {}).get("batch_size")
        if old_batch is not None and old_batch != self.cfg.train.batch_size:
            log.info("batch size %d -> %d from step %d: items go on from data position %d",
                     old_batch, self.cfg.train.batch_size, self.step, position)

    def init_from(self, path: str | Path, ema: bool = False) -> None:
        """Start a new run from a checkpoint's weights (raw, or its moving average); the
        STFT framing may differ from the checkpoint's (fine-tuning on another framing)."""
        model, ckpt_cfg, meta = load_checkpoint(path, ema=ema)
        same = {k: v for k, v in ckpt_cfg.to_dict().items() if k not in ("hop", "window")}
        ours = {k: v for k, v in self.model_cfg.to_dict().items() if k not in ("hop", "window")}
        if same != ours:
            raise ValueError(f"train.init_weights {path}: its network {same} is not this config's {ours}")
        self.model.load_state_dict(model.state_dict(), strict=True)
        if self.ema is not None:
            self.ema = self._new_ema()  # the average starts at the loaded weights
        log.info("weights from %s (%s, step %s; its framing hop %d %s, this run's hop %d %s)", path,
                 meta["weights"], meta.get("step", "?"), ckpt_cfg.hop, ckpt_cfg.window,
                 self.model_cfg.hop, self.model_cfg.window)

    # -- logging
    def _setup_logging(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        log.setLevel(logging.INFO)
        if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == (self.run_dir / "train.log").resolve()
                   for h in log.handlers):
            fh = logging.FileHandler(self.run_dir / "train.log")
            fh.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
            log.addHandler(fh)
        if not any(type(h) is logging.StreamHandler for h in log.handlers):
            sh = logging.StreamHandler(sys.stdout)
            sh.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
            log.addHandler(sh)
        log.propagate = False

    def _close_logging(self) -> None:
        for h in list(log.handlers):
            h.close()
            log.removeHandler(h)

    @property
    def writer(self):
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.run_dir / "tb"))
            except Exception as exc:  # tensorboard missing: keep training, log once
                log.warning("TensorBoard disabled: %s", exc)
                self._writer = False
        return self._writer or None

    def _metric_line(self, kind: str, values: dict[str, Any]) -> None:
        rec = {"kind": kind, "step": self.step, "epoch": self.epoch, "time": time.time(), **values}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.history.append(rec)

    # -- validation
    @torch.no_grad()
    def validate(self, net: GTCRN | None = None, audio: bool = True) -> dict[str, float]:
        """Loss, PESQ-WB, STOI and SI-SDR of ``net`` (default: the scored weights) on the validation mixes."""
        from voipfilter.evaluate.metrics import intrusive_lists, nanmean

        val = self.data.val
        if not val:
            return {}
        net = net if net is not None else self.scored_model
        loss, scores, enhanced = score_mixes(net, val, self.loss_fn, self.device)
        out = {"loss": loss, **{k: nanmean(v) for k, v in scores.items()}}
        if self.val_noisy_metrics is None:
            nm = intrusive_lists(((c, n) for n, c in val), self.model_cfg.sample_rate)
            self.val_noisy_metrics = {k: nanmean(v) for k, v in nm.items()}
            log.info("validation set (%d mixes), unprocessed noisy: %s", len(val), _fmt(self.val_noisy_metrics))
            self._metric_line("val_noisy", self.val_noisy_metrics)
        w = self.writer if audio else None
        if w is not None:
            sr = self.model_cfg.sample_rate
            for i in range(min(self.cfg.train.audio_samples, len(val))):
                if self.epoch <= 1 or self.step == 0:
                    w.add_audio(f"val{i}/noisy", torch.from_numpy(val[i][0])[None], self.step, sr)
                    w.add_audio(f"val{i}/clean", torch.from_numpy(val[i][1])[None], self.step, sr)
                w.add_audio(f"val{i}/enhanced", torch.from_numpy(np.clip(enhanced[i], -1, 1))[None], self.step, sr)
        return out

    def _score(self, metrics: dict[str, float]) -> float:
        key = self.cfg.train.best_metric
        if key == "loss":
            return -metrics.get("loss", math.inf)
        v = metrics.get(key, math.nan)
        return v if math.isfinite(v) else -math.inf

    def end_epoch(self) -> dict[str, float]:
        self.epoch += 1
        t0 = time.time()
        metrics = self.validate()
        if self.ema is not None:  # the raw weights too, to show what the average adds
            metrics.update({f"raw_{k}": v for k, v in self.validate(self.model, audio=False).items()})
        lowered = self.sched.epoch_end(metrics.get("loss", math.nan))
        score = self._score(metrics)
        is_best = score > self.best_score
        if is_best:
            self.best_score = score
        self._metric_line("val", {**metrics, "lr": self.sched.lr(self.step), "best": is_best})
        w = self.writer
        if w is not None:
            for k, v in metrics.items():
                w.add_scalar(f"val/{k}", v, self.step)
            w.flush()
        self.save_last()
        weights = f"EMA (decay {self.cfg.optim.ema_decay:g})" if self.ema is not None else "raw"
        save_model(self.ckpt_dir / f"epoch_{self.epoch:04d}.pt", self.scored_model,
                   self._meta({"val": metrics, "weights": weights}))
        snaps = sorted(self.ckpt_dir.glob("epoch_*.pt"))
        for old in snaps[:-KEEP_EPOCH_SNAPSHOTS]:
            old.unlink()
        if is_best:
            save_model(self.ckpt_dir / "best.pt", self.scored_model,
                       self._meta({"val": metrics, "best_metric": self.cfg.train.best_metric, "weights": weights}))
        log.info("epoch %d step %d  val %s%s%s  (%.1f s)", self.epoch, self.step, _fmt(metrics),
                 "  *best*" if is_best else "", "  lr lowered" if lowered else "", time.time() - t0)
        return metrics

    # -- training
    def _request_stop(self, signum, _frame) -> None:
        log.info("signal %d: stopping after this step (checkpoint will be saved)", signum)
        self._stop = True

    def train_step(self, noisy: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
        self.model.train()
        noisy = noisy.to(self.device, non_blocking=True)
        clean = clean.to(self.device, non_blocking=True)
        lr = self.sched.lr(self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        enh = self.model(stft(noisy, self.model_cfg))
        parts = self.loss_fn.parts(enh, stft(clean, self.model_cfg), noisy.shape[-1])
        self.opt.zero_grad(set_to_none=True)
        parts.total.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.clip_grad_norm)
        ok = bool(torch.isfinite(parts.total)) and bool(torch.isfinite(gn))
        if ok:
            self.opt.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
        self.step += 1
        return {"loss": float(parts.total.detach()), "complex": float(parts.complex), "mag": float(parts.mag),
                "sisnr": float(parts.sisnr_db), "grad_norm": float(gn), "lr": lr, "skipped": 0.0 if ok else 1.0}

    def prepare(self, resume: bool) -> None:
        self._setup_logging()
        last = self.ckpt_dir / "last.pt"
        if last.exists() and not resume:
            raise FileExistsError(f"{self.run_dir} already holds a run ({last}); pass --resume to continue it, "
                                  "or choose another run_dir")
        if resume and last.exists():
            self.load(last)
            log.info("resumed from %s at step %d (epoch %d, data position %d)", last, self.step, self.epoch,
                     self.data_position)
        else:
            log.info("new run in %s; model %d learnable parameters; device %s; %d threads", self.run_dir,
                     count_parameters(self.model), self.device, torch.get_num_threads())
            if self.cfg.train.init_weights:
                self.init_from(self.cfg.train.init_weights, self.cfg.train.init_ema)
        import yaml

        # the configuration in force now (changes on resume are in the log, see load())
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        t0 = time.time()
        self.data = build_data(self.cfg.data, self.cfg.augment, self.cfg.seed, log_fn=log.info)
        d = self.data
        log.info("data: %d speech / %d noise files for training, %d / %d held out, %d validation mixes (%.1f s)",
                 d.n_speech_train, d.n_noise_train, d.n_speech_val, d.n_noise_val, len(d.val), time.time() - t0)
        split = {"val_seed": self.cfg.data.val_seed, "train_speech_files": d.n_speech_train,
                 "train_noise_files": d.n_noise_train, "held_out": d.val_files or []}
        (self.run_dir / "split.json").write_text(json.dumps(split, indent=1))

    def fit(self, max_steps: int | None = None) -> list[dict[str, Any]]:
        """Train until max_steps (or cfg.train.max_steps / max_epochs); returns per-step logs."""
        from torch.utils.data import DataLoader

        t = self.cfg.train
        max_steps = int(max_steps if max_steps is not None else t.max_steps)
        if t.max_epochs:
            max_steps = min(max_steps, t.max_epochs * t.steps_per_epoch)
        B = t.batch_size
        workers = int(self.cfg.data.num_workers)
        loader = DataLoader(
            self.data.train, batch_size=B, sampler=IndexSampler(self.data_position), num_workers=workers,
            collate_fn=collate, worker_init_fn=_worker_init if workers else None,
            prefetch_factor=4 if workers else None, persistent_workers=False,
        )
        old_handlers = {}
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                old_handlers[s] = signal.signal(s, self._request_stop)
            except ValueError:  # not the main thread
                pass
        step_logs: list[dict[str, Any]] = []
        if self.step == 0 and self.data.val and self.epoch == 0:
            m = self.validate()
            log.info("step 0 (untrained) val %s", _fmt(m))
            self._metric_line("val", {**m, "lr": 0.0, "best": False})
        bar = None
        try:
            from tqdm import tqdm

            bar = tqdm(total=max_steps, initial=self.step, disable=not self.progress, unit="step", dynamic_ncols=True)
        except ImportError:
            pass
        acc: dict[str, float] = {}
        n_acc = 0
        t_start = time.time()
        step_start = self.step
        t_log = time.time()
        step_log = self.step
        try:
            it = iter(loader)
            while self.step < max_steps and not self._stop:
                t_data = time.time()
                noisy, clean = next(it)
                t_data = time.time() - t_data
                rec = self.train_step(noisy, clean)
                self.data_position += int(noisy.shape[0])
                rec["data_wait_s"] = t_data
                step_logs.append({"step": self.step, **rec})
                for k, v in rec.items():
                    acc[k] = acc.get(k, 0.0) + v
                n_acc += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", sisnr=f"{rec['sisnr']:.1f}", lr=f"{rec['lr']:.2e}")
                if self.step % t.log_every_steps == 0:
                    now = time.time()
                    sps = (self.step - step_log) / max(1e-9, now - t_log)
                    avg = {k: v / n_acc for k, v in acc.items()}
                    avg["steps_per_s"] = sps
                    avg["audio_h_per_h"] = sps * B * self.cfg.data.segment_seconds
                    w = self.writer
                    if w is not None:
                        for k, v in avg.items():
                            w.add_scalar(f"train/{k}", v, self.step)
                    self._metric_line("train", avg)
                    if not self.progress:
                        log.info("step %d  %s", self.step, _fmt(avg))
                    acc, n_acc, t_log, step_log = {}, 0, now, self.step
                if self.cfg.optim.schedule == "wsd" and self.step == self.cfg.optim.decay_start:
                    path = self.save_last()
                    branch = self.ckpt_dir / f"decay_start_{self.step}.pt"
                    branch.write_bytes(path.read_bytes())
                    log.info("learning-rate decay starts: full state kept in %s (copy it to another run's "
                             "checkpoints/last.pt to branch a different cool-down)", branch)
                if self.step % t.steps_per_epoch == 0:
                    self.end_epoch()
                elif t.checkpoint_every_steps and self.step % t.checkpoint_every_steps == 0:
                    self.save_last()
        finally:
            if bar is not None:
                bar.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)
            if self.step > step_start and self.step % t.steps_per_epoch != 0:
                self.save_last()
            elapsed = time.time() - t_start
            if self.step > step_start:
                sps = (self.step - step_start) / elapsed
                log.info("stopped at step %d: %.3f steps/s, %.1f audio hours per wall hour over this run",
                         self.step, sps, sps * B * self.cfg.data.segment_seconds)
            if self._writer:
                self._writer.flush()
        return step_logs

    def close(self) -> None:
        if self._writer:
            self._writer.close()
            self._writer = None
        self._close_logging()


# --------------------------------------------------------------------------- CLI
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML or TOML training configuration")
    parser.add_argument("--run-dir", help="override run_dir from the config")
    parser.add_argument("--resume", action="store_true",
                        help="continue from RUN_DIR/checkpoints/last.pt (exact: model, optimizer, schedule, RNG, data position)")
    parser.add_argument("--max-steps", type=int, help="stop after this global step (overrides train.max_steps)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (overrides train.threads)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:1 ... (overrides train.device)")
    parser.add_argument("--workers", type=int, help="data loader worker processes (overrides data.num_workers)")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if args.threads:
        cfg.train.threads = args.threads
    if args.device:
        cfg.train.device = args.device
    if args.workers is not None:
        cfg.data.num_workers = args.workers
    run_dir = args.run_dir or cfg.run_dir
    cfg.run_dir = run_dir
    trainer = Trainer(cfg, run_dir)
    try:
        trainer.prepare(resume=args.resume)
    except FileExistsError as exc:
        print(f"voipfilter train: {exc}", file=sys.stderr)
        return 2
    try:
        trainer.fit(args.max_steps)
    finally:
        trainer.close()
    return 0
