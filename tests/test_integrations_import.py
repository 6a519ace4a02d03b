"""The integrations stay out of the core import, and say which extra to install."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_core_import_does_not_pull_in_the_frameworks():
    r = run(
        "import sys, voipfilter, voipfilter.integrations\n"
        "print(sorted(m for m in ('pipecat', 'livekit') if m in sys.modules))"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("module,framework", [("pipecat", "pipecat"), ("livekit", "livekit")])
def test_import_error_names_the_extra(module, framework):
    r = run(
        f"import sys; sys.modules[{framework!r}] = None\n"  # as if it were not installed
        f"import voipfilter.integrations.{module}"
    )
    assert r.returncode != 0
    assert f"pip install 'voipfilter[{module}]'" in r.stderr, r.stderr
