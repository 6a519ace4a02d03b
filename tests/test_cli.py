"""The command line as a user meets it: --version, plain help, where ``enhance -o`` writes,
output formats and permissions, progress, the success line, and Ctrl-C.

Uses the synthetic identity model (tests/modelfactory.py, needs onnx).
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import selectors
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import voipfilter
from conftest import require_module
from voipfilter.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def identity_path(tmp_path_factory) -> Path:
    require_module("onnx", "train")
    from modelfactory import make_identity_model

    return make_identity_model(tmp_path_factory.mktemp("cli-models") / "identity.onnx")


def noise_file(path: Path, seconds: float = 0.5, rate: int = 16000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = (rng.integers(-8000, 8000, int(seconds * rate)) / 32768.0).astype(np.float32)
    sf.write(str(path), x, rate, subtype="PCM_16")
    return path


def enhance(*args, model: Path) -> int:
    return main(["enhance", *map(str, args), "--model", str(model)])


@pytest.fixture
def umask():
    """Set the process umask for one test, restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------ top level
def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"voipfilter {voipfilter.__version__}" == f"voipfilter {importlib.metadata.version('voipfilter')}"


@pytest.mark.parametrize("argv", [["--help"], ["enhance", "--help"]])
def test_help_is_plain_text(capsys, argv):
    with pytest.raises(SystemExit):
        main(argv)
    text = capsys.readouterr().out
    assert "usage: voipfilter" in text
    for markup in ("``", ":class:", ":func:", ":mod:", ":meth:"):
        assert markup not in text, markup


