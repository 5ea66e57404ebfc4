"""The Hypothesis profiles of tests/conftest.py: derandomised in CI, random locally (issue 21.5)."""

from __future__ import annotations

import os

import pytest

hypothesis = pytest.importorskip("hypothesis")


def test_ci_profile_is_derandomised_and_chosen_in_ci():
    settings = hypothesis.settings
    ci = settings.get_profile("ci")
    assert ci.derandomize and ci.database is None and ci.deadline is None
    assert not settings.get_profile("dev").derandomize and settings.get_profile("dev").deadline is None
    assert settings.get_profile("nightly").max_examples >= 1000
    in_ci = os.environ.get("CI", "").lower() in ("true", "1")
    expected = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if in_ci else "dev")
    assert settings.get_current_profile_name() == expected
    assert settings.default.derandomize == settings.get_profile(expected).derandomize
