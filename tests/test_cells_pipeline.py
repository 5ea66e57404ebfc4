"""CellPipeline: order, parallel == sequential, per-image failures, worker crashes, interruption."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
import sys

import numpy as np
import pandas as pd
import pytest

from hpa_kernel.cells import CellConfig, CellPipeline, ImageCells, ImageFailure, PipelineOptions
from hpa_kernel.segmentation.base import BaseSegmenter, SegmentationMaps

SIZE = 256
CONFIG = CellConfig(crop_size=64)


# ---------------------------------------------------------------------------------------------
# A test-local segmenter that returns the synthetic truth masks: same interface as the real ones.
def in_worker() -> bool:
    import multiprocessing

    return multiprocessing.parent_process() is not None


def truth_postprocess(maps: SegmentationMaps):
    """Picklable post-processing: the maps already are the label images."""
    assert not (in_worker() and "torch" in sys.modules), "a worker imported torch"
    return maps.nuclei, maps.cell


class CrashOn:
    """Post-processing that kills its worker process (as a segfault would) for chosen images."""

    def __init__(self, cell_digests):
        self.cell_digests = set(cell_digests)

    def __call__(self, maps):
        if hashlib.sha1(maps.cell.tobytes()).hexdigest() in self.cell_digests:
            os._exit(3)
        return truth_postprocess(maps)


class RaiseOn:
    """Post-processing that raises for chosen images."""

    def __init__(self, cell_digests):
        self.cell_digests = set(cell_digests)

    def __call__(self, maps):
        if hashlib.sha1(maps.cell.tobytes()).hexdigest() in self.cell_digests:
            raise RuntimeError("planted post-processing error")
        return truth_postprocess(maps)


class NoTorch:
    """Wraps a post-processing function and fails if the worker has imported torch before it."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, maps):
        assert in_worker(), "NoTorch is meant for worker processes"
        assert "torch" not in sys.modules, "a worker imported torch"
        labels = self.inner(maps)
        assert "torch" not in sys.modules, "post-processing imported torch"
        return labels


class TruthSegmenter(BaseSegmenter):
    """Looks the image up by content and returns its truth masks as the maps."""

    name = "truth"

    def __init__(self, samples, postprocess_fn=truth_postprocess, interrupt_after=None):
        self.masks = {hashlib.sha1(s.image.tobytes()).hexdigest(): (s.nuclei_mask, s.cell_mask) for s in samples}
        self.postprocess_fn = postprocess_fn
        self.calls = 0
        self.interrupt_after = interrupt_after

    def predict(self, images):
        out = []
        for image in images:
            self.calls += 1
            if self.interrupt_after is not None and self.calls > self.interrupt_after:
                raise KeyboardInterrupt
            nuclei, cell = self.masks[hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()]
            out.append(SegmentationMaps(nuclei=nuclei, cell=cell))
        return out

    def settings(self):
        return {"name": self.name}


def cell_digest(sample) -> str:
    return hashlib.sha1(sample.cell_mask.tobytes()).hexdigest()


def make_folder(tmp_path, n=5, size=SIZE, seed=100):
    from hpa_kernel.io import write_image
    from hpa_kernel.synthetic import synthesize_image

    folder = tmp_path / "images"
    samples, ids = [], []
    for i in range(n):
        s = synthesize_image(seed + i, size, size)
        image_id = f"img{i:02d}"
        write_image(folder, image_id, s.image)
        samples.append(s)
        ids.append(image_id)
    return folder, ids, samples


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("cells_pipeline"))


def assert_same(a: ImageCells, b: ImageCells):
    assert a.image_id == b.image_id
    pd.testing.assert_frame_equal(a.table, b.table)
    np.testing.assert_array_equal(a.crops, b.crops)
    assert a.encoded == b.encoded


