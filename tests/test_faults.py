"""Nothing lost when things break (issue 25, items 4-8): a full disk, a rerun onto a good file, a
sample with an extra column, a budget shorter than start-up, and messages in the caller's words."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from fake_disk import FakeDisk, install
from test_submit import BlobSegmenter, _config, weights_dir  # noqa: F401 - fixture

from hpa_kernel.cli import main
from hpa_kernel.submission import check_submission, run_submission, write_submission

import hpa_kernel

ROOT = Path(hpa_kernel.__file__).resolve().parents[1]  # the kit under test, for the subprocess
MASK = "eNoLCAgIMAEABJkBdQ=="  # a valid EncodedMask token (the writer's doctest)


@pytest.fixture
def comp(tmp_path):
    from hpa_kernel.synthetic import make_competition

    return make_competition(tmp_path / "comp", n_train=2, n_test=2, size=256, seed=11)


def _old_submission(comp, path: Path) -> bytes:
    """A complete submission where every image has a prediction, as an earlier run left it."""
    ids = pd.read_csv(comp.sample_submission, dtype=str)["ID"]
    write_submission({i: f"0 0.500000 {MASK}" for i in ids}, comp.sample_submission, path)
    return path.read_bytes()


def _debris(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if "tmp" in p.name)


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _submit_argv(comp, weights, out, *extra):
    return ["submit", "--data", str(comp.root), "--weights", str(weights), "--out", str(out), "--segmenter", "classic",
            "--device", "cpu", "--workers", "0", "--torch-threads", "1", "--no-progress", *extra]


def _sigkill_at(proc: subprocess.Popen, marker: str) -> None:
    """Wait for the line ``marker`` on ``proc``'s stdout, then SIGKILL it; a watchdog ends a run that never prints it."""
    watchdog = threading.Timer(240, proc.kill)
    watchdog.start()
    try:
        line = proc.stdout.readline()
        assert line.strip() == marker, line
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        watchdog.cancel()
        proc.kill()
        proc.stdout.close()


# --------------------------------------------------------------------------- item 4: a full disk


def test_full_disk_in_submit_is_one_error_and_keeps_the_old_file(comp, weights_dir, tmp_path, monkeypatch, caplog):  # noqa: F811
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "submission.csv"
    old = _old_submission(comp, out)
    disk = install(monkeypatch, out_dir, FakeDisk(free=100))  # the new file stops after 100 bytes
    with caplog.at_level(logging.ERROR):
        rc = main(_submit_argv(comp, weights_dir, out, "--budget-hours", "1"))
    assert rc == 1
    message = " ".join(_errors(caplog))
    assert "disk is full" in message and str(out) in message and "needed" in message, message
    assert disk.free == 0 and disk.writes[-1][1] == 100  # the real write path ran and filled the disk
    assert out.read_bytes() == old
    assert _debris(out_dir) == []
    # space freed: the rerun writes the new file
    disk.free = None
    assert main(_submit_argv(comp, weights_dir, out, "--budget-hours", "1")) == 0
    assert out.read_bytes() != old and check_submission(out, comp.sample_submission).ok


def test_full_disk_before_the_first_submission_leaves_nothing(comp, weights_dir, tmp_path, monkeypatch, caplog):  # noqa: F811
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    install(monkeypatch, out_dir, FakeDisk(free=10))
    with caplog.at_level(logging.ERROR):
        rc = main(_submit_argv(comp, weights_dir, out_dir / "submission.csv", "--budget-hours", "0"))
    assert rc == 1 and any("disk is full" in m for m in _errors(caplog))
    assert list(out_dir.iterdir()) == []


def _cells_argv(comp, out):
    return ["cells", "--data", str(comp.root), "--out", str(out), "--segmenter", "classic", "--workers", "0",
            "--crop-size", "32", "--no-progress"]


