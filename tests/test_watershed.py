"""The kit's 2021 watershed: equal to scikit-image 0.24's, and label_cell independent of the installed version."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hpa_kernel.segmentation.watershed import watershed

ROOT = Path(__file__).resolve().parents[1]


def _skimage_2021():
    """scikit-image's watershed when it is the 2021 algorithm (< 0.25); the test is skipped otherwise."""
    import skimage

    if tuple(int(part) for part in skimage.__version__.split(".")[:2]) >= (0, 25):
        pytest.skip(f"scikit-image {skimage.__version__} no longer has the 2021 watershed to compare with")
    from skimage.segmentation import watershed as skimage_watershed

    return skimage_watershed


@st.composite
def _cases(draw):
    height, width = draw(st.integers(1, 17)), draw(st.integers(1, 17))
    levels = draw(st.integers(1, 6))  # few levels: plateaus and ties everywhere
    dtype = draw(st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.float64, np.int64, np.float32]))
    image = draw(hnp.arrays(np.int64, (height, width), elements=st.integers(0, levels - 1)))
    if draw(st.booleans()):
        image = -image  # negative values, as label_cell's -distance
    if np.dtype(dtype).kind == "u":
        image = image - image.min()
    image = image.astype(dtype)
    if dtype == np.float64 and draw(st.booleans()):
        image = image / 3.0  # non-integer values
    density = draw(st.sampled_from([0.02, 0.1, 0.3]))
    seeds = draw(hnp.arrays(np.float64, (height, width), elements=st.floats(0, 1)))
    labels = draw(hnp.arrays(np.int32, (height, width), elements=st.integers(1, 4)))
    markers = np.where(seeds < density, labels, 0).astype(draw(st.sampled_from([np.int32, np.int64, np.uint16])))
    mask = None
    if draw(st.booleans()):
        mask = draw(hnp.arrays(np.bool_, (height, width), elements=st.booleans()))
    return image, markers, mask, draw(st.booleans())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_equals_skimage_024_on_random_inputs(case):
    skimage_watershed = _skimage_2021()
    image, markers, mask, line = case
    expected = skimage_watershed(image, markers, mask=mask, watershed_line=line)
    found = watershed(image, markers, mask, watershed_line=line)
    assert found.dtype == expected.dtype
    assert np.array_equal(found, expected), f"{np.count_nonzero(found != expected)} pixels differ"


@pytest.mark.parametrize("line", [False, True])
@pytest.mark.parametrize("shape", [(63, 47), (129, 101)])
def test_equals_skimage_024_on_blobs(shape, line):
    # large marker regions of equal value: the heap alone decides which marker pixel leaves first
    from scipy import ndimage as ndi

    skimage_watershed = _skimage_2021()
    rng = np.random.default_rng(shape[0] + line)
    relief = np.rint(ndi.gaussian_filter(rng.random(shape), 2) * 30).astype(np.uint8)
    markers = ndi.label(relief < np.quantile(relief, 0.15))[0]
    markers[rng.random(shape) < 0.01] = 7  # scattered single-pixel markers sharing one label
    mask = ndi.gaussian_filter(rng.random(shape), 3) > 0.45
    for image in (relief, 255 - relief, -relief.astype(np.float64)):
        expected = skimage_watershed(image, markers, mask=mask, watershed_line=line)
        assert np.array_equal(watershed(image, markers, mask, watershed_line=line), expected)


def test_plateau_split_by_age():
    # two markers on a flat plateau: each pixel goes to the marker that reaches it first
    image = np.zeros((1, 7), dtype=np.uint8)
    markers = np.array([[1, 0, 0, 0, 0, 0, 2]], dtype=np.int32)
    assert watershed(image, markers).tolist() == [[1, 1, 1, 1, 2, 2, 2]]
    assert watershed(image, markers, watershed_line=True).tolist() == [[1, 1, 1, 0, 2, 2, 2]]


def test_mask_and_dtype():
    image = np.array([[0, 5, 0], [0, 5, 0]], dtype=np.uint8)
    markers = np.array([[3, 0, 0], [0, 0, 0]], dtype=np.uint16)
    mask = np.array([[1, 1, 0], [1, 1, 1]], dtype=bool)
    found = watershed(image, markers, mask)
    assert found.dtype == np.uint16
    assert found.tolist() == [[3, 3, 0], [3, 3, 3]]
    markers[0, 2] = 9  # a marker outside the mask does not count
    assert watershed(image, markers, mask)[0, 2] == 0


def test_rejects_bad_inputs():
    image = np.zeros((4, 5), dtype=np.uint8)
    with pytest.raises(ValueError, match="markers.*shape"):
        watershed(image, np.zeros((5, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="mask.*shape"):
        watershed(image, np.zeros((4, 5), dtype=np.int32), np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="image.*2-D"):
        watershed(np.zeros((2, 4, 5)), np.zeros((2, 4, 5), dtype=np.int32))
    with pytest.raises(ValueError, match="markers.*integer"):
        watershed(image, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="image.*NaN"):
        watershed(np.full((4, 5), np.nan), np.ones((4, 5), dtype=np.int32))


_INDEPENDENCE_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import skimage
    from hpa_kernel.segmentation.postprocess import label_cell, label_nuclei

    assert "torch" not in sys.modules
    reference = sys.argv[1]
    differ = []
    for case in ["01", "02", "03", "04", "05", "06"]:
        with np.load(f"{reference}/segmentation/label_cell_case{case}.npz") as data:
            nuclei, cells = label_cell(data["nuclei_pred"], data["cell_pred"])
            found = {"nuclei_label": nuclei, "cell_label": cells, "label_nuclei": label_nuclei(data["nuclei_pred"])}
            for name, array in found.items():
                expected = data[name + "_ws_pre025"]
                if array.dtype != expected.dtype or not np.array_equal(array, expected):
                    differ.append(f"{case}:{name}")
    print("scikit-image", skimage.__version__, "differ:", differ)
    sys.exit(1 if differ else 0)
    """
)


@pytest.mark.slow
def test_label_cell_equals_2021_references_under_new_skimage(tmp_path, reference):
    """In a fresh venv with scikit-image >= 0.25 (from the registry), label_cell still gives the 2021 masks."""
    venv = Path(os.environ.get("HPA_SKIMAGE_NEW_VENV", tmp_path / "venv"))
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        packages = ["numpy", "scipy", "numba", "scikit-image>=0.25", "opencv-python-headless"]
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True, timeout=1200)
    script = tmp_path / "independence.py"
    script.write_text(_INDEPENDENCE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([str(python), str(script), str(reference)], env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout + run.stderr
    version = run.stdout.split()[1]
    assert tuple(int(part) for part in version.split(".")[:2]) >= (0, 25), run.stdout