# ---------------------------------------------------------------------------------------------
def test_sequential_run_matches_truth(images):
    folder, ids, samples = images
    pipeline = CellPipeline(TruthSegmenter(samples), CONFIG, workers=0, options=PipelineOptions(encode_masks=True, keep_labels=True))
    results = list(pipeline.run(folder, ids, progress=False))
    assert [r.image_id for r in results] == ids
    for r, s in zip(results, samples):
        assert isinstance(r, ImageCells)
        np.testing.assert_array_equal(r.cell_label, s.cell_mask)
        np.testing.assert_array_equal(r.nuclei_label, s.nuclei_mask)
        truth_ids = sorted(int(i) for i in np.unique(s.cell_mask) if i)
        assert r.table["cell_id"].tolist() == truth_ids
        assert r.crops.shape == (len(truth_ids), 64, 64, 4) and r.crops.dtype == np.uint8
        assert (r.height, r.width) == (SIZE, SIZE)
        areas = {k: int((s.cell_mask == k).sum()) for k in truth_ids}
        assert r.table.set_index("cell_id")["area"].to_dict() == areas
        from hpa_kernel.submission.rle import decode_mask

        for k, code in zip(truth_ids, r.encoded):
            np.testing.assert_array_equal(decode_mask(code, SIZE, SIZE), s.cell_mask == k)


def test_two_workers_equal_sequential_and_keep_order(images):
    folder, ids, samples = images
    order = ids[::-1] + ids[:2]  # any order, with repeats
    seq = list(CellPipeline(TruthSegmenter(samples), CONFIG, workers=0).run(folder, order, progress=False))
    par = list(CellPipeline(TruthSegmenter(samples), CONFIG, workers=2, options=PipelineOptions(batch_size=2)).run(folder, order, progress=False))
    assert [r.image_id for r in par] == order
    for a, b in zip(seq, par):
        assert_same(a, b)


def test_classic_segmenter_in_two_workers_equals_in_process(images):
    from hpa_kernel.segmentation import create_segmenter

    folder, ids, _ = images
    segmenter = create_segmenter("classic")
    seq = list(CellPipeline(segmenter, CONFIG, workers=0, options=PipelineOptions(encode_masks=False)).run(folder, ids[:3], progress=False))
    segmenter.postprocess_fn = NoTorch(segmenter.postprocess_fn)
    par = list(CellPipeline(segmenter, CONFIG, workers=2, options=PipelineOptions(encode_masks=False)).run(folder, ids[:3], progress=False))
    assert all(r.ok for r in par) and sum(len(r.table) for r in par) > 0
    for a, b in zip(seq, par):
        assert_same(a, b)


def test_missing_channel_and_raising_image_are_recorded_and_run_continues(images, tmp_path):
    folder, ids, samples = images
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in folder.iterdir():
        if not p.name.startswith(f"{ids[1]}_yellow"):
            (broken / p.name).write_bytes(p.read_bytes())
    segmenter = TruthSegmenter(samples, postprocess_fn=RaiseOn([cell_digest(samples[3])]))
    results = list(CellPipeline(segmenter, CONFIG, workers=2).run(broken, ids, progress=False))
    assert [r.image_id for r in results] == ids
    assert [r.ok for r in results] == [True, False, True, False, True]
    assert isinstance(results[1], ImageFailure) and f"{ids[1]}_yellow.png" in results[1].reason
    assert "planted post-processing error" in results[3].reason


def test_worker_crash_fails_only_that_image(images):
    folder, ids, samples = images
    segmenter = TruthSegmenter(samples, postprocess_fn=CrashOn([cell_digest(samples[2])]))
    results = list(CellPipeline(segmenter, CONFIG, workers=2).run(folder, ids, progress=False))
    assert [r.image_id for r in results] == ids
    assert [r.ok for r in results] == [True, True, False, True, True]
    assert "worker process died" in results[2].reason
    reference = list(CellPipeline(TruthSegmenter(samples), CONFIG, workers=0).run(folder, ids, progress=False))
    for k in (0, 1, 3, 4):
        assert_same(results[k], reference[k])


def test_interrupt_stops_cleanly(images):
    folder, ids, samples = images
    pipeline = CellPipeline(TruthSegmenter(samples, interrupt_after=2), CONFIG, workers=2)
    got = []
    with pytest.raises(KeyboardInterrupt):
        for r in pipeline.run(folder, ids, progress=False):
            got.append(r.image_id)
    assert got == ids[: len(got)]
    assert pipeline._executor is None  # workers terminated


def test_bad_arguments():
    with pytest.raises(ValueError, match="workers"):
        CellPipeline(TruthSegmenter([]), CONFIG, workers=-1)
    with pytest.raises(ValueError, match="segmenter"):
        CellPipeline(object(), CONFIG)
    with pytest.raises(ValueError, match="options must be a PipelineOptions, got dict"):
        CellPipeline(TruthSegmenter([]), CONFIG, options={"batch_size": 2})
    with pytest.raises(ValueError, match="batch_size"):
        CellPipeline(TruthSegmenter([]), CONFIG, options=PipelineOptions(batch_size=0))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        next(CellPipeline(TruthSegmenter([]), CONFIG, workers=0).run("/nonexistent/folder", ["a"]))


