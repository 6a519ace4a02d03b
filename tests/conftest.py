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


@pytest.fixture(scope="session")
def upstream_checkpoint(reference_dir: Path) -> Path:
    """Upstream's Mar-2024 DNS3 checkpoint (source of its streaming ONNX and demo output)."""
    return reference_dir / "checkpoint_dns3_2024-03.tar"


@pytest.fixture(scope="session")
def upstream_onnx(upstream_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our streaming ONNX export of the upstream checkpoint, made once per test session.

    A real trained model for tests that need audible enhancement, without shipping
    upstream's weights in the repository.
    """
    require_module("torch", "train")
    from voipfilter.nn.checkpoint import load_checkpoint
    from voipfilter.nn.export import export_onnx

    model, _, _ = load_checkpoint(upstream_checkpoint)
    path = tmp_path_factory.mktemp("models") / "gtcrn-upstream-dns3-2024-03.onnx"
    return export_onnx(model, path, model_name="gtcrn-upstream-dns3-2024-03 (test only)")
