"""Network inputs and restored outputs of HPA-Cell-Segmentation's ``CellSegmentator``.

Reproduces ``pred_nuclei``/``pred_cells`` of hpacellseg 0.1.8 around the networks
(``shared/reference/segmentation/README.md`` section 4):

Input, per image
    1. nuclei: the blue channel; cells: ``(red, yellow, blue)``;
    2. downscale by ``scale_factor`` (0.25) like ``skimage.transform.rescale`` with order 1,
       anti-aliasing and values scaled to [0, 1] (uint8 / 255, uint16 / 65535; float as is);
    3. optionally pad (top/left 32, bottom/right ``32 - n % 32``, edge-repeating reflection);
    4. float32, then per channel ``(x - mean) / std`` in float32 with the DPN ImageNet constants
       (:data:`MEAN`, :data:`STD`). Nuclei get the resized blue channel three times, each with its
       channel's mean.

Output (restore), per image
    nuclei: probabilities to uint8 (``rint(p * 255)`` in float32), crop the padding, channel 0 set
    to 0, then resize to the image size with ``cv2.INTER_AREA``; cells: the same but the resize is
    done on the float32 probabilities and the uint8 conversion comes last.

Two anti-aliasing variants (``resize_mode``):

``"skimage018"`` (default)
    What ran in 2021 (scikit-image <= 0.18): the Gaussian anti-aliasing filter is applied to the
    image in its own integer dtype (so a uint8 image is filtered to uint8), then it is converted to
    float and interpolated. Equal to the reference ``*_input_pad0_skimage018`` tensors.
``"skimage"``
    scikit-image >= 0.19: the image is converted to float first, then filtered and interpolated.
    Equal to the reference ``*_input_pad0`` tensors. For float input both variants agree.

Difference from the original, on purpose: OpenCV reads ``dsize`` as (width, height), and
hpacellseg passes (height, width), so for a non-square image its restored maps come back with
height and width swapped (and stretched). :func:`restore_nuclei` and :func:`restore_cell` return
the correct ``(H, W, 3)``; for square images (all of the competition's) the result is identical.
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = [
    "MEAN",
    "STD",
    "PAD",
    "RESIZE_MODES",
    "scaled_shape",
    "network_shape",
    "rescale",
    "pad_symmetric",
    "normalize",
    "nuclei_input",
    "cell_input",
    "probabilities_to_ubyte",
    "restore_nuclei",
    "restore_cell",
]

logger = logging.getLogger(__name__)

#: Per-channel mean and std of the DPN ImageNet preprocessing used by hpacellseg (float32).
MEAN: np.ndarray = np.array([124 / 255, 117 / 255, 104 / 255], dtype=np.float32)
STD: np.ndarray = np.array([1 / (0.0167 * 255)] * 3, dtype=np.float32)
#: Padding added on the top and left (and at least on the bottom and right) when ``padding=True``.
PAD: int = 32
RESIZE_MODES: tuple[str, ...] = ("skimage018", "skimage")


def _check_mode(resize_mode: str) -> None:
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")


def _check_scale(scale_factor: float) -> None:
    if not 0 < scale_factor <= 1:
        raise ValueError(f"scale_factor must be in (0, 1], got {scale_factor}")


def scaled_shape(shape: tuple[int, int], scale_factor: float) -> tuple[int, int]:
    """(h, w) after rescaling, as scikit-image rounds it (half to even, at least 1).

    >>> scaled_shape((2048, 1030), 0.25)
    (512, 258)
    """
    return tuple(int(max(1, v)) for v in np.round(np.asarray(shape[:2], dtype=float) * scale_factor))


def network_shape(shape: tuple[int, int], scale_factor: float = 0.25, padding: bool = False) -> tuple[int, int]:
    """(h, w) of the network input for an image of ``shape``: scaled, then padded if ``padding``.

    >>> network_shape((2048, 1030), 0.25, padding=True)
    (576, 320)
    """
    h, w = scaled_shape(shape, scale_factor)
    if padding:
        return h + PAD + (PAD - h % PAD), w + PAD + (PAD - w % PAD)
    return h, w


def rescale(image: np.ndarray, scale_factor: float = 0.25, resize_mode: str = "skimage018") -> np.ndarray:
    """Downscale an (H, W, C) image like ``skimage.transform.rescale(image, s, channel_axis=-1)``.

    Parameters
    ----------
    image : ndarray, shape (H, W, C)
        uint8, uint16 or float. Integers are scaled to [0, 1] by their dtype's maximum.
    scale_factor : float
        In (0, 1].
    resize_mode : {"skimage018", "skimage"}
        Where the anti-aliasing Gaussian runs: on the image in its own dtype (scikit-image 0.18,
        the 2021 behaviour) or after conversion to float (scikit-image >= 0.19).

    Returns
    -------
    ndarray, shape (h, w, C), float64 (float32 for float32 input)
    """
    from scipy import ndimage as ndi
    from skimage.transform import resize

    _check_mode(resize_mode)
    _check_scale(scale_factor)
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, C), got shape {image.shape}")
    out_shape = (*scaled_shape(image.shape[:2], scale_factor), image.shape[2])
    if resize_mode == "skimage":
        return resize(image, out_shape, order=1, mode="reflect", anti_aliasing=True, clip=True, preserve_range=False)
    factors = np.asarray(image.shape, dtype=float) / np.asarray(out_shape, dtype=float)
    if np.any(factors > 1):
        sigma = np.maximum(0, (factors - 1) / 2)
        # In the image's own dtype: scipy returns uint8 for uint8 input, truncating per axis pass.
        image = ndi.gaussian_filter(image, sigma, mode="mirror", truncate=4.0)
    return resize(image, out_shape, order=1, mode="reflect", anti_aliasing=False, clip=True, preserve_range=False)


def pad_symmetric(image: np.ndarray, pad: int = PAD) -> np.ndarray:
    """Pad (h, w, C) by ``pad`` on top/left and ``pad - n % pad`` on bottom/right, repeating edges.

    Equal to ``cv2.copyMakeBorder(..., cv2.BORDER_REFLECT)`` as hpacellseg calls it; a side whose
    size is already a multiple of ``pad`` still gets ``pad`` more.
    """
    h, w = image.shape[:2]
    widths = [(pad, pad - h % pad), (pad, pad - w % pad)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, widths, mode="symmetric")


def normalize(image: np.ndarray, mean: np.ndarray = MEAN) -> np.ndarray:
    """(h, w, 3) float in [0, 1] -> (3, h, w) float32, ``(x - mean) / std`` per channel in float32."""
    chw = np.ascontiguousarray(np.transpose(image, (2, 0, 1)), dtype=np.float32)
    chw -= np.asarray(mean, dtype=np.float32)[:, None, None]
    chw /= STD[:, None, None]
    return chw


def _check_plane(name: str, plane: np.ndarray, shape: tuple[int, ...] | None = None) -> None:
    if not isinstance(plane, np.ndarray) or plane.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (H, W), got {getattr(plane, 'shape', type(plane))}")
    if shape is not None and plane.shape != shape:
        raise ValueError(f"{name} has shape {plane.shape}, expected {shape} like the other channels")
    if plane.size == 0:
        raise ValueError(f"{name} is empty: got shape {plane.shape}, expected at least 1 x 1 pixels")
    if not (plane.dtype in (np.uint8, np.uint16) or np.issubdtype(plane.dtype, np.floating)):
        raise ValueError(f"{name} must be uint8, uint16 or float, got {plane.dtype}")
    if np.issubdtype(plane.dtype, np.floating) and not np.isfinite(plane).all():
        raise ValueError(f"{name} contains NaN or infinity; expected finite values in [0, 1]")


def _finish(resized: np.ndarray, padding: bool, mean: np.ndarray = MEAN) -> np.ndarray:
    if padding:
        resized = pad_symmetric(resized)
    return normalize(resized, mean)


def nuclei_input(
    blue: np.ndarray, scale_factor: float = 0.25, padding: bool = False, resize_mode: str = "skimage018"
) -> np.ndarray:
    """The nuclei network's input for one image: (3, h, w) float32.

    The blue channel is rescaled once and used for all three input channels, each normalised with
    its own mean (hpacellseg stacks blue three times and rescales; the channels are independent).
    """
    _check_plane("blue", blue)
    resized = rescale(blue[:, :, None], scale_factor, resize_mode)
    return _finish(np.repeat(resized, 3, axis=2), padding)


def cell_input(
    red: np.ndarray,
    yellow: np.ndarray,
    blue: np.ndarray,
    scale_factor: float = 0.25,
    padding: bool = False,
    resize_mode: str = "skimage018",
) -> np.ndarray:
    """The cell network's input for one image: (3, h, w) float32 from (red, yellow, blue)."""
    _check_plane("red", red)
    _check_plane("yellow", yellow, red.shape)
    _check_plane("blue", blue, red.shape)
    if not red.dtype == yellow.dtype == blue.dtype:
        raise ValueError(f"red, yellow and blue must share a dtype, got {red.dtype}, {yellow.dtype}, {blue.dtype}")
    return _finish(rescale(np.dstack((red, yellow, blue)), scale_factor, resize_mode), padding)


