"""Shared fixtures: where ../shared lies, and skipping rules for optional pieces.

Tests that need ../shared (reference weights, data) skip with a reason on a user's fresh
machine, but fail under CI=true, where ../shared is always laid beside the checkout.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VOIPFILTER_SHARED", REPO.parent / "shared"))
IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this must not be skipped)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "reference").is_dir() or not (SHARED / "data").is_dir():
        _missing(f"../shared not found at {SHARED} (reference weights and data live there)")
    return SHARED


@pytest.fixture(scope="session")
def reference_dir(shared_dir: Path) -> Path:
    return shared_dir / "reference" / "gtcrn-upstream"


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    return shared_dir / "data"


def require_module(name: str, extra: str) -> None:
    """Skip (or fail under CI) when an optional dependency is missing."""
    if importlib.util.find_spec(name) is None:
        _missing(f"{name} is not installed; pip install '.[{extra}]'")


@pytest.fixture(scope="session")
def torch_available() -> None:
    require_module("torch", "train")
