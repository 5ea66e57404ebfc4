"""The inference recipes against hand-computed cases (the team's code, milimed2021, and kit2025)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from hpa_kernel.cells import score_cells
from hpa_kernel.cells.heuristics import flat_edge_multiplier, flat_edge_ratios, milimed_outlier_values
from hpa_kernel.confidence import cell_values, clean_cell_blend, recipe_confidence, with_negative
from hpa_kernel.manifest import ManifestError, Manifest, default_manifest
from hpa_kernel.recipe import InferenceRecipe, get_recipe

MILIMED = get_recipe("milimed2021")


def _table(n, **columns):
    """A cells table of n cells: every cleaner input neutral (v = 1) unless given."""
    base = dict(
        nucleus_blue_sum=np.ones(n), nucleus_rows=np.full(n, 20), nucleus_cols=np.full(n, 20),
        nucleus_top=np.ones(n, int), nucleus_bottom=np.ones(n, int), nucleus_left=np.ones(n, int),
        nucleus_right=np.ones(n, int), red_sum=np.full(n, 10.0), blue_sum=np.full(n, 2.0), yellow_sum=np.full(n, 2.0),
        nucleus_cut=np.zeros(n), outlier=np.zeros(n, bool), valid=np.ones(n, bool),
    )
    base.update(columns)
    return pd.DataFrame(base)


# --------------------------------------------------------------------------- presets


def test_presets_and_the_getter():
    assert get_recipe() is MILIMED and MILIMED.name == "milimed2021"
    assert (MILIMED.num_outputs, MILIMED.negative, MILIMED.border_cleaner, MILIMED.outlier_cleaner) == (
        18, "one_minus_max", "milimed", "milimed")
    assert (MILIMED.blend_cell, MILIMED.blend_image, MILIMED.blend_skip_classes, MILIMED.tta) == (0.7, 0.3, (11, 18), False)
    kit = get_recipe("kit2025")
    assert (kit.num_outputs, kit.negative, kit.border_cleaner, kit.outlier_cleaner, kit.blend_skip_classes, kit.tta) == (
        19, "learned", "ellipse", "robust_z", (), True)
    with pytest.raises(ValueError, match="unknown recipe 'nope'; expected one of milimed2021, kit2025"):
        get_recipe("nope")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_outputs": 17}, "num_outputs must be 18 or 19"),
        ({"negative": "learned"}, "needs num_outputs=19"),
        ({"border_cleaner": "circle"}, "border_cleaner must be one of"),
        ({"blend_cell": 0.6}, "sum to 1"),
        ({"blend_skip_classes": (19,)}, "blend_skip_classes"),
        ({"outlier_factor": 0.0}, "outlier_factor must be in"),
    ],
)
def test_recipe_checks_itself(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(MILIMED, **changes)


# --------------------------------------------------------------------------- border cleaner


@pytest.mark.parametrize(("r", "m"), [(0.005, 0.001), (0.2, (0.2 * 3.33) ** 0.1), (0.5, 1.0), (0.3, 0.999**0.1), (0.01, 0.001)])
def test_flat_edge_multiplier(r, m):
    assert flat_edge_multiplier(r) == pytest.approx(m, rel=1e-12)
    assert (0.2 * 3.33) ** 0.1 == pytest.approx(0.96017, abs=1e-5)


def _half_disc_image(cut_by_top: bool):
    """One nucleus of radius 8 (its cell = the nucleus); centred on row 0 when cut by the top border."""
    yy, xx = np.mgrid[0:40, 0:40]
    cy = 0 if cut_by_top else 20
    nucleus = ((yy - cy) ** 2 + (xx - 20) ** 2 <= 64).astype(np.int32)
    image = np.zeros((40, 40, 4), np.uint8)
    image[..., 0] = image[..., 3] = 100
    image[..., 2] = np.where(nucleus > 0, 200, 0)
    return image, nucleus


def test_flat_edge_ratios_of_a_nucleus_cut_by_the_top_border():
    image, nucleus = _half_disc_image(cut_by_top=True)
    table = score_cells(image, nucleus, nucleus)
    row = table.iloc[0]
    # rows 0..8; row 0 spans x = 12..28 (17 px) and is the box's first row; row 8 is the single pixel x = 20
    assert (row.nucleus_rows, row.nucleus_cols) == (9, 17)
    assert (row.nucleus_top, row.nucleus_bottom, row.nucleus_left, row.nucleus_right) == (17, 1, 1, 1)
    ud, lr = flat_edge_ratios(table)
    assert ud[0] == pytest.approx(0.0) and lr[0] == pytest.approx(8 / 9)
    border_only = dataclasses.replace(MILIMED, outlier_cleaner=None)
    assert cell_values(table, border_only)[0] == pytest.approx(0.001 * 1.0)
    assert row.nucleus_blue_sum == pytest.approx(nucleus.sum() * 200 / 255)
    whole = score_cells(*_half_disc_image(cut_by_top=False)[:1], *[_half_disc_image(False)[1]] * 2)
    assert cell_values(whole, border_only)[0] == 1.0  # a disc: first/last rows are 1 px of 17 -> ratio 16/17


def test_border_cleaner_on_real_masks(reference):
    """HPA masks of 1000_A12_2 (cells 1, 11, 15, 20, 21 touch the border): interior nuclei keep 1;
    cell 1's nucleus, cut straight along 188 px, gets the 0.001 floor of m(r)."""
    import cv2

    folder = reference / "real"
    nuclei, cells, green = (cv2.imread(str(folder / f"1000_A12_2_{name}.png"), cv2.IMREAD_UNCHANGED)
                            for name in ("nucleimask", "cellmask", "green"))
    assert nuclei is not None and cells is not None and green is not None, f"reference masks of 1000_A12_2 unreadable in {folder}"
    table = score_cells(np.stack([green] * 4, axis=-1), nuclei, cells)
    v = pd.Series(cell_values(table, dataclasses.replace(MILIMED, outlier_cleaner=None)), index=table.cell_id)
    assert v[1] == pytest.approx(0.001)
    assert (v.drop([1, 11, 15, 20, 21]) == 1.0).all()
    assert v[[11, 20]].lt(1).all()


