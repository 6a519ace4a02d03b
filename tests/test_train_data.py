"""On-the-fly mixing: deterministic per (seed, index), never offset, augmentations aligned."""
from __future__ import annotations

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")
pytest.importorskip("scipy")

from voipfilter.train import augment as aug  # noqa: E402
from voipfilter.train.config import AugmentConfig, DataConfig  # noqa: E402
from voipfilter.train.data import Mixer, MixingDataset, PairDataset, scan_audio, split_files  # noqa: E402
from voipfilter.train.pairs import MisalignedPairsError, estimate_lag  # noqa: E402

SR = 16000


def _speech(rng, n):
    t = np.arange(n) / SR
    # gliding pitch (as in speech): a strictly periodic test signal would correlate as well
    # at one pitch period as at lag 0
    f0 = rng.uniform(100, 220) * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase + rng.uniform(0, 6)) / k for k in range(1, 12))
    env = np.clip(np.sin(2 * np.pi * rng.uniform(2, 4) * t), 0, None) ** 2
    x = x * env + 0.02 * rng.standard_normal(n) * env  # some broadband (fricative-like) energy
    return 0.3 * x / np.abs(x).max()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(1)
    (root / "speech").mkdir()
    (root / "noise").mkdir()
    for i in range(5):
        sf.write(root / "speech" / f"s{i}.flac", _speech(rng, int(SR * rng.uniform(1.0, 3.0))).astype(np.float32), SR)
    for i in range(3):
        w = rng.standard_normal(int(SR * 1.3))
        sf.write(root / "noise" / f"n{i}.flac", (0.2 * w / np.abs(w).max()).astype(np.float32), SR)
    return root


def _mixer(corpus, **augment):
    data = DataConfig(speech_dirs=[str(corpus / "speech")], noise_dirs=[str(corpus / "noise")], segment_seconds=2.0)
    a = AugmentConfig(**{"p_reverb": 0.0, **augment})
    bank = None
    if a.p_reverb > 0:
        rng = np.random.default_rng(3)
        bank = aug.RIRBank([aug.simulate_rir(rng, (0.3, 0.6)) for _ in range(3)])
    return Mixer(scan_audio(data.speech_dirs, SR), scan_audio(data.noise_dirs, SR), data, a, bank)


def test_items_are_deterministic_per_seed_and_index(corpus):
    ds = MixingDataset(_mixer(corpus, p_codec=0.5, p_bandlimit=0.5, p_gain=0.5), 2.0, seed=11)
    a = ds[7]
    b = ds[7]
    c = MixingDataset(_mixer(corpus, p_codec=0.5, p_bandlimit=0.5, p_gain=0.5), 2.0, seed=11)[7]
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], c[1])
    assert not np.array_equal(ds[8][0], a[0])
    assert not np.array_equal(MixingDataset(ds.mixer, 2.0, seed=12)[7][0], a[0])


@pytest.mark.parametrize("augment", [
    {},
    {"p_reverb": 1.0},
    {"p_codec": 1.0, "codecs": ["g711"]},
    {"p_codec": 1.0, "codecs": ["g722"]},
    {"p_codec": 1.0, "codecs": ["opus"], "opus_bitrates": [12000, 32000]},
    {"p_bandlimit": 1.0},
    {"p_gain": 1.0, "p_two_noises": 1.0},
    {"p_speed": 1.0, "p_noise_speed": 1.0, "speed": [0.85, 1.15]},
    {"p_eq": 1.0, "p_noise_eq": 1.0, "eq_db": 12.0},
    {"p_babble": 0.5, "p_synthetic": 0.5, "babble_talkers": [2, 4]},
])
def test_dataset_never_yields_offset_pairs(corpus, augment):
    """Cross-correlation of noisy and clean peaks at lag 0 for every item (high SNR so the
    speech dominates the correlation; the mixing code does not depend on the SNR drawn)."""
    mixer = _mixer(corpus, snr_db=[15.0, 20.0], **augment)
    ds = MixingDataset(mixer, 2.0, seed=3)
    for i in range(6):
        noisy, clean = ds[i]
        assert noisy.shape == clean.shape == (2 * SR,)
        assert noisy.dtype == clean.dtype == np.float32
        assert np.all(np.abs(noisy) <= 1.0)
        lag, corr = estimate_lag(noisy, clean, max_lag=800)
        assert lag == 0, (augment, i, lag, corr)
        assert corr > 0.5, (augment, i, corr)


