"""docs/track.md's two complete scripts, run as they stand in the guide: a call on loopback
recorded through the filter (the sender hangs up when its file ends, the receiver stops
when the connection closes), and a file through the filter into a file. Each must end by
itself and leave a finished WAV (RIFF sizes written) holding the audio."""
from __future__ import annotations

import re
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

pytestmark = pytest.mark.timeout(180)

TRACK_MD = REPO / "docs" / "track.md"


def scripts() -> dict[str, str]:
    """The guide's complete scripts, by the name it runs them as."""
    out = {}
    text = TRACK_MD.read_text()
    for m in re.finditer(r"`python (\w+\.py) noisy\.wav clean\.wav`.*?```python\n(.*?)```", text, re.S):
        out[m.group(1)] = m.group(2)
    return out


def finished_wav(path) -> np.ndarray:
    """The samples of a WAV whose header was finished (RIFF size = file size - 8)."""
    import soundfile as sf

    raw = path.read_bytes()
    assert raw[:4] == b"RIFF" and raw[8:12] == b"WAVE"
    riff_size = struct.unpack("<I", raw[4:8])[0]
    assert riff_size == len(raw) - 8, f"unfinished WAV header: RIFF size {riff_size:#x}, file {len(raw)} bytes"
    x, sr = sf.read(path, dtype="float32")
    assert sr == 48000
    return x


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    import soundfile as sf

    x, sr = sf.read(REPO / "web" / "sample.wav", dtype="float32")
    path = tmp_path_factory.mktemp("audio") / "noisy.wav"
    sf.write(path, x[: 3 * sr], sr)  # 3 s of noisy speech
    return path


def test_the_guide_has_both_scripts():
    assert set(scripts()) == {"record_call.py", "clean_file.py"}


@pytest.mark.parametrize("name", ["record_call.py", "clean_file.py"])
def test_guide_script_ends_by_itself_and_finishes_the_wav(name, noisy, tmp_path):
    script = tmp_path / name
    script.write_text(scripts()[name])
    out = tmp_path / "clean.wav"
    # the scripts' own limit is an hour: a script that does not end by itself hits this one
    r = subprocess.run([sys.executable, str(script), str(noisy), str(out)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    y = finished_wav(out)
    seconds = len(y) / 48000
    assert 2.0 < seconds <= 3.1, f"{seconds:.2f} s recorded of 3 s sent"
    assert np.sqrt(np.mean(y.astype(np.float64) ** 2)) > 1e-3, "the recording is silent"
