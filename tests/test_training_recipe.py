"""The training recipes (milimed2021, kit2025): each element of the team's training recipe against
hand-computed cases, and tiny runs of the default recipe (nothing downloads)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from hpa_kernel.training import config as C
from hpa_kernel.training.dataset import filter_cells, recipe_targets, score_to_soft, train_filter
from hpa_kernel.training.finetune import class_finetune_indices
from hpa_kernel.training.sampler import QuotaRules, QuotaSampler, SamplerShard, acceptance_of, quota_counts, quota_pools

TINY = dict(input_size=32, batch_size=4, steps_per_epoch=1, workers=0, val_fraction=0.0, amp=False, channels_last=False,
            pretrained=None)


def _table(rows):
    """A cells table as read_cells_table returns it: image_id, cell_id, label_ids."""
    return pd.DataFrame({"image_id": [r[0] for r in rows], "cell_id": [r[1] for r in rows], "label_ids": [r[2] for r in rows]})


# --- presets --------------------------------------------------------------------------------------

def test_milimed_preset_is_the_team_recipe_and_kit_preset_is_the_old_default():
    m = C.training_preset("milimed2021", 3)
    assert (m.optimizer, m.lr, m.schedule, m.t_max, m.eta_min, m.epochs, m.batch_size) == ("adam", 3e-4, "epoch_cosine", 15,
                                                                                           1e-5, 16, 32)
    assert m.num_classes == 18 and m.pretrained == "imagenet" and m.ensemble_epochs == (12, 13, 14, 15)
    assert (m.loss.name, m.loss.alpha, m.loss.gamma, m.loss.form) == ("focal", 1.0, 2.0, "pt")
    assert C.training_preset("milimed2021", 2).loss.name == "bce" and C.training_preset("milimed2021", 2).ensemble_epochs == (12, 13)
    assert C.training_preset("milimed2021", 1).ensemble_epochs == (15,)  # the manifest's 1/2/4 layout
    a = m.augment
    assert (a.resize_p, a.resize_range, a.rotate_p, a.rotate_max, a.rotate90, a.resize_last) == (0.4, (0.5, 0.75), 1.0, 90.0, False, True)
    assert C.training_preset("milimed2021", 2).augment.pad_p == 0.3 and a.pad_max * 512 == 200 and a.pad_p == 0.0
    assert m.sampler.kind == "quota" and m.train_filter and m.pseudo_negative == 0.01
    k = C.training_preset("kit2025", 2)
    assert (k.optimizer, k.lr, k.num_classes, k.pretrained, k.sampler.kind, k.augment.rotate_max, k.pseudo_negative) == (
        "adamw", 1e-3, 19, None, "weighted", 180.0, None)
    assert C.group_config(2) == k  # the kit's getter keeps its old meaning
    assert C.DEFAULT_RECIPE == "milimed2021"
    with pytest.raises(ValueError, match="unknown training recipe 'x'"):
        C.training_preset("x")


def test_changing_the_epochs_moves_the_ensemble_and_the_cosine_with_them():
    cfg = C.training_preset("milimed2021", 3, epochs=6)
    assert cfg.ensemble_epochs == (2, 3, 4, 5) and cfg.t_max == 5
    assert C.training_preset("milimed2021", 3, epochs=6, ensemble_epochs=(1,)).ensemble_epochs == (1,)
    with pytest.raises(ValueError, match="ensemble_epochs"):
        C.training_preset("milimed2021", 3, ensemble_epochs=(16,))
    again = C.TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg  # JSON turns the int keys of quotas and maps into strings; they come back


def test_finetune_presets():
    m = C.finetune_preset("milimed2021")
    assert (m.lr, m.batch_size, m.constant_lr, m.class_fraction, m.class_multiply) == (3e-5, 16, True, {17: 0.25}, {11: 4})
    assert m.class_repeats == {0: 0, 1: 2, 2: 3, 3: 2, 4: 5, 5: 5, 6: 4, 7: 7, 8: 2, 9: 2, 10: 3, 11: 0, 12: 5, 13: 0, 14: 0,
                               15: 4, 16: 0, 17: 7, 18: 0}
    assert C.finetune_preset("kit2025") == C.FinetuneConfig() and C.FinetuneConfig().lr == 2e-4


def test_team_augmentation_order_rotates_nearest_on_the_padded_canvas_then_resizes():
    from hpa_kernel.training.augment import Augmenter

    crop = np.zeros((64, 64, 4), np.uint8)
    crop[8:56, 8:56] = 200
    team = C.training_preset("milimed2021", 2).augment
    rng = np.random.default_rng(0)
    seen_pad = False
    for _ in range(20):
        out = Augmenter(dataclasses.replace(team, pad_p=1.0))(crop, rng)
        assert out.shape == crop.shape and out.dtype == np.uint8
        seen_pad |= (out > 0).sum() < 0.8 * (crop > 0).sum()  # padding each side by 0..200/512 of S shrinks the cell
    assert seen_pad
    same_size = dataclasses.replace(team, resize_p=0.0, pad_p=0.0)  # no final resize: the rotation alone
    for seed in range(5):
        out = Augmenter(same_size)(crop, np.random.default_rng(seed))
        assert set(np.unique(out).tolist()) <= {0, 200}  # nearest neighbour: no blended values
    bilinear = Augmenter(dataclasses.replace(same_size, rotate_nearest=False))(crop, np.random.default_rng(1))
    assert len(np.unique(bilinear)) > 2


# --- the cosine -----------------------------------------------------------------------------------

def test_epoch_cosine_values_by_hand_and_against_torch():
    import torch

    # eta_min + (lr - eta_min) * (1 + cos(pi * e / 15)) / 2 with lr 3e-4, eta_min 1e-5
    assert C.epoch_cosine_lr(0, 3e-4, 15, 1e-5) == pytest.approx(3e-4)
    assert C.epoch_cosine_lr(5, 3e-4, 15, 1e-5) == pytest.approx(1e-5 + 2.9e-4 * 0.75)  # cos(pi/3) = 0.5
    assert C.epoch_cosine_lr(15, 3e-4, 15, 1e-5) == pytest.approx(1e-5)
    assert C.epoch_cosine_lr(10, 3e-4, 15, 1e-5) == pytest.approx(1e-5 + 2.9e-4 * 0.25)  # cos(2 pi/3) = -0.5

    from hpa_kernel.training.loop import _optimizer_and_schedule

    cfg = C.training_preset("milimed2021", 2, pretrained=None)
    model = torch.nn.Linear(2, 2)
    opt, sched = _optimizer_and_schedule(cfg, model, steps=3)  # stepped per optimizer step, 3 steps an epoch
    assert isinstance(opt, torch.optim.Adam) and not isinstance(opt, torch.optim.AdamW)
    ref_opt = torch.optim.Adam(torch.nn.Linear(2, 2).parameters(), lr=3e-4)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=15, eta_min=1e-5)
    for epoch in range(16):
        lrs = []
        for _ in range(3):
            lrs.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        assert lrs == pytest.approx([ref.get_last_lr()[0]] * 3, rel=1e-9), epoch  # constant within the epoch
        ref_opt.step()
        ref.step()


# --- losses ---------------------------------------------------------------------------------------

def test_team_focal_loss_on_a_soft_target_by_hand():
    import torch

    from hpa_kernel.training.losses import create_loss, focal_loss

    p, t = 0.8, 0.3
    bce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    want = (1 - math.exp(-bce)) ** 2 * bce  # alpha 1, gamma 2, pt = exp(-BCE)
    logits = torch.tensor([[math.log(p / (1 - p))]])
    loss = create_loss(C.training_preset("milimed2021", 3).loss)
    assert loss(logits, torch.tensor([[t]])).item() == pytest.approx(want, rel=1e-5)
    assert want == pytest.approx(0.5796, abs=1e-4)
    assert focal_loss(logits, torch.tensor([[t]])).item() == pytest.approx(0.7237, abs=1e-3)  # the kit's form differs
    bce_fn = create_loss(C.training_preset("milimed2021", 2).loss)
    assert bce_fn(logits, torch.tensor([[t]])).item() == pytest.approx(bce, rel=1e-5)


# --- the quota sampler ----------------------------------------------------------------------------

def _sampler_case():
    """6 cells: 0-2 class 0 (cell 2 also has 1, 2, 3), 3 class 1 scored 0.95, 4 class 11, 5 Negative only."""
    labels = np.zeros((6, 19), bool)
    labels[0:3, 0] = True
    labels[2, [1, 2, 3]] = True
    labels[3, 1] = True
    labels[4, 11] = True
    labels[5, 18] = True
    targets = labels.astype(np.float32)
    targets[3, 1] = 0.95
    manual = np.zeros_like(labels)
    manual[3, 1] = True
    return labels, targets, manual


def test_quota_pools_duplicates_spindle_repeats_and_negatives():
    labels, targets, manual = _sampler_case()
    pools = quota_pools(labels, targets, manual, {0: 1, 1: 1, 11: 1, 5: 1, -1: 1}, trained=18)
    assert sorted(pools[0].tolist()) == [0, 1, 2]
    assert sorted(pools[1].tolist()) == [2, 3, 3]  # cell 3's manual 0.95 >= 0.9: twice
    assert pools[11].tolist() == [4] * 41
    assert pools[-1].tolist() == [5] and 5 not in pools  # no cell of class 5: no pool
    targets[4, 11] = 1.0
    manual[4, 11] = True
    assert len(quota_pools(labels, targets, manual, {11: 1}, 18)[11]) == 3 * 41  # >= 0.99: three times as often


def test_class_12_pool_is_extended_by_the_team_passes():
    labels = np.zeros((4, 19), bool)
    labels[:, 12] = True
    targets = np.array([1.0, 0.95, 0.75, 1.0], np.float32)[:, None] * labels
    manual = labels.copy()
    manual[3] = False  # an unscored image-level positive
    passes = C.training_preset("milimed2021", 1).sampler.extra_passes
    assert passes == {12: (0.7, 0.9, 0.9)}
    pool = quota_pools(labels, targets, manual, {12: 1}, 18, QuotaRules(extra_passes=passes))[12]
    # >= 0.9: 2 (duplicate) x2 (>= 0.7) x2 x2 (>= 0.9 twice) = 16; in [0.7, 0.9): 1 x2 = 2; unscored: 1
    assert np.bincount(pool).tolist() == [16, 16, 2, 1]


def test_quota_counts_scale_the_team_quotas_to_the_epoch():
    counts = quota_counts(C.MILIMED_QUOTAS, list(C.MILIMED_QUOTAS), 316_666)
    assert counts[0] == 40_000 and counts[1] == 10_000 and counts[11] == 6_666 and counts[-1] == 20_000
    assert sum(C.MILIMED_QUOTAS.values()) == 316_666
    small = quota_counts(C.MILIMED_QUOTAS, [0, 1, 11, -1], 100)  # the others have no cells: their share is spread
    assert sum(small.values()) == 100 and small == {0: 52, 1: 13, 11: 9, -1: 26}  # 40:10:6.666:20 of 76.666


def test_quota_sampler_fills_the_quotas_and_accepts_by_label_count():
    labels, targets, manual = _sampler_case()
    quotas = {0: 2.0, 1: 1.0, 11: 1.0, -1: 1.0}
    pools = quota_pools(labels, targets, manual, quotas, 18)
    acc = acceptance_of(labels)
    assert acc[2] == pytest.approx(0.5) and acc[0] == 1.0  # (1/4) ** 0.5 for the 4-label cell
    sampler = QuotaSampler(pools, quotas, acc, num_samples=20_000, no_test=(11,))
    drawn = sampler.draw()
    assert {k: len(v) for k, v in drawn.items()} == {0: 8000, 1: 4000, 11: 4000, -1: 4000}
    c0 = np.bincount(drawn[0], minlength=6)
    # class 0 pool {0, 1, 2}, acceptance 1, 1, 0.5: cell 2 comes through at half the rate of cell 0
    assert c0[2] / c0[0] == pytest.approx(0.5, abs=0.05) and c0[1] / c0[0] == pytest.approx(1.0, abs=0.05)
    c1 = np.bincount(drawn[1], minlength=6)
    # class 1 pool {2, 3, 3}: cell 3 twice with acceptance 1, cell 2 once with 0.5 -> 4:1
    assert c1[3] / c1[2] == pytest.approx(4.0, rel=0.15)
    idx = sampler.indices()
    assert len(idx) == 20_000 and np.array_equal(np.sort(idx), np.sort(np.concatenate(list(drawn.values()))))
    shards = [QuotaSampler(pools, quotas, acc, 10, SamplerShard(num_replicas=2, rank=r), no_test=(11,)).indices() for r in (0, 1)]
    assert sorted(np.concatenate(shards).tolist()) == sorted(QuotaSampler(pools, quotas, acc, 20, no_test=(11,)).indices().tolist())


# --- soft labels, pseudo-negatives, the train filter ----------------------------------------------

def test_team_score_maps_unscored_value_and_spindle_rule():
    cfg = C.training_preset("milimed2021", 1)
    assert score_to_soft(4, cfg.soft.class_maps[1]) == 0.85 and score_to_soft(2, cfg.soft.class_maps[12]) == 0.3
    assert score_to_soft(3, cfg.soft.class_maps[15]) == 0.6 and score_to_soft(3, cfg.soft.default_map) == 0.5
    assert score_to_soft(2, cfg.soft.class_maps[8]) == 0.5 and score_to_soft(4, cfg.soft.class_maps[11]) == 0.65
    table = _table([("a", 1, (1, 5)), ("a", 2, (1, 5)), ("b", 1, (8, 0)), ("c", 1, (11, 0)), ("d", 1, (12,)), ("d", 2, (12,))])
    scores = {("a", 1): {1: 4.0}, ("c", 1): {11: 3.0}, ("d", 1): {12: 3.0}}  # 11 score 3 -> 0.2: spindle only
    ts = recipe_targets(table, cfg, soft_labels=None, scores=scores)
    np.testing.assert_allclose(ts.targets[0, [1, 5]], [0.85, 1.0])
    np.testing.assert_allclose(ts.targets[1, [1, 5]], [0.69, 1.0])  # unscored positive of a scored class
    np.testing.assert_allclose(ts.targets[2, [8, 0]], [1.0, 1.0])  # class 8 is scored nowhere: stays 1
    assert ts.labels[3].nonzero()[0].tolist() == [11] and ts.targets[3, 11] == pytest.approx(0.2) and ts.targets[3, 0] == 0
    assert ts.manual[0, 1] and not ts.manual[1, 1] and ts.source.tolist() == ["manual", "image", "image", "manual", "manual", "image"]
    assert ts.targets[4, 12] == pytest.approx(0.75) and ts.targets[5, 12] == 1.0  # class 12 unscored: 1.0 (the team's sampler)
    kit = recipe_targets(table, C.training_preset("kit2025", 1), soft_labels={("a", 1): {1: 0.9}})
    np.testing.assert_allclose(kit.targets[:2, 1], [0.9, 1.0])  # the export's own soft label, no 0.69


def test_pseudo_negatives_keep_the_label_at_0_01():
    table = _table([("a", 1, (0, 5)), ("a", 2, (0, 5))])
    pseudo = {("a", 1): (0,)}  # the labeller dropped class 5 from cell 1
    m = recipe_targets(table, C.training_preset("milimed2021", 1), pseudo_labels=pseudo)
    assert m.targets[0, 5] == pytest.approx(0.01) and m.labels[0, 5] and m.targets[0, 0] == 1.0 and m.targets[1, 5] == 1.0
    k = recipe_targets(table, C.training_preset("kit2025", 1), pseudo_labels=pseudo)
    assert k.targets[0, 5] == 0.0 and not k.labels[0, 5]
    added = recipe_targets(_table([("a", 1, (0,))]), C.training_preset("milimed2021", 1), pseudo_labels={("a", 1): (0, 11)})
    assert added.targets[0, 11] == 0.0 and not added.labels[0, 11]  # milimed2021: positives of class 6 only
    broad = dataclasses.replace(C.training_preset("milimed2021", 1), labels=C.LabelRules("all"))
    added = recipe_targets(_table([("a", 1, (0,))]), broad, pseudo_labels={("a", 1): (0, 11)})
    assert added.targets[0, 11] == pytest.approx(0.99) and added.labels[0, 11]  # the kit's scope: every class


def test_train_filter_drops_penalised_cells_except_in_spindle_images(tmp_path):
    keep = train_filter(np.array([1.0, 0.99, 0.001, 0.5]), [(0,), (0,), (11, 3), (3,)])
    assert keep.tolist() == [True, False, True, False]
    rows = [dict(image_id=i, cell_id=c, crop=f"{i}_{c}.png", y0=0, x0=0, y1=1, x1=1, area=1, nucleus_cut=0.0, outlier_score=0.0,
                 valid=True, labels=lab, penalty=pen)
            for i, c, lab, pen in [("a", 1, "0", 1.0), ("a", 2, "0", 0.01), ("b", 1, "11|3", 0.01), ("b", 2, "11|3", 1.0)]]
    pd.DataFrame(rows).to_csv(tmp_path / "cells.csv", index=False)
    kept = filter_cells(tmp_path / "cells.csv", "penalty")
    assert list(zip(kept["image_id"], kept["cell_id"])) == [("a", 1), ("b", 1), ("b", 2)]


# --- fine-tuning ----------------------------------------------------------------------------------

def test_class_finetune_repeats_quarter_of_17_and_spindle_times_4():
    labels = np.zeros((12, 19), bool)
    labels[0:2, 4] = True  # class 4: cell 0 scored -> 1 + 5 copies, cell 1 once
    labels[2:10, 17] = True  # class 17: 8 cells, 2 kept; cell 2 scored -> 7 copies regardless of the cut
    labels[10, 11] = True  # class 11: x4
    labels[11, 0] = True  # class 0: repeats 0
    manual = np.zeros_like(labels)
    manual[0, 4] = manual[2, 17] = manual[11, 0] = True
    m = C.finetune_preset("milimed2021")
    idx = class_finetune_indices(labels, manual, m.class_repeats, m.class_fraction, m.class_multiply, seed=3)
    counts = np.bincount(idx, minlength=12)
    assert counts[0] == 6 and counts[1] == 1 and counts[10] == 4 and counts[11] == 1
    seventeen = counts[2:10].copy()
    seventeen[0] -= 7  # the copies of the scored cell
    assert seventeen.sum() == 2 and set(seventeen.tolist()) <= {0, 1}  # 8 // 4 base cells
    assert len(idx) == 6 + 1 + 7 + 2 + 4 + 1


def test_finetune_targets_use_the_validation_maps_and_skip_undecided_repeats():
    from hpa_kernel.training.finetune import _finetune_list

    m = C.finetune_preset("milimed2021")
    base = C.training_preset("milimed2021", 1)
    table = _table([("a", 1, (1,)), ("b", 1, (9,)), ("b", 2, (9,))])
    scores = {("a", 1): {1: 3.0}, ("b", 1): {9: 3.0}, ("b", 2): {9: 4.0}}
    ts = recipe_targets(table, dataclasses.replace(base, soft=m.soft), scores=scores)
    np.testing.assert_allclose(ts.targets[:, [1, 9]], [[0.8, 0], [0, 0.5], [0, 1.0]])  # training maps: 0.5, 0.75, 1.0
    counts = np.bincount(_finetune_list(ts, m), minlength=3)
    assert counts.tolist() == [1 + 2, 1, 1 + 2]  # class 9's 0.5 is undecided: not repeated


# --- pretrained weights from a local file ---------------------------------------------------------

@pytest.fixture(scope="module")
def imagenet_like_b0(tmp_path_factory):
    """A 3-channel timm efficientnet_b0 state_dict with random weights standing in for ImageNet's."""
    import timm
    import torch

    torch.manual_seed(5)
    model = timm.create_model("efficientnet_b0", pretrained=False)
    path = tmp_path_factory.mktemp("pre") / "b0_imagenet.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def test_pretrained_weights_come_from_the_local_file(imagenet_like_b0):
    import torch

    from hpa_kernel.classifier.model import create_classifier

    path, ref = imagenet_like_b0
    model = create_classifier("efficientnet_b0", num_classes=18, pretrained=path)
    stem = model.conv_stem.weight
    assert stem.shape == (32, 4, 3, 3)
    torch.testing.assert_close(stem[:, :3], ref["conv_stem.weight"] * 3 / 4)  # timm: repeat to 4 channels, scale 3/4
    torch.testing.assert_close(stem[:, 3], ref["conv_stem.weight"][:, 0] * 3 / 4)
    torch.testing.assert_close(model.blocks[5][0].conv_pw.weight, ref["blocks.5.0.conv_pw.weight"])  # a deep layer
    assert model.classifier.weight.shape == (18, 1280)
    random = create_classifier("efficientnet_b0", num_classes=18)
    assert not torch.equal(random.blocks[5][0].conv_pw.weight, ref["blocks.5.0.conv_pw.weight"])
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_classifier("efficientnet_b0", pretrained=path.parent / "missing.pth")


