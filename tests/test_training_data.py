"""Training inputs: configs, cells table and targets, sampler, augmentations, losses, metric, rules."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from hpa_kernel.classes import NUM_CLASSES
from hpa_kernel.training import config as C
from hpa_kernel.training.augment import Augmenter, random_pad, random_resize, rotate
from hpa_kernel.training.dataset import CellDataset, build_targets, read_cells_table, read_crop, read_pseudo_labels
from hpa_kernel.training.finetune import finetune_indices
from hpa_kernel.training.losses import bce_loss, create_loss, focal_loss
from hpa_kernel.training.metrics import classification_average_precision, mean_average_precision
from hpa_kernel.training.pseudo import apply_pseudo_rules
from hpa_kernel.training.sampler import SemiBalancedSampler, ShuffledSampler, class_weights, sample_weights
from toy_training import make_toy_cells


@pytest.fixture(scope="module")
def toy_cells(tmp_path_factory):
    return make_toy_cells(tmp_path_factory.mktemp("toy"), n_images=4, cells_per_image=3, size=48, seed=3)


# -- configs -------------------------------------------------------------------------------------

def test_groups_follow_the_recipe():
    g1, g2, g3 = (C.group_config(g) for g in (1, 2, 3))
    assert (g1.n_checkpoints, g2.n_checkpoints, g3.n_checkpoints) == (1, 2, 4)
    assert (g1.loss.name, g2.loss.name, g3.loss.name) == ("focal", "focal", "bce")
    assert (g1.augment.resize_p, g2.augment.resize_p, g3.augment.resize_p) == (0.0, 0.4, 0.3)
    assert (g1.augment.pad_p, g2.augment.pad_p, g3.augment.pad_p) == (0.0, 0.0, 0.3)
    assert all(g.augment.flip and g.augment.rotate90 and g.augment.rotate_p > 0 for g in (g1, g2, g3))
    assert C.quick_config(3).n_checkpoints == 4 and C.quick_config(3).input_size == 64


@pytest.mark.parametrize("field, value", [("group", 4), ("input_size", 48), ("epochs", 0), ("lr", 0.0), ("n_checkpoints", 0),
                                          ("snapshot_fraction", 0.0), ("val_fraction", 1.0), ("std", (1, 1, 0, 1))])
def test_train_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(C.group_config(1), **{field: value})


def test_sub_configs_validate():
    with pytest.raises(ValueError, match="resize_p"):
        C.AugmentConfig(resize_p=1.5)
    with pytest.raises(ValueError, match="loss name"):
        C.LossConfig("mse")
    with pytest.raises(ValueError, match="alpha"):
        C.SamplerConfig(alpha=2)
    with pytest.raises(ValueError, match="negative_threshold"):
        C.PseudoLabelConfig(negative_threshold=-0.1)


def test_train_config_round_trips_through_dict():
    cfg = C.group_config(3, input_size=64)
    again = C.TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(ValueError, match="unknown"):
        C.TrainConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_snapshot_schedule():
    assert C.snapshot_steps(1000, 1, 0.3) == [1000]
    steps = C.snapshot_steps(1000, 4, 0.3)
    assert steps == [775, 850, 925, 1000]
    assert np.all(np.diff(steps) == 75) and steps[0] >= 700  # evenly spaced in the last 30 %


# -- table, crops and targets --------------------------------------------------------------------

def test_cells_table_keeps_valid_cells_and_reads_crops(toy_cells):
    table = read_cells_table(toy_cells)
    assert len(table) == 4 * 3 and table["valid"].all()
    assert len(read_cells_table(toy_cells, valid_only=False)) == 4 * 4
    crop = read_crop(table["crop_path"][0])
    assert crop.shape == (48, 48, 4) and crop.dtype == np.uint8
    assert crop[..., 2].max() > 150  # the nucleus is in the blue plane: planes are R, G, B, Y


def test_cells_table_errors(tmp_path, toy_cells):
    with pytest.raises(FileNotFoundError, match="cells table"):
        read_cells_table(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,cell_id\na,1\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_cells_table(bad)
    bad.write_text("")
    with pytest.raises(ValueError, match="bad.csv is empty"):
        read_cells_table(bad)


def test_targets_image_pseudo_and_soft(toy_cells, tmp_path):
    table = read_cells_table(toy_cells)
    first = (table["image_id"][0], int(table["cell_id"][0]))
    second = (table["image_id"][1], int(table["cell_id"][1]))
    y, src = build_targets(table)
    assert y.shape == (len(table), NUM_CLASSES)
    assert set(np.flatnonzero(y[0])) == set(table["label_ids"][0]) and (src == "image").all()
    pseudo_csv = tmp_path / "pseudo.csv"
    pseudo_csv.write_text(f"image_id,cell_id,pseudo_labels\n{first[0]},{first[1]},11\n{second[0]},{second[1]},\n")
    pseudo = read_pseudo_labels(pseudo_csv)
    soft = {first: {11: 0.2, 3: 0.7}}
    y, src = build_targets(table, soft_labels=soft, pseudo_labels=pseudo)
    assert src[0] == "manual" and src[1] == "pseudo" and src[2] == "image"
    assert y[0, 11] == pytest.approx(0.2) and y[0, 3] == pytest.approx(0.7) and y[0].sum() == pytest.approx(0.9)
    assert y[1].sum() == 0  # pseudo-labelling removed every label


def test_soft_labels_from_the_export_file(toy_cells, tmp_path):
    from hpa_kernel.training.dataset import read_soft_labels

    table = read_cells_table(toy_cells)
    image_id, cell_id = table["image_id"][0], int(table["cell_id"][0])
    path = tmp_path / "soft.csv"
    path.write_text(f"image_id,cell_id,class_id,soft_label,score,n_labellers\n{image_id},{cell_id},16,0.9,4.0,1\n")
    y, src = build_targets(table, soft_labels=read_soft_labels(path))
    assert y[0, 16] == pytest.approx(0.9) and src[0] == "manual"


def test_dataset_items(toy_cells):
    table = read_cells_table(toy_cells)
    y, _ = build_targets(table)
    ds = CellDataset(table["crop_path"], y, 32, Augmenter(C.group_config(3).augment), cache=True)
    x, t = ds[2]
    assert tuple(x.shape) == (4, 32, 32) and str(x.dtype) == "torch.uint8"
    assert t.numpy().tolist() == y[2].tolist()
    with pytest.raises(ValueError, match="differ in length"):
        CellDataset(table["crop_path"], y[:2], 32)


def test_16_bit_crops_are_augmented_in_float(tmp_path):
    """The team's torchvision transforms ran on float tensors: a resize of a uint16 crop is not rounded to 1/65535."""
    import torch
    from hpa_kernel._cv2 import cv2
    from hpa_kernel.cells.builder import write_crop

    crop = np.random.default_rng(5).integers(0, 65536, (32, 32, 4), dtype=np.uint16)
    write_crop(tmp_path / "c.png", crop)
    resize = C.AugmentConfig(flip=False, rotate90=False, rotate_p=0.0, resize_p=1.0, resize_range=(0.5, 0.5), pad_p=0.0)
    torch.manual_seed(0)
    x, _ = CellDataset([tmp_path / "c.png"], np.zeros((1, NUM_CLASSES), np.float32), 32, Augmenter(resize))[0]
    # by hand: x / 65535 in float32, INTER_AREA down to 16, INTER_LINEAR back to 32 (RandomResizer)
    f = crop.astype(np.float32) / np.float32(65535.0)
    want = cv2.resize(cv2.resize(f, (16, 16), interpolation=cv2.INTER_AREA), (32, 32), interpolation=cv2.INTER_LINEAR)
    got = x.numpy().transpose(1, 2, 0)
    assert x.dtype == torch.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    steps = got * 65535.0
    assert np.abs(steps - np.round(steps)).max() > 0.1  # not multiples of 1/65535