def test_level_and_snr(corpus):
    mixer = _mixer(corpus, snr_db=[5.0, 5.0], level=[0.2, 0.2], p_gain=0.0, p_two_noises=0.0, p_clean=0.0,
                   p_bandlimit=0.0, p_codec=0.0)
    noisy, clean = MixingDataset(mixer, 2.0, seed=0)[0]
    assert abs(np.max(np.abs(noisy)) - 0.2) < 1e-6
    noise = noisy.astype(np.float64) - clean
    snr = 10 * np.log10(np.sum(clean.astype(np.float64) ** 2) / np.sum(noise ** 2))
    assert abs(snr - 5.0) < 0.01


def test_speed_change_scales_pitch_and_fills_the_segment():
    from fractions import Fraction

    n = SR
    for factor in (Fraction(9, 10), Fraction(23, 20)):
        x = np.sin(2 * np.pi * 500.0 * np.arange(aug.samples_for_speed(n, factor)) / SR)
        y = aug.change_speed(x, factor, n)
        assert len(y) == n and np.abs(y[-200:]).max() > 0.5  # filled to the end, no zero padding
        spec = np.abs(np.fft.rfft(y * np.hanning(n)))
        peak_hz = np.argmax(spec) * SR / n
        assert abs(peak_hz - 500.0 * float(factor)) <= 2.0, (factor, peak_hz)
    f = aug.speed_factor(np.random.default_rng(0), 0.9, 1.1)
    assert 0.9 <= f <= 1.1 and f.denominator <= 40


def test_random_eq_is_the_gain_asked_for():
    from scipy import signal

    w, h = signal.sosfreqz(aug.peaking_sos(1000.0, 6.0, 1.0), worN=[1000.0, 100.0, 7000.0], fs=SR)
    db = 20 * np.log10(np.abs(h))
    assert abs(db[0] - 6.0) < 1e-6 and abs(db[1]) < 0.5 and abs(db[2]) < 0.5
    x = np.random.default_rng(1).standard_normal(SR)
    y = aug.random_eq(x, np.random.default_rng(2), 8.0, 3)
    assert y.shape == x.shape and np.all(np.isfinite(y)) and not np.allclose(x, y)
    assert abs(10 * np.log10(np.mean(y ** 2) / np.mean(x ** 2))) < 3 * 8.0


def test_source_broadening_is_for_training_items_only(corpus):
    """Speed and EQ change training mixes but not the validation mixes, and a config
    without them draws exactly the mixes it drew before they existed."""
    from voipfilter.train.data import build_data

    data = DataConfig(speech_dirs=[str(corpus / "speech")], noise_dirs=[str(corpus / "noise")],
                      segment_seconds=1.0, val_segment_seconds=1.0, val_items=3,
                      val_fraction_speech=0.4, val_fraction_noise=0.4)
    plain = build_data(data, AugmentConfig(p_reverb=0.0), seed=5, log_fn=lambda *_: None)
    broad = build_data(data, AugmentConfig(p_reverb=0.0, p_speed=1.0, p_noise_speed=1.0, p_eq=1.0, p_noise_eq=1.0,
                                           p_babble=0.3, p_synthetic=0.3),
                       seed=5, log_fn=lambda *_: None)
    for (n1, c1), (n2, c2) in zip(plain.val, broad.val):
        assert np.array_equal(n1, n2) and np.array_equal(c1, c2)
    assert not np.array_equal(plain.train[0][1], broad.train[0][1])
    with pytest.raises(ValueError, match="p_speed"):
        AugmentConfig(p_speed=1.5)
    with pytest.raises(ValueError, match="speed"):
        AugmentConfig(speed=[1.2, 0.9])
    with pytest.raises(ValueError, match="p_babble \\+ p_synthetic"):
        AugmentConfig(p_babble=0.6, p_synthetic=0.6)
    with pytest.raises(ValueError, match="babble_talkers"):
        AugmentConfig(babble_talkers=[1, 3])


