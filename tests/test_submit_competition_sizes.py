"""Issue 11: ``hpa-kernel submit`` with the HPA segmenter over competition-shaped data.

2048², 1728² and 3072² test images plus a non-square one, the real networks (reference fill recipe
weights) with the default padding: no image may get the error fallback, every sample row is written.
Runs benchmarks/bench_submit_competition.py's ``run`` on the smallest such set (4 images).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_submit_competition.py"


@pytest.mark.slow
def test_every_competition_size_is_predicted(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_submit_competition", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.run(tmp_path, n_test=4, device="cpu", workers=2)
    counts = result["counts"]
    assert set(counts) == {"2048x2048", "1728x1728", "3072x3072", "1728x2048"}
    for size, c in counts.items():
        assert c["images"] == c["rows written"] == c["predicted"] == 1, (size, dict(c))
    assert result["report"]["fallback"] == {}
    assert "segmenter hpa, padding True" in result["segmenter_line"]
