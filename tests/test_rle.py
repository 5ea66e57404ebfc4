"""EncodedMask codec: the reference vectors, pycocotools as an oracle, the crop fast path, errors."""

from __future__ import annotations

import base64
import hashlib
import json
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpa_kernel.submission.rle import (
    EMPTY_MASK_2048,
    counts_string_to_runs,
    decode_mask,
    decode_runs,
    encode_label_crop,
    encode_label_image,
    encode_mask,
    mask_area,
    runs_to_counts_string,
)


def _vectors(reference):
    return json.loads((reference / "metric" / "mask_encoding_vectors.json").read_text())["vectors"]


VECTOR_NAMES = [
    "small_6x8",
    "nonsquare_5x7",
    "full_4x4",
    "empty_2048",
    "empty_1728",
    "empty_3072",
    "kaggle_sample_721568e01a744247",
    "kaggle_sample_7b018c5e3a20daba",
]


@pytest.fixture(scope="module")
def vectors(reference):
    return {v["name"]: v for v in _vectors(reference)}


def test_every_vector_is_covered(vectors):
    assert sorted(vectors) == sorted(VECTOR_NAMES)


def _coco_reference(mask: np.ndarray) -> str:
    """The recipe of README section 5, with pycocotools itself."""
    from pycocotools import mask as coco

    counts = coco.encode(np.asfortranarray(mask.astype(np.uint8).reshape(mask.shape + (1,))))[0]["counts"]
    return base64.b64encode(zlib.compress(counts, 9)).decode("ascii")


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vector_decodes_and_reencodes_byte_for_byte(vectors, name):
    v = vectors[name]
    mask = decode_mask(v["encoded"], v["height"], v["width"])
    assert mask.shape == (v["height"], v["width"]) and mask.dtype == bool
    assert int(mask.sum()) == v["num_foreground_pixels"]
    if "rows" in v:
        expected = np.array([[ch == "1" for ch in row] for row in v["rows"]])
        np.testing.assert_array_equal(mask, expected)
    if "sha256_of_rowmajor_uint8_mask" in v:
        digest = hashlib.sha256(np.ascontiguousarray(mask, dtype=np.uint8).tobytes()).hexdigest()
        assert digest == v["sha256_of_rowmajor_uint8_mask"]
        rows, cols = np.nonzero(mask)
        assert [rows.min(), rows.max(), cols.min(), cols.max()] == v["bbox_rows_cols_inclusive"]
    assert encode_mask(mask) == v["encoded"]
    assert mask_area(v["encoded"], v["height"], v["width"]) == v["num_foreground_pixels"]


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vector_intermediate_steps(vectors, name):
    v = vectors[name]
    counts_text = v["coco_counts_ascii"].encode("ascii")
    assert zlib.compress(counts_text, 9).hex() == v["zlib_level9_hex"]
    runs = counts_string_to_runs(counts_text)
    assert int(runs.sum()) == v["height"] * v["width"]
    if v.get("column_major_runs") is not None:
        assert runs.tolist() == v["column_major_runs"]
    assert runs_to_counts_string(runs) == counts_text


def test_kaggle_sample_depends_on_height_and_width_order(vectors):
    v = vectors["kaggle_sample_721568e01a744247"]
    swapped = decode_mask(v["encoded"], v["width"], v["height"])  # same pixel count, other orientation
    digest = hashlib.sha256(np.ascontiguousarray(swapped, dtype=np.uint8).tobytes()).hexdigest()
    assert digest != v["sha256_of_rowmajor_uint8_mask"]


def test_empty_placeholder_constant():
    assert decode_mask(EMPTY_MASK_2048, 2048, 2048).sum() == 0
    assert encode_mask(np.zeros((2048, 2048), dtype=np.uint8)) == EMPTY_MASK_2048


def test_encode_accepts_bool_int_and_float_01():
    mask = np.zeros((9, 5), dtype=bool)
    mask[2:6, 1:4] = True
    expected = _coco_reference(mask)
    for arr in (mask, mask.astype(np.uint8), mask.astype(np.int64), mask.astype(np.float32), np.asfortranarray(mask)):
        assert encode_mask(arr) == expected


def test_decode_runs_are_column_major_intervals():
    mask = np.zeros((4, 3), dtype=bool)
    mask[3, 0] = mask[0, 1] = True  # one run crossing from column 0 into column 1
    mask[1:3, 2] = True
    starts, ends = decode_runs(encode_mask(mask), 4, 3)
    assert starts.tolist() == [3, 9] and ends.tolist() == [5, 11]


def test_decode_runs_leaves_out_zero_length_foreground_runs():
    # runs bg 4, fg 0, bg 4, fg 2, bg 6: the same pixels as bg 8, fg 2, bg 6
    text = base64.b64encode(zlib.compress(runs_to_counts_string(np.array([4, 0, 4, 2, 6])), 9)).decode()
    starts, ends = decode_runs(text, 4, 4)
    assert starts.tolist() == [8] and ends.tolist() == [10]
    assert np.array_equal(decode_mask(text, 4, 4), decode_mask(encode_mask(decode_mask(text, 4, 4)), 4, 4))
    empty = base64.b64encode(zlib.compress(runs_to_counts_string(np.array([4, 0, 12])), 9)).decode()
    assert decode_runs(empty, 4, 4)[0].size == 0


# --------------------------------------------------------------------------- property tests


