"""Signal augmentations for on-the-fly mixing (numpy, float64 in and out, 16 kHz).

Every function takes its randomness from the ``numpy.random.Generator`` it is given, so a
mix is a pure function of (seed, index). Nothing here may shift one side of a pair against
the other: reverberation gives the target the same direct-path timing as the noisy side,
band-limiting is zero-phase and applied to both sides, codec round-trips (noisy side
only) are re-aligned to their input by a measured lag before they are used, and the
equaliser and speed change act on a source (speech or noise) before it is mixed, so the
target is the very speech that went into the mix.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy import signal

log = logging.getLogger(__name__)

# pyroomacoustics' fractional-delay filter puts the direct path this many samples late.
_RIR_LEAD = 40


# --------------------------------------------------------------------------- levels, SNR
def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)) + 1e-20))


def scale_noise_to_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Noise scaled so that 10*log10(P_speech / P_noise) == snr_db over the segment."""
    ps = float(np.mean(np.square(speech)))
    pn = float(np.mean(np.square(noise)))
    if pn <= 1e-20 or ps <= 1e-20:
        return noise * 0.0
    return noise * np.sqrt(ps / (pn * 10.0 ** (snr_db / 10.0)))


def active_fraction(x: np.ndarray, frame: int = 512, rel_db: float = -40.0) -> float:
    """Share of frames whose energy is within rel_db of the loudest frame (speech activity)."""
    n = len(x) // frame
    if n == 0:
        return 0.0
    e = np.mean(np.square(x[: n * frame].reshape(n, frame)), axis=1)
    top = e.max()
    if top <= 1e-12:
        return 0.0
    return float(np.mean(e > top * 10.0 ** (rel_db / 10.0)))


def gain_envelope(n: int, rng: np.random.Generator, max_db: float, points: int = 4) -> np.ndarray:
    """A slow piecewise-linear gain (in dB, +-max_db) across n samples."""
    knots_db = rng.uniform(-max_db, max_db, size=points)
    return 10.0 ** (np.interp(np.arange(n), np.linspace(0, n - 1, points), knots_db) / 20.0)


# --------------------------------------------------------------------------- band-limit
def lowpass(x: np.ndarray, cutoff_hz: float, sr: int = 16000, order: int = 8) -> np.ndarray:
    """Zero-phase low-pass (forward-backward Butterworth): no delay, so pairs stay aligned."""
    if cutoff_hz >= sr / 2:
        return x
    sos = signal.butter(order, cutoff_hz / (sr / 2), output="sos")
    return signal.sosfiltfilt(sos, x)


# --------------------------------------------------------------------------- equaliser, speed
def peaking_sos(freq_hz: float, gain_db: float, q: float, sr: int = 16000) -> np.ndarray:
    """One peaking-EQ biquad (Audio EQ Cookbook) as a second-order section."""
    a = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * np.pi * freq_hz / sr
    alpha = np.sin(w0) / (2.0 * q)
    b = [1.0 + alpha * a, -2.0 * np.cos(w0), 1.0 - alpha * a]
    den = [1.0 + alpha / a, -2.0 * np.cos(w0), 1.0 - alpha / a]
    return np.array([[*(np.array(b) / den[0]), 1.0, den[1] / den[0], den[2] / den[0]]])


def random_eq(x: np.ndarray, rng: np.random.Generator, max_db: float, bands: int = 3,
              sr: int = 16000) -> np.ndarray:
    """A random microphone / room colouring: ``bands`` peaking filters, centre log-uniform
    in 100 Hz-0.8 x Nyquist, gain uniform in +-max_db, Q in 0.5-2. Minimum-phase
    (causal), as a real transducer is; it is applied to a source before mixing, so both
    sides of a pair carry it."""
    sos = np.concatenate([
        peaking_sos(float(np.exp(rng.uniform(np.log(100.0), np.log(0.8 * sr / 2)))),
                    float(rng.uniform(-max_db, max_db)), float(rng.uniform(0.5, 2.0)), sr)
        for _ in range(bands)
    ])
    return signal.sosfilt(sos, x)


def speed_factor(rng: np.random.Generator, lo: float, hi: float, denominator: int = 40) -> Fraction:
    """A speed factor drawn uniformly in [lo, hi], as a fraction with a small denominator
    (so the polyphase resampler stays cheap)."""
    return Fraction(float(rng.uniform(lo, hi))).limit_denominator(denominator)