def _flatness(x):
    """Spectral flatness (geometric / arithmetic mean of the power spectrum), 0..1."""
    p = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2 + 1e-20
    return float(np.exp(np.mean(np.log(p))) / np.mean(p))


def test_babble_is_talkers_from_the_training_speech(corpus):
    """With every noise source babble, the noise in a mix is the sum of speech segments
    (harmonic: far from flat), not the corpus's white noise files (flat)."""
    n = 2 * SR
    files = _mixer(corpus, p_babble=1.0, babble_talkers=[3, 3], p_two_noises=0.0, p_clean=0.0, p_gain=0.0,
                   p_bandlimit=0.0, p_codec=0.0)
    babble = files._noise(np.random.default_rng(4), n)
    white = _mixer(corpus, p_two_noises=0.0)._noise(np.random.default_rng(4), n)
    assert _flatness(white) > 0.3
    assert _flatness(babble) < 0.05
    noisy, clean = MixingDataset(files, 2.0, seed=2)[0]
    assert _flatness((noisy - clean).astype(np.float64)) < 0.05


def test_synthetic_noises_have_their_spectra():
    rng = np.random.default_rng(0)
    n = 4 * SR
    freqs = np.fft.rfftfreq(n, 1 / SR)
    for slope in (-6.0, -3.0, 0.0, 3.0):
        x = aug.coloured_noise(rng, n, slope, SR)
        assert abs(aug.rms(x) - 1.0) < 1e-9
        p = np.abs(np.fft.rfft(x)) ** 2
        lo = p[(freqs > 250) & (freqs < 500)].mean()
        hi = p[(freqs > 2000) & (freqs < 4000)].mean()
        measured = 10 * np.log10(hi / lo) / 3.0  # three octaves apart
        assert abs(measured - slope) < 0.5, (slope, measured)
    h = aug.hum(np.random.default_rng(1), n, SR)
    spec = np.abs(np.fft.rfft(h * np.hanning(n)))
    peak = freqs[np.argmax(spec)]
    # a harmonic of mains (50 or 60 Hz, up to 1 % off)
    assert any(abs(peak / max(1, round(peak / b)) - b) <= 0.011 * b for b in (50.0, 60.0)), peak
    assert _flatness(h) < 0.01
    t = aug.tones(np.random.default_rng(2), n, SR)
    assert _flatness(t) < 0.01 and abs(aug.rms(t) - 1.0) < 1e-9
    kinds = [aug.synthetic_noise(np.random.default_rng(s), SR) for s in range(12)]
    assert all(np.all(np.isfinite(k)) and len(k) == SR for k in kinds)
    a = aug.synthetic_noise(np.random.default_rng(5), SR)
    assert np.array_equal(a, aug.synthetic_noise(np.random.default_rng(5), SR))


def test_reverb_target_keeps_direct_path_timing():
    rng = np.random.default_rng(0)
    rir = aug.simulate_rir(rng, (0.5, 0.7))
    assert np.argmax(np.abs(rir[:200])) == aug._RIR_LEAD  # direct path where expected
    x = _speech(rng, SR)
    full, early = aug.reverberate(x, rir, 50.0)
    # the direct path keeps the dry timing up to its fractional part (< 1 sample); what
    # matters for training is that noisy (full) and target (early) share it exactly
    assert abs(estimate_lag(early, x, 400)[0]) <= 1
    assert estimate_lag(full, early, 400)[0] == 0