def test_unknown_options_and_commands_are_errors(capsys):
    for argv in (["--frobnicate"], ["frobnicate"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


# ------------------------------------------------------------------------ -o
def test_one_input_with_a_file_name_writes_that_file_again_and_again(tmp_path, identity_path):
    first = noise_file(tmp_path / "first.wav", seed=1)
    second = noise_file(tmp_path / "second.wav", seed=2)
    out = tmp_path / "NAME.flac"
    assert enhance(first, "-o", out, model=identity_path) == 0
    assert out.is_file() and sf.info(str(out)).format == "FLAC"
    assert enhance(first, "-o", out, model=identity_path) == 0  # the same command again
    assert enhance(second, "-o", out, model=identity_path) == 0  # and over it with new audio
    y, _ = sf.read(str(out), dtype="int16")
    x, _ = sf.read(str(second), dtype="int16")
    assert np.abs(y.astype(int) - x).max() <= 1  # identity model at 16 kHz: the new input
    assert sorted(p.name for p in tmp_path.iterdir()) == ["NAME.flac", "first.wav", "second.wav"]


def test_formats_come_from_the_extension(tmp_path, identity_path):
    src = noise_file(tmp_path / "in.wav")
    outs = {ext: tmp_path / f"out.{ext}" for ext in ("wav", "flac", "aiff", "ogg")}
    for out in outs.values():
        assert enhance(src, "-o", out, model=identity_path) == 0
    wav, _ = sf.read(str(outs["wav"]), dtype="int16")
    for ext in ("flac", "aiff"):  # lossless 16-bit: the very same samples
        info = sf.info(str(outs[ext]))
        assert (info.format, info.subtype) == (ext.upper(), "PCM_16")
        np.testing.assert_array_equal(sf.read(str(outs[ext]), dtype="int16")[0], wav)
    ogg, rate = sf.read(str(outs["ogg"]), dtype="float32")
    assert sf.info(str(outs["ogg"])).subtype == "VORBIS" and rate == 16000 and len(ogg) == len(wav)


def test_several_inputs_need_a_folder(tmp_path, identity_path, capsys):
    a, b = noise_file(tmp_path / "a.wav", seed=1), noise_file(tmp_path / "b.flac", seed=2)
    assert enhance(a, b, "-o", tmp_path / "x.flac", model=identity_path) == 2
    assert "2 inputs need an output folder" in capsys.readouterr().err
    assert not (tmp_path / "x.flac").exists()
    assert enhance(a, b, "-o", tmp_path / "results", model=identity_path) == 0  # made if missing
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["a.wav", "b.wav"]
    assert enhance(a, b, "-o", tmp_path / "results", model=identity_path) == 0  # and again


def test_an_existing_folder_is_a_folder_whatever_its_name(tmp_path, identity_path):
    src = noise_file(tmp_path / "in.wav")
    folder = tmp_path / "take.flac"
    folder.mkdir()
    assert enhance(src, "-o", folder, model=identity_path) == 0
    assert [p.name for p in folder.iterdir()] == ["in.wav"]


def test_outputs_that_cannot_be_written_are_refused_before_any_work(tmp_path, identity_path, capsys):
    src = noise_file(tmp_path / "in.wav")
    (tmp_path / "plain").write_text("not a folder")
    cases = [
        ("out.mp4", "cannot write an audio file with '.mp4'; soundfile writes"),
        ("plain", "plain exists and is not a folder"),
        ("missing/out.wav", "output folder"),
    ]
    for name, message in cases:
        assert enhance(src, "-o", tmp_path / name, model=identity_path) == 2
        err = capsys.readouterr().err
        assert message in err, err
    hi = noise_file(tmp_path / "hi.wav", seconds=0.1, rate=96000)
    assert enhance(hi, "-o", tmp_path / "hi.mp3", model=identity_path) == 2  # mp3 stops at 48 kHz
    assert "cannot write mp3 (MPEG_LAYER_III) at 96000 Hz" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hi.wav", "in.wav", "plain"]


def test_positional_output_and_a_clear_error_once_it_exists(tmp_path, identity_path, capsys):
    src = noise_file(tmp_path / "in.wav")
    out = tmp_path / "out.flac"
    assert enhance(src, out, model=identity_path) == 0 and out.is_file()
    assert enhance(src, out, model=identity_path) == 2
    assert "out.flac exists, so it is taken as an input" in capsys.readouterr().err


# ------------------------------------------------------------------------ permissions
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_new_outputs_get_the_mode_a_plain_write_gives(tmp_path, identity_path, umask, mask):
    src = noise_file(tmp_path / "in.wav")
    umask(mask)
    assert enhance(src, "-o", tmp_path / "out.wav", model=identity_path) == 0
    assert enhance(src, "-o", tmp_path / "dir", model=identity_path) == 0
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives under this umask
    assert mode(tmp_path / "out.wav") == mode(tmp_path / "dir" / "in.wav") == mode(plain) == 0o666 & ~mask


def test_an_overwritten_output_keeps_its_mode(tmp_path, identity_path, umask):
    src = noise_file(tmp_path / "in.wav")
    out = tmp_path / "out.flac"
    umask(0o022)
    assert enhance(src, "-o", out, model=identity_path) == 0
    out.chmod(0o664)
    assert enhance(src, "-o", out, model=identity_path) == 0
    assert mode(out) == 0o664
    out.chmod(0o600)
    assert enhance(src, "-o", out, model=identity_path) == 0
    assert mode(out) == 0o600


def test_a_symlinked_output_is_written_through(tmp_path, identity_path):
    src = noise_file(tmp_path / "in.wav")
    real = tmp_path / "real.wav"
    real.write_bytes(b"")
    link = tmp_path / "link.wav"
    link.symlink_to(real)
    assert enhance(src, "-o", link, model=identity_path) == 0
    assert link.is_symlink() and sf.info(str(real)).frames == sf.info(str(src)).frames


# ------------------------------------------------------------------------ what it says
def test_one_file_shows_progress_and_says_what_was_done(tmp_path, identity_path, capsys):
    src = noise_file(tmp_path / "in.wav", seconds=10)
    assert enhance(src, "-o", tmp_path / "a.wav", model=identity_path) == 0
    err = capsys.readouterr().err
    assert "enhance: 100%" in err and "10/10 s of audio" in err
    assert f"{src} -> {tmp_path / 'a.wav'}: 10.0 s at 16000 Hz; aligned: the filter's 511-sample (31.9 ms) delay removed" in err
    assert enhance(src, "-o", tmp_path / "l.wav", "--keep-delay", model=identity_path) == 0
    assert "delayed by the filter's 511 samples (31.9 ms), as a live listener hears it" in capsys.readouterr().err
    assert enhance(src, "-o", tmp_path / "q.wav", "-q", model=identity_path) == 0
    assert capsys.readouterr().err == ""


def test_ctrl_c_ends_with_one_line_and_leaves_no_file(tmp_path, identity_path):
    """SIGINT while a long file is being filtered: exit 130, one line, no traceback, and
    nothing left beside the input (no output, no temporary file). One-sample chunks make the
    2-minute file take tens of seconds; the signal is sent once the bar shows the first
    seconds done, so it lands mid-file."""
    src = noise_file(tmp_path / "long.wav", seconds=120)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cmd = [sys.executable, "-m", "voipfilter.cli", "enhance", str(src), "-o", str(out_dir / "long.flac"),
           "--model", str(identity_path), "--chunk-ms", str(1000 / 16000)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    err = b""
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + 120
        started = re.compile(rb"\| [1-9]\d*/120 s of audio")
        while not started.search(err) and time.monotonic() < deadline and proc.poll() is None:
            if sel.select(timeout=1.0):
                err += os.read(proc.stderr.fileno(), 4096)
        assert started.search(err), err  # the progress bar: some seconds filtered, not all
        proc.send_signal(signal.SIGINT)
        rest_out, rest_err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = (err + rest_err).decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    last_lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "s of audio" not in line]
    assert last_lines == [f"voipfilter enhance: interrupted; {out_dir / 'long.flac'} not written"], err
    assert list(out_dir.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.wav", "out"]
