"""Training configuration: nested dataclasses read from a YAML (or TOML) file.

Every field has a default that works on ``../shared/data`` beside the checkout, so a
config file only lists what it changes. Relative data paths are resolved against the
config file's folder; ``$VARS`` and ``~`` are expanded first.

Layout of a file (all sections optional)::

    run_dir: runs/my-run
    seed: 1234
    data:     {speech_dirs: [...], noise_dirs: [...], segment_seconds: 4.0, ...}
    augment:  {snr_db: [-5, 20], level: [0.01, 0.51], p_reverb: 0.2, ...}
    optim:    {lr: 1.0e-3, clip_grad_norm: 3.0, schedule: plateau, ...}
    train:    {batch_size: 16, steps_per_epoch: 500, max_steps: 100000, ...}
    model:    {}   # GTCRNConfig fields

A file may start from another with ``extends: other.yaml`` (relative to the file): the
sections are merged key by key, the extending file's values winning, and the base file's
data paths keep meaning relative to the base file.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SHARED = Path(os.environ.get("VOIPFILTER_SHARED", REPO.parent / "shared"))


@dataclass
class DataConfig:
    speech_dirs: list[str] = field(default_factory=lambda: [str(DEFAULT_SHARED / "data" / "speech")])
    noise_dirs: list[str] = field(default_factory=lambda: [str(DEFAULT_SHARED / "data" / "noise")])
    # Speech for training only: never split off for validation, so adding it leaves a
    # run's validation files and mixes exactly as they were (runs stay comparable).
    extra_speech_dirs: list[str] = field(default_factory=list)
    # Clean-target quality: per-file DNSMOS tables of the speech (`voipfilter eval --noisy
    # DIR --model none --tsv TABLE`). After the split, training and validation speech files
    # scored under either floor are dropped (the split itself does not move); files the
    # tables do not list are kept.
    speech_quality: list[str] = field(default_factory=list)
    min_speech_sig: float = 0.0
    min_speech_bak: float = 0.0
    # Pre-mixed pair folders (each with noisy/ and clean/); every pair is checked.
    pair_dirs: list[str] = field(default_factory=list)
    # Share of training items drawn from pair_dirs when both kinds are given.
    pair_fraction: float = 0.0
    sample_rate: int = 16000
    segment_seconds: float = 4.0
    # Validation: a share of files held out by file (fixed seed), and a fixed mix count.
    val_fraction_speech: float = 0.06
    val_fraction_noise: float = 0.08
    val_items: int = 48
    val_segment_seconds: float = 4.0
    val_seed: int = 20240
    # Validation corpora held out as a whole (speakers / noise families the run never
    # trains on): when given, the validation speech (noise) is every file under these
    # folders, no file under them is trained on (even inside speech_dirs / noise_dirs), and
    # val_fraction_speech (_noise) is not used.
    val_speech_dirs: list[str] = field(default_factory=list)
    val_noise_dirs: list[str] = field(default_factory=list)
    # A segment whose active speech is below this share of its length is redrawn.
    min_active_fraction: float = 0.3
    # Weight of each speech file when drawing: "file" (uniform over files) or "duration".
    speech_weighting: str = "file"
    num_workers: int = 1


@dataclass
class AugmentConfig:
    snr_db: list[float] = field(default_factory=lambda: [-5.0, 20.0])
    level: list[float] = field(default_factory=lambda: [0.01, 0.51])  # peak of the noisy mix
    p_reverb: float = 0.2
    rt60: list[float] = field(default_factory=lambda: [0.2, 0.8])
    early_ms: float = 50.0  # target keeps the direct path and this much of early reflections
    rir_bank_size: int = 200
    rir_bank_seed: int = 7
    p_bandlimit: float = 0.1  # low-pass both sides (narrowband / wideband call)
    bandlimit_hz: list[float] = field(default_factory=lambda: [4000.0, 7000.0])
    p_codec: float = 0.1  # noisy side only, delay compensated
    codecs: list[str] = field(default_factory=lambda: ["g711", "g722", "opus"])
    opus_bitrates: list[int] = field(default_factory=lambda: [12000, 16000, 24000, 32000])
    p_gain: float = 0.2  # slow gain envelope on speech (both sides) and on noise
    gain_db: float = 6.0
    p_two_noises: float = 0.2
    p_clean: float = 0.03  # no noise at all: the model must leave clean speech alone
    # Broadening of the sources (training items only: the validation mixes keep the
    # conditions above, so runs that differ here are judged on the same mixes).
    # Speed change (tempo and pitch, a resampling) of the speech and of the noise.
    p_speed: float = 0.0
    speed: list[float] = field(default_factory=lambda: [0.9, 1.1])
    p_noise_speed: float = 0.0
    noise_speed: list[float] = field(default_factory=lambda: [0.8, 1.25])
    # Random equaliser (eq_bands peaking filters of up to +-eq_db) on the speech (both
    # sides carry it: a different voice or microphone) and, independently, on the noise.
    p_eq: float = 0.0
    p_noise_eq: float = 0.0
    eq_db: float = 8.0
    eq_bands: int = 3
    # Noise sources besides the noise files: babble (babble_talkers of the training
    # speech, summed at equal level +-3 dB) and synthetic noise (coloured noise with a
    # slope in colour_slope_db per octave, mains hum, drifting or beeping tones).
    p_babble: float = 0.0
    babble_talkers: list[int] = field(default_factory=lambda: [3, 8])
    p_synthetic: float = 0.0
    colour_slope_db: list[float] = field(default_factory=lambda: [-6.0, 3.0])

    def __post_init__(self) -> None:
        for name in (f.name for f in fields(self) if f.name.startswith("p_")):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"[augment] {name} is a probability, got {p!r}: use a value in 0..1")
        for name in ("speed", "noise_speed"):
            lo, hi = getattr(self, name)
            if not 0.25 <= lo <= hi <= 4.0:
                raise ValueError(f"[augment] {name} must be [low, high] speed factors with "
                                 f"0.25 <= low <= high <= 4, got {[lo, hi]!r}")
        lo, hi = self.babble_talkers
        if not 2 <= lo <= hi:
            raise ValueError(f"[augment] babble_talkers must be [low, high] with 2 <= low <= high, "
                             f"got {[lo, hi]!r}")
        if self.p_babble + self.p_synthetic > 1.0:
            raise ValueError(f"[augment] p_babble + p_synthetic is the share of noise sources that are "
                             f"not files and must be <= 1, got {self.p_babble + self.p_synthetic:g}")
        if self.eq_bands < 1 or self.eq_db < 0:
            raise ValueError(f"[augment] eq_bands must be >= 1 and eq_db >= 0, got {self.eq_bands}, {self.eq_db}")

    def without_broadening(self) -> "AugmentConfig":
        """The same conditions with the source broadening off (what validation mixes use)."""
        return dataclasses.replace(self, p_speed=0.0, p_noise_speed=0.0, p_eq=0.0, p_noise_eq=0.0,
                                   p_babble=0.0, p_synthetic=0.0)


@dataclass
class OptimConfig:
    lr: float = 1.0e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    clip_grad_norm: float = 3.0
    schedule: str = "plateau"  # "plateau" (halve on plateau), "cosine", "wsd" or "constant"
    warmup_steps: int = 500
    # cosine: decay from the end of warm-up to total_steps, down to lr x min_lr_ratio.
    # wsd (warm-up, stable, decay): constant lr until decay_start, then the same cosine
    # shape from decay_start to total_steps; a long run can be cooled down late, and the
    # checkpoint at decay_start is kept for branching another cool-down.
    total_steps: int = 100_000
    min_lr_ratio: float = 0.05
    decay_start: int = 0
    # Exponential moving average of the weights, updated every step (0: off). When on,
    # validation, best.pt and the epoch snapshots use the average (the raw weights are
    # validated too, as raw_*); last.pt keeps both, so resume stays exact.
    ema_decay: float = 0.0
    # plateau, judged on validation loss once per epoch
    plateau_factor: float = 0.5
    plateau_patience: int = 4
    min_lr: float = 1.0e-5


@dataclass
class LossConfig:
    compress: float = 0.3
    w_complex: float = 30.0
    w_mag: float = 70.0
    w_sisnr: float = 0.1  # multiplies -SI-SNR in dB (i.e. SI-SNR / 10)
    sisnr_cap_db: float = 60.0
    spectra: str = "model"  # spectral terms on the model's spectra, or "standard": 512/256 STFT of the output


@dataclass
class TrainSection:
    batch_size: int = 16
    steps_per_epoch: int = 500
    max_steps: int = 1_000_000
    max_epochs: int = 0  # 0: no limit besides max_steps
    checkpoint_every_steps: int = 100  # rolling last.pt between epochs
    log_every_steps: int = 20
    audio_samples: int = 3
    threads: int = 2
    device: str = "auto"  # auto: cuda when torch sees one, else cpu
    best_metric: str = "pesq"  # pesq | stoi | si_sdr | loss
    # A new run (not a resume) starts from these weights (a checkpoint path, relative to the
    # working directory like run_dir); optimizer, schedule and step start afresh. The
    # checkpoint's network must be this config's; its STFT framing (hop, window) may differ,
    # which is how a model is fine-tuned on another framing. init_ema: take the checkpoint's
    # moving average of the weights instead of its raw weights.
    init_weights: str = ""
    init_ema: bool = False


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    seed: int = 1234
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainSection = field(default_factory=TrainSection)
    model: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SECTIONS = {
    "data": DataConfig,
    "augment": AugmentConfig,
    "optim": OptimConfig,
    "loss": LossConfig,
    "train": TrainSection,
}


def _build(cls, values: dict[str, Any], where: str):
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in [{where}]; valid: {sorted(names)}")
    return cls(**values)


def from_dict(d: dict[str, Any], base_dir: Path | None = None) -> TrainConfig:
    d = dict(d or {})
    kwargs: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        kwargs[name] = _build(cls, dict(d.pop(name, None) or {}), name)
    kwargs["model"] = dict(d.pop("model", None) or {})
    top = {f.name for f in fields(TrainConfig)} - set(_SECTIONS) - {"model"}
    unknown = set(d) - top
    if unknown:
        raise ValueError(f"unknown top-level key(s) {sorted(unknown)}; valid: {sorted(top | set(_SECTIONS) | {'model'})}")
    kwargs.update(d)
    cfg = TrainConfig(**kwargs)
    if base_dir is not None:
        resolve_paths(cfg, base_dir)
    return cfg


def _resolve(p: str, base: Path) -> str:
    p = os.path.expanduser(os.path.expandvars(p))
    path = Path(p)
    return str(path if path.is_absolute() else (base / path).resolve())


PATH_KEYS = ("speech_dirs", "extra_speech_dirs", "noise_dirs", "pair_dirs", "speech_quality",
             "val_speech_dirs", "val_noise_dirs")  # [data] path lists


def resolve_paths(cfg: TrainConfig, base: Path) -> None:
    """Data paths relative to ``base`` (the config file's folder)."""
    for key in PATH_KEYS:
        setattr(cfg.data, key, [_resolve(p, base) for p in getattr(cfg.data, key)])


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_raw(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a dict, with its ``extends:`` chain merged in (base paths made absolute)."""
    path = path.resolve()
    if path in _chain:
        raise ValueError(f"config extends itself: {' -> '.join(str(p) for p in (*_chain, path))}")
    text = path.read_text()
    if path.suffix.lower() == ".toml":
        import tomllib

        raw = tomllib.loads(text)
    else:
        import yaml

        raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    parent_path = path.parent / os.path.expanduser(os.path.expandvars(str(parent)))
    if not parent_path.is_file():
        raise FileNotFoundError(f"{path}: extends {parent!r}, but {parent_path} does not exist")
    base = read_raw(parent_path, (*_chain, path))
    if base.get("data"):
        base["data"] = {k: [_resolve(p, parent_path.resolve().parent) for p in v] if k in PATH_KEYS else v
                        for k, v in base["data"].items()}
    return _merge(base, raw)


def load_config(path: str | Path) -> TrainConfig:
    path = Path(path)
    cfg = from_dict(read_raw(path), base_dir=path.resolve().parent)
    # run_dir: relative to the working directory (where the command runs), as people expect.
    cfg.run_dir = os.path.expanduser(os.path.expandvars(cfg.run_dir))
    return cfg


def replace(cfg: TrainConfig, **sections: dict[str, Any]) -> TrainConfig:
    """A copy with some fields of some sections changed: replace(cfg, train={'batch_size': 2})."""
    out = from_dict(cfg.to_dict())
    for name, changes in sections.items():
        if name in _SECTIONS:
            setattr(out, name, dataclasses.replace(getattr(out, name), **changes))
        else:
            setattr(out, name, changes)
    return out
