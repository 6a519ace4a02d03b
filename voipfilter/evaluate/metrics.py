"""Speech quality metrics: PESQ-WB, STOI, SI-SDR (with a clean reference) and DNSMOS.

numpy only at import; ``pesq``, ``pystoi`` and ``speechmos`` (the ``eval`` extra) are
imported when a metric is asked for. All functions take 1-D float arrays at 16 kHz (PESQ-WB
and DNSMOS need 16 kHz; STOI resamples internally) that are **sample-aligned**: the
reference and the estimate must start at the same instant (the streaming path's own
delay removed first).
"""
from __future__ import annotations

import math

import numpy as np


def _pair(ref: np.ndarray, est: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(ref, dtype=np.float64).reshape(-1)
    est = np.asarray(est, dtype=np.float64).reshape(-1)
    if len(ref) != len(est):
        raise ValueError(f"reference ({len(ref)}) and estimate ({len(est)}) differ in length")
    return ref, est


def si_sdr(ref: np.ndarray, est: np.ndarray, eps: float = 1e-12) -> float:
    """Scale-invariant SDR in dB (means removed, as in Le Roux et al. 2019)."""
    ref, est = _pair(ref, est)
    ref = ref - ref.mean()
    est = est - est.mean()
    alpha = np.dot(est, ref) / (np.dot(ref, ref) + eps)
    target = alpha * ref
    noise = est - target
    return float(10 * np.log10((np.dot(target, target) + eps) / (np.dot(noise, noise) + eps)))


def pesq_wb(ref: np.ndarray, est: np.ndarray, sr: int = 16000) -> float:
    """Wide-band PESQ (ITU-T P.862.2) via the ``pesq`` package; NaN when PESQ finds no speech."""
    from pesq import pesq
    from pesq import PesqError

    ref, est = _pair(ref, est)
    if not (np.any(ref) and np.any(est)):  # all zeros: no speech (pesq would divide by 0)
        return math.nan
    try:
        return float(pesq(sr, ref, est, "wb"))
    except PesqError:
        return math.nan


def stoi(ref: np.ndarray, est: np.ndarray, sr: int = 16000, extended: bool = False) -> float:
    from pystoi import stoi as _stoi

    ref, est = _pair(ref, est)
    return float(_stoi(ref, est, sr, extended=extended))


INTRUSIVE = ("pesq", "stoi", "si_sdr")  # the keys of intrusive()


def intrusive(ref: np.ndarray, est: np.ndarray, sr: int = 16000) -> dict[str, float]:
    """{'pesq', 'stoi', 'si_sdr'} of an estimate against its clean reference."""
    return {"pesq": pesq_wb(ref, est, sr), "stoi": stoi(ref, est, sr), "si_sdr": si_sdr(ref, est)}


def intrusive_lists(pairs, sr: int = 16000) -> dict[str, list[float]]:
    """Per-pair :func:`intrusive` scores of (clean reference, estimate) pairs, one list per key."""
    scores: dict[str, list[float]] = {k: [] for k in INTRUSIVE}
    for ref, est in pairs:
        m = intrusive(ref, est, sr)
        for k in INTRUSIVE:
            scores[k].append(m[k])
    return scores


def dnsmos(x: np.ndarray, sr: int = 16000) -> dict[str, float]:
    """{'ovrl', 'sig', 'bak', 'p808'} (see :mod:`voipfilter.evaluate.dnsmos`)."""
    from .dnsmos import dnsmos as _dnsmos

    return _dnsmos(np.asarray(x, dtype=np.float64).reshape(-1), sr)


def nanmean(values) -> float:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and standard error of the per-item differences a - b (NaNs dropped pairwise)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return float(np.mean(d)) if len(d) else float("nan"), float("nan")
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
