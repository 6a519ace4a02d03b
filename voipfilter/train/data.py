"""Training data: on-the-fly mixing of clean speech and noise, and checked pair folders.

Everything an item holds is a pure function of (seed, index): item ``i`` draws from
``numpy.random.default_rng([seed, i])``, so the data position of a run is just the number
of items it has consumed (step x batch) and resuming is exact, with any number of loader
workers.

An item is ``(noisy, clean)``, two float32 arrays of the same length, **sample-aligned**:
the clean target is the very signal that is inside the noisy mix (or its direct path plus
early reflections when the room is simulated), never shifted. ``tests/test_train_data.py``
checks that the cross-correlation of every pair peaks at lag 0.

Speech and noise files are read lazily (seek + read of one segment), so start-up is quick
and memory stays small. The validation split is by file: a fixed share of the speech and
noise files (fixed seed) is kept out of training and mixed into a fixed validation set.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import augment as aug
from .config import AugmentConfig, DataConfig
from .pairs import AUDIO_EXTS, MisalignedPairsError, check_pair, list_pairs
from .speech_quality import QualityFilter, load_scores

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- files
@dataclass(frozen=True)
class AudioFile:
    path: str
    frames: int
    sample_rate: int


def scan_audio(dirs: Sequence[str | Path], sample_rate: int, min_seconds: float = 0.25) -> list[AudioFile]:
    """All audio files under ``dirs`` (sorted, so the order never depends on the file system)."""
    import soundfile as sf

    out: list[AudioFile] = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise FileNotFoundError(f"audio folder not found: {d} (check the [data] folders of the config; "
                                    "relative paths are taken from the config file's folder)")
        for p in sorted(d.rglob("*")):
            if p.suffix.lower() not in AUDIO_EXTS or not p.is_file():
                continue
            info = sf.info(str(p))
            if info.samplerate != sample_rate:
                log.warning("skipping %s: %d Hz, need %d Hz", p, info.samplerate, sample_rate)
                continue
            if info.frames < min_seconds * sample_rate:
                continue
            out.append(AudioFile(str(p), int(info.frames), int(info.samplerate)))
    return out


def split_files(files: list[AudioFile], fraction: float, seed: int) -> tuple[list[AudioFile], list[AudioFile]]:
    """(train, validation) split by file with a fixed seed."""
    if fraction <= 0 or len(files) < 2:
        return list(files), []
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files))
    n_val = max(1, int(round(fraction * len(files))))
    val_idx = set(order[:n_val].tolist())
    train = [f for i, f in enumerate(files) if i not in val_idx]
    val = [f for i, f in enumerate(files) if i in val_idx]
    return train, val


def read_segment(f: AudioFile, start: int, length: int) -> np.ndarray:
    import soundfile as sf

    x, _ = sf.read(f.path, start=start, frames=length, dtype="float64", always_2d=True)
    return x[:, 0]


# --------------------------------------------------------------------------- mixing
class Mixer:
    """Makes one (noisy, clean) pair from speech and noise files with a given Generator."""

    def __init__(self, speech: list[AudioFile], noise: list[AudioFile], data: DataConfig,
                 augment: AugmentConfig, rir_bank: aug.RIRBank | None = None):
        if not speech:
            raise ValueError("no speech files")
        if not noise:
            raise ValueError("no noise files")
        self.speech = speech
        self.noise = noise
        self.data = data
        self.aug = augment
        self.sr = data.sample_rate
        self.rir_bank = rir_bank
        if data.speech_weighting == "duration":
            w = np.array([f.frames for f in speech], dtype=np.float64)
        elif data.speech_weighting == "file":
            w = np.ones(len(speech))
        else:
            raise ValueError(f"speech_weighting must be 'file' or 'duration', got {data.speech_weighting!r}")
        self.speech_p = w / w.sum()

    # -- pieces
    def _shaped(self, rng: np.random.Generator, n: int, read, p_speed: float, speed: list[float],
                p_eq: float) -> np.ndarray:
        """``read(rng, m)`` of a source, its speed changed and equalised when drawn to be
        (no draws at all for a probability of 0, so older configs mix exactly as before)."""
        factor = aug.speed_factor(rng, *speed) if p_speed and rng.random() < p_speed else None
        x = read(rng, aug.samples_for_speed(n, factor))
        if factor is not None:
            x = aug.change_speed(x, factor, n)
        if p_eq and rng.random() < p_eq:
            x = aug.random_eq(x, rng, self.aug.eq_db, self.aug.eq_bands, self.sr)
        return x

    def _speech(self, rng: np.random.Generator, n: int) -> np.ndarray:
        a = self.aug
        return self._shaped(rng, n, self._speech_segment, a.p_speed, a.speed, a.p_eq)

    def _speech_segment(self, rng: np.random.Generator, n: int) -> np.ndarray:
        best, best_act = None, -1.0
        for _ in range(6):
            f = self.speech[int(rng.choice(len(self.speech), p=self.speech_p))]
            if f.frames >= n:
                start = int(rng.integers(0, f.frames - n + 1))
                x = read_segment(f, start, n)
            else:
                seg = read_segment(f, 0, f.frames)
                x = np.zeros(n)
                off = int(rng.integers(0, n - f.frames + 1))
                x[off : off + f.frames] = seg
            act = aug.active_fraction(x)
            if act >= self.data.min_active_fraction * min(1.0, f.frames / n):
                return x
            if act > best_act:
                best, best_act = x, act
        return best

    def _noise_one(self, rng: np.random.Generator, n: int) -> np.ndarray:
        f = self.noise[int(rng.integers(len(self.noise)))]
        if f.frames >= n:
            start = int(rng.integers(0, f.frames - n + 1))
            return read_segment(f, start, n)
        seg = read_segment(f, 0, f.frames)
        reps = int(np.ceil(n / f.frames)) + 1
        tiled = np.tile(seg, reps)
        start = int(rng.integers(0, f.frames))
        return tiled[start : start + n]

    def _noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        noise = self._noise_shaped(rng, n)
        if rng.random() < self.aug.p_two_noises:
            other = self._noise_shaped(rng, n)
            other = aug.scale_noise_to_snr(noise, other, float(rng.uniform(0.0, 10.0)))
            noise = noise + other
        return noise

    def _babble(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Several training talkers at once, each at the same level +-3 dB."""
        lo, hi = self.aug.babble_talkers
        out = np.zeros(n)
        for _ in range(int(rng.integers(lo, hi + 1))):
            x = self._speech_segment(rng, n)
            out += x / (aug.rms(x) + 1e-9) * 10 ** (float(rng.uniform(-3.0, 3.0)) / 20)
        return out

    def _noise_source(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """A noise file's segment, or babble / synthetic noise when drawn (no draw at all
        while both are off, so older configs mix exactly as before)."""
        a = self.aug
        if a.p_babble or a.p_synthetic:
            u = rng.random()
            if u < a.p_babble:
                return self._babble(rng, n)
            if u < a.p_babble + a.p_synthetic:
                return aug.synthetic_noise(rng, n, tuple(a.colour_slope_db), self.sr)
        return self._noise_one(rng, n)

    def _noise_shaped(self, rng: np.random.Generator, n: int) -> np.ndarray:
        a = self.aug
        return self._shaped(rng, n, self._noise_source, a.p_noise_speed, a.noise_speed, a.p_noise_eq)

    # -- the mix
    def mix(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        a = self.aug
        speech = self._speech(rng, n)
        speech = speech / (aug.rms(speech) + 1e-9) * 0.05
        if rng.random() < a.p_gain:
            speech = speech * aug.gain_envelope(n, rng, a.gain_db)
        if self.rir_bank is not None and len(self.rir_bank) and rng.random() < a.p_reverb:
            rir = self.rir_bank.rirs[int(rng.integers(len(self.rir_bank)))]
            speech_rev, target = aug.reverberate(speech, rir, a.early_ms, self.sr)
        else:
            speech_rev, target = speech, speech
        noise = self._noise(rng, n)
        if rng.random() < a.p_gain:
            noise = noise * aug.gain_envelope(n, rng, a.gain_db)
        snr = float(rng.uniform(*a.snr_db))
        noise = aug.scale_noise_to_snr(speech_rev, noise, snr)
        if rng.random() < a.p_clean:
            noise = noise * 0.0
        noisy = speech_rev + noise
        clean = target
        if rng.random() < a.p_bandlimit:
            cutoff = float(rng.choice(a.bandlimit_hz))
            noisy = aug.lowpass(noisy, cutoff, self.sr)
            clean = aug.lowpass(clean, cutoff, self.sr)
        level = float(rng.uniform(*a.level))
        scale = level / (np.max(np.abs(noisy)) + 1e-9)
        noisy = noisy * scale
        clean = clean * scale
        if a.codecs and rng.random() < a.p_codec:
            codec = str(rng.choice(a.codecs))
            noisy = aug.codec_roundtrip(noisy, codec, rng, self.sr, a.opus_bitrates)
        noisy = np.clip(noisy, -1.0, 1.0)
        return noisy.astype(np.float32), clean.astype(np.float32)


# --------------------------------------------------------------------------- pairs
class PairSource:
    """Pre-mixed pairs from folders with noisy/ and clean/; every pair is checked first.

    Pairs that fail (misaligned, different rate or length, silent, clipped, missing side)
    raise :class:`MisalignedPairsError` with the report, or with ``skip_bad=True`` are
    dropped and logged. They are never used.
    """

    def __init__(self, dirs: Sequence[str | Path], sample_rate: int, skip_bad: bool = False):
        self.pairs: list[tuple[AudioFile, AudioFile]] = []
        self.reports = []
        for d in dirs:
            for name, n, c in list_pairs(d):
                rep = check_pair(n, c, name)
                if rep.ok and rep.sample_rate != sample_rate:
                    rep.problems.append(f"sample rate {rep.sample_rate} Hz, training needs {sample_rate} Hz")
                self.reports.append(rep)
        bad = [r for r in self.reports if not r.ok]
        if bad and not skip_bad:
            raise MisalignedPairsError(self.reports)
        for r in bad:
            log.warning("refused pair %s", r.line())
        for r in self.reports:
            if r.ok:
                frames = int(round(r.seconds * r.sample_rate))
                self.pairs.append((AudioFile(str(r.noisy), frames, sample_rate), AudioFile(str(r.clean), frames, sample_rate)))
        if not self.pairs:
            raise ValueError(f"no usable pairs in {list(map(str, dirs))}")

    def __len__(self) -> int:
        return len(self.pairs)

    def segment(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        nf, cf = self.pairs[int(rng.integers(len(self.pairs)))]
        frames = nf.frames
        noisy = np.zeros(n)
        clean = np.zeros(n)
        if frames >= n:
            start = int(rng.integers(0, frames - n + 1))  # one offset for both sides
            noisy[:] = read_segment(nf, start, n)
            clean[:] = read_segment(cf, start, n)
        else:
            off = int(rng.integers(0, n - frames + 1))
            noisy[off : off + frames] = read_segment(nf, 0, frames)
            clean[off : off + frames] = read_segment(cf, 0, frames)
        return noisy.astype(np.float32), clean.astype(np.float32)


class PairDataset:
    """Map-style dataset of random segments from checked pair folders (deterministic per index)."""

    def __init__(self, dirs: Sequence[str | Path], segment_seconds: float, sample_rate: int = 16000,
                 seed: int = 0, skip_bad: bool = False):
        self.source = PairSource(dirs, sample_rate, skip_bad)
        self.n = int(round(segment_seconds * sample_rate))
        self.seed = seed

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, int(index)])
        return self.source.segment(rng, self.n)

    def __len__(self) -> int:  # nominal: items are drawn by index without end
        return 1 << 62


# --------------------------------------------------------------------------- datasets
class MixingDataset:
    """Map-style dataset: item ``i`` is a fresh mix made from ``default_rng([seed, i])``.

    ``len`` is nominal (mixing never runs out); the trainer draws indices
    step*batch ... step*batch + batch - 1 in order.
    """

    def __init__(self, mixer: Mixer | None, segment_seconds: float, seed: int,
                 pairs: PairSource | None = None, pair_fraction: float = 0.0, sample_rate: int = 16000):
        if mixer is None and pairs is None:
            raise ValueError("need speech+noise folders or pair folders")
        self.mixer = mixer
        self.pairs = pairs
        self.pair_fraction = 1.0 if mixer is None else (pair_fraction if pairs is not None else 0.0)
        self.n = int(round(segment_seconds * sample_rate))
        self.seed = seed

    def item(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(index)])
        if self.pairs is not None and rng.random() < self.pair_fraction:
            return self.pairs.segment(rng, self.n)
        return self.mixer.mix(rng, self.n)

    def __getitem__(self, index: int):
        return self.item(index)

    def __len__(self) -> int:
        return 1 << 62