def test_full_disk_in_cells_leaves_no_half_crop_and_the_rerun_completes(comp, tmp_path, monkeypatch, caplog):
    from hpa_kernel.cells.builder import read_crop

    reference = tmp_path / "reference"
    counted = install(monkeypatch, tmp_path, FakeDisk())
    assert main(_cells_argv(comp, reference)) == 0
    crops = [k for k, (path, _) in enumerate(counted.writes) if path.name.endswith(".png") or ".png.tmp" in path.name]
    assert len(crops) >= 4
    middle = crops[len(crops) // 2]  # the disk fills half-way through this crop
    free = sum(n for _, n in counted.writes[:middle]) + counted.writes[middle][1] // 2

    out = tmp_path / "cells"
    disk = install(monkeypatch, out, FakeDisk(free=free))
    with caplog.at_level(logging.ERROR):
        assert main(_cells_argv(comp, out)) == 1
    message = " ".join(_errors(caplog))
    assert "disk is full" in message and "crops" in message and "needed" in message, message
    assert disk.free == 0
    assert _debris(out) == []
    assert not (out / "cells.csv").exists()
    written = sorted((out / "crops").glob("*.png"))
    assert written and all(read_crop(p).shape == (32, 32, 4) for p in written)  # complete PNGs only
    assert list((out / "cache").glob("*.npz"))  # what was segmented is kept for the rerun

    disk.free = None
    assert main(_cells_argv(comp, out)) == 0
    table = pd.read_csv(out / "cells.csv", keep_default_na=False)
    assert table.equals(pd.read_csv(reference / "cells.csv", keep_default_na=False))
    assert all((out / c).is_file() for c in table["crop"] if c)


def _train_argv(toy, out, *extra, epochs=3):
    return ["train", "--cells", str(toy), "--recipe", "kit2025", "--group", "2", "--out", str(out), "--input-size", "32",
            "--batch-size", "4", "--epochs", str(epochs), "--steps-per-epoch", "1", "--device", "cpu", "--no-progress", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(toy cells.csv, an uninterrupted 3-epoch training run's folder, the files it wrote with their sizes, in order)."""
    import torch
    from toy_training import make_toy_cells

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("trained")
    toy = make_toy_cells(root / "toy", n_images=5, cells_per_image=3, size=48, seed=7)
    with pytest.MonkeyPatch.context() as monkeypatch:
        counted = install(monkeypatch, root / "reference", FakeDisk())
        assert main(_train_argv(toy, root / "reference")) == 0
    return toy, root / "reference", counted.writes


def _same_checkpoints(reference: Path, out: Path) -> None:
    import torch

    names = sorted(p.name for p in reference.glob("*.pth"))
    assert len(names) >= 2 and names == sorted(p.name for p in out.glob("*.pth"))
    for name in names:
        a, b = torch.load(reference / name, weights_only=True), torch.load(out / name, weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_full_disk_in_train_then_resume_gives_identical_checkpoints(trained, tmp_path, monkeypatch, caplog):
    import torch

    toy, reference, writes = trained
    states = [k for k, (path, _) in enumerate(writes) if "last.pt" in path.name]
    assert len(states) == 3  # one resume state per epoch
    last = states[-1]  # the disk fills half-way through the resume state of epoch 3
    free = sum(n for _, n in writes[:last]) + writes[last][1] // 2

    out = tmp_path / "interrupted"
    disk = FakeDisk(free=free)
    install(monkeypatch, out, disk)
    with caplog.at_level(logging.ERROR):
        assert main(_train_argv(toy, out)) == 1
    message = " ".join(_errors(caplog))
    assert "disk is full" in message and "last.pt" in message, message
    assert _debris(out) == []
    for path in out.rglob("*.p*t*"):  # every checkpoint and resume state left is whole
        torch.load(path, weights_only=True)

    disk.free = None
    assert main(_train_argv(toy, out, "--resume")) == 0
    _same_checkpoints(reference, out)
    lines = (out / "runs" / "g2" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]  # epoch 3 was logged before its state failed: not twice


def test_full_disk_in_label_export_keeps_the_old_file(tmp_path, monkeypatch, caplog):
    from test_labelling_store import _scored_store

    _scored_store(tmp_path / "labels.sqlite").close()
    out_dir = tmp_path / "export"
    out_dir.mkdir()
    soft = out_dir / "soft.csv"
    soft.write_text("image_id,cell_id,class_id,soft_label,score,n_labellers\n")
    install(monkeypatch, out_dir, FakeDisk(free=20))
    with caplog.at_level(logging.ERROR):
        assert main(["label", "export", "--db", str(tmp_path / "labels.sqlite"), "--out", str(soft)]) == 1
    assert any("disk is full" in m and str(soft) in m for m in _errors(caplog))
    assert soft.read_text() == "image_id,cell_id,class_id,soft_label,score,n_labellers\n"
    assert _debris(out_dir) == []


_STOP_AFTER_EPOCH_1 = """
import sys, time
import hpa_kernel.training.loop as loop

real_end_epoch = loop._end_epoch

def end_epoch(run, epoch, *args):
    real_end_epoch(run, epoch, *args)
    if epoch == 0:  # epoch 1 and its resume state are saved: wait for the kill
        print("EPOCH 1 SAVED", flush=True)
        time.sleep(600)

loop._end_epoch = end_epoch
from hpa_kernel.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_during_training_then_resume_gives_bit_identical_checkpoints(trained, tmp_path):
    import torch

    toy, reference, _ = trained
    out = tmp_path / "killed"
    argv = lambda folder: _train_argv(toy, folder)  # noqa: E731
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _STOP_AFTER_EPOCH_1, *argv(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    _sigkill_at(proc, "EPOCH 1 SAVED")
    assert torch.load(out / "runs" / "g2" / "last.pt", weights_only=True)["epoch"] == 1
    assert main(argv(out) + ["--resume"]) == 0
    _same_checkpoints(reference, out)  # as the same run never interrupted


def test_disk_full_error_names_the_file_and_the_space(tmp_path):
    import errno

    from hpa_kernel.diskspace import DiskFullError
    from hpa_kernel.io import atomic_write

    target = tmp_path / "x.bin"
    target.write_bytes(b"old")

    def fails(tmp):
        tmp.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=r"disk is full: could not write .*x\.bin; this step needed 2\.0 KiB") as info:
        atomic_write(target, fails, needed_bytes=2048)
    assert info.value.errno == errno.ENOSPC and info.value.path == target
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


# --------------------------------------------------------------------------- item 5: a rerun keeps the good file


_SLOW_LOADING = """
import sys, time
import hpa_kernel.submission.driver as driver

def wait_forever(*args, **kwargs):
    print("LOADING MODELS", flush=True)
    time.sleep(600)

driver._load_models = wait_forever
from hpa_kernel.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_of_a_rerun_leaves_the_previous_file_byte_identical(comp, weights_dir, tmp_path):  # noqa: F811
    out = tmp_path / "submission.csv"
    old = _old_submission(comp, out)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_LOADING, *_submit_argv(comp, weights_dir, out, "--budget-hours", "1")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    _sigkill_at(proc, "LOADING MODELS")  # the run has started and reached the model loading
    assert out.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir() if "tmp" in p.name) == []


def test_failed_rerun_keeps_the_previous_file_and_a_first_run_still_gets_its_placeholder(comp, weights_dir, tmp_path, monkeypatch):  # noqa: F811
    import hpa_kernel.submission.driver as driver

    def broken(*args, **kwargs):
        raise RuntimeError("out of GPU memory")

    monkeypatch.setattr(driver, "_load_models", broken)
    out = tmp_path / "submission.csv"
    old = _old_submission(comp, out)
    with pytest.raises(RuntimeError, match="out of GPU memory"):
        run_submission(_config(comp, weights_dir, out, budget_s=3600), segmenter=BlobSegmenter())
    assert out.read_bytes() == old
    fresh = tmp_path / "fresh.csv"  # no valid file yet (as on Kaggle): the all-fallback placeholder is written
    with pytest.raises(RuntimeError, match="out of GPU memory"):
        run_submission(_config(comp, weights_dir, fresh, budget_s=3600), segmenter=BlobSegmenter())
    assert check_submission(fresh, comp.sample_submission).ok
    assert (pd.read_csv(fresh, keep_default_na=False)["PredictionString"] == "").all()


# --------------------------------------------------------------------------- item 6: a sample with an extra column


def test_sample_with_an_extra_column_is_read_by_name(comp, weights_dir, tmp_path, caplog):  # noqa: F811
    sample = pd.read_csv(comp.sample_submission, dtype=str, keep_default_na=False)
    sample["Usage"] = "Public"
    sample = sample[["ID", "Usage", "ImageHeight", "ImageWidth", "PredictionString"]]  # and another order
    sample.to_csv(comp.sample_submission, index=False)
    out = tmp_path / "submission.csv"
    with caplog.at_level(logging.INFO, logger="hpa_kernel.submission"):
        report = run_submission(_config(comp, weights_dir, out, budget_s=0), segmenter=BlobSegmenter())
    assert report.n_images == 2
    lines = out.read_text().splitlines()
    assert lines[0] == "ID,ImageWidth,ImageHeight,PredictionString"
    assert lines[1:] == [f"{i},{w},{h}," for i, w, h in zip(sample["ID"], sample["ImageWidth"], sample["ImageHeight"])]
    assert any("Usage" in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)
    assert check_submission(out, comp.sample_submission).ok


# --------------------------------------------------------------------------- item 7: a budget shorter than start-up


def test_budget_shorter_than_the_model_loading_loads_nothing(comp, weights_dir, tmp_path, monkeypatch):  # noqa: F811
    """A fake clock that never moves: 0.5 s left after the reserve, less than loading any model."""
    from hpa_kernel.classifier import Ensemble

    class Loaded(Exception):
        pass

    def loading(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(Ensemble, "from_manifest", loading)
    report = run_submission(_config(comp, weights_dir, tmp_path / "s.csv", budget_s=2.5, reserve_s=2.0), clock=lambda: 50.0,
                            segmenter=BlobSegmenter())  # fmt: skip
    assert report.n_predicted == 0 and report.n_fallback == 2
    assert all(reason.startswith("budget") for reason in report.fallback.values())
    assert check_submission(report.path, comp.sample_submission).ok
    # start-up spent the budget (a run started 3 s ago, 2.5 s budget): not even the weights are read
    import hpa_kernel.submission.driver as driver

    def unread(*args, **kwargs):
        raise AssertionError("the weights were resolved after the budget was spent")

    with monkeypatch.context() as patch:
        patch.setattr(driver, "resolve_weights", unread)
        report = run_submission(_config(comp, weights_dir, tmp_path / "u.csv", budget_s=2.5, reserve_s=2.0), clock=lambda: 50.0,
                                segmenter=BlobSegmenter(), started=47.0)  # fmt: skip
    assert report.n_predicted == 0 and check_submission(report.path, comp.sample_submission).ok
    # with time for it, the models are loaded
    with pytest.raises(Loaded):
        run_submission(_config(comp, weights_dir, tmp_path / "t.csv", budget_s=60.0, reserve_s=2.0), clock=lambda: 50.0,
                       segmenter=BlobSegmenter())  # fmt: skip


class CountingSegmenter(BlobSegmenter):
    """A :class:`BlobSegmenter` that counts its ``predict`` calls."""

    def __init__(self):
        self.calls = 0

    def predict(self, images):
        self.calls += 1
        return super().predict(images)


def test_first_image_that_cannot_finish_is_not_started(comp, weights_dir, tmp_path, monkeypatch, caplog):  # noqa: F811
    """A fake clock that never moves; loading is priced at 0 s, so the models load and only the
    first image's prior decides: 0.5 s left is below any image's prior (at least 1 s per image)."""
    import hpa_kernel.submission.driver as driver

    monkeypatch.setattr(driver, "load_estimate_s", lambda *args, **kwargs: 0.0)
    segmenter = CountingSegmenter()
    with caplog.at_level(logging.WARNING, logger="hpa_kernel"):
        report = run_submission(_config(comp, weights_dir, tmp_path / "s.csv", budget_s=2.5, reserve_s=2.0), clock=lambda: 50.0,
                                segmenter=segmenter)  # fmt: skip
    assert segmenter.calls == 0  # no image was segmented
    assert report.n_predicted == 0 and report.n_fallback == report.n_images == 2
    assert all(reason.startswith("budget") for reason in report.fallback.values())
    assert any("the first image takes about" in r.getMessage() for r in caplog.records)
    rows = pd.read_csv(report.path, dtype={"ID": str, "PredictionString": str}, keep_default_na=False)
    assert len(rows) == 2 and (rows["PredictionString"] == "").all()
    assert check_submission(report.path, comp.sample_submission).ok
    # a generous budget, the same clock: the first image (and the second) is processed
    segmenter = CountingSegmenter()
    report = run_submission(_config(comp, weights_dir, tmp_path / "t.csv", budget_s=3600.0, reserve_s=2.0), clock=lambda: 50.0,
                            segmenter=segmenter)  # fmt: skip
    assert segmenter.calls >= 1 and report.n_predicted == 2


def test_measured_costs_replace_the_prior():
    """Once an image is measured the prior plays no part: the same plans as a planner without one."""
    from hpa_kernel.submission.budget import BudgetPlanner, CostEstimates, plan_ladder

    ladder = plan_ladder((1, 2), (0.5, 0.5))  # 3 passes, 2, 1 (0/1)
    huge = CostEstimates(base_s=1e6, pass_s=1e6, cells_per_image=100)
    plain = BudgetPlanner(100.0, n_images=10, reserve_s=0.0, ladder=ladder, safety=1.0)
    careful = plain.with_prior(huge)
    measured = CostEstimates(base_s=1.0, pass_s=0.2, cells_per_image=10)  # 1 s + 2 s per pass
    assert careful.choose(0.0, 0, CostEstimates()).fallback  # the prior alone: not started
    for elapsed, done, passes in [(0.0, 1, 3), (50.0, 1, 2), (70.0, 1, 1), (95.0, 1, 1), (99.5, 1, 0)]:
        # by hand: 9 images left; 9 x (1 + 2 x passes) <= left, else one more image at 1 pass
        left = 100.0 - elapsed
        fits = [p for p in (3, 2, 1) if 9 * (1 + 2 * p) <= left]
        expected = fits[0] if fits else (1 if 3 <= left else 0)
        assert expected == passes
        assert careful.choose(elapsed, done, measured).passes == passes
        assert careful.choose(elapsed, done, measured) == plain.choose(elapsed, done, measured)


# --------------------------------------------------------------------------- item 8: messages in the caller's words


def test_missing_segmentation_weights_message_speaks_the_callers_language(comp, weights_dir, tmp_path, caplog):  # noqa: F811
    from hpa_kernel.submission import SubmitConfig

    # the notebook: SubmitConfig(..., segmenter=segmenter) with segmenter = None, then run_submission(config)
    config = SubmitConfig(out=tmp_path / "nb.csv", data=comp.root, weights=weights_dir, device="cpu", progress=False)
    with pytest.raises(FileNotFoundError) as info:
        run_submission(config)
    assert 'segmenter = "classic"' in str(info.value) and "--segmenter" not in str(info.value)
    # the command line
    argv = ["submit", "--data", str(comp.root), "--weights", str(weights_dir), "--out", str(tmp_path / "cli.csv"), "--no-progress"]
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 1
    message = " ".join(_errors(caplog))
    assert "--segmenter classic" in message and 'segmenter = "classic"' not in message


def test_resume_and_recipe_messages_speak_the_callers_language(tmp_path, caplog):
    from toy_training import make_toy_cells

    from hpa_kernel.training import RunOptions, group_config, train_group

    toy = make_toy_cells(tmp_path / "toy", n_images=3, cells_per_image=2, size=32, seed=3)
    config = group_config(2, input_size=32, batch_size=2, epochs=1, steps_per_epoch=1, workers=0, pretrained=None)
    with pytest.raises(FileNotFoundError, match=r"train without resume = True first"):
        train_group(config, toy, tmp_path / "nb", options=RunOptions(resume=True, progress=False, manifest=False))
    argv = ["train", "--cells", str(toy), "--recipe", "kit2025", "--group", "2", "--out", str(tmp_path / "cli"), "--input-size", "32",
            "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "1", "--device", "cpu", "--no-progress", "--resume"]
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 1
    assert any("train without --resume first" in m for m in _errors(caplog))