# --- tiny runs of the default recipe --------------------------------------------------------------

@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from toy_training import make_toy_cells

    return make_toy_cells(tmp_path_factory.mktemp("toy"), n_images=5, cells_per_image=3, size=48, seed=7)


def test_milimed_run_saves_every_epoch_picks_the_ensemble_epochs_and_records_the_recipe(toy, tmp_path, imagenet_like_b0):
    import torch

    from hpa_kernel.classifier import load_checkpoint
    from hpa_kernel.training import RunOptions, train_group

    torch.set_num_threads(1)
    cfg = C.training_preset("milimed2021", 2, **{**TINY, "pretrained": str(imagenet_like_b0[0])}, epochs=4, ensemble_epochs=(1, 3),
                            sampler=dataclasses.replace(C.training_preset("milimed2021", 2).sampler, epoch_size=8))
    assert cfg.steps_per_epoch == 1 and cfg.t_max == 3
    paths = train_group(cfg, toy, tmp_path, options=RunOptions(progress=False))
    assert [p.name for p in paths] == ["g2_m0.pth", "g2_m1.pth"]
    assert sorted(p.name for p in tmp_path.glob("g2_e*.pth")) == ["g2_e00.pth", "g2_e01.pth", "g2_e02.pth", "g2_e03.pth"]
    model, ck = load_checkpoint(paths[0])
    assert ck.recipe == "milimed2021" and ck.num_classes == 18 and ck.epoch == 2 and ck.extra["epoch_index"] == 1
    assert model(torch.zeros(1, 4, 32, 32)).shape == (1, 18)
    assert torch.equal(torch.load(paths[1], weights_only=True)["classifier.weight"],
                       torch.load(tmp_path / "g2_e03.pth", weights_only=True)["classifier.weight"])
    log = [json.loads(line) for line in (tmp_path / "runs" / "g2" / "log.jsonl").read_text().splitlines()]
    # the rate after epoch e is that of epoch e + 1: eta_min + (lr - eta_min) (1 + cos(pi (e + 1) / 3)) / 2
    assert [r["lr"] for r in log] == pytest.approx([C.epoch_cosine_lr(e + 1, 3e-4, 3, 1e-5) for e in range(4)])


