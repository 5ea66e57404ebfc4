"""Image IDs are plain names; nothing is read or written outside the given folders (issue 16, items 3 and 6)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from hpa_kernel.io import read_image, write_image


@pytest.mark.parametrize("bad", ["../train/abc", "a/b", "a\\b", "/etc/passwd", "..", "x..y", "", "a\x00b", "C:abc"])
def test_check_image_id_refuses_paths(bad):
    from hpa_kernel.io import check_image_id

    with pytest.raises(ValueError, match="not a plain name"):
        check_image_id(bad)


def test_plain_ids_pass():
    from hpa_kernel.io import check_image_id

    for good in ("5d4a2e3f-bba4-11e8-b2b9-ac1f6b6435d0", "img_0", "a.b"):
        assert check_image_id(good) == good


def test_read_and_write_refuse_an_id_that_leaves_the_folder(tmp_path):
    image = np.zeros((8, 8, 4), np.uint8)
    write_image(tmp_path / "train", "secret", image)
    (tmp_path / "test").mkdir()
    with pytest.raises(ValueError, match="not a plain name"):
        read_image(tmp_path / "test", "../train/secret")
    with pytest.raises(ValueError, match="not a plain name"):
        write_image(tmp_path / "test", "../escaped", image)
    assert not list(tmp_path.glob("escaped*"))


def test_cells_refuses_an_escaping_train_id(tmp_path, caplog):
    from hpa_kernel.cells.builder import BuildOptions, build_training_set
    from hpa_kernel.segmentation import create_segmenter
    from hpa_kernel.synthetic import make_competition

    comp = make_competition(tmp_path / "data", n_train=2, n_test=0, size=128, seed=3)
    train = pd.read_csv(comp.train_csv)
    victim = train["ID"].iloc[0]
    # an image stored outside train/, reachable only through the path in the ID
    write_image(tmp_path, "escaped", read_image(comp.root / "train", victim))
    bad = "../../escaped"
    train.loc[len(train)] = [bad, train["Label"].iloc[0]]
    train.to_csv(comp.train_csv, index=False)
    out = tmp_path / "work" / "out"
    with caplog.at_level(logging.ERROR):
        build_training_set(comp.root, out, create_segmenter("classic"), options=BuildOptions(workers=0, progress=False))
    assert not list(tmp_path.rglob("escaped_[0-9]*.png")), "a crop was written outside the output folder"
    cells = pd.read_csv(out / "cells.csv")
    assert set(cells["image_id"]) <= set(train["ID"].iloc[:-1])
    failures = pd.read_csv(out / "failures.shard-0-of-1.csv")
    assert bad in set(failures["image_id"])
    assert any(bad in r.getMessage() for r in caplog.records)


def test_segment_goes_on_after_a_bad_image(tmp_path, caplog):
    from hpa_kernel.cli import main

    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    for image_id in ("a", "b", "c"):
        write_image(images, image_id, rng.integers(0, 255, (64, 64, 4), dtype=np.uint8))
    (images / "b_green.png").write_bytes(b"not a png")
    with caplog.at_level(logging.INFO):
        rc = main(["segment", "--images", str(images), "--out", str(tmp_path / "out"), "--segmenter", "classic",
                   "--batch-size", "2"])  # fmt: skip
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a_cellmask.png", "a_nucleimask.png", "c_cellmask.png", "c_nucleimask.png",
    ]
    summary = [r.getMessage() for r in caplog.records if "segmented 2 of 3" in r.getMessage()]
    assert summary and "b:" in summary[0] and "b_green.png" in summary[0]
