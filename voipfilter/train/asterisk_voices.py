"""``voipfilter asterisk-voices``: the Asterisk IVR voices Debian packages, as training speech.

``../shared/data/README.md`` allows the speech that Debian packages as
``asterisk-core-sounds-{en,es,fr,it,ru}-g722``: one professional voice per language
(≈25 min each, G.722-coded, so nothing above ≈7 kHz). ``en`` is already in
``shared/data/speech/asterisk_en_g722``; ``fr``, ``it`` and ``ru`` (the default) add three
new speakers (a French and a Russian female voice, an Italian male voice); ``es`` is the
English voice again, in Spanish.

The command downloads the packages with ``apt-get download`` (or takes ``.deb`` files
given with ``--deb``), reads the prompts out of the package (an ``ar`` archive holding a
``data.tar.*``) without installing it, decodes them with av, joins them in sorted order
with a short pause between prompts into FLAC files of ~120 s (the trainer draws speech
uniformly over files by default, so the file length sets a voice's share: 120 s gives each
new voice ~3 % of the draws beside shared/data's ~425 files), and writes a ``MANIFEST.tsv`` in the shared manifest's columns, with each voice's
credit and licence read from the package's ``copyright`` file. The folder it writes is a
``data.speech_dirs`` entry for the trainer.
"""
from __future__ import annotations

import argparse
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
LANGUAGES = ("es", "fr", "it", "ru")
# es is the voice of en (Allison Smith), which shared/data already holds: not fetched by default
DEFAULT_LANGUAGES = ("fr", "it", "ru")
SOUNDS = "usr/share/asterisk/sounds/"
MANIFEST_HEADER = "path\tseconds\tsource\toriginal_path\tlicence\tnotes\n"


class VoicesError(RuntimeError):
    """A package could not be fetched or read; the message says what to do."""


@dataclass(frozen=True)
class Prompt:
    voice: str  # the sounds folder, e.g. fr_CA_f_June
    name: str  # path below the voice folder
    audio: np.ndarray  # int16 at 16 kHz


def package_name(language: str) -> str:
    return f"asterisk-core-sounds-{language}-g722"


def download(languages: list[str], into: Path) -> list[Path]:
    """``apt-get download`` of the packages into ``into``; the .deb files."""
    if shutil.which("apt-get") is None:
        raise VoicesError("apt-get not found: download the asterisk-core-sounds-LANG-g722_*.deb files "
                          "on a Debian machine and pass them with --deb")
    names = [package_name(lang) for lang in languages]
    proc = subprocess.run(["apt-get", "download", *names], cwd=into, capture_output=True, text=True)
    if proc.returncode != 0:
        raise VoicesError(f"apt-get download {' '.join(names)} failed:\n{proc.stderr.strip()}\n"
                          "run `apt-get update` first, or pass the .deb files with --deb")
    debs = []
    for name in names:
        found = sorted(into.glob(f"{name}_*.deb"))
        if not found:
            raise VoicesError(f"apt-get download gave no {name}_*.deb in {into}")
        debs.append(found[-1])
    return debs