def test_codec_roundtrips_are_realigned():
    rng = np.random.default_rng(5)
    x = 0.3 * _speech(rng, 2 * SR)
    for codec in ("g711", "g722", "opus"):
        y = aug.codec_roundtrip(x, codec, rng, SR, [16000])
        assert len(y) == len(x)
        assert estimate_lag(y, x, 400)[0] == 0, codec


def test_split_by_file_is_fixed_and_disjoint(corpus):
    files = scan_audio([corpus / "speech"], SR)
    tr, val = split_files(files, 0.4, 99)
    tr2, val2 = split_files(files, 0.4, 99)
    assert val == val2 and len(val) == 2 and not set(f.path for f in tr) & set(f.path for f in val)


def _pairs(root, shift=0, n=SR * 2):
    rng = np.random.default_rng(2)
    (root / "noisy").mkdir(parents=True)
    (root / "clean").mkdir(parents=True)
    for i in range(3):
        c = _speech(rng, n)
        noisy = c + 0.05 * rng.standard_normal(n)
        if i == 1 and shift:
            c = np.roll(c, shift)
        sf.write(root / "clean" / f"p{i}.wav", c.astype(np.float32), SR)
        sf.write(root / "noisy" / f"p{i}.wav", noisy.astype(np.float32), SR)


def test_pair_dataset_uses_aligned_pairs(tmp_path):
    _pairs(tmp_path / "ok")
    ds = PairDataset([tmp_path / "ok"], 1.5, seed=1)
    for i in range(5):
        noisy, clean = ds[i]
        assert estimate_lag(noisy, clean, 400)[0] == 0
    long = PairDataset([tmp_path / "ok"], 3.0, seed=1)[0]  # longer than the files: zero-padded alike
    assert estimate_lag(*long, 400)[0] == 0


def test_pair_dataset_refuses_a_one_sample_offset(tmp_path):
    _pairs(tmp_path / "bad", shift=1)
    with pytest.raises(MisalignedPairsError) as exc:
        PairDataset([tmp_path / "bad"], 1.0)
    assert "p1.wav" in str(exc.value) and "misaligned" in str(exc.value)
    # skip_bad drops the pair (and says so) instead of using it
    ds = PairDataset([tmp_path / "bad"], 1.0, skip_bad=True)
    assert len(ds.source) == 2


def test_extra_speech_is_for_training_only(corpus, tmp_path):
    """Folders in extra_speech_dirs join the training speech and leave the validation
    split and mixes exactly as they were."""
    from voipfilter.train.data import build_data

    extra = tmp_path / "extra"
    extra.mkdir()
    rng = np.random.default_rng(9)
    for i in range(3):
        sf.write(extra / f"x{i}.flac", _speech(rng, 2 * SR).astype(np.float32), SR)
    data = DataConfig(speech_dirs=[str(corpus / "speech")], noise_dirs=[str(corpus / "noise")],
                      segment_seconds=1.0, val_segment_seconds=1.0, val_items=3,
                      val_fraction_speech=0.4, val_fraction_noise=0.4)
    plain = build_data(data, AugmentConfig(p_reverb=0.0), seed=5, log_fn=lambda *_: None)
    more = build_data(DataConfig(**{**data.__dict__, "extra_speech_dirs": [str(extra)]}),
                      AugmentConfig(p_reverb=0.0), seed=5, log_fn=lambda *_: None)
    assert more.val_files == plain.val_files
    for (n1, c1), (n2, c2) in zip(plain.val, more.val):
        assert np.array_equal(n1, n2) and np.array_equal(c1, c2)
    assert more.n_speech_train == plain.n_speech_train + 3
    trained = {f.path for f in more.train.mixer.speech}
    assert {str(extra / f"x{i}.flac") for i in range(3)} <= trained
    with pytest.raises(FileNotFoundError, match="audio folder not found"):
        build_data(DataConfig(**{**data.__dict__, "extra_speech_dirs": [str(tmp_path / "nope")]}),
                   AugmentConfig(p_reverb=0.0), seed=5, log_fn=lambda *_: None)