# -- sampler ------------------------------------------------------------------------------------

def _imbalanced_targets(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    freq = np.array([0.6, 0.3, 0.08, 0.02])
    y = np.zeros((n, 4))
    y[np.arange(n), rng.choice(4, size=n, p=freq)] = 1
    multi = rng.random(n) < 0.2  # some cells with a second, frequent label
    y[multi, 0] = 1
    return y


def _class_share(y, idx):
    counts = y[idx].sum(axis=0)
    return counts / counts.sum()


def test_sampler_moves_towards_balance():
    y = _imbalanced_targets()
    uniform = np.random.default_rng(1).integers(0, len(y), size=20000)
    balanced = SemiBalancedSampler(sample_weights(y, alpha=1.0, label_power=0.5), 20000, seed=1).indices()
    u, b = _class_share(y, uniform), _class_share(y, balanced)
    entropy = lambda p: float(-(p * np.log(p)).sum())  # noqa: E731
    assert entropy(b) > entropy(u) + 0.2
    assert b.min() / b.max() > 3 * (u.min() / u.max())
    half = SemiBalancedSampler(sample_weights(y, alpha=0.5), 20000, seed=1).indices()
    assert entropy(u) < entropy(_class_share(y, half)) < entropy(b)  # alpha interpolates


def test_sampler_label_power_and_hardness():
    y = np.array([[1, 0, 0], [1, 1, 1], [0, 1, 0], [0, 0, 1]], float)
    w0 = sample_weights(y, alpha=0.0, label_power=0.0)
    w1 = sample_weights(y, alpha=0.0, label_power=1.0)
    assert w0[1] == pytest.approx(w0[0]) and w1[1] == pytest.approx(w1[0] / 3)
    assert w1[1] < w1[0]  # a cell with three labels is used less
    recall = np.array([1.0, 1.0, 0.0])
    cw = class_weights(y, alpha=0.0, hardness=1.0, recall=recall)
    assert cw.tolist() == [1.0, 1.0, 2.0]
    wh = sample_weights(y, alpha=0.0, label_power=0.0, hardness=1.0, recall=recall)
    assert wh[3] == pytest.approx(2 * wh[0])


def test_sampler_shards_are_disjoint_slices_of_one_draw():
    w = sample_weights(_imbalanced_targets(200))
    full = SemiBalancedSampler(w, 100, num_replicas=1, seed=5)
    shards = [SemiBalancedSampler(w, 50, num_replicas=2, rank=r, seed=5) for r in (0, 1)]
    full.set_epoch(3)
    for s in shards:
        s.set_epoch(3)
    a, b = shards[0].indices(), shards[1].indices()
    merged = np.empty(100, dtype=int)
    merged[0::2], merged[1::2] = a, b
    assert np.array_equal(merged, full.indices()) and len(a) == len(b) == 50 == len(shards[0])
    shards[0].set_epoch(4)
    assert not np.array_equal(shards[0].indices(), a)  # a new draw each epoch
    with pytest.raises(ValueError, match="rank"):
        SemiBalancedSampler(w, 10, num_replicas=2, rank=2)


def test_shuffled_sampler_covers_its_list():
    s0, s1 = ShuffledSampler([0, 0, 1, 2, 3], 2, 0, seed=1), ShuffledSampler([0, 0, 1, 2, 3], 2, 1, seed=1)
    both = sorted(s0.indices().tolist() + s1.indices().tolist())
    assert len(both) == 6 and sorted(set(both)) == [0, 1, 2, 3] and both.count(0) >= 2


# -- augmentations ------------------------------------------------------------------------------

def test_augmenter_keeps_shape_and_dtype_and_varies():
    crop = np.zeros((64, 64, 4), np.uint8)
    crop[10:30, 20:50] = (200, 100, 50, 25)
    aug = Augmenter(C.group_config(3).augment)
    rng = np.random.default_rng(0)
    outs = [aug(crop, rng) for _ in range(8)]
    assert all(o.shape == crop.shape and o.dtype == np.uint8 for o in outs)
    assert len({o.tobytes() for o in outs}) > 4
    # channels stay tied together: every output pixel keeps the R:G ratio of the square
    for o in outs:
        on = o[..., 0] > 150
        assert np.allclose(o[on, 1].astype(float) / o[on, 0], 0.5, atol=0.05)
    with pytest.raises(ValueError, match="shape"):
        aug(np.zeros((64, 32, 4), np.uint8), rng)


def test_rotation_flip_identities():
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 255, (16, 16, 4), dtype=np.uint8)
    assert np.array_equal(rotate(crop, 90), np.rot90(crop))
    assert np.array_equal(rotate(crop, 0), crop)
    off = Augmenter(C.AugmentConfig(flip=False, rotate90=False, rotate_p=0.0))
    assert np.array_equal(off(crop, rng), crop)


