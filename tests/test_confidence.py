"""Final confidences: cell/image blend over the other valid cells, then penalties (hand-computed)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hpa_kernel.confidence import final_confidence, image_context


def test_hand_computed_two_classes():
    p = np.array([[0.1, 0.8], [0.5, 0.2], [0.9, 0.5], [0.3, 0.3]])
    valid = np.array([True, True, True, False])
    # image terms: cell0 -> mean(c1,c2) = (0.7, 0.35); cell1 -> mean(c0,c2) = (0.5, 0.65)
    # cell2 -> mean(c0,c1) = (0.3, 0.5); cell3 (invalid) -> mean(c0,c1,c2) = (0.5, 0.5)
    expected_image = np.array([[0.7, 0.35], [0.5, 0.65], [0.3, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(image_context(p, valid), expected_image)
    out = final_confidence(p, valid, penalty=np.array([1.0, 0.5, 1.0, 0.2]))
    expected = np.array(
        [
            [0.7 * 0.1 + 0.3 * 0.7, 0.7 * 0.8 + 0.3 * 0.35],  # 0.28, 0.665
            [(0.7 * 0.5 + 0.3 * 0.5) * 0.5, (0.7 * 0.2 + 0.3 * 0.65) * 0.5],  # 0.25, 0.1675
            [0.7 * 0.9 + 0.3 * 0.3, 0.7 * 0.5 + 0.3 * 0.5],  # 0.72, 0.5
            [(0.7 * 0.3 + 0.3 * 0.5) * 0.2, (0.7 * 0.3 + 0.3 * 0.5) * 0.2],  # 0.072, 0.072
        ]
    )
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [0.28, 0.665], atol=1e-6)


def test_lone_cell_uses_its_own_prediction():
    p = np.array([[0.6, 0.1]])
    np.testing.assert_allclose(final_confidence(p), p, atol=1e-7)
    # one valid cell among invalid ones: the valid cell has no OTHER valid cell
    p = np.array([[0.6], [0.2], [0.4]])
    out = final_confidence(p, np.array([True, False, False]))
    np.testing.assert_allclose(out.ravel(), [0.6, 0.7 * 0.2 + 0.3 * 0.6, 0.7 * 0.4 + 0.3 * 0.6], atol=1e-6)
    # no valid cell at all: every cell falls back to itself
    out = final_confidence(p, np.zeros(3, dtype=bool))
    np.testing.assert_allclose(out.ravel(), [0.6, 0.2, 0.4], atol=1e-6)


def test_per_class_penalty_and_custom_weights():
    p = np.array([[0.5, 0.5], [0.1, 0.9]])
    pen = np.array([[1.0, 0.0], [0.5, 1.0]])
    out = final_confidence(p, penalty=pen, cell_weight=1.0, image_weight=0.0)
    np.testing.assert_allclose(out, [[0.5, 0.0], [0.05, 0.9]], atol=1e-6)


def test_empty_image():
    assert final_confidence(np.zeros((0, 19))).shape == (0, 19)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"probs": np.zeros(3)}, r"shape \(N, C\)"),
        ({"probs": np.full((2, 2), 1.5)}, r"\[0, 1\]"),
        ({"probs": np.zeros((2, 2), dtype=np.int64)}, "floating"),
        ({"probs": np.zeros((2, 2)), "valid": np.array([1, 0])}, "bool array of shape"),
        ({"probs": np.zeros((2, 2)), "penalty": np.ones(3)}, "penalty must have shape"),
        ({"probs": np.zeros((2, 2)), "penalty": np.array([1.0, 2.0])}, "penalty must be in"),
        ({"probs": np.zeros((2, 2)), "cell_weight": 0.5}, "sum to 1"),
    ],
)
def test_bad_inputs_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        final_confidence(**kwargs)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 7), st.integers(1, 4)), elements=st.floats(0, 1)),
    st.data(),
)
def test_matches_a_direct_loop(p, data):
    n = p.shape[0]
    valid = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    pen = np.array(data.draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)))
    out = final_confidence(p, valid, pen)
    for i in range(n):
        others = [j for j in range(n) if j != i and valid[j]]
        image = p[others].mean(axis=0) if others else p[i]
        np.testing.assert_allclose(out[i], (0.7 * p[i] + 0.3 * image) * pen[i], atol=1e-6)
    assert (out >= 0).all() and (out <= 1).all()


def test_submit_config_carries_the_blend_weights():
    from hpa_kernel.submission import SubmitConfig

    config = SubmitConfig(out="s.csv", cell_weight=0.6, image_weight=0.4)
    assert (config.cell_weight, config.image_weight) == (0.6, 0.4)
    with pytest.raises(ValueError, match="sum to 1"):
        SubmitConfig(out="s.csv", cell_weight=0.6, image_weight=0.3)