@st.composite
def label_images(draw):
    """A small label image with cell 7 inside a random box (possibly touching the borders)."""
    height = draw(st.integers(1, 14))
    width = draw(st.integers(1, 14))
    y0 = draw(st.integers(0, height - 1))
    y1 = draw(st.integers(y0 + 1, height))
    x0 = draw(st.integers(0, width - 1))
    x1 = draw(st.integers(x0 + 1, width))
    cells = draw(st.lists(st.booleans(), min_size=(y1 - y0) * (x1 - x0), max_size=(y1 - y0) * (x1 - x0)))
    other = draw(st.integers(0, 2**31 - 1))
    label = np.random.default_rng(other).choice([0, 3], size=(height, width)).astype(np.int32)
    label[y0:y1, x0:x1] = np.where(np.array(cells).reshape(y1 - y0, x1 - x0), 7, label[y0:y1, x0:x1])
    return label, (y0, x0, y1, x1)


@settings(max_examples=300, deadline=None)
@given(label_images())
def test_crop_encoder_equals_full_encoder_and_pycocotools(case):
    label, (y0, x0, y1, x1) = case
    height, width = label.shape
    # Cell 7 lies inside the box; pixels of other cells there must be ignored.
    label = label.copy()
    outside = np.ones_like(label, dtype=bool)
    outside[y0:y1, x0:x1] = False
    label[outside & (label == 7)] = 0
    mask = label == 7
    expected = _coco_reference(mask)
    assert encode_mask(mask) == expected
    assert encode_label_crop(label[y0:y1, x0:x1], 7, (y0, x0, y1, x1), height, width) == expected
    np.testing.assert_array_equal(decode_mask(expected, height, width), mask)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32 - 1), st.floats(0, 1))
def test_random_masks_round_trip(height, width, seed, density):
    mask = np.random.default_rng(seed).random((height, width)) < density
    encoded = encode_mask(mask)
    assert encoded == _coco_reference(mask)
    np.testing.assert_array_equal(decode_mask(encoded, height, width), mask)
    assert mask_area(encoded, height, width) == int(mask.sum())


def test_large_mask_matches_pycocotools():
    rng = np.random.default_rng(3)
    mask = np.zeros((1728, 1728), dtype=bool)
    mask[300:700, 1000:1500] = rng.random((400, 500)) < 0.8
    mask[1727, 1727] = mask[0, 0] = True
    encoded = encode_mask(mask)
    assert encoded == _coco_reference(mask)
    np.testing.assert_array_equal(decode_mask(encoded, 1728, 1728), mask)


def test_encode_label_image_all_cells_and_ids():
    label = np.zeros((30, 20), dtype=np.uint16)
    label[0:5, 0:20] = 1  # touches three borders
    label[10:30, 15:20] = 4  # bottom-right corner
    label[12:14, 2:5] = 9
    encoded = encode_label_image(label)
    assert list(encoded) == [1, 4, 9]
    for cell, text in encoded.items():
        assert text == _coco_reference(label == cell)
    assert list(encode_label_image(label, ids=[9, 1])) == [1, 9]
    with pytest.raises(ValueError, match=r"\[2\]"):
        encode_label_image(label, ids=[1, 2])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "mask, match",
    [
        (np.zeros((3, 3, 1), dtype=bool), "2-D"),
        (np.zeros((0, 4), dtype=bool), "at least one row"),
        (np.full((2, 2), 2, dtype=np.uint8), "only 0 and 1"),
        (np.full((2, 2), 0.5), "only 0 and 1"),
        (np.array([["a", "b"]]), "dtype"),
    ],
)
def test_encode_mask_rejects_bad_input(mask, match):
    with pytest.raises(ValueError, match=match):
        encode_mask(mask)


def test_encode_label_crop_checks_bbox():
    label = np.ones((3, 4), dtype=np.int32)
    with pytest.raises(ValueError, match="inside an image"):
        encode_label_crop(label, 1, (0, 0, 3, 4), 2, 10)
    with pytest.raises(ValueError, match="needs"):
        encode_label_crop(label, 1, (0, 0, 3, 3), 10, 10)
    with pytest.raises(ValueError, match="four integers"):
        encode_label_crop(label, 1, (0, 0, 3), 10, 10)
    with pytest.raises(ValueError, match="height"):
        encode_label_crop(label, 1, (0, 0, 3, 4), 0, 10)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty"),
        ("not base64!", "base64"),
        ("eNoLCAgIMAEABJkBdQ", "base64"),  # padding cut off
        (_b64(b"plain text, not zlib"), "zlib"),
        (_b64(zlib.compress(b"PPPP4", 9)), "RLE covers 4194304 pixels"),  # a 2048x2048 mask
        (_b64(zlib.compress(b"3\x7f", 9)), "invalid character"),
        (_b64(zlib.compress(b"3`", 9)), "truncated"),
        (_b64(zlib.compress(b"", 9)), "counts string is empty"),
        (_b64(zlib.compress(b"1O", 9)), "negative run length"),
        ("é", "ASCII"),
    ],
)
def test_decode_reports_what_failed(text, match):
    with pytest.raises(ValueError, match=match):
        decode_mask(text, 4, 4)


def test_decode_checks_size_arguments():
    with pytest.raises(ValueError, match="height"):
        decode_mask(EMPTY_MASK_2048, -1, 2048)
    with pytest.raises(ValueError, match="width"):
        decode_mask(EMPTY_MASK_2048, 2048, 2048.0)
    with pytest.raises(ValueError, match="must be a str"):
        decode_mask(None, 4, 4)