class IndexSampler:
    """Indices start, start+1, ... without end (the data position is just a counter)."""

    def __init__(self, start: int = 0):
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        i = self.start
        while True:
            yield i
            i += 1


@dataclass
class DataBundle:
    train: MixingDataset
    val: list[tuple[np.ndarray, np.ndarray]]
    n_speech_train: int
    n_speech_val: int
    n_noise_train: int
    n_noise_val: int
    val_files: list[str] = None  # held-out speech and noise files (for the record)


def _clean_targets(data: DataConfig, sp_tr: list[AudioFile], sp_val: list[AudioFile],
                   log_fn) -> tuple[list[AudioFile], list[AudioFile]]:
    """Training and validation speech without the files under the DNSMOS floors."""
    qf = QualityFilter(load_scores(data.speech_quality), data.min_speech_sig, data.min_speech_bak)
    tr, tr_drop, tr_unscored = qf.split(sp_tr)
    val, val_drop, val_unscored = qf.split(sp_val)
    log_fn(f"speech quality (DNSMOS SIG >= {data.min_speech_sig}, BAK >= {data.min_speech_bak}): dropped "
           f"{len(tr_drop)} of {len(sp_tr)} training and {len(val_drop)} of {len(sp_val)} validation files; "
           f"{tr_unscored + val_unscored} unscored files kept")
    if not tr or (sp_val and not val):
        raise ValueError("the speech quality floors leave no training or no validation speech: "
                         "lower min_speech_sig / min_speech_bak")
    return tr, val


