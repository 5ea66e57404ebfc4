"""The weights manifest: loading, validation, resolution of the weights folder, hash pinning."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from hpa_kernel import manifest as mf
from hpa_kernel.manifest import (
    MANIFEST_NAME,
    ManifestError,
    default_manifest,
    load_manifest,
    sha256_of,
    update_hashes,
    write_manifest,
)

REPO_MANIFEST = Path(__file__).resolve().parents[1] / MANIFEST_NAME


def _fill(folder: Path, manifest=None, segmentation=True) -> Path:
    """Write the manifest and small dummy files for each entry into ``folder``."""
    manifest = manifest or default_manifest()
    folder.mkdir(parents=True, exist_ok=True)
    for entry in manifest.all_files(segmentation):
        (folder / entry.file).write_bytes(entry.file.encode() * 3)
        if entry not in manifest.segmentation.files():
            (folder / entry.file).with_suffix(".json").write_text("{}")
    return write_manifest(manifest, folder / MANIFEST_NAME)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("HPA_KERNEL_WEIGHTS", raising=False)


def test_repository_manifest_has_the_ensemble_layout():
    m = load_manifest(REPO_MANIFEST, weights_dir=REPO_MANIFEST.parent, verify=False)
    assert [len(g.checkpoints) for g in m.groups] == [1, 2, 4]
    assert m.weights == (0.2, 0.4, 0.4)
    assert m.segmentation.nuclei.file.endswith(".pth") and m.segmentation.cell.file.endswith(".pth")
    assert m.n_checkpoints == 7


def test_load_from_explicit_folder_with_unpinned_hashes_warns_once(tmp_path, caplog):
    _fill(tmp_path)
    with caplog.at_level(logging.WARNING, logger="hpa_kernel.manifest"):
        m = load_manifest(weights_dir=tmp_path)
    warnings = [r for r in caplog.records if "no pinned sha256" in r.getMessage()]
    assert len(warnings) == 1 and "9 weight file(s)" in warnings[0].getMessage()
    assert m.weights_dir == tmp_path
    assert m.checkpoint_paths()[2][3] == tmp_path / "g3_m3.pth"
    assert m.segmentation_present()


def test_weights_folder_from_env_then_kaggle(tmp_path, monkeypatch):
    env_dir, kaggle = tmp_path / "env", tmp_path / "kaggle_input"
    _fill(env_dir)
    _fill(kaggle / "other-dataset" / "hpa-weights")
    (kaggle / "unrelated").mkdir()
    monkeypatch.setenv("HPA_KERNEL_WEIGHTS", str(env_dir))
    assert load_manifest(kaggle_root=kaggle).weights_dir == env_dir
    monkeypatch.delenv("HPA_KERNEL_WEIGHTS")
    assert load_manifest(kaggle_root=kaggle).weights_dir == kaggle / "other-dataset" / "hpa-weights"
    with pytest.raises(FileNotFoundError, match=r"HPA_KERNEL_WEIGHTS \(not set\).*none matched"):
        load_manifest(kaggle_root=tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_manifest(weights_dir=tmp_path / "missing")


def test_explicit_manifest_file_falls_back_to_its_own_folder(tmp_path):
    path = _fill(tmp_path / "w")
    assert load_manifest(path, kaggle_root=tmp_path / "none").weights_dir == tmp_path / "w"


def test_explicit_manifest_file_uses_its_own_folder_over_env_and_kaggle(tmp_path, monkeypatch, caplog):
    path = _fill(tmp_path / "w")
    env_dir, kaggle = tmp_path / "env", tmp_path / "kaggle_input"
    _fill(env_dir)
    _fill(kaggle / "dataset")
    monkeypatch.setenv("HPA_KERNEL_WEIGHTS", str(env_dir))
    with caplog.at_level(logging.WARNING, logger="hpa_kernel.manifest"):
        assert load_manifest(path, kaggle_root=kaggle).weights_dir == tmp_path / "w"
    ignored = [r for r in caplog.records if "is ignored" in r.getMessage()]
    assert len(ignored) == 1 and ignored[0].levelno == logging.WARNING
    assert str(tmp_path / "w") in ignored[0].getMessage() and f"HPA_KERNEL_WEIGHTS={env_dir}" in ignored[0].getMessage()
    # The same folder in the environment is no conflict; an explicit weights_dir still wins.
    caplog.clear()
    monkeypatch.setenv("HPA_KERNEL_WEIGHTS", str(tmp_path / "w"))
    with caplog.at_level(logging.WARNING, logger="hpa_kernel.manifest"):
        assert load_manifest(path).weights_dir == tmp_path / "w"
    assert not [r for r in caplog.records if "is ignored" in r.getMessage()]
    assert load_manifest(path, env_dir).weights_dir == env_dir
    monkeypatch.delenv("HPA_KERNEL_WEIGHTS")
    assert load_manifest(path, kaggle_root=kaggle).weights_dir == tmp_path / "w"


def test_weights_must_sum_to_one(tmp_path):
    path = _fill(tmp_path)
    data = json.loads(path.read_text())
    data["ensemble"]["groups"][0]["weight"] = 0.25
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"sum to 1 .*1\.05.*g1=0\.25"):
        load_manifest(path, tmp_path)
    data["ensemble"]["groups"][0]["weight"] = 0.2 + 5e-7  # inside the tolerance
    path.write_text(json.dumps(data))
    assert load_manifest(path, tmp_path).groups[0].weight == pytest.approx(0.2, abs=1e-6)


def test_missing_file_is_named(tmp_path):
    _fill(tmp_path)
    (tmp_path / "g2_m1.pth").unlink()
    (tmp_path / "g3_m0.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks 2 file\(s\).*g2_m1\.pth, g3_m0\.json"):
        load_manifest(weights_dir=tmp_path)
    assert load_manifest(weights_dir=tmp_path, verify=False).n_checkpoints == 7


def test_segmentation_files_optional_when_not_required(tmp_path):
    _fill(tmp_path, segmentation=False)
    with pytest.raises(FileNotFoundError, match="dpn_unet_nuclei_v1.pth, dpn_unet_cell_3ch_v1.pth"):
        load_manifest(weights_dir=tmp_path)
    m = load_manifest(weights_dir=tmp_path, require_segmentation=False)
    assert not m.segmentation_present()


def test_update_hashes_pins_and_mismatch_is_an_error(tmp_path, caplog):
    path = _fill(tmp_path)
    m = update_hashes(path)
    assert m.groups[1].checkpoints[0].sha256 == sha256_of(tmp_path / "g2_m0.pth")
    assert json.loads(path.read_text())["segmentation"]["cell"]["sha256"] == sha256_of(tmp_path / "dpn_unet_cell_3ch_v1.pth")
    with caplog.at_level(logging.WARNING, logger="hpa_kernel.manifest"):
        load_manifest(weights_dir=tmp_path)
    assert not [r for r in caplog.records if "no pinned" in r.getMessage()]
    expected = m.groups[2].checkpoints[1].sha256
    (tmp_path / "g3_m1.pth").write_bytes(b"tampered")
    with pytest.raises(ManifestError, match=rf"g3_m1\.pth: sha256 mismatch: the manifest expects {expected}, the file has [0-9a-f]{{64}}"):
        load_manifest(weights_dir=tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["ensemble"]["groups"][1].update(checkpoints=[]), "at least one checkpoint"),
        (lambda d: d["ensemble"]["groups"][0]["checkpoints"][0].update(sha256="abc"), "64 hex digits"),
        (lambda d: d["ensemble"]["groups"][0]["checkpoints"][0].update(file="../x.pth"), "relative to the weights folder"),
        (lambda d: d.update(format=7), "format 7 is not supported"),
        (lambda d: d.update(extra=1), "unknown keys"),
        (lambda d: d["ensemble"]["groups"][2].update(name="g1"), "unique"),
        (lambda d: d["ensemble"]["groups"][0].pop("weight"), "needs 'weight'"),
        (lambda d: d["ensemble"]["groups"][0].update(weight="heavy"), "group g1: weight must be a number"),
        (lambda d: d.update(segmentation=3), "segmentation must be"),
        (lambda d: d["segmentation"].update(extra="x.pth"), "segmentation must be"),
    ],
)
def test_malformed_manifests_are_explained(tmp_path, edit, message):
    path = _fill(tmp_path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=message):
        load_manifest(path, tmp_path, verify=False)


def test_not_json_and_missing_manifest(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("{")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(weights_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="weights_manifest.json not found in the weights folder"):
        load_manifest(weights_dir=tmp_path / "..")
    with pytest.raises(FileNotFoundError, match="nope.json not found"):
        load_manifest(tmp_path / "nope.json")


def test_round_trip_to_dict():
    m = default_manifest((2, 1), (0.5, 0.5))
    again = mf.Manifest.from_dict(m.to_dict())
    assert again == m