def test_nucleus_without_blue_gets_one_hundredth():
    image, nucleus = _half_disc_image(cut_by_top=False)
    image[..., 2] = 0
    table = score_cells(image, nucleus, nucleus)
    assert cell_values(table, dataclasses.replace(MILIMED, outlier_cleaner=None))[0] == pytest.approx(0.01)


# --------------------------------------------------------------------------- outlier cleaner


def test_outlier_rule_red_and_blue_yellow():
    # red sums 10, 10, 10, 0.5 -> mean 7.625, limit 0.077 * 7.625 = 0.587: the 4th is an outlier
    # blue x yellow products 4, 4, 4, 4, 0.1 (5th) -> with candidates 1-3 and 5 only (4th has red too low
    # but is a candidate): products 4, 4, 4, 4, 0.1 -> mean over candidates
    table = _table(6, red_sum=np.array([10, 10, 10, 0.5, 10, 0.0]),
                   blue_sum=np.array([2, 2, 2, 2, 0.1, 0.0]), yellow_sum=np.array([2, 2, 2, 2, 1.0, 0.0]))
    values = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.01])  # the 6th is not a candidate (not > 0.01)
    out = milimed_outlier_values(table, values)
    # candidates 1-5: red mean = 40.5 / 5 = 8.1 -> limit 0.6237; products 4,4,4,4,0.1 -> mean 3.22 -> limit 0.161
    np.testing.assert_allclose(out, [1, 1, 1, 0.001, 0.001, 0.01])
    # the limits are strict and relative: a red sum just above 0.077 x mean is kept
    keep = _table(2, red_sum=np.array([10.0, 0.78]))  # mean 5.39 -> limit 0.41503
    np.testing.assert_allclose(milimed_outlier_values(keep, np.ones(2)), [1, 1])
    # no candidate at all: nothing changes (the team's code would divide by zero)
    np.testing.assert_allclose(milimed_outlier_values(_table(2), np.array([0.01, 0.005])), [0.01, 0.005])


def test_outlier_cleaner_sees_the_border_cleaner_values():
    # cell 0 has no blue in its nucleus (v = 0.01): it is no candidate, so its tiny red sum does not
    # lower the mean, and cell 2 (red 1 of mean 10.5 -> limit 0.8085) stays.
    table = _table(3, nucleus_blue_sum=np.array([0.0, 1.0, 1.0]), red_sum=np.array([0.0, 20.0, 1.0]))
    np.testing.assert_allclose(cell_values(table, MILIMED), [0.01, 1.0, 1.0])
    no_border = dataclasses.replace(MILIMED, border_cleaner=None)  # now cell 0 is a candidate and an outlier
    np.testing.assert_allclose(cell_values(table, no_border), [0.001, 1.0, 1.0])


# --------------------------------------------------------------------------- Negative, penalties, blend


def test_negative_is_one_minus_max_of_the_18_outputs():
    p = np.full((2, 18), 0.1)
    p[0, 3], p[1, 17] = 0.75, 0.2
    q = with_negative(p, "one_minus_max")
    assert q.shape == (2, 19)
    np.testing.assert_allclose(q[:, 18], [0.25, 0.8])
    np.testing.assert_allclose(q[:, :18], p)
    np.testing.assert_allclose(with_negative(np.hstack([p, np.full((2, 1), 0.9)]), "learned")[:, 18], [0.9, 0.9])
    np.testing.assert_allclose(with_negative(p, "none")[:, 18], [0, 0])


