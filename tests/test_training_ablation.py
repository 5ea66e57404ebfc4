"""The training ablation: each variant switches exactly one team element back to the kit's choice."""

from __future__ import annotations

import dataclasses

import pytest

from hpa_kernel.training.ablation import TrainingAblationConfig, TrainingAblationResult, training_ablation_variants


def _flat(config) -> dict:
    """Every field of a TrainConfig, nested configs as 'outer.inner'."""
    out = {}
    for name, value in dataclasses.asdict(config).items():
        if isinstance(value, dict) and name in ("augment", "loss", "sampler", "soft", "labels"):
            out.update({f"{name}.{k}": v for k, v in value.items()})
        else:
            out[name] = value
    return out


# The kit's choice of each element, written from the kit2025 preset's documented values.
EXPECTED = {
    "kit train filter": {"filter_column": ("train_value", "penalty")},
    "kit training crops": {"train_crop": ("milimed2021", "kit2025")},
    "kit network (adapted stem, timm BN, no drop path)": {
        "stem": ("random", "adapt"), "batchnorm": ("efficientnet_pytorch", "timm"), "drop_path_rate": (0.2, 0.0),
    },
    "loss on logits": {"loss.on": ("probabilities", "logits")},
    "epoch = number of cells": {"sampler.epoch_size": (316_666, None)},
    "kit pseudo-label scope (every class)": {"labels.pseudo_scope": ("milimed2021", "all")},
    "no class-6 antibody rule": {"labels.antibody_class": (6, None)},
    "duplicates from manual scores only": {"sampler.duplicate_source": ("any", "manual")},
}


@pytest.mark.parametrize("group", [1, 2, 3])
def test_each_variant_switches_exactly_its_fields(group):
    variants = training_ablation_variants("milimed2021", group, input_size=64, epochs=2)
    assert list(variants) == ["recipe", *EXPECTED]
    base = _flat(variants["recipe"])
    assert base["input_size"] == 64 and base["epochs"] == 2  # the overrides reach every variant
    for name, fields in EXPECTED.items():
        flat = _flat(variants[name])
        differs = {k: (base[k], flat[k]) for k in base if flat[k] != base[k]}
        assert differs == fields, name


def test_the_kit_recipe_has_nothing_to_switch_back():
    assert list(training_ablation_variants("kit2025", 1)) == ["recipe"]


def test_config_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="seeds"):
        TrainingAblationConfig(tmp_path, tmp_path, tmp_path, seeds=())
    with pytest.raises(ValueError, match="seed"):
        TrainingAblationConfig(tmp_path, tmp_path, tmp_path, overrides={"seed": 3})
    with pytest.raises(ValueError, match="group"):
        TrainingAblationConfig(tmp_path, tmp_path, tmp_path, group=4)


def test_markdown_reports_the_change_against_the_first_row():
    result = TrainingAblationResult([("recipe", {"box": 0.5, "mask": 0.25}, 10.0),
                                     ("loss on logits", {"box": 0.375, "mask": 0.5}, 12.4)], 2, 9)
    lines = result.markdown().splitlines()
    assert lines[2] == "| recipe | 0.5000 |  | 0.2500 |  | 10 |"
    assert lines[3] == "| loss on logits | 0.3750 | -0.1250 | 0.5000 | +0.2500 | 12 |"


@pytest.mark.slow  # 43 s to 3 min on the shared 2-core machine (seven B0 builds and a cells run)
def test_training_mode_smoke(tmp_path):
    """Every variant trains one step on a two-image competition and is scored in both IoU modes."""
    from hpa_kernel.demo import build_training_cells
    from hpa_kernel.synthetic import make_competition
    from hpa_kernel.training.ablation import run_training_ablation

    comp = make_competition(tmp_path / "data", n_train=2, n_test=1, size=256, seed=7)
    cells = build_training_cells(comp, tmp_path / "cells", crop_size=32, workers=0)
    sizes = dict(input_size=32, batch_size=2, epochs=1, steps_per_epoch=1, pretrained=None, val_fraction=0.0,
                 amp=False, channels_last=False, workers=0)
    config = TrainingAblationConfig(cells, comp.root, tmp_path / "out", overrides=sizes, seeds=(0, 1))
    result = run_training_ablation(config)
    names = [row[0] for row in result.rows]
    assert names == ["the recipe (milimed2021, seed 0)", "the recipe (milimed2021, seed 1)", *EXPECTED]
    for _, scores, _ in result.rows:
        assert set(scores) == {"box", "mask"} and all(0.0 <= s <= 1.0 for s in scores.values())
    assert (tmp_path / "out" / "training_ablation.md").read_text().count("\n") == 2 + len(names)
    assert sorted(p.name for p in (tmp_path / "out").glob("variant*.csv")) == [f"variant{k}.csv" for k in range(len(names))]


def test_cli_ablate_train_cells_runs_the_training_ablation(tmp_path, monkeypatch, capsys):
    from hpa_kernel import cli
    from hpa_kernel.training import ablation

    seen = []

    def fake(config):
        seen.append(config)
        return TrainingAblationResult([("recipe", {"box": 0.5, "mask": 0.25}, 1.0)], 1, 3)

    monkeypatch.setattr(ablation, "run_training_ablation", fake)
    args = ["ablate", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--train-cells", str(tmp_path / "c.csv"),
            "--group", "2", "--seeds", "0", "5", "--epochs", "3", "--input-size", "64", "--device", "cpu"]
    assert cli.main(args) == 0
    (config,) = seen
    assert (config.cells_csv, config.data, config.group, config.seeds) == (tmp_path / "c.csv", tmp_path / "d", 2, (0, 5))
    assert config.overrides == {"epochs": 3, "input_size": 64} and config.device == "cpu"
    assert "| recipe | 0.5000 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--weights is required"):
        cli.main(["ablate", "--data", str(tmp_path / "d")])
