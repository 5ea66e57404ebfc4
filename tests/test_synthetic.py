"""The synthetic generator: determinism, truth that agrees with the pixels, class patterns, weak labels."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from hpa_kernel.classes import NEGATIVE, parse_labels
from hpa_kernel.io import read_image
from hpa_kernel.submission import read_sample_submission
from hpa_kernel.synthetic import make_competition, render_composite, synthesize_image


def _digest(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def comp(tmp_path_factory):
    return make_competition(tmp_path_factory.mktemp("syn"), n_train=4, n_test=2, size=256, seed=7)


@pytest.fixture(scope="module")
def sample():
    return synthesize_image(11, 512, 512)


def test_layout_and_csv_formats(comp):
    train = comp.read_train()
    sub = read_sample_submission(comp.sample_submission)
    assert len(train) == 4 and len(sub) == 2
    assert set(train["ID"]).isdisjoint(sub["ID"])
    assert (sub["ImageWidth"] == 256).all() and (sub["ImageHeight"] == 256).all()
    assert (sub["PredictionString"] == "").all()
    for split, ids in (("train", train["ID"]), ("test", sub["ID"])):
        cells = pd.read_csv(comp.truth_cells(split), dtype={"Labels": str}, keep_default_na=False)
        assert list(cells.columns) == ["ImageID", "CellID", "Labels"]
        for text in cells["Labels"]:
            labels = parse_labels(text)
            assert labels and "|".join(map(str, labels)) == text
            assert NEGATIVE not in labels or labels == (NEGATIVE,)
        masks = np.load(comp.truth_masks(split))
        nuclei = np.load(comp.truth_dir / f"{split}_nuclei.npz")
        info = pd.read_csv(comp.truth_dir / f"{split}_cell_info.csv")
        assert len(info) == len(cells)
        assert info["border_cut"].between(0, 1).all()
        for image_id in ids:
            image = read_image(comp.train_dir if split == "train" else comp.test_dir, image_id)
            assert image.shape == (256, 256, 4) and image.dtype == np.uint8
            m, n = masks[image_id], nuclei[image_id]
            assert m.dtype == np.int32 and m.shape == (256, 256)
            ids_here = sorted(cells.loc[cells["ImageID"] == image_id, "CellID"])
            assert ids_here == list(range(1, m.max() + 1)) == sorted(set(np.unique(m)) - {0})
            # every nucleus lies inside its own cell, and every cell has a nucleus
            assert np.all(m[n > 0] == n[n > 0])
            assert sorted(set(np.unique(n)) - {0}) == ids_here


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_competition(tmp_path / "a", n_train=2, n_test=1, size=128, seed=3)
    b = make_competition(tmp_path / "b", n_train=2, n_test=1, size=128, seed=3)
    c = make_competition(tmp_path / "c", n_train=2, n_test=1, size=128, seed=4)
    da, db, dc = _digest(a.root), _digest(b.root), _digest(c.root)
    assert any(k.startswith("truth/") for k in da) and any(k.endswith("_green.png") for k in da)
    assert da == db
    assert set(da.values()).isdisjoint(v for k, v in dc.items() if k.endswith(".png") or k.endswith(".npz"))


def test_truth_agrees_with_pixels(sample):
    img = sample.image.astype(np.float32)
    cell, nuc = sample.cell_mask > 0, sample.nuclei_mask > 0
    background = ~cell & (sample.debris_mask == 0)
    blue, red, yellow = img[..., 2], img[..., 0], img[..., 3]
    assert blue[nuc].mean() > 5 * blue[~cell].mean() + 10
    cyto = cell & ~nuc
    assert red[cyto].mean() > 3 * red[background].mean()
    assert yellow[cyto].mean() > 3 * yellow[background].mean()
    assert 3 <= len(sample.cell_labels) <= 20


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    import cv2

    inner = cv2.erode(mask.astype(np.uint8), np.ones((2 * width + 1, 2 * width + 1), np.uint8))
    return mask & ~inner.astype(bool)


def _compartments(s, k):
    cell = s.cell_mask == k
    nuc = s.nuclei_mask == k
    ring = _ring(cell, 3) & ~nuc
    cyto = cell & ~nuc & ~ring
    return nuc, cyto, ring


@pytest.mark.parametrize(
    "cls, check",
    [
        (0, lambda n, c, r: n > 3 * c),  # nucleoplasm
        (16, lambda n, c, r: c > 2 * n),  # cytosol
        (13, lambda n, c, r: r > 2.5 * c and r > 2.5 * n),  # plasma membrane
        (18, lambda n, c, r: max(n, c, r) < 12),  # negative
    ],
)
def test_class_patterns(cls, check):
    s = synthesize_image(100 + cls, 512, 512, classes=[cls], negative_fraction=0.0)
    green = s.image[..., 1].astype(np.float32)
    checked = 0
    for k, labels in s.cell_labels.items():
        if labels != (cls,) or k in s.mitotic or s.nucleus_cut[k] > 0:
            continue
        n, c, r = (green[m].mean() for m in _compartments(s, k))
        assert check(n, c, r), (cls, k, n, c, r)
        checked += 1
    assert checked >= 2


def _corr(a, b):
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


def _single_label_cells(cls, seed, n=512):
    s = synthesize_image(seed, n, n, classes=[cls], negative_fraction=0.0)
    cells = [k for k, lab in s.cell_labels.items() if lab == (cls,) and k not in s.mitotic and s.nucleus_cut[k] == 0]
    return s, cells


def test_nuclear_patterns():
    # nuclear membrane: the nucleus rim is brighter than the nucleus interior and the far cytoplasm
    s, cells = _single_label_cells(1, 201)
    green = s.image[..., 1].astype(np.float32)
    assert len(cells) >= 2
    for k in cells:
        nuc = s.nuclei_mask == k
        rim = _ring(nuc, 2)
        inner = nuc & ~_ring(nuc, 6)
        n, c, _ = _compartments(s, k)
        assert green[rim].mean() > 2 * green[inner].mean() and green[rim].mean() > 2 * green[c].mean()
    # nucleoli and nuclear bodies: bright dots inside the nucleus, so a nuclear max far above its median
    for cls in (2, 5):
        s, cells = _single_label_cells(cls, 300 + cls)
        green = s.image[..., 1].astype(np.float32)
        assert len(cells) >= 2
        for k in cells:
            n, c, _ = _compartments(s, k)
            assert green[n].max() > 3 * np.median(green[n]) + 20
            assert np.percentile(green[n], 99.5) > 2 * np.percentile(green[c], 99.5)


def test_cytoplasmic_patterns_follow_their_markers():
    # ER follows the yellow texture, microtubules the red one; cytosol does not prefer either
    for cls, channel in ((6, 3), (10, 0)):
        s, cells = _single_label_cells(cls, 400 + cls)
        img = s.image.astype(np.float32)
        assert len(cells) >= 2
        for k in cells:
            _, c, _ = _compartments(s, k)
            assert _corr(img[..., 1][c], img[..., channel][c]) > 0.5, (cls, k)
    # aggresome: one bright blob, so the cell's max is far above its mean
    s, cells = _single_label_cells(15, 415)
    green = s.image[..., 1].astype(np.float32)
    for k in cells:
        cell = s.cell_mask == k
        assert green[cell].max() > 4 * green[cell].mean()


def test_mitotic_spindle_only_in_dividing_cells():
    s = synthesize_image(511, 512, 512, classes=[11])
    assert s.mitotic, "an image labelled Mitotic spindle must have a dividing cell"
    green = s.image[..., 1].astype(np.float32)
    blue = s.image[..., 2].astype(np.float32)
    for k, labels in s.cell_labels.items():
        assert (11 in labels) == (k in s.mitotic)
    mit = np.isin(s.cell_mask, list(s.mitotic))
    other = (s.cell_mask > 0) & ~mit
    assert green[mit].mean() > 4 * green[other].mean()
    # condensed chromatin is brighter than interphase nuclei
    chromatin = np.isin(s.nuclei_mask, list(s.mitotic))
    assert blue[chromatin].mean() > 1.2 * blue[(s.nuclei_mask > 0) & ~chromatin].mean()


def test_border_cut_binucleate_debris():
    from scipy import ndimage

    cut_seen = two_nuclei = debris_seen = 0
    for seed in range(6):
        s = synthesize_image(seed, 384, 384)
        img = s.image.astype(np.float32)
        assert not np.any((s.debris_mask > 0) & (s.cell_mask > 0))
        assert len(s.debris) == s.debris_mask.max()
        for d in s.debris:
            blob = s.debris_mask == d["id"]
            background = (s.cell_mask == 0) & (s.debris_mask == 0)
            assert img[blob].mean(axis=0).max() > 5 * img[background].mean(axis=0).max()
            debris_seen += 1
        for k, cut in s.nucleus_cut.items():
            if k in s.mitotic:
                continue
            nuc = s.nuclei_mask == k
            touches = nuc[0].any() or nuc[-1].any() or nuc[:, 0].any() or nuc[:, -1].any()
            assert 0.0 <= cut <= 0.75
            if cut > 0.02:
                assert touches, (seed, k, cut)
                cut_seen += 1
            if cut == 0:
                assert not touches, (seed, k)
        for k in s.binucleate:
            two_nuclei += ndimage.label(s.nuclei_mask == k)[1] == 2
    assert cut_seen >= 3 and two_nuclei >= 1 and debris_seen >= 2


def test_large_field_looks_like_hpa():
    s = synthesize_image(3, 2048, 2048)
    assert 10 <= len(s.cell_labels) <= 40
    areas = np.bincount(s.cell_mask.ravel())[1:]
    assert np.median(areas) > 30000  # cells of a few hundred pixels across, as in a real 2048 field


def test_weak_labels(comp):
    train = comp.read_train()
    cells = pd.read_csv(comp.truth_cells("train"), dtype={"Labels": str}, keep_default_na=False)
    partial = False
    for image_id, labels in zip(train["ID"], train["labels"]):
        per_cell = [set(parse_labels(t)) for t in cells.loc[cells["ImageID"] == image_id, "Labels"]]
        protein = set().union(*per_cell) - {NEGATIVE}
        # Negative only when no cell shows protein (the competition's meaning), never beside a class
        assert set(labels) == (protein or {NEGATIVE})
        partial |= any(set(labels) - c for c in per_cell)
    assert partial


def test_image_negative_only_without_protein():
    mixed = synthesize_image(5, 256, 256, classes=[0], negative_fraction=0.5)
    cells = set(mixed.cell_labels.values())
    assert (NEGATIVE,) in cells and (0,) in cells  # some cells negative, some not
    assert mixed.image_labels == (0,)
    assert synthesize_image(5, 256, 256, classes=[NEGATIVE]).image_labels == (NEGATIVE,)


def test_cover_classes(tmp_path):
    comp = make_competition(tmp_path / "c", n_train=19, n_test=0, size=128, seed=3, cover_classes=True)
    train = comp.read_train()
    for i, labels in enumerate(train["labels"]):
        assert i in labels and (i != NEGATIVE or labels == (NEGATIVE,))


def test_sixteen_bit(tmp_path):
    s = synthesize_image(2, 256, 256, bit_depth=16)
    assert s.image.dtype == np.uint16
    assert s.image.max() > 20000
    assert np.any(s.image % 257 != 0)  # not 8-bit data scaled up
    comp = make_competition(tmp_path, n_train=1, n_test=1, size=128, seed=0, bit_depth=16)
    image_id = read_sample_submission(comp.sample_submission)["ID"][0]
    assert read_image(comp.test_dir, image_id).dtype == np.uint16


def test_non_square(tmp_path):
    comp = make_competition(tmp_path, n_train=0, n_test=2, shape=(200, 320), seed=5)
    sub = read_sample_submission(comp.sample_submission)
    assert (sub["ImageWidth"] == 320).all() and (sub["ImageHeight"] == 200).all()
    image = read_image(comp.test_dir, sub["ID"][0])
    assert image.shape == (200, 320, 4)
    assert np.load(comp.truth_masks("test"))[sub["ID"][0]].shape == (200, 320)


def test_composite(sample):
    rgb = render_composite(sample)
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    assert rgb[sample.nuclei_mask > 0, 2].mean() > rgb[sample.nuclei_mask > 0, 0].mean()


def test_rewrite_same_folder_and_stale_images(tmp_path):
    first = make_competition(tmp_path, n_train=1, n_test=2, size=128, seed=1)
    before = _digest(first.root)
    assert _digest(make_competition(tmp_path, n_train=1, n_test=2, size=128, seed=1).root) == before
    with pytest.raises(ValueError, match="overwrite"):
        make_competition(tmp_path, n_train=1, n_test=1, size=128, seed=2)
    comp = make_competition(tmp_path, n_train=1, n_test=1, size=128, seed=2, overwrite=True)
    from hpa_kernel.io import list_image_ids

    assert list_image_ids(comp.test_dir) == sorted(read_sample_submission(comp.sample_submission)["ID"])
    assert list_image_ids(comp.train_dir) == sorted(comp.read_train()["ID"])


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="bit_depth"):
        synthesize_image(0, 128, 128, bit_depth=12)
    with pytest.raises(ValueError, match="height"):
        synthesize_image(0, 10, 128)
    with pytest.raises(ValueError, match="Negative"):
        synthesize_image(0, 128, 128, classes=[0, 18])
    with pytest.raises(ValueError, match="n_train"):
        make_competition(tmp_path, n_train=-1)


def test_cli_writes_folder(tmp_path):
    from hpa_kernel.cli import main

    out = tmp_path / "cli"
    argv = ["synth", "--out", str(out), "--n-train", "1", "--n-test", "1", "--height", "128", "--width", "192"]
    assert main(argv) == 0
    sub = pd.read_csv(out / "sample_submission.csv")
    assert sub["ImageWidth"].tolist() == [192] and sub["ImageHeight"].tolist() == [128]
    assert (out / "train.csv").is_file() and (out / "synthetic.json").is_file()


def test_competition_sizes_mix_and_non_square(tmp_path, monkeypatch):
    """sizes="competition": the test split gets the real test set's sizes plus one non-square image."""
    from collections import Counter

    from hpa_kernel import synthetic
    from hpa_kernel.cli import main

    assert Counter(synthetic.competition_shapes(560)) == {(2048, 2048): 462, (1728, 1728): 68, (3072, 3072): 29,
                                                          (1728, 2048): 1}
    assert Counter(synthetic.competition_shapes(4)) == {(2048, 2048): 1, (1728, 1728): 1, (3072, 3072): 1, (1728, 2048): 1}
    with pytest.raises(ValueError, match="n_test must be an integer >= 4"):
        synthetic.competition_shapes(3)
    asked = []
    real = synthetic.synthesize_image

    def small(seed, height, width, **kw):  # record the size, draw a small image (the sizes are what is tested)
        asked.append((height, width))
        return real(seed, 64, 64, **kw)

    monkeypatch.setattr(synthetic, "synthesize_image", small)
    assert main(["-q", "synth", "--out", str(tmp_path / "c"), "--n-train", "1", "--n-test", "6", "--size", "128",
                 "--sizes", "competition"]) == 0
    sample = pd.read_csv(tmp_path / "c" / "sample_submission.csv")
    shapes = list(zip(sample["ImageHeight"], sample["ImageWidth"]))
    assert shapes == synthetic.competition_shapes(6) == asked[1:]
    assert asked[0] == (128, 128)  # the train image keeps --size