def deb_data(deb: Path) -> tarfile.TarFile:
    """The ``data.tar.*`` member of a Debian package (an ``ar`` archive) as an open tar."""
    blob = Path(deb).read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise VoicesError(f"{deb}: not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(blob):
        header = blob[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = blob[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            try:
                return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
            except tarfile.TarError as exc:
                raise VoicesError(f"{deb}: cannot read {name} ({exc}); extract it with "
                                  "`dpkg-deb -x` and pass the sounds folder instead") from exc
        pos += 60 + size + (size & 1)
    raise VoicesError(f"{deb}: no data.tar member")


def decode_g722(data: bytes, where: str) -> np.ndarray:
    """Raw G.722 bytes to int16 samples at 16 kHz."""
    import av

    try:
        with av.open(io.BytesIO(data), format="g722") as container:
            frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
    except av.error.FFmpegError as exc:
        raise VoicesError(f"{where}: cannot decode G.722 ({exc})") from exc
    if not frames:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate(frames).astype(np.int16)


def licence_of(copyright_text: str, language: str) -> tuple[str, str]:
    """(licence, copyright holder) of a language's files, from a Debian copyright file.

    The file has stanzas ``Files: fr-*`` and so on; languages without their own stanza
    fall under ``Files: *``.
    """
    stanzas = {}
    for block in re.split(r"\n\s*\n", copyright_text):
        files = re.search(r"^Files:\s*(.+)$", block, re.M)
        lic = re.search(r"^License:\s*(.+)$", block, re.M)
        holder = re.search(r"^Copyright:\s*(.+)$", block, re.M)
        if files and lic:
            for pattern in files.group(1).split():
                stanzas[pattern] = (lic.group(1).strip(), holder.group(1).strip() if holder else "")
    for key in (f"{language}-*", "*"):
        if key in stanzas:
            return stanzas[key]
    return "unknown (see the package's copyright file)", ""


def read_package(deb: Path) -> tuple[list[Prompt], str]:
    """The prompts of one package (sorted by path) and the text of its copyright file."""
    prompts, copyright_text = [], ""
    with deb_data(deb) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
        for m in members:
            name = m.name.removeprefix("./")
            if name.startswith("usr/share/doc/") and name.endswith("/copyright"):
                copyright_text = tar.extractfile(m).read().decode("utf-8", "replace")
            elif name.startswith(SOUNDS) and name.endswith(".g722"):
                voice, _, rest = name[len(SOUNDS):].partition("/")
                audio = decode_g722(tar.extractfile(m).read(), f"{deb.name}:{name}")
                if len(audio):
                    prompts.append(Prompt(voice, rest, audio))
    if not prompts:
        raise VoicesError(f"{deb}: no .g722 prompts under /{SOUNDS}")
    return prompts, copyright_text


def join_prompts(prompts: list[Prompt], chunk_seconds: float, gap_seconds: float) -> list[np.ndarray]:
    """Prompts joined in order with ``gap_seconds`` of silence, cut at prompt boundaries
    once a piece reaches ``chunk_seconds`` (the last piece may be shorter)."""
    gap = np.zeros(int(round(gap_seconds * SAMPLE_RATE)), dtype=np.int16)
    pieces, current, length = [], [], 0
    for p in prompts:
        if current:
            current.append(gap)
            length += len(gap)
        current.append(p.audio)
        length += len(p.audio)
        if length >= chunk_seconds * SAMPLE_RATE:
            pieces.append(np.concatenate(current))
            current, length = [], 0
    if current:
        pieces.append(np.concatenate(current))
    return pieces


def write_voices(debs: list[Path], out: Path, chunk_seconds: float = 120.0, gap_seconds: float = 0.25,
                 force: bool = False, progress: bool = True) -> list[str]:
    """Write each package's voices as FLAC under ``out/<voice>/`` and (re)write
    ``out/MANIFEST.tsv``; the manifest rows written."""
    import soundfile as sf
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "MANIFEST.tsv"
    kept = []
    if manifest.exists():
        kept = manifest.read_text().splitlines()[1:]
    rows = []
    for deb in tqdm(debs, desc="packages", unit="deb", disable=not progress):
        language = deb.name.split("-")[3] if deb.name.startswith("asterisk-core-sounds-") else "?"
        prompts, copyright_text = read_package(deb)
        licence, holder = licence_of(copyright_text, language)
        by_voice: dict[str, list[Prompt]] = {}
        for p in prompts:
            by_voice.setdefault(p.voice, []).append(p)
        for voice, items in sorted(by_voice.items()):
            folder = out / voice
            if folder.exists() and any(folder.iterdir()):
                if not force:
                    raise VoicesError(f"{folder} already holds files: pass --force to rewrite it")
                shutil.rmtree(folder)
            folder.mkdir(parents=True, exist_ok=True)
            kept = [r for r in kept if not r.startswith(f"{voice}/")]
            for i, piece in enumerate(join_prompts(items, chunk_seconds, gap_seconds)):
                rel = f"{voice}/prompts_{i:03d}.flac"
                sf.write(out / rel, piece, SAMPLE_RATE, subtype="PCM_16")
                rows.append("\t".join([
                    rel, f"{len(piece) / SAMPLE_RATE:.3f}", f"debian:{deb.name}",
                    f"{SOUNDS}{voice}/**.g722 (joined in sorted order, {gap_seconds:g} s apart)",
                    f"{licence} ({holder})" if holder else licence,
                    f"single speaker ({voice}); G.722-coded (7 kHz) IVR prompts, ~{chunk_seconds:g} s files",
                ]))
            # after every voice, so a later refusal leaves a manifest of what is there
            manifest.write_text(MANIFEST_HEADER + "".join(r + "\n" for r in sorted(kept + rows)))
    return rows


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--out", required=True, type=Path,
                        help="folder to write (one subfolder per voice, and MANIFEST.tsv)")
    parser.add_argument("--languages", nargs="+", default=list(DEFAULT_LANGUAGES), choices=["en", *LANGUAGES],
                        help="packages to download with apt-get (default: %(default)s; en is in shared/data, "
                             "es is en's voice)")
    parser.add_argument("--deb", nargs="+", type=Path, default=None,
                        help="use these asterisk-core-sounds-*-g722 .deb files instead of downloading")
    parser.add_argument("--chunk-seconds", type=float, default=120.0,
                        help="length of each FLAC file (default 120)")
    parser.add_argument("--gap-seconds", type=float, default=0.25, help="silence between prompts (default 0.25)")
    parser.add_argument("--force", action="store_true", help="rewrite voices already in --out")


def run(args: argparse.Namespace) -> int:
    try:
        with tempfile.TemporaryDirectory(prefix="asterisk-voices-") as tmp:
            debs = args.deb or download(args.languages, Path(tmp))
            for deb in debs:
                if not Path(deb).is_file():
                    raise VoicesError(f"{deb}: no such file")
            rows = write_voices([Path(d) for d in debs], args.out, args.chunk_seconds, args.gap_seconds,
                                args.force)
    except VoicesError as exc:
        print(f"voipfilter asterisk-voices: {exc}", file=sys.stderr)
        return 2
    minutes = sum(float(r.split("\t")[1]) for r in rows) / 60
    print(f"wrote {len(rows)} files ({minutes:.1f} min of speech) under {args.out}; "
          f"add it to data.speech_dirs to train on it")
    return 0