def test_resizer_blurs_and_pad_shrinks():
    rng = np.random.default_rng(0)
    crop = np.zeros((64, 64, 4), np.uint8)
    crop[::2] = 255  # stripes: a resize to half the size and back blurs them
    blurred = random_resize(crop, rng, (0.5, 0.5))
    assert blurred.shape == crop.shape and blurred.std() < crop.std() * 0.5
    full = np.full((64, 64, 4), 255, np.uint8)
    padded = random_pad(full, np.random.default_rng(1), pad_max=0.5)
    assert padded.shape == full.shape and (padded == 0).any() and padded.mean() < 255


# -- losses ------------------------------------------------------------------------------------

def test_losses_hand_computed():
    import torch

    x = torch.tensor([[0.0, 2.0]])
    t = torch.tensor([[1.0, 0.0]])
    p = 1 / (1 + math.exp(-2))
    bce = (math.log(2) + -math.log(1 - p)) / 2
    assert bce_loss(x, t).item() == pytest.approx(bce, rel=1e-6)
    focal = (0.25 * math.log(2) + p**2 * -math.log(1 - p)) / 2
    assert focal_loss(x, t, gamma=2).item() == pytest.approx(focal, rel=1e-6)
    focal_a = (0.25 * 0.25 * math.log(2) + 0.75 * p**2 * -math.log(1 - p)) / 2
    assert focal_loss(x, t, gamma=2, alpha=0.25).item() == pytest.approx(focal_a, rel=1e-6)
    assert focal_loss(x, t, gamma=0).item() == pytest.approx(bce, rel=1e-6)