def probabilities_to_ubyte(p: np.ndarray) -> np.ndarray:
    """skimage ``img_as_ubyte`` for probabilities: ``rint(p * 255)`` in float32, clipped, uint8.

    >>> probabilities_to_ubyte(np.array([0.0, 0.5, 1.0], dtype=np.float32)).tolist()
    [0, 128, 255]
    """
    scaled = np.multiply(p, np.float32(255), dtype=np.float32)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _check_probabilities(prob: np.ndarray, shape: tuple[int, int], scale_factor: float, padding: bool) -> None:
    if prob.ndim != 3 or prob.shape[0] != 3:
        raise ValueError(f"probabilities must be (3, h, w), got shape {prob.shape}")
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be the (H, W) of the image, at least 1 x 1, got {tuple(shape)}")
    h, w = network_shape(shape, scale_factor, padding)
    if prob.shape[1:] != (h, w):
        raise ValueError(
            f"probabilities have spatial shape {prob.shape[1:]}, expected {(h, w)} for an image of "
            f"shape {tuple(shape)} at scale {scale_factor} with padding={padding}"
        )


def _crop_hwc(hwc: np.ndarray, shape: tuple[int, int], scale_factor: float, padding: bool) -> np.ndarray:
    if not padding:
        return hwc
    h, w = scaled_shape(shape, scale_factor)
    return hwc[PAD : PAD + h, PAD : PAD + w]


