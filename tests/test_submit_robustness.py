"""``submit`` under bad inputs and tight budgets (issue 16, items 3, 5, 7 and 8)."""

from __future__ import annotations

import logging
import threading

import pandas as pd
import pytest
from test_submit import BlobSegmenter, _config, _rows, weights_dir  # noqa: F401 - fixture

import hpa_kernel.submission.driver as submit
from hpa_kernel.submission import check_submission, read_sample
from hpa_kernel.submission import SubmitConfig, run_submission


@pytest.fixture
def small_competition(tmp_path):
    from hpa_kernel.synthetic import make_competition

    return make_competition(tmp_path / "comp", n_train=1, n_test=2, size=256, seed=5)


def test_sample_id_with_a_path_gets_the_fallback_and_reads_nothing(small_competition, weights_dir, tmp_path, caplog):  # noqa: F811
    comp = small_competition
    sample = pd.read_csv(comp.sample_submission, dtype=str, keep_default_na=False)
    train_id = pd.read_csv(comp.train_csv)["ID"].iloc[0]
    bad = f"../train/{train_id}"
    sample.loc[len(sample)] = [bad, "256", "256", ""]
    sample.to_csv(comp.sample_submission, index=False)
    with caplog.at_level(logging.ERROR):
        report = run_submission(_config(comp, weights_dir, tmp_path / "s.csv", tta=False), segmenter=BlobSegmenter())
    assert report.fallback == {bad: report.fallback[bad]} and report.fallback[bad].startswith("refused")
    assert report.n_predicted == 2
    assert _rows(report.path).set_index("ID").loc[bad, "PredictionString"] == ""
    assert any(bad in r.getMessage() for r in caplog.records)


def test_size_mismatch_gets_the_fallback_and_the_file_stays_valid(small_competition, weights_dir, tmp_path, caplog):  # noqa: F811
    comp = small_competition
    sample = pd.read_csv(comp.sample_submission, dtype=str, keep_default_na=False)
    wrong = sample["ID"].iloc[0]
    sample.loc[0, "ImageWidth"] = "300"
    sample.to_csv(comp.sample_submission, index=False)
    with caplog.at_level(logging.ERROR):
        report = run_submission(_config(comp, weights_dir, tmp_path / "s.csv", tta=False), segmenter=BlobSegmenter())
    assert report.problems == []
    assert check_submission(report.path, comp.sample_submission).ok
    assert list(report.fallback) == [wrong] and report.fallback[wrong].startswith("size")
    assert report.n_predicted == 1
    assert any(wrong in r.getMessage() and "300 x 256" in r.getMessage() and "256 x 256" in r.getMessage() for r in caplog.records)


def test_duplicate_sample_id_is_named():
    frame = pd.DataFrame({"ID": ["a", "b", "a"], "ImageWidth": [8, 8, 8], "ImageHeight": [8, 8, 8], "PredictionString": ""})
    with pytest.raises(ValueError, match=r"more than once: a\b"):
        read_sample(frame)


def test_out_naming_a_folder_is_a_one_line_error(small_competition, weights_dir, tmp_path, caplog):  # noqa: F811
    from hpa_kernel.cli import main

    with pytest.raises(ValueError, match="is a folder"):
        SubmitConfig(out=tmp_path)
    with caplog.at_level(logging.ERROR):
        rc = main(["submit", "--data", str(small_competition.root), "--weights", str(weights_dir), "--out", str(tmp_path),
                   "--segmenter", "classic", "--budget-hours", "0", "--no-progress"])  # fmt: skip
    assert rc == 1
    assert any("is a folder" in r.getMessage() for r in caplog.records)


def test_fallback_count_in_the_log_is_true(small_competition, weights_dir, tmp_path, caplog):  # noqa: F811
    with caplog.at_level(logging.INFO, logger="hpa_kernel.submission"):
        report = run_submission(_config(small_competition, weights_dir, tmp_path / "s.csv", budget_s=0), segmenter=BlobSegmenter())
    assert report.n_fallback == 2
    written = [r.getMessage() for r in caplog.records if r.name == "hpa_kernel.submission.writer" and "with the fallback" in r.getMessage()]
    assert written and all("2 rows, 2 with the fallback" in m for m in written)


def test_start_up_counts_against_the_budget(small_competition, weights_dir, tmp_path, monkeypatch):  # noqa: F811
    """A fake clock: the process started 100 s ago, the budget is 50 s; no model is loaded."""
    from hpa_kernel.classifier import Ensemble

    def no_loading(*args, **kwargs):
        raise AssertionError("models were loaded after the budget was spent")

    monkeypatch.setattr(Ensemble, "from_manifest", no_loading)
    clock = lambda: 1000.0  # noqa: E731
    report = run_submission(_config(small_competition, weights_dir, tmp_path / "s.csv", budget_s=50), clock=clock,
                            segmenter=BlobSegmenter(), started=900.0)  # fmt: skip
    assert report.n_predicted == 0 and report.n_fallback == 2
    assert check_submission(report.path, small_competition.sample_submission).ok


def test_deadline_write_comes_while_model_loading_outlasts_the_budget(small_competition, weights_dir, tmp_path, monkeypatch):  # noqa: F811
    """Model loading that outlasts the budget: the deadline timer writes the file while loading is
    still busy, and nothing is written after it.

    No wall-clock margin: the timer is scheduled by the run (its delay is checked: the budget less
    the reserve) but started when loading begins, and loading waits for its write (an event). So
    the deadline falls inside loading however slow the machine is, and a slow machine only makes
    the test slower."""
    from hpa_kernel.classifier import Ensemble

    real_load = Ensemble.from_manifest.__func__
    real_write = submit._SubmissionWriter.write
    real_close_at = submit._SubmissionWriter.close_at
    deadline_written, loaded = threading.Event(), threading.Event()
    writes, delays, writers = [], [], []

    def close_at(self, seconds):  # record the run's deadline; the timer starts with loading (below)
        delays.append(seconds)
        writers.append(self)

    def slow_load(cls, *args, **kwargs):
        real_close_at(writers[0], 0.0)  # the deadline comes now, while loading
        assert deadline_written.wait(120), "the deadline timer never wrote the file"
        try:
            return real_load(cls, *args, **kwargs)
        finally:
            loaded.set()

    def write(self, final=False):
        done = real_write(self, final)
        if done:
            writes.append(("after loading" if loaded.is_set() else "before loading", final))
        if done and final:
            deadline_written.set()
        return done

    monkeypatch.setattr(Ensemble, "from_manifest", classmethod(slow_load))
    monkeypatch.setattr(submit._SubmissionWriter, "write", write)
    monkeypatch.setattr(submit._SubmissionWriter, "close_at", close_at)
    budget, reserve = 3600.0, 1.5
    report = run_submission(_config(small_competition, weights_dir, tmp_path / "s.csv", budget_s=budget, reserve_s=reserve),
                            segmenter=BlobSegmenter())  # fmt: skip
    assert len(delays) == 1 and budget - reserve - 600 <= delays[0] <= budget - reserve  # budget less reserve less start-up
    assert loaded.is_set()  # loading really went on past the deadline, then finished
    assert writes[0] == ("before loading", False)  # the initial all-fallback file
    assert writes[-1] == ("before loading", True)  # the last write is the deadline's, during loading
    assert all(when == "before loading" for when, _ in writes)  # nothing written after it
    assert report.n_predicted == 0 and report.n_fallback == 2
    assert check_submission(report.path, small_competition.sample_submission).ok
