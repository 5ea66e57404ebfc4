"""Shared fixtures: the reference data in ../shared/reference and a small synthetic competition."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference() -> Path:
    """``../shared/reference``; CI always has it beside the checkout."""
    if not REFERENCE.is_dir():
        pytest.fail(f"reference data not found at {REFERENCE}: tests expect ../shared/reference beside the repo")
    return REFERENCE


@pytest.fixture(scope="session")
def synthetic_competition(tmp_path_factory):
    """A small synthetic competition (512x512, 6 train and 3 test images), built once per session."""
    from hpa_kernel.synthetic import make_competition

    return make_competition(tmp_path_factory.mktemp("synthetic"), n_train=6, n_test=3, size=512, seed=1234)
