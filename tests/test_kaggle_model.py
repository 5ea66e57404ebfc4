"""Issue 26.2: weights attached as a Kaggle Model (``<input>/<model>/pytorch/default/1/``) are found.

A fake Kaggle input folder is built in ``tmp_path`` and ``hpa_kernel.paths.KAGGLE_INPUT`` points at
it, as ``/kaggle/input`` would be on Kaggle. The expected folders are written down by hand from the
layout the test builds.
"""

from __future__ import annotations

import json
import logging

import pytest

from hpa_kernel import paths

MODEL = ("hpa-kernel-weights", "pytorch", "default", "1")


@pytest.fixture
def kaggle(tmp_path, monkeypatch):
    """An empty fake ``/kaggle/input``, with the kit's environment variables unset."""
    root = tmp_path / "input"
    root.mkdir()
    monkeypatch.setattr(paths, "KAGGLE_INPUT", root)
    for name in (paths.WEIGHTS_ENV, paths.DATA_ENV):
        monkeypatch.delenv(name, raising=False)
    return root


def _random_weights(folder):
    from hpa_kernel.demo import random_ensemble

    folder.mkdir(parents=True)
    random_ensemble(folder, sizes=(1,), weights=(1.0,), arch="resnet18", input_size=32)
    return folder


def test_input_folders_are_listed_shallowest_first_then_sorted(kaggle):
    for parts in (MODEL, ("a-dataset", "inner"), ("b", "c", "d", "e", "f", "too-deep")):
        kaggle.joinpath(*parts).mkdir(parents=True)
    (kaggle / "a-dataset" / "file.txt").write_text("not a folder")
    got = [p.relative_to(kaggle).as_posix() for p in paths.kaggle_input_dirs()]
    assert got == [
        "a-dataset", "b", "hpa-kernel-weights",
        "a-dataset/inner", "b/c", "hpa-kernel-weights/pytorch",
        "b/c/d", "hpa-kernel-weights/pytorch/default",
        "b/c/d/e", "hpa-kernel-weights/pytorch/default/1",
        "b/c/d/e/f",
    ]


def test_manifest_and_segmentation_files_of_a_model_are_found(kaggle, caplog):
    from hpa_kernel.manifest import load_manifest
    from hpa_kernel.segmentation.hpa import resolve_weight_file

    folder = _random_weights(kaggle.joinpath(*MODEL))
    (folder / "dpn_unet_nuclei_v1.pth").write_bytes(b"n")
    with caplog.at_level(logging.INFO, logger="hpa_kernel.paths"):
        assert load_manifest(verify=False).weights_dir == folder
    assert str(folder) in caplog.text  # the log names the folder it took
    assert resolve_weight_file(None, "dpn_unet_nuclei_v1.pth", "nuclei") == folder / "dpn_unet_nuclei_v1.pth"


def test_two_attachments_the_stated_rule_picks_one_and_the_log_says_so(kaggle, caplog):
    from hpa_kernel.manifest import load_manifest

    deep = _random_weights(kaggle.joinpath(*MODEL))
    # same depth as the Model's version folder, earlier in sorted order: chosen over it
    early = _random_weights(kaggle / "a-model" / "pytorch" / "default" / "2")
    with caplog.at_level(logging.WARNING, logger="hpa_kernel.paths"):
        assert load_manifest(verify=False).weights_dir == early
    assert paths.CHOICE_RULE in caplog.text and str(early) in caplog.text and str(deep) in caplog.text
    # a shallower attachment (a dataset) wins over both Models, whatever its name
    shallow = _random_weights(kaggle / "z-dataset")
    assert load_manifest(verify=False).weights_dir == shallow


def test_deeper_than_five_levels_is_not_searched(kaggle):
    from hpa_kernel.manifest import find_weights_dir

    _random_weights(kaggle / "a" / "b" / "c" / "d" / "e" / "f")
    with pytest.raises(FileNotFoundError, match="down to 5 levels"):
        find_weights_dir()


def test_submit_and_the_notebook_find_a_model(kaggle, synthetic_competition, tmp_path):
    """``submit`` without ``--weights`` and the submission notebook's derived config both use the Model."""
    import nbformat

    from hpa_kernel.submission import SubmitConfig, run_submission
    from hpa_kernel.submission.weights import resolve_weights

    folder = _random_weights(kaggle.joinpath(*MODEL))
    report = run_submission(SubmitConfig(out=tmp_path / "sub.csv", data=synthetic_competition.root, device="cpu",
                                         workers=0, progress=False, segmenter="classic", torch_threads=1, limit=1))
    assert report.n_predicted == 1
    cells = [c.source for c in nbformat.read(paths_root() / "notebooks" / "submission.ipynb", as_version=4).cells
             if c.cell_type == "code"]
    namespace: dict = {}
    exec(cells[1], namespace)  # the parameters: weights_dir = None
    exec(cells[2].replace("print(", "(lambda *a, **k: None)("), namespace)  # the derived values
    assert namespace["on_kaggle"] and namespace["config"].weights is None
    assert resolve_weights(namespace["config"].weights, "classic").manifest.weights_dir == folder


def paths_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


def test_bundle_weights_writes_the_model_metadata_and_its_upload_is_found(kaggle, tmp_path):
    import shutil

    from hpa_kernel import bundle
    from hpa_kernel.manifest import load_manifest

    src = _random_weights(tmp_path / "trained")
    out = tmp_path / "upload"
    bundle.bundle_weights(src, out, dataset_id="someone/hpa-kernel-weights")
    instance = json.loads((out / "model-instance-metadata.json").read_text())
    assert {k: instance[k] for k in ("ownerSlug", "modelSlug", "instanceSlug", "framework")} == {
        "ownerSlug": "someone", "modelSlug": "hpa-kernel-weights", "instanceSlug": "default", "framework": "pyTorch"}
    assert {"overview", "usage", "licenseName", "fineTunable", "trainingData", "modelInstanceType"} <= set(instance)
    model = json.loads((out / "model-metadata.json").read_text())
    assert model["ownerSlug"] == "someone" and model["slug"] == "hpa-kernel-weights"
    card = (out / "README.md").read_text()
    assert card == model["description"] and "pytorch/default/<version>" in card and "g1_m0.pth" in card
    # what Kaggle mounts after `kaggle models instances create -p upload`
    shutil.copytree(out, kaggle.joinpath(*MODEL))
    assert load_manifest(verify=True, require_segmentation=False).weights_dir == kaggle.joinpath(*MODEL)