def test_three_cell_blend_with_one_penalised_cell():
    """v = 1, 1, 0.5; class 0 p = 0.2, 0.4, 0.9; class 11 p = 0.6 each; max over the 18 = 0.9 for cell 3."""
    p = np.full((3, 18), 0.05)
    p[:, 0] = [0.2, 0.4, 0.9]
    p[:, 11] = 0.6
    table = _table(3, outlier=np.array([False, False, True]))
    recipe = dataclasses.replace(MILIMED, border_cleaner=None, outlier_cleaner="robust_z", robust_z_factor=0.5)
    out = recipe_confidence(p, table, recipe)
    assert out.shape == (3, 19) and out.dtype == np.float32
    # class 0: 0.7 * v * p + 0.3 * mean(0.2, 0.4): the penalised cell is not in the image mean
    np.testing.assert_allclose(out[:, 0], [0.7 * 0.2 + 0.09, 0.7 * 0.4 + 0.09, 0.7 * 0.45 + 0.09], atol=1e-6)
    # class 11 is not blended: v * p
    np.testing.assert_allclose(out[:, 11], [0.6, 0.6, 0.3], atol=1e-6)
    # Negative first (1 - max of the unpenalised 18), then x v, and no blend
    np.testing.assert_allclose(out[:, 18], [0.4, 0.4, 0.1 * 0.5], atol=1e-6)
    # a class every cell has at 0.05: 0.7 * 0.05 v + 0.3 * 0.05
    np.testing.assert_allclose(out[:, 5], [0.05, 0.05, 0.7 * 0.025 + 0.015], atol=1e-6)


def test_no_blend_without_a_clean_cell_and_with_blend_off():
    pen = np.array([[0.2, 0.5], [0.4, 0.1]])
    np.testing.assert_allclose(clean_cell_blend(pen, np.array([0.5, 0.9]), 0.7, 0.3), pen)
    np.testing.assert_allclose(clean_cell_blend(pen, np.array([1.0, 0.9]), 0.7, 0.3, skip=(1,)),
                               [[0.2, 0.5], [0.7 * 0.4 + 0.3 * 0.2, 0.1]])
    p = np.array([[0.2] * 18, [0.6] * 18])
    out = recipe_confidence(p, _table(2), dataclasses.replace(MILIMED, blend=False))
    np.testing.assert_allclose(out[:, :18], p, atol=1e-6)


def test_order_of_operations_penalty_before_blend():
    # the team: blend of penalised values; the kit: penalty of the blended value. They differ for a
    # penalised cell: 0.7 * (v p) + 0.3 ctx versus (0.7 p + 0.3 ctx) v.
    p = np.array([[0.2] * 18, [0.8] * 18])
    table = _table(2, outlier=np.array([False, True]))
    team = dataclasses.replace(MILIMED, border_cleaner=None, outlier_cleaner="robust_z", robust_z_factor=0.5)
    out = recipe_confidence(p, table, team)
    assert out[1, 0] == pytest.approx(0.7 * 0.4 + 0.3 * 0.2)
    kit_order = dataclasses.replace(team, blend_context="other_valid_cells", blend_skip_classes=())
    table.loc[1, "valid"] = False
    out = recipe_confidence(p, table, kit_order)
    assert out[1, 0] == pytest.approx((0.7 * 0.8 + 0.3 * 0.2) * 0.5)


def test_kit2025_is_the_kits_earlier_behaviour(tiny_scene):
    """kit2025: (0.7 p + 0.3 mean(p over the image's *other* valid cells, own p if none)) x penalty,
    over the 19 learned outputs; the expectation is written out here (numpy), not taken from the kit."""
    image, nuclei, cells = tiny_scene
    table = score_cells(image, nuclei, cells)
    table.loc[table.index[0], "valid"] = False  # an invalid cell: left out of the others' image term
    assert table["penalty"].lt(1).any()
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, size=(len(table), 19))
    valid, penalty = table["valid"].to_numpy(bool), table["penalty"].to_numpy(float)
    expected = np.empty_like(p)
    for i in range(len(p)):
        others = valid & (np.arange(len(p)) != i)
        image_term = p[others].mean(axis=0) if others.any() else p[i]
        expected[i] = (0.7 * p[i] + 0.3 * image_term) * penalty[i]
    np.testing.assert_allclose(recipe_confidence(p, table, "kit2025"), expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"probs must have shape \(N, 18\) for recipe milimed2021"):
        recipe_confidence(p, table)


@pytest.fixture
def tiny_scene():
    from hpa_kernel.synthetic import synthesize_image

    s = synthesize_image(3, 256, 256)
    return s.image, s.nuclei_mask, s.cell_mask


# --------------------------------------------------------------------------- per-checkpoint weights


