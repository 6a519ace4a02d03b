"""The README's test command is the one CI runs, word for word, and reaches no package index
beyond pip's own configuration (an unreachable extra index would make CI hang); the
CPU-only torch instruction stands beside it."""
from __future__ import annotations

import re

from conftest import REPO


def readme_test_command() -> str:
    text = (REPO / "README.md").read_text()
    intro = text.index("run the tests")
    return re.search(r"^    (python3 -m venv .*pytest.*)$", text[intro:], re.M).group(1)


def test_ci_runs_the_readme_test_command_word_for_word():
    ci = [x for x in (REPO / ".ci" / "run").read_text().splitlines() if x and not x.startswith("#")]
    assert readme_test_command() in ci


def test_the_test_command_uses_no_extra_index_and_the_cpu_index_is_beside_it():
    cmd = readme_test_command()
    assert "index-url" not in cmd and "torch==2.13.0" in cmd
    text = (REPO / "README.md").read_text()
    after = text[text.index(cmd) + len(cmd):].split("\n---", 1)[0]
    assert "--index-url https://download.pytorch.org/whl/cpu" in after
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in (
        REPO / "docs" / "training.md").read_text()
