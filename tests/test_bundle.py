"""The offline datasets: the kit's wheel and the weights bundle."""

from __future__ import annotations

import json
import logging
import zipfile

import pytest

from hpa_kernel import bundle
from hpa_kernel import manifest as mf


def _fake_weights(folder, with_segmentation=False):
    """Files laid out as the default manifest expects; contents are arbitrary bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    layout = mf.default_manifest()
    for g in layout.groups:
        for ck in g.checkpoints:
            (folder / ck.file).write_bytes(f"weights of {ck.file}".encode())
            (folder / ck.file).with_suffix(".json").write_text(json.dumps({"arch": "efficientnet_b0"}))
    if with_segmentation:
        for f in layout.segmentation.files():
            (folder / f.file).write_bytes(f"segmentation {f.file}".encode())
    return layout


def test_bundle_weights_pins_and_verifies_every_hash(tmp_path, caplog):
    src = tmp_path / "trained"
    layout = _fake_weights(src)
    with caplog.at_level(logging.WARNING, logger="hpa_kernel.bundle"):
        target = bundle.bundle_weights(src, tmp_path / "dataset")
    assert "segmentation weights" in caplog.text
    out = mf.load_manifest(target, tmp_path / "dataset", verify=True, require_segmentation=False)
    assert [len(g.checkpoints) for g in out.groups] == [len(g.checkpoints) for g in layout.groups]
    for ck in (c for g in out.groups for c in g.checkpoints):
        assert ck.sha256 == mf.sha256_of(src / ck.file)
        assert (tmp_path / "dataset" / ck.file).with_suffix(".json").is_file()
    assert out.segmentation.nuclei.sha256 is None
    meta = json.loads((tmp_path / "dataset" / "dataset-metadata.json").read_text())
    assert meta["id"].endswith("hpa-kernel-weights")


def test_bundle_weights_includes_segmentation_when_present(tmp_path):
    src = tmp_path / "trained"
    _fake_weights(src, with_segmentation=True)
    target = bundle.bundle_weights(src, tmp_path / "dataset")
    out = mf.load_manifest(target, tmp_path / "dataset", verify=True)
    assert out.segmentation_present()
    assert out.segmentation.cell.sha256 == mf.sha256_of(src / "dpn_unet_cell_3ch_v1.pth")


def test_bundle_weights_refuses_a_file_that_breaks_its_pinned_hash(tmp_path):
    src = tmp_path / "trained"
    _fake_weights(src)
    bundle.bundle_weights(src, tmp_path / "first")
    pinned = tmp_path / "first" / mf.MANIFEST_NAME
    (src / "g2_m1.pth").write_bytes(b"tampered")
    with pytest.raises(mf.ManifestError, match="g2_m1.pth"):
        bundle.bundle_weights(src, tmp_path / "second", manifest=pinned)


def test_bundle_weights_names_a_missing_checkpoint(tmp_path):
    src = tmp_path / "trained"
    _fake_weights(src)
    (src / "g3_m2.pth").unlink()
    with pytest.raises(FileNotFoundError, match="g3_m2.pth"):
        bundle.bundle_weights(src, tmp_path / "dataset")


def test_kit_wheel_is_pure_python_and_carries_the_notebooks(tmp_path):
    wheel = bundle.build_kit_wheel(tmp_path)
    assert wheel.name.startswith("hpa_kernel-") and wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith("/METADATA"))).decode()
        entry_points = zf.read(next(n for n in names if n.endswith("/entry_points.txt"))).decode()
    assert "hpa_kernel/notebooks/submission.ipynb" in names
    assert "hpa_kernel/cli/__init__.py" in names
    assert not any("shared/reference" in n or n.startswith("tests/") for n in names)
    assert "hpa-kernel = hpa_kernel.cli:main" in entry_points
    for dep in ("torch", "timm", "pycocotools", "scikit-image", "numba"):
        assert f"Requires-Dist: {dep}" in metadata
    base = bundle.kit_requirements(wheel)
    # no OpenCV among the base requirements (an extra only), and nothing the Kaggle image lacks
    assert not any(r.lower().startswith("opencv") for r in base), base
    assert any(r.startswith("opencv-python-headless") and "extra" in r for r in bundle._requires_dist(wheel))
    assert bundle.missing_requirements(base) == []


def test_install_command_is_offline_and_names_only_the_kit():
    cmd = bundle.install_command("/kaggle/input/hpa-kernel-wheels")
    assert cmd == "pip install --no-index --find-links /kaggle/input/hpa-kernel-wheels --upgrade hpa_kernel"


def fake_kit_wheel(folder, requires=("numpy>=1.24",)):
    """A zip with the METADATA a kit wheel has (enough for bundle_wheels, not installable)."""
    kit = folder / "hpa_kernel-0.1.0-py3-none-any.whl"
    lines = ["Metadata-Version: 2.1", "Name: hpa-kernel", "Version: 0.1.0"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    with zipfile.ZipFile(kit, "w") as zf:
        zf.writestr("hpa_kernel-0.1.0.dist-info/METADATA", "\n".join(lines) + "\n")
    return kit


def test_wheels_readme_installs_from_the_dataset_it_describes(tmp_path):
    kit = fake_kit_wheel(tmp_path)
    result = bundle.bundle_wheels(tmp_path / "house", kit_wheel=kit, dataset_id="someone/my-wheels")
    readme = (result.folder / "README.md").read_text()
    install = next(line.strip() for line in readme.splitlines() if line.strip().startswith("pip install"))
    assert install == "pip install --no-index --find-links /kaggle/input/my-wheels --upgrade hpa_kernel"
    assert [w.name for w in result.wheels] == [kit.name]
    assert kit.name in (result.folder / "wheels.lock").read_text()


def test_wheels_dataset_id_is_kept_when_not_given(tmp_path):
    kit = fake_kit_wheel(tmp_path)
    bundle.bundle_wheels(tmp_path / "house", kit_wheel=kit, dataset_id="someone/my-wheels")
    bundle.bundle_wheels(tmp_path / "house", kit_wheel=kit)  # `make wheels` again: the id stays
    assert json.loads((tmp_path / "house" / "dataset-metadata.json").read_text())["id"] == "someone/my-wheels"
    bundle.bundle_wheels(tmp_path / "fresh", kit_wheel=kit)
    assert json.loads((tmp_path / "fresh" / "dataset-metadata.json").read_text())["id"] == bundle.DEFAULT_WHEELS_ID


def test_missing_requirements_compares_versions_and_markers():
    have = {"numpy": "2.4", "scikit-image": "0.25.2", "Numba": "0.57"}
    reqs = ["numpy>=1.24", "scikit_image>=0.19", "numba>=0.58", "tqdm>=4.60", 'tomli>=2; python_version < "3.11"']
    assert bundle.missing_requirements(reqs, have) == ["numba>=0.58", "tqdm>=4.60"]
