"""Keep only clean speech as training targets, judged by DNSMOS scores measured beforehand.

A clean-speech file that carries background noise or distortion teaches the model that
noise and distortion belong to speech: the output keeps them. The scores come from
``voipfilter eval --noisy SPEECH_DIR --model none --tsv TABLE`` (DNSMOS of the unprocessed
files, about 15 s of CPU per minute of audio), so training does not score anything itself.
Each row names a file relative to the folder that was scored; a training file matches the
row whose name is the longest tail of its path (``folder/file.flac`` or ``file.flac``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REQUIRED = ("file", "sig", "bak")


def load_scores(tables: Sequence[str | Path]) -> dict[str, tuple[float, float]]:
    """{'folder/file': (SIG, BAK)} from one or more per-file TSVs of ``voipfilter eval``."""
    scores: dict[str, tuple[float, float]] = {}
    for table in tables:
        table = Path(table)
        if not table.is_file():
            raise FileNotFoundError(f"speech quality table not found: {table} (write it with "
                                    "`voipfilter eval --noisy SPEECH_DIR --model none --tsv TABLE`)")
        with open(table, newline="") as f:
            reader = csv.DictReader(f, delimiter="\t")
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{table}: no column(s) {missing}; it needs a DNSMOS per-file TSV "
                                 "as `voipfilter eval --model none --tsv` writes")
            for row in reader:
                if row.get("model") not in (None, "none") or row["file"] == "MEAN":
                    continue  # an enhanced model's rows, or the mean row
                key = Path(row["file"]).as_posix()
                if key in scores:
                    raise ValueError(f"{table}: '{key}' appears twice in the speech quality tables "
                                     "(score the folder above the corpora, so that names carry the folder)")
                scores[key] = (float(row["sig"]), float(row["bak"]))
    return scores


@dataclass
class QualityFilter:
    """Drops speech files whose DNSMOS SIG or BAK is under a floor; unscored files are kept."""

    scores: dict[str, tuple[float, float]]
    min_sig: float
    min_bak: float

    def passes(self, path: str | Path) -> bool | None:
        """True or False for a scored file, None for a file the tables do not list."""
        parts = Path(path).parts
        for n in range(len(parts), 0, -1):
            s = self.scores.get("/".join(parts[-n:]))
            if s is not None:
                return s[0] >= self.min_sig and s[1] >= self.min_bak
        return None

    def split(self, files: Sequence) -> tuple[list, list, int]:
        """(kept, dropped, number of unscored files kept) for objects with a ``.path``."""
        kept, dropped, unscored = [], [], 0
        for f in files:
            ok = self.passes(f.path)
            if ok is None:
                unscored += 1
            (dropped if ok is False else kept).append(f)
        return kept, dropped, unscored
