"""The budgeted submission driver: the planner on fake clocks, and real tiny runs that always write a valid file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hpa_kernel.segmentation.base import BaseSegmenter, SegmentationMaps
from hpa_kernel.submission import check_submission, read_sample_submission
from hpa_kernel.submission import (
    FALLBACK_PLAN,
    BudgetPlanner,
    CostEstimates,
    CostTracker,
    Plan,
    SubmitConfig,
    plan_ladder,
    run_submission,
)

TTA = ("identity", "hflip", "vflip")


# --------------------------------------------------------------------------- planner (pure)


def test_ladder_goes_from_tta_to_one_checkpoint():
    ladder = plan_ladder((1, 2, 4), (0.2, 0.4, 0.4), TTA)
    assert ladder[0] == Plan((1, 2, 4), TTA) and ladder[0].passes == 21
    assert ladder[1] == Plan((1, 2, 4)) and ladder[1].passes == 7
    assert [p.passes for p in ladder] == sorted((p.passes for p in ladder), reverse=True)
    assert ladder[-3].checkpoints_per_group == (1, 1, 1)
    assert ladder[-2].checkpoints_per_group == (0, 1, 1)  # the 0.2 group goes first
    assert ladder[-1].passes == 1
    assert plan_ladder((1,), (1.0,)) == [Plan((1,))]
    with pytest.raises(ValueError, match="positive checkpoint counts"):
        plan_ladder((0, 2), (0.5, 0.5))


def _costs(base=1.0, per_pass=0.5, cells=2.0):
    return CostEstimates(base_s=base, pass_s=per_pass / cells, cells_per_image=cells)


def test_planner_degrades_as_time_runs_out():
    # per image: 1 s + 0.5 s per pass; ladder passes 21, 7, 6, 5, 4, 3, 2, 1
    ladder = plan_ladder((1, 2, 4), (0.2, 0.4, 0.4), TTA)
    planner = BudgetPlanner(budget_s=1000, n_images=10, reserve_s=50, ladder=ladder, safety=1.0)
    costs = _costs()
    assert planner.choose(0, 0, costs) == ladder[0]  # 10 * 11.5 = 115 s <= 950 s
    assert planner.choose(900, 5, costs) == ladder[1]  # 50 s left: 5 * 11.5 > 50, 5 * 4.5 = 22.5 fits
    assert planner.choose(930, 5, costs).checkpoints_per_group == (1, 2, 3)  # 20 s: 6 passes, 5 * 4 s fits
    assert planner.choose(935, 5, costs).checkpoints_per_group == (1, 2, 1)  # 15 s: 4 passes, 5 * 3 s fits
    plan = planner.choose(945, 5, costs)  # 5 s left: nothing fits 5 images; one image at 1.5 s does
    assert plan == ladder[-1]
    assert planner.choose(949, 5, costs) == FALLBACK_PLAN  # 1 s left < 1.5 s
    assert planner.choose(960, 5, costs) == FALLBACK_PLAN
    assert planner.choose(10, 10, costs) == FALLBACK_PLAN  # nothing left to do


def test_planner_before_measurements_and_zero_budget():
    ladder = plan_ladder((1, 2), (0.5, 0.5), TTA)
    assert BudgetPlanner(100, 3, 1, ladder).choose(0, 0, CostEstimates()) == ladder[0]
    assert BudgetPlanner(0, 3, 0, ladder).choose(0, 0, CostEstimates()) == FALLBACK_PLAN
    with pytest.raises(ValueError, match="budget_s"):
        BudgetPlanner(-1, 3, 0, ladder)
    with pytest.raises(ValueError, match="ladder"):
        BudgetPlanner(10, 3, 0, [FALLBACK_PLAN])


def test_planner_with_a_fake_clock_fits_the_budget():
    """Simulate a run: each image costs 2 s + 0.1 s per cell pass (10 cells); the planner must finish in time."""
    ladder = plan_ladder((1, 2, 4), (0.2, 0.4, 0.4), TTA)
    budget, reserve, n = 400.0, 20.0, 60
    planner = BudgetPlanner(budget, n, reserve, ladder)
    tracker, now, used = CostTracker(), 0.0, []
    for done in range(n):
        plan = planner.choose(now, done, tracker.estimates())
        if plan.fallback:
            break
        cost = 2.0 + 10 * 0.1 * plan.passes
        tracker.add(base_s=2.0, n_cells=10, classify_s=cost - 2.0, passes=plan.passes)
        now += cost
        used.append(plan)
    assert now <= budget - reserve
    assert used[0] == ladder[0]  # unmeasured: the richest plan first
    assert len(used) == n  # 60 images fit at a cheaper plan (3 s each at 1 pass)
    assert used[-1].passes < used[0].passes  # it dropped extras to fit
    est = tracker.estimates()
    assert est.base_s == pytest.approx(2.0) and est.pass_s == pytest.approx(0.1) and est.cells_per_image == 10


def test_cost_tracker_without_cells():
    t = CostTracker()
    t.add(base_s=1.0, n_cells=0, classify_s=0.0, passes=7)
    est = t.estimates()
    assert est.known and est.per_image(Plan((1, 2, 4))) == pytest.approx(1.0)


# --------------------------------------------------------------------------- the driver, on synthetic data


class BlobSegmenter(BaseSegmenter):
    """Test segmenter: nuclei = blue above its mean, cells = nuclei grown by 6 px; no weights."""

    name = "blobs"

    def predict(self, images):
        return [SegmentationMaps(nuclei=np.asarray(im)[..., 2], cell=np.asarray(im)[..., 0]) for im in images]

    @staticmethod
    def postprocess_fn(maps):
        from scipy import ndimage as ndi

        blue = maps.nuclei.astype(np.float32)
        nuclei, _ = ndi.label(blue > blue.mean() + blue.std())
        dist, (iy, ix) = ndi.distance_transform_edt(nuclei == 0, return_indices=True)
        cells = np.where(dist <= 6, nuclei[iy, ix], 0)
        return nuclei.astype(np.int32), cells.astype(np.int32)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    from hpa_kernel.demo import random_ensemble

    folder = tmp_path_factory.mktemp("weights")
    random_ensemble(folder, sizes=(1, 2), weights=(0.4, 0.6), arch="resnet18", input_size=32)
    return folder


def _config(comp, weights_dir, out, **kw):
    base = dict(out=out, data=comp.root, weights=weights_dir, device="cpu", workers=0, progress=False, segmenter="classic",
                torch_threads=1)
    base.update(kw)
    return SubmitConfig(**base)


def _rows(path):
    return pd.read_csv(path, dtype={"ID": str, "PredictionString": str}, keep_default_na=False)


def test_zero_budget_writes_all_fallback_rows(synthetic_competition, weights_dir, tmp_path):
    comp = synthetic_competition
    report = run_submission(_config(comp, weights_dir, tmp_path / "sub.csv", budget_s=0), segmenter=BlobSegmenter())
    assert report.n_predicted == 0 and report.n_fallback == report.n_images == 3
    assert all(r.startswith("budget") for r in report.fallback.values())
    assert report.problems is None  # no time was left to validate; the check below does it
    assert check_submission(report.path, comp.sample_submission).ok
    assert (_rows(report.path)["PredictionString"] == "").all()


def test_full_run_predicts_every_image(synthetic_competition, weights_dir, tmp_path):
    comp = synthetic_competition
    report = run_submission(_config(comp, weights_dir, tmp_path / "sub.csv", budget_s=3600, tta=True), segmenter=BlobSegmenter())
    assert report.n_predicted == 3 and report.n_fallback == 0
    assert report.problems == []
    rows = _rows(report.path)
    assert list(rows["ID"]) == list(read_sample_submission(comp.sample_submission)["ID"])
    tokens = rows["PredictionString"].iloc[0].split(" ")
    assert len(tokens) > 0 and len(tokens) % (3 * 19) == 0  # 19 classes per cell
    conf = np.array(tokens[1::3], dtype=float)
    assert ((conf >= 0) & (conf <= 1)).all() and conf.std() > 0
    assert sum(report.plans.values()) == 3 and any("hflip" in p for p in report.plans)


def test_budget_that_fits_only_some_images(synthetic_competition, weights_dir, tmp_path):
    """A fake clock that advances 1 s per reading: the budget runs out part-way."""
    comp = synthetic_competition

    class Clock:
        t = 0.0

        def __call__(self):
            self.t += 1.0
            return self.t

    report = run_submission(
        _config(comp, weights_dir, tmp_path / "sub.csv", budget_s=12, reserve_s=0), clock=Clock(), segmenter=BlobSegmenter()
    )
    assert 0 < report.n_predicted < 3
    assert report.n_predicted + report.n_fallback == 3
    assert check_submission(report.path, comp.sample_submission).ok
    rows = _rows(report.path)
    assert (rows["PredictionString"] != "").sum() == report.n_predicted


class FailOnCalls(BlobSegmenter):
    """``predict`` raises on the chosen calls (1-based); with seg_batch_size=1, call k is image k."""

    def __init__(self, failing_calls):
        self.failing_calls = set(failing_calls)
        self.calls = 0

    def predict(self, images):
        self.calls += 1
        if self.calls in self.failing_calls:
            raise RuntimeError("planted segmentation error")
        return super().predict(images)


def test_limit_and_failed_image_get_fallback(synthetic_competition, weights_dir, tmp_path):
    comp = synthetic_competition
    ids = list(read_sample_submission(comp.sample_submission)["ID"])
    config = _config(comp, weights_dir, tmp_path / "a.csv", limit=2, tta=False)
    report = run_submission(config, segmenter=FailOnCalls({1}))  # the first image fails, the third is beyond --limit
    assert report.n_predicted == 1 and list(report.fallback) == [ids[0], ids[2]]
    assert report.fallback[ids[0]].startswith("failed") and "planted segmentation error" in report.fallback[ids[0]]
    assert report.fallback[ids[2]].startswith("limit")
    assert set(report.plans) == {"checkpoints 1/2, no TTA"}
    rows = _rows(report.path).set_index("ID")["PredictionString"]
    assert rows[ids[0]] == "" and rows[ids[1]] != "" and rows[ids[2]] == ""


def test_one_bad_image_gets_the_fallback_and_a_log_line(synthetic_competition, weights_dir, tmp_path, caplog):
    comp = synthetic_competition
    ids = list(read_sample_submission(comp.sample_submission)["ID"])
    with caplog.at_level("WARNING"):
        report = run_submission(_config(comp, weights_dir, tmp_path / "s.csv", tta=False), segmenter=FailOnCalls({2}))
    assert report.n_predicted == 2 and list(report.fallback) == [ids[1]]
    assert report.fallback[ids[1]].startswith("failed") and "planted segmentation error" in report.fallback[ids[1]]
    assert any(ids[1] in r.getMessage() and "planted" in r.getMessage() for r in caplog.records)
    assert report.problems == []
    rows = _rows(report.path).set_index("ID")["PredictionString"]
    assert rows[ids[1]] == "" and (rows.drop(ids[1]) != "").all()


def test_every_image_failing_still_writes_a_valid_file(synthetic_competition, weights_dir, tmp_path, monkeypatch):
    import hpa_kernel.submission.driver as submit

    comp = synthetic_competition

    def broken(result, *args, **kwargs):
        raise ValueError(f"planted prediction error for {result.image_id}")

    monkeypatch.setattr(submit, "predict_image", broken)
    report = run_submission(_config(comp, weights_dir, tmp_path / "s.csv", tta=False), segmenter=BlobSegmenter())
    assert report.n_predicted == 0 and report.n_fallback == 3
    assert all(r.startswith("failed: ValueError: planted prediction error") for r in report.fallback.values())
    assert report.problems == [] and (_rows(report.path)["PredictionString"] == "").all()


def test_any_prediction_error_is_per_image(synthetic_competition, weights_dir, tmp_path, monkeypatch, caplog):
    import hpa_kernel.submission.driver as submit

    comp = synthetic_competition
    first = read_sample_submission(comp.sample_submission)["ID"].iloc[0]
    real = submit.predict_image

    def key_error_on_first(result, *args, **kwargs):
        if result.image_id == first:
            raise KeyError("penalty")  # not a RuntimeError/ValueError: still only this image's problem
        return real(result, *args, **kwargs)

    monkeypatch.setattr(submit, "predict_image", key_error_on_first)
    with caplog.at_level("ERROR", logger="hpa_kernel.submission.driver"):
        report = run_submission(_config(comp, weights_dir, tmp_path / "s.csv", tta=False), segmenter=BlobSegmenter())
    assert report.n_predicted == 2 and list(report.fallback) == [first]
    assert report.fallback[first].startswith("failed: KeyError")
    assert any(first in r.getMessage() and "KeyError" in r.getMessage() for r in caplog.records)


def test_runtime_report_reaches_the_main_log(synthetic_competition, weights_dir, tmp_path, caplog):
    import logging

    from hpa_kernel.segmentation import postprocess
    from hpa_kernel.submission import runtime_report

    config = _config(synthetic_competition, weights_dir, tmp_path / "sub.csv", budget_s=3600, padding=False)
    with caplog.at_level(logging.INFO):
        run_submission(config, segmenter=BlobSegmenter())
    line = f"runtime: segmenter blobs, padding n/a, scikit-image {postprocess.skimage_version()}, watershed faithful"
    reports = [r for r in caplog.records if r.name == "hpa_kernel.submission.driver" and r.getMessage().startswith("runtime:")]
    assert len(reports) == 1 and reports[0].levelno == logging.INFO and reports[0].getMessage().startswith(line)
    assert runtime_report(config, "hpa").startswith("runtime: segmenter hpa, padding False, ")
    assert runtime_report(config, "hpa", padding=True).startswith("runtime: segmenter hpa, padding True, ")
    assert "padding True" in runtime_report(SubmitConfig(out="x.csv"))


def test_hpa_segmenter_needs_its_weights_or_an_explicit_classic(synthetic_competition, weights_dir, tmp_path):
    comp = synthetic_competition
    with pytest.raises(FileNotFoundError, match='set segmenter = "classic" explicitly'):
        run_submission(_config(comp, weights_dir, tmp_path / "s.csv", segmenter=None))
    with pytest.raises(FileNotFoundError, match="dpn_unet_nuclei_v1.pth"):
        run_submission(_config(comp, weights_dir, tmp_path / "s.csv", segmenter="hpa"))
    # even a failed run leaves a valid (all-fallback) file behind
    assert check_submission(tmp_path / "s.csv", comp.sample_submission).ok


def test_hpa_is_chosen_when_its_weights_are_present(synthetic_competition, weights_dir, tmp_path, monkeypatch):
    import shutil

    from hpa_kernel import segmentation
    from hpa_kernel.manifest import load_manifest
    from hpa_kernel.segmentation.hpa import HPAParams

    calls = []

    class Stop(Exception):
        pass

    def fake_create(name, **kwargs):
        calls.append((name, kwargs))
        raise Stop

    monkeypatch.setattr(segmentation, "create_segmenter", fake_create)

    folder = tmp_path / "w"
    shutil.copytree(weights_dir, folder)
    seg = load_manifest(weights_dir=folder, verify=False).segmentation
    for entry in seg.files():
        (folder / entry.file).write_bytes(b"not a real pickle")
    with pytest.raises(Stop):
        run_submission(_config(synthetic_competition, folder, tmp_path / "s.csv", segmenter=None))
    want = {"nuclei": folder / seg.nuclei.file, "cell": folder / seg.cell.file, "params": HPAParams(device="cpu", padding=True)}
    assert calls == [("hpa", want)]  # padding=True by default, as the team ran hpacellseg
    with pytest.raises(Stop):
        run_submission(_config(synthetic_competition, folder, tmp_path / "s.csv", segmenter=None, padding=False))
    assert calls[-1] == ("hpa", {**want, "params": HPAParams(device="cpu", padding=False)})
    assert check_submission(tmp_path / "s.csv", synthetic_competition.sample_submission).ok


def test_config_checks_itself(tmp_path):
    with pytest.raises(ValueError, match="segmenter"):
        SubmitConfig(out=tmp_path / "x.csv", segmenter="cellpose")
    with pytest.raises(ValueError, match="budget_s"):
        SubmitConfig(out=tmp_path / "x.csv", budget_s=float("nan"))
    assert SubmitConfig(out="x.csv", budget_s=3600).reserve == pytest.approx(108)
    # checked here, not after the models are loaded (CellConfig needs an int)
    with pytest.raises(ValueError, match="crop_size must be an int >= 8, got 64.0"):
        SubmitConfig(out=tmp_path / "x.csv", crop_size=64.0)


def test_cli_parses_every_option():
    from hpa_kernel.cli import build_parser

    args = build_parser().parse_args([
        "submit", "--data", "d", "--weights", "w", "--out", "o.csv", "--budget-hours", "0.5", "--device", "cpu",
        "--batch-size", "8", "--workers", "0", "--no-tta", "--segmenter", "classic",
    ])
    assert (args.budget_hours, args.tta, args.segmenter, args.batch_size, args.workers) == (0.5, False, "classic", 8, 0)
    assert args.padding is True
    assert build_parser().parse_args(["submit", "--no-padding"]).padding is False
    from hpa_kernel.cli.segment import _segmenter_kwargs

    segment = ["segment", "--images", "i", "--out", "o"]
    assert _segmenter_kwargs(build_parser().parse_args(segment))["params"].padding is True
    assert _segmenter_kwargs(build_parser().parse_args([*segment, "--no-padding"]))["params"].padding is False
    cells = build_parser().parse_args(["cells", "--out", "o"])
    assert (cells.segmenter, cells.padding) == ("hpa", True)  # the same default as submit


# --------------------------------------------------------------------------- the demo's steps, tiny


def test_demo_end_to_end_tiny(tmp_path):
    from hpa_kernel.demo import label_frequencies, run_demo

    result = run_demo(tmp_path / "demo", n_train=4, n_test=2, size=256, workers=0,
                      training={"input_size": 32, "epochs": 1, "steps_per_epoch": 4})
    assert result.problems == []
    assert check_submission(result.submission, result.data_dir / "sample_submission.csv").ok
    assert set(result.scores) == {"box", "mask"} and set(result.baseline_scores) == {"box", "mask"}
    for mode in ("box", "mask"):
        assert 0.0 <= result.scores[mode].map <= 1.0
    manifest = (result.weights_dir / "weights_manifest.json").read_text()
    assert manifest.count('"sha256": null') == 2  # only the (absent) segmentation files are unpinned
    # the baseline keeps the same cells and puts each class at its training frequency
    from hpa_kernel.io import Competition
    from hpa_kernel.metric import parse_prediction_string

    freq = label_frequencies(Competition(result.data_dir))
    ours, base = _rows(result.submission), _rows(result.baseline)
    for a, b in zip(ours["PredictionString"], base["PredictionString"], strict=True):
        ta, tb = parse_prediction_string(a), parse_prediction_string(b)
        assert [m for _, _, m in ta] == [m for _, _, m in tb]
        assert all(abs(conf - freq[label]) < 1e-6 for label, conf, _ in tb)
    assert "label-frequency baseline" in result.summary()


def test_cli_submit_with_classic_segmenter(synthetic_competition, weights_dir, tmp_path, capsys):
    from hpa_kernel.cli import main

    out = tmp_path / "cli.csv"
    code = main([
        "submit", "--data", str(synthetic_competition.root), "--weights", str(weights_dir), "--out", str(out),
        "--budget-hours", "0.1", "--device", "cpu", "--workers", "0", "--no-tta", "--segmenter", "classic",
        "--limit", "1", "--torch-threads", "1", "--no-progress",
    ])
    assert code == 0
    assert "1 predicted, 2 fallback" in capsys.readouterr().out
    assert check_submission(out, synthetic_competition.sample_submission).ok
    assert main(["submit", "--data", str(synthetic_competition.root), "--weights", str(weights_dir), "--out", str(out)]) == 1


# --------------------------------------------------------------------------- the recipe's crop and no-cells row


class NoCellsSegmenter(BlobSegmenter):
    """Finds nothing: every image has no cell."""

    @staticmethod
    def postprocess_fn(maps):
        empty = np.zeros(maps.cell.shape, np.int32)
        return empty, empty


@pytest.fixture(scope="module")
def kit_weights_dir(tmp_path_factory):
    from hpa_kernel.demo import random_ensemble

    folder = tmp_path_factory.mktemp("kit_weights")
    random_ensemble(folder, sizes=(1,), weights=(1.0,), arch="resnet18", input_size=32, recipe="kit2025")
    return folder


def test_the_recipe_crop_reaches_the_classifier(synthetic_competition, weights_dir, kit_weights_dir, tmp_path, monkeypatch):
    from hpa_kernel.classifier import Ensemble

    seen = []
    original = Ensemble.predict

    def recording(self, crops, **kwargs):
        seen.append((self.recipe.name, crops.dtype.name))
        return original(self, crops, **kwargs)

    monkeypatch.setattr(Ensemble, "predict", recording)
    comp = synthetic_competition
    for recipe, folder in (("milimed2021", weights_dir), ("kit2025", kit_weights_dir)):
        report = run_submission(_config(comp, folder, tmp_path / f"{recipe}.csv", tta=False, recipe=recipe, limit=1), segmenter=BlobSegmenter())
        assert report.n_predicted == 1 and report.problems == []
    assert sorted(set(seen)) == [("kit2025", "uint8"), ("milimed2021", "uint16")]


def test_no_cells_row_follows_the_recipe(synthetic_competition, weights_dir, kit_weights_dir, tmp_path):
    """milimed2021: the sample row (here empty, so the team's placeholder at the image's size);
    kit2025: empty. Neither is a fallback."""
    from hpa_kernel.submission.rle import decode_mask

    comp = synthetic_competition
    sample = read_sample_submission(comp.sample_submission)
    team = run_submission(_config(comp, weights_dir, tmp_path / "team.csv", tta=False), segmenter=NoCellsSegmenter())
    kit = run_submission(_config(comp, kit_weights_dir, tmp_path / "kit.csv", tta=False, recipe="kit2025"), segmenter=NoCellsSegmenter())
    for report in (team, kit):
        assert report.n_predicted == 3 and report.n_fallback == 0 and report.problems == []
    assert (_rows(kit.path)["PredictionString"] == "").all()
    for row in _rows(team.path).itertuples():
        label, confidence, mask = row.PredictionString.split(" ")
        assert (label, confidence) == ("0", "1")
        assert not decode_mask(mask, row.ImageHeight, row.ImageWidth).any()
    assert list(_rows(team.path)["ID"]) == list(sample["ID"])