def change_speed(x: np.ndarray, factor: Fraction, n: int) -> np.ndarray:
    """``x`` played ``factor`` times as fast (tempo and pitch together, as a tape would),
    cut or zero-padded to ``n`` samples. Feed it ``ceil(n * factor)`` samples to fill n.
    Polyphase resampling with a linear-phase filter whose delay scipy removes."""
    y = signal.resample_poly(x, factor.denominator, factor.numerator)
    if len(y) < n:
        y = np.concatenate([y, np.zeros(n - len(y))])
    return y[:n]


def samples_for_speed(n: int, factor: Fraction | None) -> int:
    """How many input samples ``change_speed`` needs to make ``n`` output samples."""
    return n if factor is None else int(np.ceil(n * factor)) + 1


# --------------------------------------------------------------------------- synthetic noise
# Real recorded noise is 45 minutes here; these stand in for kinds it lacks. They are
# additive noise sources like a noise file, drawn with ``augment.p_synthetic``.
SYNTHETIC_KINDS = ("colour", "hum", "tones")


def coloured_noise(rng: np.random.Generator, n: int, slope_db: float, sr: int = 16000) -> np.ndarray:
    """Gaussian noise whose spectrum falls (or rises) by ``slope_db`` per octave: -6 brown,
    -3 pink, 0 white, +3 blue; shaped in the frequency domain, unit RMS."""
    f = np.fft.rfftfreq(n, 1.0 / sr)
    f[0] = f[1] if n > 1 else 1.0
    gain = (f / 1000.0) ** (slope_db / (20.0 * np.log10(2.0)))
    spec = (rng.standard_normal(len(f)) + 1j * rng.standard_normal(len(f))) * gain
    x = np.fft.irfft(spec, n)
    return x / (rms(x) + 1e-12)


