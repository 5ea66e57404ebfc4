"""Training runs on a tiny toy cells table: smoke train (2 epochs of 1 step), resume, fine-tuning,
pseudo-labels, the CLI and a 2-process gloo DDP run."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from hpa_kernel.classifier import load_checkpoint
from hpa_kernel.training import (
    FinetuneConfig,
    PseudoLabelConfig,
    RunOptions,
    TrainInputs,
    finetune_checkpoints,
    group_config,
    make_pseudo_labels,
    train_group,
    train_pseudo_labeller,
)
from toy_training import make_toy_cells

TINY = dict(input_size=32, batch_size=4, epochs=2, steps_per_epoch=1, workers=0)
QUIET = RunOptions(progress=False, manifest=False)
RESUME = RunOptions(resume=True, progress=False, manifest=False)


@pytest.fixture(scope="module")
def toy_cells(tmp_path_factory):
    return make_toy_cells(tmp_path_factory.mktemp("toy"), n_images=5, cells_per_image=3, size=48, seed=7)


@pytest.fixture(scope="module")
def group3_run(toy_cells, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("g3")
    cfg = group_config(3, **TINY, val_fraction=0.2, snapshot_fraction=1.0)
    return cfg, out, train_group(cfg, toy_cells, out, options=RunOptions(progress=False))


def test_smoke_train_writes_loadable_snapshots_log_and_manifest(group3_run):
    import torch

    cfg, out, paths = group3_run
    assert [p.name for p in paths] == ["g3_m0.pth", "g3_m1.pth"]  # 2 steps: 2 of the 4 snapshots
    model, ckpt = load_checkpoint(paths[1])
    assert ckpt.group == 3 and ckpt.input_size == 32 and ckpt.loss["name"] == "bce" and ckpt.step == 2
    assert ckpt.augmentation["pad_p"] == 0.3 and ckpt.extra["train_config"]["group"] == 3
    assert model(torch.zeros(1, 4, 32, 32)).shape == (1, 19)
    a = torch.load(paths[0], weights_only=True)
    b = torch.load(paths[1], weights_only=True)
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())  # the two snapshots differ
    log = [json.loads(line) for line in (out / "runs" / "g3" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all(np.isfinite(r["train_loss"]) for r in log)
    assert all(0.0 <= r["val_map"] <= 1.0 for r in log)
    manifest = json.loads((out / "weights_manifest.json").read_text())
    g3 = {c["file"]: c["sha256"] for c in manifest["ensemble"]["groups"][2]["checkpoints"]}
    from hpa_kernel.manifest import sha256_of

    assert g3["g3_m0.pth"] == sha256_of(paths[0]) and g3["g3_m3.pth"] is None


def test_resume_continues_from_last_state(toy_cells, tmp_path):
    import torch

    base = group_config(1, **TINY, val_fraction=0.0)
    one = dataclasses.replace(base, epochs=1)
    with pytest.raises(FileNotFoundError, match="last.pt"):
        train_group(base, toy_cells, tmp_path / "r", options=RESUME)
    # An uninterrupted 2-epoch run and a run stopped after epoch 1 then resumed end in the same weights.
    full = train_group(base, toy_cells, tmp_path / "full", options=QUIET)
    train_group(base, toy_cells, tmp_path / "r", options=QUIET)
    state = torch.load(tmp_path / "r" / "runs" / "g1" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 2 and set(state) >= {"model", "optimizer", "scheduler", "scaler"}
    with pytest.raises(ValueError, match="different training config"):
        train_group(one, toy_cells, tmp_path / "r", options=RESUME)
    # simulate an interruption after epoch 1: rewind last.pt to a 1-epoch run of the same config
    stopped = tmp_path / "stopped"
    _stop_after_first_epoch(base, toy_cells, stopped)
    resumed = train_group(base, toy_cells, stopped, options=RESUME)
    a = torch.load(full[0], weights_only=True)
    b = torch.load(resumed[0], weights_only=True)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    log = (stopped / "runs" / "g1" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]


def test_resume_refuses_a_run_with_another_number_of_steps(toy_cells, tmp_path):
    # Steps per epoch derived from the table: more cells means another schedule and other snapshots.
    config = group_config(1, **{**TINY, "steps_per_epoch": None, "epochs": 1, "batch_size": 8}, val_fraction=0.0)
    train_group(config, toy_cells, tmp_path / "r", options=QUIET)
    bigger = make_toy_cells(tmp_path / "big", n_images=10, cells_per_image=3, size=48, seed=7)
    with pytest.raises(ValueError, match="optimizer steps"):
        train_group(config, bigger, tmp_path / "r", options=RESUME)
    assert train_group(config, toy_cells, tmp_path / "r", options=RESUME)


def test_other_ranks_draw_their_own_augmentations_and_write_nothing(toy_cells, tmp_path):
    import torch

    from hpa_kernel.training.dataset import CellDataset, build_targets, read_cells_table
    from hpa_kernel.training.loop import _Dist, _fit, _FitJob
    from hpa_kernel.training.sampler import SemiBalancedSampler

    torch.set_num_threads(1)
    config = group_config(1, **{**TINY, "epochs": 1}, val_fraction=0.0)
    table = read_cells_table(toy_cells)
    targets, _ = build_targets(table)

    def draws(rank):
        seen = []

        def augment(crop, rng):
            seen.append(float(rng.random()))
            return crop

        dataset = CellDataset(table["crop_path"], targets, config.input_size, augment)
        sampler = SemiBalancedSampler(np.ones(len(table)), config.batch_size)  # the same cells for both
        out = tmp_path / f"rank{rank}"
        # world 1 keeps DDP out of the way; rank 1 still behaves as a non-main process
        _fit(_FitJob(config, dataset, None, sampler, 1, out, "g1", progress=False), _Dist(1, rank, torch.device("cpu"), False))
        return seen, out

    seen0, out0 = draws(0)
    seen1, out1 = draws(1)
    assert len(seen0) == len(seen1) == config.batch_size and seen0 != seen1
    assert (out0 / "g1_m0.pth").is_file() and (out0 / "runs" / "g1" / "last.pt").is_file()
    assert not out1.exists()  # only rank 0 writes


def _stop_after_first_epoch(config, cells, out):
    """Run epoch 1 of ``config`` only, as if the process had been killed after it."""
    import hpa_kernel.training.loop as loop

    class Stop(Exception):
        pass

    calls = {"n": 0}

    def on_recall(recall):
        calls["n"] += 1
        if calls["n"] == 2:  # called at the start of each epoch
            raise Stop

    original = loop._fit

    def fit(job, dist):
        return original(dataclasses.replace(job, on_recall=on_recall), dist)

    loop._fit = fit
    try:
        with pytest.raises(Stop):
            loop.train_group(config, cells, out, options=QUIET)
    finally:
        loop._fit = original


def test_finetune_keeps_names_recipe_and_changes_weights(group3_run, toy_cells, tmp_path):
    import torch

    cfg, out, paths = group3_run
    soft = tmp_path / "soft.csv"
    table = pd.read_csv(toy_cells)
    first = table[table["valid"]].iloc[0]
    soft.write_text(f"image_id,cell_id,class_id,soft_label,score,n_labellers\n{first.image_id},{first.cell_id},5,0.9,4,1\n")
    tuned = finetune_checkpoints(paths[:1], toy_cells, tmp_path / "ft", soft_labels=soft,
                                 config=FinetuneConfig(epoch_size=6, repeats=3, batch_size=4),
                                 options=RunOptions(progress=False))
    assert [p.name for p in tuned] == ["g3_m0.pth"]
    _, ckpt = load_checkpoint(tuned[0])
    assert ckpt.group == 3 and ckpt.loss["name"] == "bce" and ckpt.extra["finetuned_from"] == "g3_m0.pth"
    assert ckpt.step == 2  # 6 samples / batch 4
    a, b = torch.load(paths[0], weights_only=True), torch.load(tuned[0], weights_only=True)
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    with pytest.raises(ValueError, match="holds the checkpoint"):
        finetune_checkpoints(paths[:1], toy_cells, out, options=RunOptions(progress=False))
    with pytest.raises(ValueError, match="no resume or name"):
        finetune_checkpoints(paths[:1], toy_cells, tmp_path / "ft2", options=RunOptions(resume=True))
    with pytest.raises(ValueError, match="inputs must be a TrainInputs"):
        train_group(cfg, toy_cells, tmp_path / "t", inputs={"soft_labels": soft})


def test_finetune_reads_each_cached_crop_once_for_all_checkpoints(group3_run, toy_cells, tmp_path, monkeypatch):
    import hpa_kernel.training.dataset as dataset
    from hpa_kernel.cells.builder import read_crop

    reads = []
    monkeypatch.setattr(dataset, "read_crop", lambda path: reads.append(path) or read_crop(path))
    _, _, paths = group3_run  # 32 px: crops are cached
    tuned = finetune_checkpoints(paths[:2], toy_cells, tmp_path / "ft", config=FinetuneConfig(epoch_size=40, batch_size=8),
                                 options=RunOptions(progress=False))
    assert [p.name for p in tuned] == ["g3_m0.pth", "g3_m1.pth"]
    assert len(reads) == len(set(reads)) == 15  # 5 images x 3 valid cells, each read once


def test_pseudo_labels_file_and_training_on_it(toy_cells, tmp_path):
    import torch

    torch.set_num_threads(1)
    base = PseudoLabelConfig()
    cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, **{**TINY, "epochs": 1}), positive_threshold=0.0)
    ckpt = train_pseudo_labeller(toy_cells, tmp_path / "pl", cfg, progress=False)
    _, ck = load_checkpoint(ckpt)
    assert ck.arch == "resnet18" and ckpt.name == "pseudo_resnet18_m0.pth"
    df = make_pseudo_labels(toy_cells, ckpt, tmp_path / "pseudo.csv", cfg)
    assert list(df.columns[:7]) == ["image_id", "cell_id", "labels", "pseudo_labels", "dropped", "added", "rule"]
    # positive_threshold 0: every cell of an image without spindle gets class 11
    no_spindle = ~df["labels"].str.split("|").map(lambda ls: "11" in ls)
    assert (df.loc[no_spindle, "added"] == "11").all() and df.loc[no_spindle, "rule"].str.contains("positive").all()
    assert (df["model"] == "resnet18").all() and df["checkpoint_sha256"].str.len().eq(64).all()
    paths = train_group(group_config(1, **{**TINY, "epochs": 1}, val_fraction=0.0), toy_cells, tmp_path / "g1",
                        inputs=TrainInputs(pseudo_labels=tmp_path / "pseudo.csv"), options=QUIET)
    assert paths[0].is_file()


def test_pseudo_labels_predict_on_cuda_when_available_and_no_device_is_given(group3_run, toy_cells, tmp_path, monkeypatch):
    import torch

    import hpa_kernel.training.pseudo as pseudo

    seen = []

    def fake_predict(checkpoint, table, device="cpu", **kwargs):
        seen.append(torch.device(device))
        return np.zeros((len(table), 19), np.float32)

    monkeypatch.setattr(pseudo, "predict_cells", fake_predict)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ckpt = group3_run[2][0]
    make_pseudo_labels(toy_cells, ckpt, tmp_path / "a.csv")
    make_pseudo_labels(toy_cells, ckpt, tmp_path / "b.csv", device="cpu")
    assert [d.type for d in seen] == ["cuda", "cpu"]


def test_cli_train_and_errors(toy_cells, tmp_path, capsys):
    from hpa_kernel.cli import main

    out = tmp_path / "cli"
    argv = ["train", "--cells", str(toy_cells), "--recipe", "kit2025", "--group", "2", "--out", str(out), "--input-size", "32",
            "--batch-size", "4", "--epochs", "2", "--steps-per-epoch", "1", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out.split()
    assert [os.path.basename(p) for p in printed] == ["g2_m0.pth", "g2_m1.pth"]
    assert main(argv + ["--resume"]) == 0  # already trained: resumes and returns the same files
    assert main(["train", "--cells", str(tmp_path / "missing.csv"), "--out", str(out)]) == 1
    assert main(["train", "--cells", str(toy_cells), "--out", str(out), "--input-size", "33"]) == 1


@pytest.mark.slow
def test_ddp_two_processes_gloo(toy_cells, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port),
           "-m", "hpa_kernel.training", "--cells", str(toy_cells), "--group", "2", "--out", str(out), "--input-size", "32",
           "--batch-size", "2", "--epochs", "2", "--steps-per-epoch", "1", "--device", "cpu", "--no-progress",
           "--pretrained", "none"]  # the default recipe, milimed2021: Adam and the per-epoch cosine under DDP
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1 of 2" in result.stderr and "gloo" in result.stderr
    model, cfg = load_checkpoint(out / "g2_m1.pth")
    assert cfg.extra["world_size"] == 2 and cfg.step == 2 and cfg.recipe == "milimed2021" and cfg.num_classes == 18
    assert (out / "g2_e00.pth").is_file() and load_checkpoint(out / "g2_m0.pth")[1].epoch == 1
    log = (out / "runs" / "g2" / "log.jsonl").read_text().splitlines()
    assert len(log) == 2  # only rank 0 writes


def test_trains_on_cells_from_the_synthetic_competition(synthetic_competition, tmp_path):
    """The cells stage's real output (crops + cells.csv from a synthetic competition) feeds training."""
    import torch

    from hpa_kernel.demo import build_training_cells
    from hpa_kernel.training.dataset import read_cells_table

    torch.set_num_threads(1)
    cells = build_training_cells(synthetic_competition, tmp_path / "cells", crop_size=64)
    table = read_cells_table(cells)
    assert len(table) > 10 and table["label_ids"].map(len).min() >= 1
    paths = train_group(group_config(2, **TINY, val_fraction=0.3), cells, tmp_path / "w", options=RunOptions(progress=False))
    assert [p.name for p in paths] == ["g2_m0.pth", "g2_m1.pth"]
    log = [json.loads(line) for line in (tmp_path / "w" / "runs" / "g2" / "log.jsonl").read_text().splitlines()]
    assert all(0.0 < r["val_map"] <= 1.0 for r in log)