def test_manifest_checkpoint_weights():
    m = default_manifest()
    assert m.checkpoint_weights == ((1.0,), (0.5, 0.5), (0.2, 0.3, 0.3, 0.2))
    again = Manifest.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again.checkpoint_weights == m.checkpoint_weights
    assert default_manifest((2, 3), (0.5, 0.5)).checkpoint_weights == ((0.5, 0.5), (1 / 3, 1 / 3, 1 / 3))
    data = m.to_dict()
    group = data["ensemble"]["groups"][2]
    del group["checkpoints"][0]["weight"]
    with pytest.raises(ManifestError, match="group g3: either every checkpoint has a 'weight' or none has; g3_m0.pth"):
        Manifest.from_dict(data)
    group["checkpoints"][0]["weight"] = 0.3
    with pytest.raises(ManifestError, match="group g3: checkpoint weights must sum to 1"):
        Manifest.from_dict(data)
    data["segmentation"]["cell"]["weight"] = 1.0
    with pytest.raises(ManifestError, match="unknown keys"):
        Manifest.from_dict(data)


def test_ensemble_weights_checkpoints_within_a_group():
    import torch

    from hpa_kernel.classifier import CheckpointConfig, Ensemble, Member

    class Constant(torch.nn.Module):
        def __init__(self, logit):
            super().__init__()
            self.logit = logit

        def forward(self, x):
            return torch.full((x.shape[0], 18), float(self.logit))

    cfg = CheckpointConfig(arch="resnet18", input_size=32, num_classes=18)
    logits = [0.0, 1.0, 2.0, -1.0]
    group = [Member(Constant(v), cfg, f"m{k}") for k, v in enumerate(logits)]
    ens = Ensemble([group], [1.0], checkpoint_weights=[(0.2, 0.3, 0.3, 0.2)])
    sig = 1 / (1 + np.exp(-np.array(logits)))
    crops = np.zeros((2, 32, 32, 4), np.uint8)
    np.testing.assert_allclose(ens.predict(crops), np.full((2, 18), sig @ [0.2, 0.3, 0.3, 0.2]), atol=1e-6)
    # a plan with the first two: their weights rescaled to 0.4 / 0.6
    np.testing.assert_allclose(ens.predict(crops, checkpoints_per_group=(2,)), np.full((2, 18), 0.4 * sig[0] + 0.6 * sig[1]), atol=1e-6)
    with pytest.raises(ValueError, match="checkpoint weights must be 4 numbers"):
        Ensemble([group], [1.0], checkpoint_weights=[(0.5, 0.5)])


def test_ensemble_refuses_a_checkpoint_that_does_not_fit_the_recipe(tmp_path):
    from hpa_kernel.classifier import CheckpointConfig, Ensemble

    path = tmp_path / "g1_m0.pth"
    path.write_bytes(b"never read: the config is checked first")
    (tmp_path / "g1_m0.json").write_text(json.dumps(CheckpointConfig(arch="resnet18", input_size=32).to_dict()))
    with pytest.raises(ValueError, match=r'g1_m0.pth has 19 outputs, but recipe milimed2021 expects 18; set recipe = "kit2025"'):
        Ensemble.from_checkpoints([[path]], [1.0])
    (tmp_path / "g1_m0.json").write_text(json.dumps(CheckpointConfig(arch="resnet18", input_size=32, num_classes=18).to_dict()))
    with pytest.raises(ValueError, match=r'has 18 outputs, but recipe kit2025 expects 19; set recipe = "milimed2021"'):
        Ensemble.from_checkpoints([[path]], [1.0], recipe="kit2025")


def test_checkpoint_config_records_the_recipe():
    from hpa_kernel.classifier import CheckpointConfig

    cfg = CheckpointConfig(num_classes=18, recipe="milimed2021")
    assert CheckpointConfig.from_dict(cfg.to_dict()).recipe == "milimed2021"
    assert CheckpointConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "recipe"}).recipe is None
    with pytest.raises(ValueError, match="recipe must be"):
        CheckpointConfig(recipe="")


def test_submit_config_recipe_and_overrides():
    from hpa_kernel.submission import SubmitConfig

    config = SubmitConfig(out="s.csv")
    assert config.recipe == "milimed2021" and config.inference_recipe.tta is False
    kit = SubmitConfig(out="s.csv", recipe="kit2025", tta=False, cell_weight=0.6, image_weight=0.4).inference_recipe
    assert (kit.name, kit.tta, kit.blend_cell, kit.blend_image, kit.num_outputs) == ("kit2025", False, 0.6, 0.4, 19)
    with pytest.raises(ValueError, match="unknown recipe 'x'"):
        SubmitConfig(out="s.csv", recipe="x")
    assert isinstance(config.inference_recipe, InferenceRecipe)