def hum(rng: np.random.Generator, n: int, sr: int = 16000) -> np.ndarray:
    """Mains hum and buzz: 50 or 60 Hz (a little off) and its harmonics up to ~2 kHz with
    random, mostly falling amplitudes and phases, over a floor of pink noise. Unit RMS."""
    f0 = float(rng.choice([50.0, 60.0])) * float(rng.uniform(0.99, 1.01))
    t = np.arange(n) / sr
    x = np.zeros(n)
    for k in range(1, int(2000 // f0) + 1):
        amp = float(rng.uniform(0.0, 1.0)) / k ** float(rng.uniform(0.3, 1.5))
        x += amp * np.sin(2 * np.pi * k * f0 * t + float(rng.uniform(0, 2 * np.pi)))
    x = x / (rms(x) + 1e-12)
    return x + 10 ** (float(rng.uniform(-30, -10)) / 20) * coloured_noise(rng, n, -3.0, sr)


def tones(rng: np.random.Generator, n: int, sr: int = 16000) -> np.ndarray:
    """One to three tones (200 Hz-4 kHz) that drift slowly, as a fan or a motor whines, or
    switch on and off, as beeps and alarms do. Unit RMS."""
    t = np.arange(n) / sr
    x = np.zeros(n)
    for _ in range(int(rng.integers(1, 4))):
        f = float(np.exp(rng.uniform(np.log(200.0), np.log(4000.0))))
        drift = f * float(rng.uniform(0.0, 0.03)) * np.sin(2 * np.pi * float(rng.uniform(0.05, 1.0)) * t)
        phase = 2 * np.pi * np.cumsum(f + drift) / sr
        tone = np.sin(phase + float(rng.uniform(0, 2 * np.pi)))
        if rng.random() < 0.5:  # beeps: on/off with a period of 0.2-2 s, 5 ms ramps
            period = float(rng.uniform(0.2, 2.0))
            duty = float(rng.uniform(0.2, 0.8))
            on = ((t / period + float(rng.uniform(0, 1))) % 1.0) < duty
            ramp = max(1, int(0.005 * sr))
            gate = np.convolve(on.astype(np.float64), np.ones(ramp) / ramp, mode="same")
            tone = tone * gate
        x += float(rng.uniform(0.3, 1.0)) * tone
    return x / (rms(x) + 1e-12)


def synthetic_noise(rng: np.random.Generator, n: int, slope_db: tuple[float, float] = (-6.0, 3.0),
                    sr: int = 16000) -> np.ndarray:
    """One synthetic noise of a kind drawn from :data:`SYNTHETIC_KINDS`, unit RMS."""
    kind = SYNTHETIC_KINDS[int(rng.integers(len(SYNTHETIC_KINDS)))]
    if kind == "colour":
        return coloured_noise(rng, n, float(rng.uniform(*slope_db)), sr)
    if kind == "hum":
        return hum(rng, n, sr)
    return tones(rng, n, sr)


# --------------------------------------------------------------------------- reverberation
class RIRBank:
    """A fixed bank of simulated room impulse responses (pyroomacoustics, image method).

    Each RIR is trimmed so that its direct path sits at index 0 (up to the fractional-delay
    filter's left half, which is removed after convolution), and the early part for the
    target is the first ``early_ms`` after the direct path. The bank is a function of
    (size, seed, rt60 range) and is cached on disk.
    """

    def __init__(self, rirs: list[np.ndarray]):
        self.rirs = rirs

    def __len__(self) -> int:
        return len(self.rirs)

    @classmethod
    def build(cls, size: int, seed: int, rt60: tuple[float, float], sr: int = 16000,
              cache_dir: str | Path | None = None) -> "RIRBank":
        key = json.dumps({"size": size, "seed": seed, "rt60": list(rt60), "sr": sr, "v": 1})
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        cache_dir = Path(cache_dir or os.environ.get("VOIPFILTER_CACHE",
                                                       Path.home() / ".cache" / "voipfilter"))
        path = cache_dir / f"rir_bank_{digest}.npz"
        if path.exists():
            with np.load(path) as z:
                return cls([z[f"r{i}"] for i in range(size)])
        rng = np.random.default_rng(seed)
        rirs = [simulate_rir(rng, rt60, sr) for _ in range(size)]
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, **{f"r{i}": r for i, r in enumerate(rirs)})
            os.replace(tmp, path)
        except OSError as exc:  # a read-only home is not a reason to fail
            log.warning("could not cache the RIR bank at %s: %s", path, exc)
        return cls(rirs)


def simulate_rir(rng: np.random.Generator, rt60: tuple[float, float], sr: int = 16000) -> np.ndarray:
    """One shoebox RIR with a random room, RT60 and positions; float32, direct path at _RIR_LEAD."""
    import pyroomacoustics as pra

    for _ in range(20):
        dims = np.array([rng.uniform(3.0, 10.0), rng.uniform(3.0, 8.0), rng.uniform(2.4, 4.0)])
        target_rt60 = float(rng.uniform(*rt60))
        try:
            e_abs, max_order = pra.inverse_sabine(target_rt60, dims)
        except ValueError:
            continue
        src = rng.uniform([0.5, 0.5, 1.0], dims - [0.5, 0.5, 0.5])
        mic = rng.uniform([0.5, 0.5, 1.0], dims - [0.5, 0.5, 0.5])
        dist = float(np.linalg.norm(src - mic))
        if dist < 0.5:
            continue
        room = pra.ShoeBox(dims.tolist(), fs=sr, materials=pra.Material(e_abs), max_order=min(max_order, 80))
        room.add_source(src.tolist())
        room.add_microphone(mic.tolist())
        room.compute_rir()
        rir = np.asarray(room.rir[0][0], dtype=np.float64)
        direct = dist / pra.constants.get("c") * sr
        # The direct path is the first arrival: its peak lies within the fractional-delay
        # filter around `direct` (pyroomacoustics adds a global delay of _RIR_LEAD).
        lo = max(int(direct), 0)
        hi = min(int(direct) + 2 * _RIR_LEAD + 2, len(rir))
        peak = lo + int(np.argmax(np.abs(rir[lo:hi])))
        start = peak - _RIR_LEAD
        if start < 0:
            rir = np.concatenate([np.zeros(-start), rir])
            start = 0
        rir = rir[start:]
        rir /= np.abs(rir[_RIR_LEAD]) + 1e-12  # direct path gain 1
        # trim the tail below -60 dB of the peak energy
        env = np.abs(rir)
        last = np.nonzero(env > 1e-3)[0]
        rir = rir[: int(last[-1]) + 1] if len(last) else rir
        return rir.astype(np.float32)
    raise RuntimeError("could not draw a valid room")


def reverberate(speech: np.ndarray, rir: np.ndarray, early_ms: float, sr: int = 16000
                ) -> tuple[np.ndarray, np.ndarray]:
    """(reverberant speech, early-reflection target), both aligned with the dry speech's
    timing (direct path at lag 0), same length as ``speech``."""
    n = len(speech)
    early_len = _RIR_LEAD + int(round(early_ms * 1e-3 * sr))
    full = signal.fftconvolve(speech, rir.astype(np.float64))[_RIR_LEAD : _RIR_LEAD + n]
    early = signal.fftconvolve(speech, rir[:early_len].astype(np.float64))[_RIR_LEAD : _RIR_LEAD + n]
    return full, early


# --------------------------------------------------------------------------- codecs
def mulaw_roundtrip(x: np.ndarray, mu: float = 255.0) -> np.ndarray:
    """8-bit mu-law quantisation (no delay)."""
    x = np.clip(x, -1.0, 1.0)
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    q = np.round(y * 127.0) / 127.0
    return np.sign(q) * ((1.0 + mu) ** np.abs(q) - 1.0) / mu


def g711_roundtrip(x: np.ndarray, sr: int = 16000) -> np.ndarray:
    """G.711-like narrowband call: down to 8 kHz, mu-law, back up (zero-phase resampling)."""
    y8 = signal.resample_poly(x, 8000, sr)
    return signal.resample_poly(mulaw_roundtrip(y8), sr, 8000)[: len(x)]


def _av_roundtrip(x: np.ndarray, codec: str, sr: int, bit_rate: int | None) -> tuple[np.ndarray, int]:
    import av

    enc = av.CodecContext.create(codec, "w")
    enc.sample_rate = sr
    enc.layout = "mono"
    enc.format = "s16"
    if bit_rate:
        enc.bit_rate = int(bit_rate)
    enc.time_base = Fraction(1, sr)
    enc.open()
    dec = av.CodecContext.create(codec, "r")
    dec.sample_rate = sr
    dec.layout = "mono"
    if enc.extradata:
        dec.extradata = enc.extradata
    frame_size = enc.frame_size or 320
    pcm = np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)
    # pad with enough zeros to flush the codec's delay out
    pcm = np.concatenate([pcm, np.zeros(frame_size * 4, np.int16)])
    packets = []
    pts = 0
    for i in range(0, len(pcm) - frame_size + 1, frame_size):
        frame = av.AudioFrame.from_ndarray(pcm[None, i : i + frame_size], format="s16", layout="mono")
        frame.sample_rate = sr
        frame.pts = pts
        pts += frame_size
        packets += enc.encode(frame)
    packets += enc.encode(None)
    out = []
    out_sr = sr
    for p in packets:
        for f in dec.decode(p):
            a = f.to_ndarray()
            out_sr = f.sample_rate
            a = a.reshape(-1) if a.shape[0] == 1 else a[0]
            out.append(a.astype(np.float64) / (32768.0 if a.dtype == np.int16 else 1.0))
    return (np.concatenate(out) if out else np.zeros(0)), out_sr


