"""The streaming resampler: chunk independence, zero content delay, exact chain timing."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from voipfilter.resample import (
    SUPPORTED_RATES,
    StreamingResampler,
    chain_timing,
    check_rate,
)

OTHER_RATES = [r for r in SUPPORTED_RATES if r != 16000]
PAIRS = [(r, 16000) for r in OTHER_RATES] + [(16000, r) for r in OTHER_RATES]
CHUNKINGS = [[1], [7], [160], [480], [960], [4096], [13, 1000, 3, 250]]


def feed(rs: StreamingResampler, x: np.ndarray, chunks: list[int]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    outs, marks, pos, i, total = [], [], 0, 0, 0
    while pos < len(x):
        c = chunks[i % len(chunks)]
        i += 1
        y = rs.process(x[pos : pos + c])
        pos = min(pos + c, len(x))
        total += len(y)
        outs.append(y)
        marks.append((pos, total))
    return np.concatenate(outs), marks


@pytest.mark.parametrize("rate_in,rate_out", PAIRS)
def test_output_is_chunk_independent_and_count_depends_on_input_count_only(rate_in, rate_out):
    rng = np.random.default_rng(rate_in + rate_out)
    x = (0.3 * rng.standard_normal(6000)).astype(np.float32)
    ref, _ = feed(StreamingResampler(rate_in, rate_out), x, [4096])
    for chunks in CHUNKINGS:
        rs = StreamingResampler(rate_in, rate_out)
        y, marks = feed(rs, x, chunks)
        np.testing.assert_array_equal(y, ref)
        for pos, total in marks:
            assert rs.count(pos) == total, (chunks, pos)


@pytest.mark.parametrize("rate_in,rate_out", PAIRS)
def test_no_content_delay(rate_in, rate_out):
    """Output sample j is the input at time j / rate_out exactly (the resampler only buffers)."""
    n = rate_in // 2
    f = 440.0
    x = (0.5 * np.sin(2 * np.pi * f * np.arange(n) / rate_in)).astype(np.float32)
    y = StreamingResampler(rate_in, rate_out).process(x)
    j = np.arange(len(y))
    ref = 0.5 * np.sin(2 * np.pi * f * j / rate_out)
    settled = slice(rate_out // 100, len(y))  # after the start-up transient
    assert np.abs(y[settled] - ref[settled]).max() < 2e-3


@pytest.mark.parametrize("rate_in,rate_out", PAIRS)
def test_count_extrapolates_beyond_the_probe(rate_in, rate_out):
    rs = StreamingResampler(rate_in, rate_out)
    x = np.zeros(40_000, np.float32)
    _, marks = feed(rs, x, [997, 3001])
    for pos, total in marks:
        assert rs.count(pos) == total
    # Steady state holds back a bounded amount: within ~2 ms of the ideal count.
    ideal = Fraction(rate_out, rate_in) * len(x)
    assert 0 <= ideal - marks[-1][1] <= 0.002 * rate_out + 1


def test_zero_length_input():
    rs = StreamingResampler(48000, 16000)
    y = rs.process(np.zeros(0, np.float32))
    assert y.shape == (0,) and y.dtype == np.float32


def test_reset_restarts_the_stream():
    x = np.random.default_rng(5).standard_normal(3000).astype(np.float32)
    rs = StreamingResampler(48000, 16000)
    a = rs.process(x)
    rs.reset()
    b = rs.process(x)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rate", SUPPORTED_RATES)
def test_chain_timing_is_an_integer_delay_and_never_underruns(rate):
    t = chain_timing(rate, 16000, 256, 256)
    assert isinstance(t.delay_samples, int)
    assert (256 + t.model_priming) * Fraction(rate, 16000) + t.output_priming == t.delay_samples
    if rate == 16000:
        assert t.delay_samples == 511 and t.output_priming == 255
    # The window's 32 ms plus at most ~4 ms of resampling.
    assert 0.0319 <= t.delay_samples / rate <= 0.036
    # Simulate cumulative counts with the resamplers' count functions: never runs dry.
    if rate != 16000:
        down = StreamingResampler(rate, 16000)
        up = StreamingResampler(16000, rate)
        n = np.arange(0, 60_000)
        available = t.output_priming + up.count(t.model_priming + 256 * (down.count(n) // 256))
        assert np.all(available >= n)
        assert np.any(available == n)  # and the priming is the fewest that works


def test_44k1_needs_model_rate_priming_for_an_integer_delay():
    t = chain_timing(44100, 16000, 256, 256)
    assert t.model_priming == 64  # (256 + 64) samples at 16 kHz = 20 ms = 882 samples at 44.1 kHz
    assert t.delay_samples == t.output_priming + 882


@pytest.mark.parametrize("bad", [0, 11025, 22050, 96000, 16000.5, "16000", None])
def test_check_rate_rejects_unsupported_rates(bad):
    with pytest.raises(ValueError, match="unsupported sample rate"):
        check_rate(bad)


@pytest.mark.parametrize("rate_in,rate_out", PAIRS)
def test_same_samples_as_av_audioresampler(rate_in, rate_out):
    """The resampler drives libswresample's graph itself and, once the count is known, pulls
    only what is due: the samples are still exactly those of ``av.AudioResampler``."""
    import av

    rng = np.random.default_rng(rate_in * 3 + rate_out)
    x = (0.3 * rng.standard_normal(8000)).astype(np.float32)
    ref_rs = av.AudioResampler(format="flt", layout="mono", rate=rate_out)
    StreamingResampler(rate_in, rate_out).count(0)  # the count function is known from here on
    rs = StreamingResampler(rate_in, rate_out)
    assert rs._counts is not None
    pos, i, chunks = 0, 0, [1, 441, 960, 7, 320]
    while pos < len(x):
        c = chunks[i % len(chunks)]
        i += 1
        f = av.AudioFrame.from_ndarray(x[None, pos : pos + c], format="flt", layout="mono")
        f.sample_rate, f.pts, f.time_base = rate_in, pos, Fraction(1, rate_in)
        ref = [np.frombuffer(o.planes[0], np.float32, count=o.samples) for o in ref_rs.resample(f)]
        ref = np.concatenate(ref) if ref else np.zeros(0, np.float32)
        np.testing.assert_array_equal(rs.process(x[pos : pos + c]), ref)
        pos += c