def test_cli_default_recipe_with_a_local_weight_file_then_finetune(toy, tmp_path, imagenet_like_b0):
    import torch

    from hpa_kernel.classifier import load_checkpoint
    from hpa_kernel.cli import main

    torch.set_num_threads(1)
    out = tmp_path / "w"
    tiny = ["--input-size", "32", "--batch-size", "4", "--device", "cpu", "--no-progress"]
    assert main(["train", "--cells", str(toy), "--group", "2", "--out", str(out), "--epochs", "2", "--steps-per-epoch", "1",
                 "--pretrained", str(imagenet_like_b0[0]), "--ensemble-epochs", "1", *tiny]) == 0
    _, ck = load_checkpoint(out / "g2_m0.pth")
    assert ck.recipe == "milimed2021" and ck.loss["name"] == "bce" and ck.extra["train_config"]["pretrained"].endswith("b0_imagenet.pth")
    assert main(["train", "--cells", str(toy), "--out", str(out), "--init", str(out / "g2_m0.pth"), "--finetune-cells", str(toy),
                 *tiny]) == 0
    _, ft = load_checkpoint(out / "finetuned" / "g2_m0.pth")
    assert ft.extra["finetune"]["lr"] == 3e-5 and ft.extra["finetune"]["class_repeats"]["17"] == 7
    assert ft.extra["train_config"]["schedule"] == "constant" and ft.num_classes == 18
    assert main(["train", "--cells", str(toy), "--out", str(out), "--ensemble-epochs", "x"]) == 1
