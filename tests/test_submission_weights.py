"""The weights of a submission run are resolved and verified once (issue 15, item 1)."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
from test_submit import BlobSegmenter, _config, weights_dir  # noqa: F401 - fixture

from hpa_kernel import manifest as mf
from hpa_kernel.submission import ResolvedWeights, resolve_weights, run_submission


def _pin_segmentation(folder):
    """Put two (fake) segmentation files in ``folder`` and pin their hashes in the manifest."""
    data = json.loads((folder / mf.MANIFEST_NAME).read_text())
    for key in ("nuclei", "cell"):
        entry = data["segmentation"][key]
        path = folder / entry["file"]
        path.write_bytes(f"fake {key} weights".encode())
        entry["sha256"] = mf.sha256_of(path)
    (folder / mf.MANIFEST_NAME).write_text(json.dumps(data))
    return data["segmentation"]


def _count_hashes(monkeypatch):
    counts = Counter()
    real = mf.sha256_of

    def counting(path, *args, **kwargs):
        counts[str(path)] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(mf, "sha256_of", counting)
    return counts


def test_resolved_weights_carry_the_manifest_layout(weights_dir):  # noqa: F811
    weights = resolve_weights(weights_dir, "classic")
    manifest = mf.load_manifest(weights_dir=weights_dir, verify=False)
    assert weights.segmenter == "classic" and weights.segmentation_paths is None
    assert weights.group_sizes == (1, 2) and weights.group_weights == pytest.approx((0.4, 0.6))
    assert weights.checkpoint_weights == manifest.checkpoint_weights
    assert weights.checkpoint_paths == tuple(tuple(p) for p in manifest.checkpoint_paths())
    assert all(p.is_file() for group in weights.checkpoint_paths for p in group)
    assert resolve_weights(weights_dir, None, custom_segmenter=True).segmenter == "custom"
    with pytest.raises(FileNotFoundError, match='set segmenter = "classic" explicitly'):
        resolve_weights(weights_dir, None)
    with pytest.raises(ValueError, match="no segmentation weights"):
        weights.segmenter_kwargs()
    with pytest.raises(ValueError, match="segmentation_paths"):
        ResolvedWeights(manifest, "hpa", weights.checkpoint_paths, weights.group_weights, weights.checkpoint_weights)


def test_a_changed_checkpoint_is_refused_when_resolving(weights_dir, tmp_path):  # noqa: F811
    folder = tmp_path / "w"
    shutil.copytree(weights_dir, folder)
    checkpoint = resolve_weights(folder, "classic").checkpoint_paths[1][0]
    checkpoint.write_bytes(checkpoint.read_bytes() + b"\0")
    with pytest.raises(mf.ManifestError, match="sha256 mismatch"):
        resolve_weights(folder, "classic")
    checkpoint.unlink()
    with pytest.raises(FileNotFoundError, match=checkpoint.name):
        resolve_weights(folder, "classic")


def test_pinned_segmentation_files_are_hashed_once_by_their_loader(weights_dir, tmp_path, monkeypatch):  # noqa: F811
    folder = tmp_path / "w"
    shutil.copytree(weights_dir, folder)
    seg = _pin_segmentation(folder)
    counts = _count_hashes(monkeypatch)
    weights = resolve_weights(folder, None)
    nuclei, cell = folder / seg["nuclei"]["file"], folder / seg["cell"]["file"]
    assert weights.segmenter == "hpa" and weights.segmentation_paths == (nuclei, cell)
    assert counts[str(nuclei)] == counts[str(cell)] == 0  # left to the loader, which hashes what it reads
    assert weights.segmenter_kwargs() == {
        "nuclei": nuclei, "cell": cell, "nuclei_sha256": seg["nuclei"]["sha256"], "cell_sha256": seg["cell"]["sha256"],
    }


def test_a_run_hashes_each_checkpoint_once(synthetic_competition, weights_dir, tmp_path, monkeypatch):  # noqa: F811
    counts = _count_hashes(monkeypatch)
    checkpoints = [str(p) for group in resolve_weights(weights_dir, "classic").checkpoint_paths for p in group]
    counts.clear()
    report = run_submission(_config(synthetic_competition, weights_dir, tmp_path / "s.csv", tta=False), segmenter=BlobSegmenter())
    assert report.n_predicted == 3
    assert len(checkpoints) == 3 and {path: counts[path] for path in checkpoints} == dict.fromkeys(checkpoints, 1)