def best_lag(y: np.ndarray, x: np.ndarray, max_lag: int) -> int:
    """Integer lag L in [-max_lag, max_lag] maximising sum y[n + L] * x[n] (y is x delayed by L)."""
    n = len(x)
    yy = np.zeros(n + 2 * max_lag)
    m = min(len(y), n + max_lag)
    yy[max_lag : max_lag + m] = y[:m]
    # valid correlation: entry k is sum_n yy[k + n] * x[n], i.e. lag k - max_lag
    xc = signal.correlate(yy, x, mode="valid", method="fft")
    return int(np.argmax(xc)) - max_lag


def _shift(y: np.ndarray, lag: int, n: int) -> np.ndarray:
    """y advanced by lag samples (y[lag:]), zero-filled, cut/padded to n."""
    if lag >= 0:
        y = y[lag:]
    else:
        y = np.concatenate([np.zeros(-lag), y])
    if len(y) < n:
        y = np.concatenate([y, np.zeros(n - len(y))])
    return y[:n]


def codec_roundtrip(x: np.ndarray, codec: str, rng: np.random.Generator, sr: int = 16000,
                    opus_bitrates: list[int] | tuple[int, ...] = (16000,)) -> np.ndarray:
    """Encode and decode x, then re-align the output to x (measured lag; zero-phase
    resampling), so the result can replace the noisy side of a pair without any offset."""
    if codec == "g711":
        return g711_roundtrip(x, sr)
    if codec == "g722":
        y, ysr = _av_roundtrip(x, "g722", sr, None)
        lag = best_lag(y, x, 64)
        return _shift(y, lag, len(x))
    if codec == "opus":
        br = int(rng.choice(list(opus_bitrates)))
        y, ysr = _av_roundtrip(x, "libopus", sr, br)
        # align at the decoder rate (48 kHz: sub-sample at 16 kHz), then come down
        up = ysr // sr if ysr % sr == 0 else None
        if up and up > 1:
            x_up = signal.resample_poly(x, up, 1)
            lag = best_lag(y, x_up, 48 * up)
            y = signal.resample_poly(_shift(y, lag, len(x_up)), 1, up)
            return y[: len(x)]
        lag = best_lag(y, x, 96)
        return _shift(y, lag, len(x))
    raise ValueError(f"unknown codec {codec!r} (g711, g722, opus)")
