"""``voipfilter asterisk-voices``: prompts out of a Debian package into training FLAC files."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")
av = pytest.importorskip("av")

from voipfilter.cli import main  # noqa: E402
from voipfilter.train.asterisk_voices import licence_of  # noqa: E402

SR = 16000
COPYRIGHT = """Format: http://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2003-2010, Allison Smith
License: CC-BY-SA-3.0

Files: fr-*
Copyright: 2006-2008, June Wallack
License: CC-BY-SA-3.0

Files: it-*
Copyright: 2012 Carlo Flora
License: CC-BY-3.0
"""


def _g722(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="g722") as out:
        stream = out.add_stream("g722", rate=SR)
        stream.layout = "mono"
        pcm = (x * 32767).astype(np.int16)
        for i in range(0, len(pcm), 1024):
            frame = av.AudioFrame.from_ndarray(pcm[None, i : i + 1024], format="s16", layout="mono")
            frame.sample_rate = SR
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def _ar(members: dict[str, bytes]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, body in members.items():
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}`\n"
        out += header.encode("ascii") + body + (b"\n" if len(body) % 2 else b"")
    return bytes(out)


def _tar_xz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


TONES = {"a.g722": 300.0, "b.g722": 700.0, "digits/1.g722": 1100.0}


@pytest.fixture()
def deb(tmp_path):
    t = np.arange(int(0.6 * SR)) / SR
    sounds = "./usr/share/asterisk/sounds/it_IT_m_Carlo/"
    files = {sounds + name: _g722(0.3 * np.sin(2 * np.pi * f * t)) for name, f in TONES.items()}
    files["./usr/share/doc/asterisk-core-sounds-it-g722/copyright"] = COPYRIGHT.encode()
    path = tmp_path / "asterisk-core-sounds-it-g722_1.6.1-1_all.deb"
    path.write_bytes(_ar({"debian-binary": b"2.0\n", "control.tar.xz": _tar_xz({}),
                          "data.tar.xz": _tar_xz(files)}))
    return path


def _peak_hz(x: np.ndarray) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(x * np.hanning(len(x))))) * SR / len(x))


def test_prompts_are_joined_in_order_with_pauses(deb, tmp_path):
    out = tmp_path / "voices"
    rc = main(["asterisk-voices", "--deb", str(deb), "-o", str(out), "--chunk-seconds", "1.0",
               "--gap-seconds", "0.25"])
    assert rc == 0
    first, second = sorted((out / "it_IT_m_Carlo").glob("*.flac"))
    x, sr = sf.read(first)
    assert sr == SR and abs(len(x) / SR - (0.6 + 0.25 + 0.6)) < 0.01  # a, pause, b: past 1 s, cut
    assert abs(_peak_hz(x[: int(0.5 * SR)]) - 300.0) < 5 and abs(_peak_hz(x[-int(0.5 * SR):]) - 700.0) < 5
    gap = x[int(0.62 * SR) : int(0.83 * SR)]
    assert np.abs(gap).max() < 0.01 < np.abs(x[: int(0.5 * SR)]).max()
    y, _ = sf.read(second)
    assert abs(len(y) / SR - 0.6) < 0.01 and abs(_peak_hz(y) - 1100.0) < 5
    rows = [r.split("\t") for r in (out / "MANIFEST.tsv").read_text().splitlines()]
    assert rows[0] == ["path", "seconds", "source", "original_path", "licence", "notes"]
    assert [r[0] for r in rows[1:]] == ["it_IT_m_Carlo/prompts_000.flac", "it_IT_m_Carlo/prompts_001.flac"]
    assert rows[1][2] == f"debian:{deb.name}" and rows[1][4] == "CC-BY-3.0 (2012 Carlo Flora)"
    assert abs(float(rows[1][1]) - len(x) / SR) < 1e-3


def test_existing_voices_are_kept_unless_forced(deb, tmp_path, capsys):
    out = tmp_path / "voices"
    (out / "it_IT_m_Carlo").mkdir(parents=True)  # an empty voice folder is simply filled
    assert main(["asterisk-voices", "--deb", str(deb), "-o", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["asterisk-voices", "--deb", str(deb), "-o", str(out)]) == 2
    assert "already holds files: pass --force" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert main(["asterisk-voices", "--deb", str(deb), "-o", str(out), "--force"]) == 0
    assert len((out / "MANIFEST.tsv").read_text().splitlines()) == 2  # header + one file (2.3 s: three prompts, two pauses)


def test_bad_packages_are_refused_clearly(tmp_path, capsys):
    junk = tmp_path / "asterisk-core-sounds-fr-g722_1.0_all.deb"
    junk.write_bytes(b"not an archive")
    assert main(["asterisk-voices", "--deb", str(junk), "-o", str(tmp_path / "o")]) == 2
    assert "not a Debian package" in capsys.readouterr().err
    assert main(["asterisk-voices", "--deb", str(tmp_path / "missing.deb"), "-o", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_licence_is_read_per_language():
    assert licence_of(COPYRIGHT, "fr") == ("CC-BY-SA-3.0", "2006-2008, June Wallack")
    assert licence_of(COPYRIGHT, "es") == ("CC-BY-SA-3.0", "2003-2010, Allison Smith")
    assert licence_of("", "ru")[0].startswith("unknown")
