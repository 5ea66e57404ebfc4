"""Reading HPA images: formats, bit depths and every error case."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from hpa_kernel import io
from hpa_kernel.submission import read_sample_submission
from hpa_kernel.classes import CLASS_NAMES, class_id, format_labels, labels_to_multihot, parse_labels


def _write_channels(folder, image_id, planes, ext=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for name, plane in zip(io.CHANNELS, planes):
        assert cv2.imwrite(str(folder / f"{image_id}_{name}{ext}"), plane)


def _planes(h=24, w=40, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    return [rng.integers(0, top, (h, w), dtype=dtype, endpoint=True) for _ in range(4)]


@pytest.mark.parametrize("dtype,ext", [(np.uint8, ".png"), (np.uint16, ".png"), (np.uint16, ".tif"), (np.uint8, ".tif")])
def test_read_image_preserves_order_shape_and_dtype(tmp_path, dtype, ext):
    planes = _planes(dtype=dtype)
    _write_channels(tmp_path, "abc", planes, ext)
    image = io.read_image(tmp_path, "abc")
    assert image.shape == (24, 40, 4) and image.dtype == dtype
    for k in range(4):
        np.testing.assert_array_equal(image[..., k], planes[k])


def test_read_jpg_is_lossy_but_close(tmp_path):
    yy, xx = np.mgrid[0:64, 0:64]
    smooth = ((xx + yy) * 2).astype(np.uint8)
    _write_channels(tmp_path, "j", [smooth] * 4, ".jpg")
    image = io.read_image(tmp_path, "j")
    assert image.dtype == np.uint8 and image.shape == (64, 64, 4)
    assert np.abs(image[..., 1].astype(int) - smooth).mean() < 3


def test_real_16bit_green_channel(reference):
    path = reference / "real" / "1000_A12_2_green.png"
    green = io.read_channel(path)
    assert green.dtype == np.uint16 and green.shape == (2048, 2048)
    assert int(green.max()) == 65089 and int(np.median(green)) == 0
    assert int(np.percentile(green, 99)) == pytest.approx(3961, abs=2)


def test_missing_channels_are_named(tmp_path):
    planes = _planes()
    _write_channels(tmp_path, "x", planes)
    (tmp_path / "x_green.png").unlink()
    (tmp_path / "x_yellow.png").unlink()
    with pytest.raises(FileNotFoundError) as err:
        io.read_image(tmp_path, "x")
    msg = str(err.value)
    assert "x_green.png" in msg and "x_yellow.png" in msg and "x_red" not in msg


def test_channels_of_different_sizes(tmp_path):
    planes = _planes()
    planes[2] = np.zeros((30, 40), np.uint8)
    _write_channels(tmp_path, "s", planes)
    with pytest.raises(io.ImageReadError, match=r"blue 30x40") as err:
        io.read_image(tmp_path, "s")
    assert "s_blue.png" in str(err.value) and str(tmp_path) in str(err.value)


def test_channels_of_different_bit_depth(tmp_path):
    planes = _planes()
    planes[3] = planes[3].astype(np.uint16) * 257
    _write_channels(tmp_path, "d", planes)
    with pytest.raises(io.ImageReadError, match="bit depth"):
        io.read_image(tmp_path, "d")


@pytest.mark.parametrize("content", [b"", b"not a png at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_corrupt_file_is_named(tmp_path, content):
    _write_channels(tmp_path, "c", _planes())
    (tmp_path / "c_blue.png").write_bytes(content)
    with pytest.raises(io.ImageReadError, match="c_blue.png"):
        io.read_image(tmp_path, "c")


def test_multichannel_file_is_reduced(tmp_path, caplog):
    planes = _planes()
    _write_channels(tmp_path, "m", planes)
    grey = planes[1]
    # A grey image saved as 3 identical planes gives that plane back, silently.
    cv2.imwrite(str(tmp_path / "m_green.png"), np.dstack([grey, grey, grey]))
    with caplog.at_level(logging.DEBUG, logger="hpa_kernel.io"):
        np.testing.assert_array_equal(io.read_image(tmp_path, "m")[..., 1], grey)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # A colour-coded yellow channel (signal in R and G, BGR order on disk) gives the signal back,
    # and the reduction by maximum is a WARNING naming the file.
    sig = planes[3]
    cv2.imwrite(str(tmp_path / "m_yellow.png"), np.dstack([np.zeros_like(sig), sig, sig]))
    with caplog.at_level(logging.DEBUG, logger="hpa_kernel.io"):
        np.testing.assert_array_equal(io.read_image(tmp_path, "m")[..., 3], sig)
    reduced = [r for r in caplog.records if "maximum" in r.getMessage()]
    assert len(reduced) == 1 and reduced[0].levelno == logging.WARNING and "m_yellow.png" in reduced[0].getMessage()
    # RGBA with alpha: the alpha plane is ignored.
    cv2.imwrite(str(tmp_path / "m_red.png"), np.dstack([planes[0]] * 3 + [np.full_like(sig, 255)]))
    np.testing.assert_array_equal(io.read_image(tmp_path, "m")[..., 0], planes[0])


def test_to_float():
    assert io.to_float(np.array([0, 65535], np.uint16)).tolist() == [0.0, 1.0]
    assert io.to_float(np.array([0, 255], np.uint8)).dtype == np.float32
    with pytest.raises(ValueError, match="dtype"):
        io.to_float(np.array([1], np.int64))


def test_write_then_read_and_list_ids(tmp_path):
    image = np.stack(_planes(16, 16, seed=3), axis=-1)
    io.write_image(tmp_path, "b", image)
    io.write_image(tmp_path, "a", image)
    assert io.list_image_ids(tmp_path) == ["a", "b"]
    np.testing.assert_array_equal(io.read_image(tmp_path, "b"), image)
    for ext in (".bmp", "png"):  # a file read_image would not find, or no extension at all
        with pytest.raises(ValueError, match="ext must be one of"):
            io.write_image(tmp_path, "c", image, ext=ext)
    assert io.list_image_ids(tmp_path) == ["a", "b"] and not list(tmp_path.glob("c_*"))


def test_find_competition_order(tmp_path, monkeypatch):
    comp = tmp_path / "comp"
    comp.mkdir()
    (comp / "sample_submission.csv").write_text("ID,ImageWidth,ImageHeight,PredictionString\n")
    assert io.find_competition(comp).root == comp
    monkeypatch.setenv("HPA_KERNEL_DATA", str(comp))
    assert io.find_competition().root == comp
    monkeypatch.delenv("HPA_KERNEL_DATA")
    kaggle = tmp_path / "kaggle_input"
    (kaggle / "other").mkdir(parents=True)
    (kaggle / "hpa-single-cell-image-classification").mkdir()
    (kaggle / "hpa-single-cell-image-classification" / "train.csv").write_text("ID,Label\n")
    found = io.find_competition(kaggle_root=kaggle)
    assert found.root.name == "hpa-single-cell-image-classification"
    with pytest.raises(FileNotFoundError, match="HPA_KERNEL_DATA"):
        io.find_competition(kaggle_root=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.find_competition(tmp_path / "missing")


def test_competition_csv_checks(tmp_path):
    (tmp_path / "train.csv").write_text("ID,Label\na,0|5\nb,\n")
    (tmp_path / "sample_submission.csv").write_text("ID,Width\nx,1\n")
    comp = io.Competition(tmp_path)
    train = comp.read_train()
    assert train["labels"].tolist() == [(0, 5), ()]
    with pytest.raises(ValueError, match="ImageWidth"):
        read_sample_submission(comp.sample_submission)


def test_classes_parsing_and_formatting():
    assert len(CLASS_NAMES) == 19 and CLASS_NAMES[18] == "Negative" and CLASS_NAMES[0] == "Nucleoplasm"
    assert parse_labels("16|0|5") == (0, 5, 16)
    assert parse_labels(float("nan")) == ()
    assert format_labels(parse_labels("5|0|16")) == "0|5|16"
    assert class_id("mitotic spindle") == 11
    assert labels_to_multihot([1, 17]).sum() == 2
    for bad in ("0|19", "0|x", "0||1"):
        with pytest.raises(ValueError):
            parse_labels(bad)
    with pytest.raises(ValueError, match="unknown class"):
        class_id("Nucleus")


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    io.atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new"

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        io.atomic_write(target, broken)
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
