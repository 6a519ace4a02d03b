"""PyAV frames ↔ mono float32: the s16 fast paths give exactly what the general path gives."""
from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from voipfilter.frames import frame_to_mono, mono_to_frame


def s16_frame(a: np.ndarray, layout: str) -> av.AudioFrame:
    f = av.AudioFrame.from_ndarray(a[None, :], format="s16", layout=layout)
    f.sample_rate, f.pts, f.time_base = 48000, 4800, fractions.Fraction(1, 48000)
    return f


@pytest.mark.parametrize("channels,layout", [(1, "mono"), (2, "stereo")])
@pytest.mark.parametrize("n", [1, 441, 960])
def test_s16_in_equals_the_general_formula(channels, layout, n):
    rng = np.random.default_rng(n + channels)
    a = rng.integers(-32768, 32768, n * channels).astype(np.int16)
    a[:channels] = -32768
    x = frame_to_mono(s16_frame(a, layout))
    ref = (a.reshape(n, channels).astype(np.float32) * np.float32(1 / 32768)).T
    ref = ref[0] if channels == 1 else (ref[0] + ref[1]) * np.float32(0.5)
    assert x.dtype == np.float32 and x.shape == (n,)
    np.testing.assert_array_equal(x, ref)
    # the same samples as planar s16 (the general path)
    planar = av.AudioFrame.from_ndarray(a.reshape(n, channels).T.copy(), format="s16p", layout=layout)
    np.testing.assert_array_equal(x, frame_to_mono(planar))


@pytest.mark.parametrize("channels", [1, 2])
def test_s16_out_rounds_clips_and_copies_timing(channels):
    y = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.5, -1.5, 1 / 65536, 3 / 65536, -3 / 65536], np.float32)
    like = s16_frame(np.zeros(len(y) * 2, np.int16), "stereo")
    out = mono_to_frame(y, channels, like)
    want = np.array([0, 16384, -16384, 32767, -32768, 32767, -32768, 0, 2, -2], np.int16)
    got = out.to_ndarray().reshape(len(y), channels)
    for c in range(channels):
        np.testing.assert_array_equal(got[:, c], want)
    assert (out.format.name, out.layout.nb_channels, out.samples) == ("s16", channels, len(y))
    assert (out.sample_rate, out.pts, out.time_base) == (48000, 4800, fractions.Fraction(1, 48000))


def test_empty_frame_out():
    like = s16_frame(np.zeros(2, np.int16), "stereo")
    out = mono_to_frame(np.zeros(0, np.float32), 2, like)
    assert out.samples == 0 and out.pts == 4800
