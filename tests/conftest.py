"""Shared fixtures: the reference data in ../shared/reference and a small synthetic competition."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # hypothesis is a dev extra; the tests that use it import it themselves
    _hypothesis_settings = None

if _hypothesis_settings is not None:
    # "ci": the same examples on every run (derandomised, no example database), so a CI failure is
    # reproducible and a pass is not luck; "dev" (local default) and "nightly" draw new examples.
    # Choose with HYPOTHESIS_PROFILE; default "ci" when $CI is set. Deadlines are off everywhere: a
    # loaded machine must not fail a property test on time.
    _hypothesis_settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
    # (Hypothesis's own "default" is the parent: in CI its current default is already derandomised)
    _default = _hypothesis_settings.get_profile("default")
    _hypothesis_settings.register_profile("dev", parent=_default, derandomize=False, deadline=None)
    _hypothesis_settings.register_profile("nightly", parent=_default, derandomize=False, deadline=None, max_examples=1000)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI", "").lower() in ("true", "1") else "dev"))

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