def test_losses_soft_targets():
    import torch

    x = torch.tensor([[1.0]])
    p = 1 / (1 + math.exp(-1))
    t = 0.7
    expected_bce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    assert bce_loss(x, torch.tensor([[t]])).item() == pytest.approx(expected_bce, rel=1e-6)
    expected_focal = -(t * (1 - p) ** 2 * math.log(p) + (1 - t) * p**2 * math.log(1 - p))
    assert create_loss(C.LossConfig("focal", gamma=2))(x, torch.tensor([[t]])).item() == pytest.approx(expected_focal, rel=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        bce_loss(torch.zeros(2, 3), torch.zeros(2, 2))


# -- metric, pseudo rules, fine-tuning list ------------------------------------------------------

def test_average_precision_by_hand():
    assert classification_average_precision(np.array([0, 1, 1]), np.array([0.9, 0.8, 0.7])) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert math.isnan(classification_average_precision(np.zeros(3), np.ones(3)))
    m, per = mean_average_precision(np.eye(3), np.eye(3) * 0.9)
    assert m == 1.0 and per.tolist() == [1.0, 1.0, 1.0]


def test_pseudo_rules():
    p = np.full((3, NUM_CLASSES), 0.5)
    p[0, 5] = 0.29  # below the negative threshold: dropped
    p[1, 11] = 0.95  # spindle in an image without it: added, Negative removed
    p[2, 11] = 0.95  # image already has spindle: positive rule does not apply
    rows = apply_pseudo_rules([(0, 5), (18,), (0, 11)], p, negative_threshold=0.3, positive_threshold=0.9)
    assert rows[0] == {"pseudo_labels": (0,), "dropped": (5,), "added": (), "rule": "negative"}
    assert rows[1]["pseudo_labels"] == (11,) and rows[1]["added"] == (11,) and rows[1]["rule"] == "positive"
    assert rows[2] == {"pseudo_labels": (0, 11), "dropped": (), "added": (), "rule": ""}
    with pytest.raises(ValueError, match="probs"):
        apply_pseudo_rules([(0,)], np.zeros((2, NUM_CLASSES)))


def test_finetune_indices():
    manual = np.array([True, True] + [False] * 10)
    idx = finetune_indices(manual, epoch_size=1000, repeats=5)
    assert np.bincount(idx, minlength=12).tolist() == [5, 5] + [1] * 10
    small = finetune_indices(manual, epoch_size=12, repeats=5)
    assert len(small) == 12 and np.bincount(small, minlength=12)[:2].tolist() == [5, 5]


def test_validation_split_holds_out_whole_images_and_keeps_one_for_training():
    import pandas as pd

    from hpa_kernel.training.loop import _split_by_image

    table = pd.DataFrame({"image_id": ["a", "a", "b", "c", "c"]})
    train, val = _split_by_image(table, 0.3, seed=0)
    assert len(val) and set(table["image_id"][train]).isdisjoint(table["image_id"][val])
    assert sorted(train.tolist() + val.tolist()) == list(range(5))
    # A fraction that rounds to every image still leaves one image to train on.
    train, val = _split_by_image(table.iloc[:3], 0.9, seed=0)
    assert len(train) and len(val) and set(table["image_id"][train]).isdisjoint(table["image_id"][val])
    assert _split_by_image(table.iloc[:2], 0.9, seed=0)[1].size == 0  # a single image: no validation


def test_augmentation_figure_has_one_row_per_crop_and_group(toy_cells, tmp_path):
    import cv2

    from hpa_kernel.training.augment import write_augmentation_figure

    path = write_augmentation_figure(toy_cells, tmp_path / "fig" / "aug.png", n_crops=2, size=40, n=3)
    grid = cv2.imread(str(path))
    margin = 4
    assert grid.shape == (2 * 3 * (40 + margin) + margin, (3 + 1) * (40 + margin) + margin, 3)
    tile = grid[margin:margin + 40, margin + 44:margin + 84]  # first augmented draw of the first crop
    assert tile.max() > 0


def test_an_unreadable_valid_flag_is_an_error_naming_the_file(tmp_path):
    from hpa_kernel.cells.builder import CSV_COLUMNS, parse_flag
    from hpa_kernel.training.dataset import read_cells_table

    assert [parse_flag(v) for v in ("True", "false", "1", "0", True, "")] == [True, False, True, False, True, False]
    path = tmp_path / "cells.csv"
    row = {"image_id": "a", "cell_id": 1, "crop": "crops/a_1.png", "y0": 0, "x0": 0, "y1": 4, "x1": 4, "area": 16,
           "nucleus_cut": 0.0, "outlier_score": 0.0, "valid": "maybe", "labels": "0"}
    path.write_text(",".join(CSV_COLUMNS) + "\n" + ",".join(str(row[c]) for c in CSV_COLUMNS) + "\n")
    with pytest.raises(ValueError, match=r"cells\.csv: column valid.*'maybe'"):
        read_cells_table(path)