# ---------------------------------------------------------------------------------------------
# The training-set builder and the CLI around it.
@pytest.fixture(scope="module")
def competition(tmp_path_factory):
    from hpa_kernel.synthetic import make_competition

    root = tmp_path_factory.mktemp("cells_comp")
    comp = make_competition(root, n_train=4, n_test=0, size=SIZE, seed=7)
    masks = np.load(comp.truth_masks("train"))
    nuclei = np.load(comp.truth_dir / "train_nuclei.npz")
    from hpa_kernel.io import read_image

    class Sample:  # what TruthSegmenter needs
        def __init__(self, image_id):
            self.image = read_image(comp.train_dir, image_id)
            self.cell_mask, self.nuclei_mask = masks[image_id], nuclei[image_id]

    return comp, [Sample(i) for i in masks.files]


def test_builder_shards_merge_to_the_unsharded_set(competition, tmp_path, monkeypatch):
    from hpa_kernel.cells.builder import CSV_COLUMNS, BuildOptions, build_training_set, merge_shards, read_crop
    from hpa_kernel.cli import main

    comp, samples = competition
    quiet = BuildOptions(workers=0, progress=False)
    whole = build_training_set(comp.root, tmp_path / "whole", TruthSegmenter(samples), CONFIG, quiet)
    cells = pd.read_csv(whole, dtype={"image_id": str, "crop": str, "labels": str}, keep_default_na=False)
    assert list(cells.columns[: len(CSV_COLUMNS)]) == list(CSV_COLUMNS)
    train = comp.read_train()
    assert set(cells.image_id) == set(train.ID)
    assert dict(zip(cells.image_id, cells.labels)) == dict(zip(train.ID, train.Label))
    files = {p.name for p in (tmp_path / "whole" / "crops").iterdir()}
    assert files == {Path(c).name for c in cells.loc[cells.valid, "crop"]}  # valid cells only, all of them
    invalid = cells.loc[~cells.valid]
    assert len(invalid) > 0, "the fixture has no invalid cell, so the next check would test nothing"
    assert (invalid["crop"] == "").all()  # invalid cells get no crop file
    # the crops on disk are the pipeline's crops, bit for bit
    results = {r.image_id: r for r in CellPipeline(TruthSegmenter(samples), CONFIG, workers=0, options=PipelineOptions(encode_masks=False)).run(
        comp.train_dir, sorted(train.ID), progress=False)}
    for row in cells[cells.valid].itertuples():
        r = results[row.image_id]
        k = r.table.index[r.table.cell_id == row.cell_id][0]
        np.testing.assert_array_equal(read_crop(whole.parent / row.crop), r.crops[k])
    # two shards (the second through torchrun-style environment variables), then the CLI merge
    out = tmp_path / "sharded"
    build_training_set(comp.root, out, TruthSegmenter(samples), CONFIG, dataclasses.replace(quiet, shard=(0, 2)))
    with pytest.raises(FileNotFoundError, match="1/2"):
        merge_shards(out, CONFIG)
    from hpa_kernel.cli.cells import _shard

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = type("Args", (), {"shard": None})()
    assert _shard(args) == (1, 2)
    build_training_set(comp.root, out, TruthSegmenter(samples), CONFIG, dataclasses.replace(quiet, shard=_shard(args)))
    assert main(["-q", "cells", "--merge", "--out", str(out), "--crop-size", "64"]) == 0
    merged = pd.read_csv(out / "cells.csv", dtype={"image_id": str, "crop": str, "labels": str}, keep_default_na=False)
    pd.testing.assert_frame_equal(merged, cells)


def test_read_crop_round_trip_and_errors(tmp_path):
    from hpa_kernel.cells.builder import parse_shard, read_crop, write_crop

    crop = np.random.default_rng(0).integers(0, 256, (32, 32, 4), dtype=np.uint8)
    write_crop(tmp_path / "a.png", crop)
    np.testing.assert_array_equal(read_crop(tmp_path / "a.png"), crop)
    with pytest.raises(FileNotFoundError):
        read_crop(tmp_path / "none.png")
    with pytest.raises(ValueError, match="i/n"):
        parse_shard("3")
    with pytest.raises(ValueError, match="0 <= i < n"):
        parse_shard("2/2")


