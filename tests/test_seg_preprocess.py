"""Pre- and post-processing of the HPA segmentation networks against hpacellseg's recorded tensors."""

from __future__ import annotations

import numpy as np
import pytest

from hpa_kernel.segmentation import preprocess


@pytest.fixture(scope="module")
def refs(reference):
    with np.load(reference / "segmentation" / "pred_refs.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("mode,suffix", [("skimage018", "_skimage018"), ("skimage", "")])
def test_inputs_equal_reference_bit_exactly(refs, mode, suffix):
    cell = preprocess.cell_input(refs["red"], refs["yellow"], refs["blue"], resize_mode=mode)
    nuclei = preprocess.nuclei_input(refs["blue"], resize_mode=mode)
    assert cell.dtype == nuclei.dtype == np.float32
    assert cell.shape == nuclei.shape == (3, 512, 512)
    np.testing.assert_array_equal(cell, refs[f"cell_input_pad0{suffix}"][0])
    np.testing.assert_array_equal(nuclei, refs[f"nuclei_input_pad0{suffix}"][0])


def test_default_is_the_2021_resize(refs):
    nuclei = preprocess.nuclei_input(refs["blue"])
    np.testing.assert_array_equal(nuclei, refs["nuclei_input_pad0_skimage018"][0])
    # and the two variants really differ on uint8 input
    assert np.abs(refs["nuclei_input_pad0_skimage018"] - refs["nuclei_input_pad0"]).max() > 0.01


def test_padding_corners_equal_reference(refs):
    cell = preprocess.cell_input(refs["red"], refs["yellow"], refs["blue"], padding=True, resize_mode="skimage")
    nuclei = preprocess.nuclei_input(refs["blue"], padding=True, resize_mode="skimage")
    assert cell.shape == nuclei.shape == (3, 576, 576)
    for name, x in (("cell", cell), ("nuclei", nuclei)):
        np.testing.assert_array_equal(x[:, :48, :48], refs[f"{name}_input_pad1_topleft"][0])
        np.testing.assert_array_equal(x[:, -48:, -48:], refs[f"{name}_input_pad1_bottomright"][0])
        np.testing.assert_array_equal(x[:, 32:544, 32:544], refs[f"{name}_input_pad0"][0])


def test_pad_symmetric_widths():
    import cv2

    a = np.arange(40 * 64 * 3, dtype=float).reshape(40, 64, 3)
    p = preprocess.pad_symmetric(a)
    assert p.shape == (40 + 32 + 24, 64 + 32 + 32, 3)
    np.testing.assert_array_equal(p[31, 32:96], a[0])  # edge repeated
    np.testing.assert_array_equal(p, cv2.copyMakeBorder(a, 32, 24, 32, 32, cv2.BORDER_REFLECT))


@pytest.mark.parametrize("padding", [False, True])
def test_restore_equals_reference(refs, padding):
    prob = refs["fake_softmax"]
    if padding:
        # what the network returns for the padded input: anything outside [32:544] is cropped away
        prob = np.pad(prob, ((0, 0), (32, 32), (32, 32)), mode="reflect")
    nuclei = preprocess.restore_nuclei(prob, (2048, 2048), padding=padding)
    cell = preprocess.restore_cell(prob, (2048, 2048), padding=padding)
    assert nuclei.dtype == cell.dtype == np.uint8
    np.testing.assert_array_equal(nuclei, refs["nuclei_restored"])
    np.testing.assert_array_equal(cell, refs["cell_restored"])


def test_probabilities_to_ubyte_rounds_half_to_even():
    p = np.array([0.5 / 255, 1.5 / 255, 2.5 / 255, 1.0, 1.2, -0.1], dtype=np.float32)
    np.testing.assert_array_equal(preprocess.probabilities_to_ubyte(p), np.rint(np.clip(p * np.float32(255), 0, 255)))


def _softmax(logits):
    e = np.exp(logits - logits.max(0, keepdims=True))
    return (e / e.sum(0, keepdims=True)).astype(np.float32)


def test_non_square_restore_keeps_height_and_width():
    rng = np.random.default_rng(0)
    H, W = 192, 128  # network resolution 48 x 32
    prob = _softmax(rng.standard_normal((3, 48, 32)) * 2)
    nuclei = preprocess.restore_nuclei(prob, (H, W))
    cell = preprocess.restore_cell(prob, (H, W))
    assert nuclei.shape == cell.shape == (H, W, 3)  # hpacellseg would give (128, 192, 3)
    u = np.transpose(preprocess.probabilities_to_ubyte(prob), (1, 2, 0)).copy()
    u[..., 0] = 0
    np.testing.assert_array_equal(nuclei, np.repeat(np.repeat(u, 4, 0), 4, 1))
    np.testing.assert_array_equal(cell, np.repeat(np.repeat(u, 4, 0), 4, 1))
    # padded: 48 -> 48 + 32 + 16, 32 -> 32 + 32 + 32
    padded = np.pad(prob, ((0, 0), (32, 16), (32, 32)), mode="edge")
    np.testing.assert_array_equal(preprocess.restore_nuclei(padded, (H, W), padding=True), nuclei)
    with pytest.raises(ValueError, match=r"expected \(48, 32\)"):
        preprocess.restore_nuclei(prob[:, :, :30], (H, W))


def test_non_square_input_shapes():
    rng = np.random.default_rng(1)
    planes = [rng.integers(0, 256, (256, 192), dtype=np.uint8) for _ in range(3)]
    assert preprocess.cell_input(*planes).shape == (3, 64, 48)
    assert preprocess.nuclei_input(planes[2]).shape == (3, 64, 48)
    assert preprocess.cell_input(*planes, padding=True).shape == (3, 64 + 32 + 32, 48 + 32 + 16)
    assert preprocess.network_shape((256, 192), 0.25, padding=True) == (64 + 32 + 32, 48 + 32 + 16)
    assert preprocess.network_shape((256, 192), 0.25) == (64, 48)
    # each output channel comes from its own input channel
    cell = preprocess.cell_input(*planes)
    np.testing.assert_array_equal(cell[2], preprocess.nuclei_input(planes[2])[2])
    assert preprocess.scaled_shape((1030, 2048), 0.25) == (258, 512)


@pytest.mark.parametrize("mode", preprocess.RESIZE_MODES)
def test_bit_depths_agree(mode):
    rng = np.random.default_rng(2)
    u8 = [rng.integers(0, 256, (128, 160), dtype=np.uint8) for _ in range(3)]
    ref = preprocess.cell_input(*u8, resize_mode=mode)
    as_float = preprocess.cell_input(*[p / 255.0 for p in u8], resize_mode=mode)
    as_u16 = preprocess.cell_input(*[p.astype(np.uint16) * 257 for p in u8], resize_mode=mode)
    if mode == "skimage":
        np.testing.assert_allclose(as_float, ref, atol=1e-6, rtol=0)
        np.testing.assert_allclose(as_u16, ref, atol=1e-6, rtol=0)
    else:
        # the 2021 filter truncates in the integer dtype: uint8 loses up to 1/255 per axis pass
        step = 1 / 255 / preprocess.STD[0]
        assert np.abs(as_u16 - ref).max() < 2.5 * step
        assert np.abs(as_float - ref).max() < 2.5 * step
        # float input: both variants agree
        np.testing.assert_allclose(as_float, preprocess.cell_input(*[p / 255.0 for p in u8], resize_mode="skimage"), atol=1e-6)


def test_input_validation():
    a = np.zeros((64, 64), np.uint8)
    with pytest.raises(ValueError, match="resize_mode"):
        preprocess.nuclei_input(a, resize_mode="skimage020")
    with pytest.raises(ValueError, match="scale_factor"):
        preprocess.nuclei_input(a, scale_factor=0)
    with pytest.raises(ValueError, match="yellow has shape"):
        preprocess.cell_input(a, np.zeros((64, 32), np.uint8), a)
    with pytest.raises(ValueError, match="share a dtype"):
        preprocess.cell_input(a, a.astype(np.uint16), a)
    with pytest.raises(ValueError, match="2-D"):
        preprocess.nuclei_input(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8, uint16 or float"):
        preprocess.nuclei_input(a.astype(np.int32))
    # empty planes and non-finite floats are named, not an obscure error deep in the resize
    with pytest.raises(ValueError, match="blue is empty"):
        preprocess.nuclei_input(np.zeros((0, 64), np.uint8))
    with pytest.raises(ValueError, match="red is empty"):
        preprocess.cell_input(*[np.zeros((0, 0), np.uint8)] * 3, padding=True)
    with pytest.raises(ValueError, match="yellow contains NaN"):
        preprocess.cell_input(a / 255.0, np.full((64, 64), np.nan), a / 255.0)
    with pytest.raises(ValueError, match=r"shape must be the \(H, W\)"):
        preprocess.restore_nuclei(np.zeros((3, 1, 1), np.float32), (0, 0))
