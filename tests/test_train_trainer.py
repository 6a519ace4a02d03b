"""Trainer: a few steps on tiny data lower the loss; stop + resume == uninterrupted; CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sf = pytest.importorskip("soundfile")

from voipfilter.train.config import from_dict  # noqa: E402
from voipfilter.train.trainer import Trainer  # noqa: E402

SR = 16000


def make_tiny_corpus(root: Path, n_speech: int = 6, n_noise: int = 4, seconds: float = 1.5) -> tuple[Path, Path]:
    """Speech-like signals (harmonic tones with syllable envelopes) and coloured noises."""
    rng = np.random.default_rng(0)
    sp, no = root / "speech", root / "noise"
    sp.mkdir(parents=True)
    no.mkdir(parents=True)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    for i in range(n_speech):
        f0 = rng.uniform(100, 220)
        x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 12))
        env = np.clip(np.sin(2 * np.pi * rng.uniform(2, 4) * t), 0, None) ** 2
        sf.write(sp / f"s{i}.flac", (0.2 * x * env / np.abs(x).max()).astype(np.float32), SR)
    for i in range(n_noise):
        w = rng.standard_normal(n)
        w = np.cumsum(w) if i % 2 else w  # white / brown
        w = w - np.convolve(w, np.ones(400) / 400, mode="same") if i % 2 else w
        sf.write(no / f"n{i}.flac", (0.3 * w / np.abs(w).max()).astype(np.float32), SR)
    return sp, no


def tiny_config(tmp_path: Path, **train) -> dict:
    sp, no = make_tiny_corpus(tmp_path / "data")
    return {
        "run_dir": str(tmp_path / "run"),
        "seed": 5,
        "data": {"speech_dirs": [str(sp)], "noise_dirs": [str(no)], "segment_seconds": 1.0,
                 "val_fraction_speech": 0.2, "val_fraction_noise": 0.25, "val_items": 2,
                 "val_segment_seconds": 1.0, "num_workers": 0, "min_active_fraction": 0.0},
        "augment": {"p_reverb": 0.0, "p_codec": 0.0, "p_bandlimit": 0.3, "p_gain": 0.3, "snr_db": [0, 10]},
        "optim": {"lr": 3e-3, "warmup_steps": 0, "schedule": "constant"},
        "train": {"batch_size": 2, "steps_per_epoch": 4, "checkpoint_every_steps": 2, "log_every_steps": 2,
                  "threads": 1, "device": "cpu", "audio_samples": 1, **train},
    }


def _trainer(cfg: dict, run_dir: Path) -> Trainer:
    c = from_dict(json.loads(json.dumps(cfg)))
    c.run_dir = str(run_dir)
    return Trainer(c, run_dir, device="cpu", progress=False)


def test_few_steps_lower_the_loss(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg["data"]["val_items"] = 0
    tr = _trainer(cfg, tmp_path / "run")
    tr.prepare(resume=False)
    # a fixed batch: the loss on it must drop as we train on it
    noisy, clean = (torch.from_numpy(np.stack(a)) for a in zip(*[tr.data.train[i] for i in range(4)]))
    first = tr.train_step(noisy, clean)["loss"]
    for _ in range(25):
        last = tr.train_step(noisy, clean)["loss"]
    tr.close()
    assert math.isfinite(first) and last < first * 0.9, (first, last)


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
    cfg = tiny_config(tmp_path)
    full = _trainer(cfg, tmp_path / "full")
    full.prepare(resume=False)
    logs_full = full.fit(max_steps=6)
    full.close()

    part = _trainer(cfg, tmp_path / "part")
    part.prepare(resume=False)
    logs_a = part.fit(max_steps=3)  # stops mid-epoch (epoch = 4 steps)
    part.close()
    again = _trainer(cfg, tmp_path / "part")
    again.prepare(resume=True)
    assert again.step == 3
    logs_b = again.fit(max_steps=6)
    again.close()
    losses_full = [r["loss"] for r in logs_full]
    losses_resumed = [r["loss"] for r in logs_a + logs_b]
    assert losses_full == losses_resumed  # bit-exact
    sd_full = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=False)["model"]
    sd_part = torch.load(tmp_path / "part/checkpoints/last.pt", weights_only=False)["model"]
    for k in sd_full:
        assert torch.equal(sd_full[k], sd_part[k]), k


def test_run_dir_outputs_and_best_checkpoint_loads(tmp_path):
    from voipfilter.nn.checkpoint import load_checkpoint

    cfg = tiny_config(tmp_path)
    tr = _trainer(cfg, tmp_path / "run")
    tr.prepare(resume=False)
    tr.fit(max_steps=4)  # one epoch: validation, last, best, epoch snapshot
    tr.close()
    run = tmp_path / "run"
    for name in ("config.yaml", "train.log", "metrics.jsonl", "split.json", "checkpoints/last.pt",
                 "checkpoints/best.pt", "checkpoints/epoch_0001.pt"):
        assert (run / name).exists(), name
    model, mcfg, meta = load_checkpoint(run / "checkpoints/best.pt")
    assert meta["step"] == 4 and "val" in meta
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in recs if r["kind"] == "val"]
    assert val and all(k in val[-1] for k in ("pesq", "stoi", "si_sdr", "loss"))
    # a second start without --resume refuses to overwrite the run
    with pytest.raises(FileExistsError):
        _trainer(cfg, run).prepare(resume=False)


def test_validate_scores_checkpoints_on_the_held_out_mixes(tmp_path, capsys):
    """`voipfilter validate` reproduces the trainer's validation on its first val_items
    mixes, draws more from the same held-out files, and pairs the differences."""
    import csv

    import yaml

    from voipfilter.cli import main

    cfg = tiny_config(tmp_path)
    tr = _trainer(cfg, tmp_path / "run")
    tr.prepare(resume=False)
    tr.fit(max_steps=4)
    tr.close()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ck = tmp_path / "run/checkpoints"
    best = torch.load(ck / "best.pt", weights_only=False)["meta"]["val"]
    capsys.readouterr()
    assert main(["validate", "--config", str(path), "--items", "2", str(ck / "best.pt"), str(ck / "epoch_0001.pt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith(str(ck / "best.pt"))).split()
    assert row[1] == "4" and abs(float(row[2]) - best["loss"]) < 1e-3 and abs(float(row[3]) - best["pesq"]) < 1e-3
    # the same weights (best.pt and the epoch snapshot of step 4): no difference at all
    assert "+0.0000 ± 0.0000" in next(line for line in lines if line.startswith(str(ck / "epoch_0001.pt")))
    tsv = tmp_path / "v.tsv"
    assert main(["validate", "--config", str(path), "--items", "5", "--tsv", str(tsv), str(ck / "best.pt")]) == 0
    rows = list(csv.DictReader(tsv.open(), delimiter="\t"))
    assert len(rows) == 10 and {r["model"] for r in rows} == {"noisy", str(ck / "best.pt")}
    assert main(["validate", "--config", str(path), str(tmp_path / "missing.pt")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["validate", "--config", str(path), str(tmp_path / "junk.pt")]) == 2
    assert "not a readable torch checkpoint" in capsys.readouterr().err


def test_cli_train_and_resume(tmp_path):
    import yaml

    from voipfilter.cli import main

    cfg = tiny_config(tmp_path)
    cfg["train"]["max_steps"] = 2
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path)]) == 0
    assert main(["train", "--config", str(path)]) == 2  # exists: needs --resume
    assert main(["train", "--config", str(path), "--resume", "--max-steps", "3"]) == 0
    ck = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=False)
    assert ck["step"] == 3 and ck["data_position"] == 3 * 2


def test_resume_with_a_larger_batch_goes_on_from_the_data_position(tmp_path):
    """A resume may change the batch size: the next items follow the last one used, and
    the checkpoint counts items (and audio hours), not steps x the current batch."""
    cfg = tiny_config(tmp_path)
    first = _trainer(cfg, tmp_path / "run")
    first.prepare(resume=False)
    first.fit(max_steps=3)  # batch 2: items 0-5
    first.close()
    cfg["train"]["batch_size"] = 4
    again = _trainer(cfg, tmp_path / "run")
    again.prepare(resume=True)
    assert (again.step, again.data_position) == (3, 6)
    seen = []
    step = again.train_step
    again.train_step = lambda noisy, clean: (seen.append(noisy.clone()), step(noisy, clean))[1]
    again.fit(max_steps=5)  # batch 4: items 6-13
    again.close()
    expected = torch.from_numpy(np.stack([again.data.train[i][0] for i in range(6, 14)]))
    assert torch.equal(torch.cat(seen), expected)
    ck = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=False)
    assert (ck["step"], ck["data_position"]) == (5, 14)
    assert ck["meta"]["audio_hours"] == pytest.approx(14 * 1.0 / 3600)
    assert "batch size 2 -> 4 from step 3: items go on from data position 6" in (tmp_path / "run/train.log").read_text()


def test_default_config_loads_and_points_at_shared_data():
    from voipfilter.train.config import REPO, load_config

    cfg = load_config(REPO / "configs" / "default.yaml")
    assert cfg.optim.clip_grad_norm == 3.0 and cfg.optim.lr <= 2e-3
    assert cfg.data.speech_dirs[0].endswith("shared/data/speech")
    assert all("/dev" not in p for p in cfg.data.speech_dirs + cfg.data.noise_dirs)


def test_config_extends_another(tmp_path):
    from voipfilter.train.config import REPO, load_config

    (tmp_path / "base").mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "base/base.yaml").write_text(
        "run_dir: runs/a\ndata: {speech_dirs: [sp], segment_seconds: 3.0}\noptim: {lr: 2.0e-3, decay_start: 10}\n")
    (tmp_path / "runs/b.toml").write_text(
        'extends = "../base/base.yaml"\nrun_dir = "runs/b"\n[optim]\ndecay_start = 50\n[data]\nnoise_dirs = ["no"]\n')
    cfg = load_config(tmp_path / "runs/b.toml")
    assert cfg.run_dir == "runs/b" and cfg.optim.lr == 2e-3 and cfg.optim.decay_start == 50
    assert cfg.data.segment_seconds == 3.0
    assert cfg.data.speech_dirs == [str(tmp_path / "base/sp")]  # relative to the base file
    assert cfg.data.noise_dirs == [str(tmp_path / "runs/no")]  # relative to the extending file
    (tmp_path / "base/base.yaml").write_text("extends: ../runs/b.toml\n")
    with pytest.raises(ValueError, match="extends itself"):
        load_config(tmp_path / "runs/b.toml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "c.yaml")
    # the v2 run's file is default.yaml plus its own keys
    v1, v2 = load_config(REPO / "configs/default.yaml"), load_config(REPO / "configs/gtcrn-v2.yaml")
    assert v2.run_dir == "runs/gtcrn-v2" and v2.augment == v1.augment and v2.optim.decay_start == 30000


def test_plateau_schedule_halves_only_after_patience():
    from voipfilter.train.config import OptimConfig
    from voipfilter.train.trainer import LRSchedule

    oc = OptimConfig(lr=1e-3, warmup_steps=10, schedule="plateau", plateau_patience=2, plateau_factor=0.5)
    s = LRSchedule(oc)
    assert s.lr(0) == pytest.approx(1e-4) and s.lr(9) == pytest.approx(1e-3)
    lowered = [s.epoch_end(v) for v in [10.0, 9.0, 9.5, 8.0, 7.0, 6.5, 6.0]]  # improving: never lowered
    assert not any(lowered) and s.factor == 1.0
    lowered = [s.epoch_end(v) for v in [6.1, 6.2, 6.3]]  # three bad epochs > patience 2
    assert lowered == [False, False, True] and s.lr(100) == pytest.approx(5e-4)
    s2 = LRSchedule(oc)
    s2.load_state_dict(s.state_dict())
    assert s2.lr(100) == s.lr(100)


def test_cosine_schedule():
    from voipfilter.train.config import OptimConfig
    from voipfilter.train.trainer import LRSchedule

    s = LRSchedule(OptimConfig(lr=1e-3, warmup_steps=100, schedule="cosine", total_steps=1100, min_lr_ratio=0.1))
    assert s.lr(99) == pytest.approx(1e-3)
    assert s.lr(600) == pytest.approx(0.55e-3)
    assert s.lr(5000) == pytest.approx(1e-4)


def test_wsd_schedule():
    from voipfilter.train.config import OptimConfig
    from voipfilter.train.trainer import LRSchedule

    s = LRSchedule(OptimConfig(lr=1e-3, warmup_steps=100, schedule="wsd", decay_start=1000, total_steps=2000,
                               min_lr_ratio=0.1))
    assert s.lr(49) == pytest.approx(0.5e-3)
    assert s.lr(100) == s.lr(999) == s.lr(1000) == pytest.approx(1e-3)  # stable until the decay starts
    assert s.lr(1500) == pytest.approx(0.55e-3)
    assert s.lr(2000) == s.lr(9000) == pytest.approx(1e-4)
    assert not s.epoch_end(1.0) and not s.epoch_end(2.0)  # no plateau halving in wsd
    with pytest.raises(ValueError, match="decay_start"):
        LRSchedule(OptimConfig(schedule="wsd", warmup_steps=100, decay_start=50, total_steps=2000))


def test_resume_into_a_cooldown(tmp_path):
    """A constant-rate run resumed with a wsd schedule: same steps until the decay, logged
    config change, branch checkpoint at the decay start, falling rate after it."""
    cfg = tiny_config(tmp_path)
    cfg["data"]["val_items"] = 0
    part = _trainer(cfg, tmp_path / "run")
    part.prepare(resume=False)
    part.fit(max_steps=2)
    part.close()
    cfg["optim"].update(schedule="wsd", decay_start=3, total_steps=6, min_lr_ratio=0.1)
    cool = _trainer(cfg, tmp_path / "run")
    cool.prepare(resume=True)
    logs = cool.fit(max_steps=6)
    cool.close()
    log_text = (tmp_path / "run/train.log").read_text()
    assert "config changed since the checkpoint: optim.schedule: 'constant' -> 'wsd'" in log_text
    lrs = [r["lr"] for r in logs]  # updates 3..6 use lr(2)..lr(5)
    assert lrs[:2] == [pytest.approx(3e-3)] * 2 and lrs[3] < lrs[2] < lrs[1]
    assert lrs == [pytest.approx(cool.sched.lr(s)) for s in range(2, 6)]
    branch = tmp_path / "run/checkpoints/decay_start_3.pt"
    assert branch.exists()
    assert torch.load(branch, weights_only=False)["step"] == 3


def test_ema_of_the_weights(tmp_path):
    """optim.ema_decay: the average follows w_avg = d·w_avg + (1−d)·w after each update, is what
    validation scores and best.pt holds, and survives stop + resume exactly."""
    from voipfilter.nn.checkpoint import load_checkpoint

    cfg = tiny_config(tmp_path)
    cfg["optim"]["ema_decay"] = 0.5
    tr = _trainer(cfg, tmp_path / "run")
    tr.prepare(resume=False)
    noisy, clean = (torch.from_numpy(np.stack(a)) for a in zip(*[tr.data.train[i] for i in range(2)]))
    name = next(n for n, p in tr.model.named_parameters() if p.requires_grad)
    weights = []
    for _ in range(3):
        tr.train_step(noisy, clean)
        weights.append(dict(tr.model.named_parameters())[name].detach().clone())
    expect = weights[0]  # the first update copies, later ones blend
    for w in weights[1:]:
        expect = 0.5 * expect + 0.5 * w
    ema = dict(tr.ema.module.named_parameters())[name]
    assert torch.allclose(ema, expect, atol=1e-7) and not torch.allclose(ema, weights[-1])
    tr.fit(max_steps=4)  # one epoch: validation of both, best.pt from the average
    tr.close()
    best, _, meta = load_checkpoint(tmp_path / "run/checkpoints/best.pt")
    assert meta["weights"] == "EMA (decay 0.5)"
    for k, v in best.state_dict().items():
        assert torch.equal(v, tr.ema.module.state_dict()[k]), k
    val = [json.loads(s) for s in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    val = [r for r in val if r["kind"] == "val"][-1]
    assert {"pesq", "raw_pesq", "loss", "raw_loss"} <= set(val) and val["loss"] != val["raw_loss"]

    # stop + resume keeps the average exact; a run without one starts it at the resumed step
    full = _trainer(cfg, tmp_path / "full")
    full.prepare(resume=False)
    full.fit(max_steps=6)
    full.close()
    no_ema = {**cfg, "optim": {**cfg["optim"], "ema_decay": 0.0}}
    part = _trainer(no_ema, tmp_path / "part")
    part.prepare(resume=False)
    part.fit(max_steps=2)
    part.close()
    again = _trainer(cfg, tmp_path / "part")
    again.prepare(resume=True)
    assert "EMA of the weights (decay 0.5) starts at step 2" in (tmp_path / "part/train.log").read_text()
    again.fit(max_steps=3)
    again.close()
    again = _trainer(cfg, tmp_path / "part")
    again.prepare(resume=True)
    again.fit(max_steps=6)
    again.close()
    ema_part = torch.load(tmp_path / "part/checkpoints/last.pt", weights_only=False)["ema"]
    ema_full = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=False)["ema"]
    assert int(ema_part["n_averaged"]) == 4 and int(ema_full["n_averaged"]) == 6
    with pytest.raises(ValueError, match="ema_decay"):
        _trainer({**cfg, "optim": {**cfg["optim"], "ema_decay": 1.5}}, tmp_path / "bad")