def test_speech_quality_floors_drop_unclean_targets_after_the_split(corpus, tmp_path):
    """A DNSMOS table as `voipfilter eval --model none --tsv` writes it drops the files under
    the floors from training and validation, keeps the split and unscored files, and says
    what is wrong with a bad table."""
    from voipfilter.evaluate.cli import write_tsv
    from voipfilter.train.data import build_data

    data = DataConfig(speech_dirs=[str(corpus / "speech")], noise_dirs=[str(corpus / "noise")],
                      segment_seconds=1.0, val_segment_seconds=1.0, val_items=3,
                      val_fraction_speech=0.4, val_fraction_noise=0.4)
    plain = build_data(data, AugmentConfig(p_reverb=0.0), seed=5, log_fn=lambda *_: None)
    train_names = sorted(f.path.rsplit("/", 1)[1] for f in plain.train.mixer.speech)
    val_names = sorted(p.rsplit("/", 1)[1] for p in plain.val_files if "/speech/" in p)
    assert len(train_names) == 3 and len(val_names) == 2
    noisy_target, distorted_target = train_names[0], val_names[0]
    rows = [{"model": "none", "file": f"speech/{n}", "seconds": 2.0, "ovrl": 3.3, "sig": 3.6, "bak": 4.0}
            for n in train_names[1:] + val_names[1:]]
    rows += [{"model": "none", "file": f"speech/{noisy_target}", "seconds": 2.0, "ovrl": 2.9, "sig": 3.6, "bak": 3.2},
             {"model": "none", "file": f"speech/{distorted_target}", "seconds": 2.0, "ovrl": 2.8, "sig": 3.0, "bak": 4.0},
             {"model": "none", "file": "MEAN", "seconds": "", "ovrl": 3.1, "sig": 3.4, "bak": 3.8}]
    table = tmp_path / "speech_dnsmos.tsv"
    write_tsv(rows[1:], table)  # train_names[1] is not in the table: unscored, kept
    logs: list[str] = []
    cfg = DataConfig(**{**data.__dict__, "speech_quality": [str(table)], "min_speech_sig": 3.2,
                        "min_speech_bak": 3.5})
    clean = build_data(cfg, AugmentConfig(p_reverb=0.0), seed=5, log_fn=logs.append)
    kept_train = sorted(f.path.rsplit("/", 1)[1] for f in clean.train.mixer.speech)
    kept_val = sorted(p.rsplit("/", 1)[1] for p in clean.val_files if "/speech/" in p)
    assert kept_train == train_names[1:]
    assert kept_val == val_names[1:]
    assert any("dropped 1 of 3 training and 1 of 2 validation files; 1 unscored" in m for m in logs)

    # floors that leave nothing, a table without the columns, a missing table: clear errors
    with pytest.raises(ValueError, match="lower min_speech_sig"):
        build_data(DataConfig(**{**cfg.__dict__, "min_speech_bak": 5.0}), AugmentConfig(p_reverb=0.0), seed=5,
                   log_fn=lambda *_: None)
    bad = tmp_path / "bad.tsv"
    bad.write_text("model\tfile\tseconds\tpesq\nnone\tspeech/s0.flac\t2.0\t3.1\n")
    with pytest.raises(ValueError, match=r"no column\(s\) \['sig', 'bak'\]"):
        build_data(DataConfig(**{**cfg.__dict__, "speech_quality": [str(bad)]}), AugmentConfig(p_reverb=0.0),
                   seed=5, log_fn=lambda *_: None)
    with pytest.raises(FileNotFoundError, match="--model none --tsv"):
        build_data(DataConfig(**{**cfg.__dict__, "speech_quality": [str(tmp_path / "nope.tsv")]}),
                   AugmentConfig(p_reverb=0.0), seed=5, log_fn=lambda *_: None)