def test_giving_up_on_an_image_is_logged_with_its_id(images, caplog):
    folder, ids, samples = images

    class NeverDone(CellPipeline):
        def _submit(self, entry):  # the image never gets a result
            pass

    with caplog.at_level("WARNING", logger="hpa_kernel.cells.pipeline"):
        results = list(NeverDone(TruthSegmenter(samples), CONFIG, workers=0).run(folder, ids[:1], progress=False))
    assert isinstance(results[0], ImageFailure) and "gave up" in results[0].reason
    assert any(ids[0] in r.getMessage() and "gave up" in r.getMessage() for r in caplog.records)


def test_large_arrays_travel_through_shared_memory():
    from multiprocessing.shared_memory import SharedMemory

    from hpa_kernel.cells import pipeline

    maps = SegmentationMaps(nuclei=np.arange(300 * 300, dtype=np.int32).reshape(300, 300), cell=np.zeros((2, 2), np.uint8))
    blocks: list = []
    parked = pipeline._park_tree((maps, [np.ones((200, 200, 4), np.uint8)], "x"), blocks)
    assert isinstance(parked[0].nuclei, pipeline._SharedArray) and isinstance(parked[1][0], pipeline._SharedArray)
    assert isinstance(parked[0].cell, np.ndarray), "small arrays are pickled as usual"
    assert len(blocks) == 2
    back = pipeline._unpark_tree(parked, unlink=False)
    np.testing.assert_array_equal(back[0].nuclei, maps.nuclei)
    assert back[1][0].shape == (200, 200, 4) and back[1][0].sum() == 200 * 200 * 4 and back[2] == "x"
    names = [b.name for b in blocks]
    pipeline._release(blocks)
    for name in names:
        with pytest.raises(FileNotFoundError):
            SharedMemory(name=name)


def test_two_workers_leave_no_shared_memory(images, monkeypatch):
    """Every shared-memory block this run's main process creates or receives is gone afterwards.

    Only this run's own block names are checked (other processes on the machine may create and
    remove blocks meanwhile, so the whole ``/dev/shm`` listing is no evidence)."""
    from multiprocessing.shared_memory import SharedMemory

    from hpa_kernel.cells import pipeline

    folder, ids, samples = images
    names = []
    real_park, real_unpark = pipeline._park, pipeline._unpark

    def park(array):
        handle, block = real_park(array)
        names.append(handle.name)
        return handle, block

    def unpark(handle, unlink):
        names.append(handle.name)
        return real_unpark(handle, unlink)

    monkeypatch.setattr(pipeline, "_park", park)
    monkeypatch.setattr(pipeline, "_unpark", unpark)
    results = list(CellPipeline(TruthSegmenter(samples), CONFIG, workers=2).run(folder, ids[:3], progress=False))
    assert all(r.ok for r in results) and all(r.crops.nbytes >= 64 * 64 * 4 for r in results)
    assert names, "the run moved nothing through shared memory"
    left = []
    for name in set(names):
        try:
            block = SharedMemory(name=name)
        except FileNotFoundError:
            continue
        block.close()
        left.append(name)
    assert not left, f"shared-memory blocks left behind: {left}"


def test_milimed2021_crops_are_uint16_through_a_worker(images):
    """CellConfig.crop reaches the worker; the team's uint16 crops come back through shared memory."""
    from hpa_kernel.cells.crops import crop_cells
    from hpa_kernel.io import read_image

    folder, ids, samples = images
    config = dataclasses.replace(CONFIG, crop="milimed2021")
    results = list(CellPipeline(TruthSegmenter(samples), config, workers=1).run(folder, ids[:2], progress=False))
    for r, s in zip(results, samples):
        assert r.crops.dtype == np.uint16 and r.crops.shape[1:] == (64, 64, 4)
        image = read_image(folder, r.image_id)
        expected = crop_cells(image, s.cell_mask, r.table["cell_id"].tolist(), size=64, mode="milimed2021")
        np.testing.assert_array_equal(r.crops, expected)
    assert CONFIG.crop == "kit2025" and CONFIG.table_settings() == config.table_settings()  # the cache key ignores the crop
    with pytest.raises(ValueError, match="crop must be one of"):
        CellConfig(crop="team")