@pytest.mark.slow
def test_quick_training_learns_the_toy_classes(tmp_path):
    """60 steps at 64 px: the cell-level mAP on new toy images is well above the label frequencies."""
    import torch

    from hpa_kernel.training import quick_config
    from hpa_kernel.training.dataset import build_targets, read_cells_table
    from hpa_kernel.training.metrics import mean_average_precision
    from hpa_kernel.training.pseudo import predict_cells

    torch.set_num_threads(1)
    train = make_toy_cells(tmp_path / "train", n_images=16, cells_per_image=4, size=64, seed=1)
    test = make_toy_cells(tmp_path / "test", n_images=8, cells_per_image=4, size=64, seed=2, p_show=1.0)
    paths = train_group(quick_config(1, epochs=1, steps_per_epoch=60), train, tmp_path / "w", options=QUIET)
    table = read_cells_table(test)
    truth, _ = build_targets(table)  # p_show=1: every cell shows its image's labels
    score, _ = mean_average_precision(truth, predict_cells(paths[-1], table))
    prevalence = truth[:, truth.sum(0) > 0].mean(0).mean()  # about the mAP of a constant (frequency) score
    assert score > prevalence + 0.15, (score, prevalence)


def test_cli_pseudo_labels_validation_cells_and_finetune(toy_cells, tmp_path):
    import torch

    from hpa_kernel.cli import main

    torch.set_num_threads(1)

    tiny = ["--recipe", "kit2025", "--input-size", "32", "--batch-size", "4", "--steps-per-epoch", "1", "--device", "cpu",
            "--no-progress"]
    pseudo = tmp_path / "pseudo.csv"
    assert main(["train", "--cells", str(toy_cells), "--out", str(tmp_path / "pl"), "--make-pseudo-labels", str(pseudo),
                 "--negative-threshold", "1.0", *tiny]) == 0
    table = pd.read_csv(pseudo, keep_default_na=False)
    assert (table["pseudo_labels"] == "").all() and (table["rule"] == "negative").all()  # threshold 1 drops every label
    out = tmp_path / "w"
    assert main(["train", "--cells", str(toy_cells), "--val-cells", str(toy_cells), "--pseudo-labels", str(pseudo),
                 "--out", str(out), "--epochs", "1", *tiny]) == 0
    log = json.loads((out / "runs" / "g1" / "log.jsonl").read_text())
    assert "val_map" in log
    assert main(["train", "--cells", str(toy_cells), "--out", str(out), "--init", str(out / "g1_m0.pth"),
                 "--finetune-cells", str(toy_cells), "--finetune-size", "4", "--repeats", "2", *tiny]) == 0
    assert (out / "finetuned" / "g1_m0.pth").is_file()
    assert main(["train", "--cells", str(toy_cells), "--out", str(out), "--init", str(out / "g1_m0.pth")]) == 1


def test_predict_cells_gives_an_18_output_checkpoint_its_negative(toy_cells, monkeypatch):
    """A milimed2021 checkpoint has 18 outputs: the pseudo-labeller's rules see Negative = 1 - max (as at inference)."""
    import torch

    import hpa_kernel.classifier as classifier
    import hpa_kernel.training.loop as loop
    from hpa_kernel.training.dataset import read_cells_table
    from hpa_kernel.training.pseudo import predict_cells

    probs18 = np.array([[0.2] * 18, [0.9] + [0.1] * 17], np.float32)
    monkeypatch.setattr(classifier, "load_checkpoint", lambda *a, **k: (torch.nn.Identity(), SimpleNamespace(input_size=8)))
    monkeypatch.setattr(loop, "predict", lambda *a, **k: probs18)
    out = predict_cells("milimed.pth", read_cells_table(toy_cells).iloc[:2])
    assert out.shape == (2, 19)
    np.testing.assert_array_equal(out[:, :18], probs18)
    np.testing.assert_allclose(out[:, 18], [0.8, 0.1], rtol=1e-6)