def _resize_area(hwc: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from hpa_kernel._cv2 import cv2

    # cv2 takes dsize as (width, height); hpacellseg passed (height, width). See the module docstring.
    return cv2.resize(np.ascontiguousarray(hwc), (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_AREA)


def restore_nuclei(
    prob: np.ndarray, shape: tuple[int, int], scale_factor: float = 0.25, padding: bool = False
) -> np.ndarray:
    """``pred_nuclei``'s output from the softmax of one image: (H, W, 3) uint8, channel 0 = 0.

    Parameters
    ----------
    prob : ndarray, shape (3, h, w), float32
        Softmax probabilities (background, border, interior) at network resolution (padded if
        ``padding``).
    shape : (H, W)
        The original image size. Unlike hpacellseg, non-square images come back as (H, W) and
        not transposed.
    """
    _check_probabilities(prob, shape, scale_factor, padding)
    u = np.transpose(probabilities_to_ubyte(prob), (1, 2, 0))
    u = np.array(_crop_hwc(u, shape, scale_factor, padding))
    u[..., 0] = 0
    return _resize_area(u, shape)


def restore_cell(
    prob: np.ndarray, shape: tuple[int, int], scale_factor: float = 0.25, padding: bool = False
) -> np.ndarray:
    """``pred_cells``'s output from the softmax of one image: (H, W, 3) uint8, channel 0 = 0.

    As :func:`restore_nuclei`, except that the area resize runs on the float32 probabilities and
    the conversion to uint8 comes last.
    """
    _check_probabilities(prob, shape, scale_factor, padding)
    p = np.transpose(np.asarray(prob, dtype=np.float32), (1, 2, 0))
    p = np.array(_crop_hwc(p, shape, scale_factor, padding))
    p[..., 0] = 0
    return probabilities_to_ubyte(_resize_area(p, shape))
