"""The cells cache: atomic entries, reruns skip cached images, a killed run resumes identically."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from test_cells_pipeline import CONFIG, TruthSegmenter, assert_same, make_folder

from hpa_kernel.cells import CellPipeline, PipelineOptions
from hpa_kernel.cells.cache import CacheError, CellCache, cache_key, image_digest


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("cells_cache"), n=5, seed=300)


def run(folder, ids, samples, cache_dir, workers=0, **kwargs):
    segmenter = TruthSegmenter(samples, **kwargs)
    return list(CellPipeline(segmenter, CONFIG, workers=workers, cache_dir=cache_dir).run(folder, ids, progress=False)), segmenter


def test_entry_round_trip_and_atomic_names(tmp_path):
    cache = CellCache(tmp_path / "c")
    table = pd.DataFrame({"cell_id": np.array([1, 2]), "valid": np.array([True, False]), "cut": np.array([0.0, 0.5])})
    nuclei = np.arange(12, dtype=np.uint16).reshape(3, 4)
    cell = nuclei.astype(np.int32) * 2
    cache.save("k1", nuclei, cell, table)
    assert sorted(p.name for p in cache.root.iterdir()) == ["k1.npz"]  # no tmp file left behind
    n2, c2, t2 = cache.load("k1")
    np.testing.assert_array_equal(n2, nuclei)
    assert n2.dtype == np.uint16 and c2.dtype == np.int32
    pd.testing.assert_frame_equal(t2, table)
    (cache.root / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CacheError, match="bad.npz"):
        cache.load("bad")
    with pytest.raises(FileNotFoundError):
        cache.load("absent")


def test_key_depends_on_content_segmenter_and_config(images, tmp_path):
    folder, ids, _ = images
    d0, d1 = image_digest(folder, ids[0]), image_digest(folder, ids[1])
    assert d0 != d1 and d0 == image_digest(folder, ids[0])
    base = cache_key(d0, {"name": "a"}, CONFIG.table_settings())
    assert cache_key(d0, {"name": "b"}, CONFIG.table_settings()) != base
    assert cache_key(d0, {"name": "a"}, dataclasses.replace(CONFIG, max_train_cut=0.2).table_settings()) != base
    # crop geometry is not part of the table, so it does not invalidate the segmentation
    assert cache_key(d0, {"name": "a"}, dataclasses.replace(CONFIG, crop_size=128).table_settings()) == base
    with pytest.raises(FileNotFoundError, match="missing channel"):
        image_digest(tmp_path, "nothing")


def test_rerun_skips_cached_images(images, tmp_path):
    folder, ids, samples = images
    first, seg1 = run(folder, ids, samples, tmp_path / "cache")
    assert seg1.calls == len(ids) and not any(r.from_cache for r in first)
    again, seg2 = run(folder, ids, samples, tmp_path / "cache", workers=2)
    assert seg2.calls == 0 and all(r.from_cache for r in again)
    for a, b in zip(first, again):
        assert_same(a, b)


def test_killed_run_resumes_to_identical_result(images, tmp_path):
    folder, ids, samples = images
    cache_dir = tmp_path / "cache"
    reference, _ = run(folder, ids, samples, None)
    # 1) a run interrupted after 2 predictions (Ctrl-C during segmentation), with 2 workers
    with pytest.raises(KeyboardInterrupt):
        run(folder, ids, samples, cache_dir, workers=2, interrupt_after=2)
    # 2) a run whose consumer stops after the first image (the generator is closed mid-run)
    pipeline = CellPipeline(TruthSegmenter(samples), CONFIG, workers=2, cache_dir=cache_dir, options=PipelineOptions(max_pending=1))
    gen = pipeline.run(folder, ids, progress=False)
    assert next(gen).image_id == ids[0]
    gen.close()
    # 3) debris of a process killed while writing: a stray half-written tmp file
    (cache_dir / ".tmp-deadbeef-123-abcd.npz").write_bytes(b"PK\x03\x04 half written")
    cached_before = {p.name for p in cache_dir.glob("*.npz") if not p.name.startswith(".")}
    assert 1 <= len(cached_before) <= 2  # img00 for sure, img01 if it finished before the kill
    for p in cache_dir.glob("[!.]*.npz"):
        CellCache(cache_dir).load(p.stem)  # every complete-looking entry is a valid entry
    resumed, seg = run(folder, ids, samples, cache_dir, workers=2)
    assert seg.calls == len(ids) - len(cached_before)
    assert sum(r.from_cache for r in resumed) == len(cached_before)
    for a, b in zip(reference, resumed):
        assert_same(a, b)


def test_unreadable_entry_is_recomputed(images, tmp_path):
    folder, ids, samples = images
    cache_dir = tmp_path / "cache"
    first, _ = run(folder, ids[:2], samples, cache_dir)
    victim = sorted(cache_dir.glob("*.npz"))[0]
    victim.write_bytes(b"garbage")
    again, seg = run(folder, ids[:2], samples, cache_dir)
    assert seg.calls == 1 and all(r.ok for r in again)
    for a, b in zip(first, again):
        assert_same(a, b)
    CellCache(cache_dir).load(victim.stem)  # rewritten


def test_key_settings_are_computed_once_per_run(images, tmp_path):
    folder, ids, samples = images

    class CountingSettings(TruthSegmenter):
        settings_calls = 0

        def settings(self):
            self.settings_calls += 1
            return super().settings()

    segmenter = CountingSettings(samples)
    results = list(CellPipeline(segmenter, CONFIG, workers=0, cache_dir=tmp_path / "c").run(folder, ids, progress=False))
    assert all(r.ok for r in results) and segmenter.settings_calls == 1


def test_unreadable_entry_is_recomputed_by_the_workers(images, tmp_path):
    folder, ids, samples = images
    cache_dir = tmp_path / "cache"
    first, _ = run(folder, ids[:2], samples, cache_dir)
    victim = sorted(cache_dir.glob("*.npz"))[0]
    victim.write_bytes(b"garbage")
    again, seg = run(folder, ids[:2], samples, cache_dir, workers=2)
    assert seg.calls == 1 and all(r.ok for r in again)
    for a, b in zip(first, again):
        assert_same(a, b)
    CellCache(cache_dir).load(victim.stem)  # rewritten