def _under(f: AudioFile, dirs: Sequence[str | Path]) -> bool:
    path = Path(f.path).resolve()
    return any(path.is_relative_to(Path(d).resolve()) for d in dirs)


def held_out_split(files: list[AudioFile], val_dirs: Sequence[str], fraction: float, seed: int,
                   sample_rate: int) -> tuple[list[AudioFile], list[AudioFile]]:
    """(train, validation): every file under ``val_dirs`` for validation and none of them for
    training when ``val_dirs`` is given, else a random share ``fraction`` by file."""
    if not val_dirs:
        return split_files(files, fraction, seed)
    val = scan_audio(val_dirs, sample_rate)
    if not val:
        raise ValueError(f"no audio under the validation folders {list(val_dirs)}")
    return [f for f in files if not _under(f, val_dirs)], val


def build_data(data: DataConfig, augment: AugmentConfig, seed: int, rir_cache: str | Path | None = None,
               log_fn=print) -> DataBundle:
    """Scan folders, split by file, build the training dataset and the fixed validation mixes."""
    sr = data.sample_rate
    mixer = val_mixer = None
    n_st = n_sv = n_nt = n_nv = 0
    val_files: list[str] = []
    rir_bank = None
    if data.speech_dirs and data.noise_dirs:
        speech = scan_audio(data.speech_dirs, sr)
        noise = scan_audio(data.noise_dirs, sr)
        sp_tr, sp_val = held_out_split(speech, data.val_speech_dirs, data.val_fraction_speech, data.val_seed, sr)
        if data.extra_speech_dirs:
            sp_tr = sp_tr + [f for f in scan_audio(data.extra_speech_dirs, sr) if not _under(f, data.val_speech_dirs)]
        if data.speech_quality:
            sp_tr, sp_val = _clean_targets(data, sp_tr, sp_val, log_fn)
        no_tr, no_val = held_out_split(noise, data.val_noise_dirs, data.val_fraction_noise, data.val_seed + 1, sr)
        if data.val_speech_dirs or data.val_noise_dirs:
            log_fn(f"validation corpora held out as a whole: speech {data.val_speech_dirs or '(random share)'}, "
                   f"noise {data.val_noise_dirs or '(random share)'}")
        n_st, n_sv, n_nt, n_nv = len(sp_tr), len(sp_val), len(no_tr), len(no_val)
        val_files = [f.path for f in sp_val + no_val]
        if augment.p_reverb > 0 and augment.rir_bank_size > 0:
            log_fn(f"RIR bank: {augment.rir_bank_size} rooms (cached after the first run)")
            rir_bank = aug.RIRBank.build(augment.rir_bank_size, augment.rir_bank_seed,
                                         tuple(augment.rt60), sr, rir_cache)
        mixer = Mixer(sp_tr, no_tr, data, augment, rir_bank)
        if sp_val and no_val:
            # the source broadening is for training only: validation keeps the base
            # conditions, so runs that differ in it are judged on the same mixes
            val_mixer = Mixer(sp_val, no_val, data, augment.without_broadening(), rir_bank)
    pairs = PairSource(data.pair_dirs, sr) if data.pair_dirs else None
    train = MixingDataset(mixer, data.segment_seconds, seed, pairs, data.pair_fraction, sr)
    val: list[tuple[np.ndarray, np.ndarray]] = []
    n_val = int(round(data.val_segment_seconds * sr))
    if val_mixer is not None:
        for i in range(data.val_items):
            val.append(val_mixer.mix(np.random.default_rng([data.val_seed, 7, i]), n_val))
    elif pairs is not None:
        for i in range(data.val_items):
            val.append(pairs.segment(np.random.default_rng([data.val_seed, 7, i]), n_val))
    return DataBundle(train, val, n_st, n_sv, n_nt, n_nv, val_files)
