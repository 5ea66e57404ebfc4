"""The HPA-Cell-Segmentation segmenter: hpacellseg's two DPN-UNets and ``label_cell``, batched.

:class:`HPASegmenter` reproduces ``CellSegmentator(scale_factor=0.25, multi_channel_model=True)``
of hpacellseg 0.1.8 followed by ``label_cell``, without hpacellseg or pytorch_zoo:

* the nuclei network sees the blue channel (three times), the cell network red, yellow and blue,
  both downscaled by ``scale_factor`` (:mod:`.preprocess`);
* images of the same size run through each network together, ``batch_size`` at a time (the
  original runs one image per call; with the pickled BatchNorm mode reproduced per image the
  outputs are the same, see :mod:`.dpn_unet`);
* the softmax maps are restored to (H, W, 3) uint8 exactly as ``pred_nuclei``/``pred_cells`` do
  (except that non-square images keep their orientation) and handed to
  :func:`~hpa_kernel.segmentation.postprocess.label_cell`.

Create it through the factory::

    seg = create_segmenter("hpa", nuclei="dpn_unet_nuclei_v1.pth", cell="dpn_unet_cell_3ch_v1.pth")
    maps = seg.predict(images)                    # network stage, main process
    labels = [seg.postprocess_fn(m) for m in maps]  # CPU stage, picklable for worker processes

The weight files are resolved from the argument (a file, or a folder holding the official name),
then ``$HPA_KERNEL_WEIGHTS``, then the Kaggle input folders. A missing file is an error; this
segmenter never falls back to the classic one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpa_kernel import paths
from hpa_kernel.manifest import SegmentationWeights
from hpa_kernel.segmentation.base import BaseSegmenter, SegmentationMaps

__all__ = ["HPASegmenter", "NUCLEI_WEIGHTS", "CELL_WEIGHTS", "postprocess_maps", "resolve_weight_file"]

logger = logging.getLogger(__name__)

#: File names of the official weights (zenodo, hpacellseg 0.1.8), as the weights manifest names them.
NUCLEI_WEIGHTS: str = SegmentationWeights().nuclei.file
CELL_WEIGHTS: str = SegmentationWeights().cell.file


def postprocess_maps(maps: SegmentationMaps) -> tuple[np.ndarray, np.ndarray]:
    """``label_cell(maps.nuclei, maps.cell)``: (nuclei_label, cell_label), both uint16.

    A top-level function so that it pickles into worker processes; it imports no torch.
    """
    from hpa_kernel.segmentation.postprocess import label_cell

    return label_cell(maps.nuclei, maps.cell)


def resolve_weight_file(
    path: str | os.PathLike | None, filename: str, what: str, kaggle_root: Path | None = None
) -> Path:
    """Find a weight file: ``path`` (a file, or a folder with ``filename``), ``$HPA_KERNEL_WEIGHTS``, Kaggle inputs.

    Parameters
    ----------
    path : path or None
        A file, or a folder holding ``filename``. When given it must exist; nothing else is tried.
    filename : str
        The file name looked for in folders (:data:`NUCLEI_WEIGHTS`, :data:`CELL_WEIGHTS`).
    what : str
        ``"nuclei"`` or ``"cell"``, for the error message.
    kaggle_root : path, optional
        Override of the Kaggle input folder (tests).

    Returns
    -------
    Path
        The weight file.

    Raises
    ------
    FileNotFoundError
        Naming the file and every place that was looked at.
    """
    tried: list[str] = []
    if path is not None:
        p = Path(path)
        candidate = p / filename if p.is_dir() else p
        if candidate.is_file():
            return candidate
        raise FileNotFoundError(f"{what} weights: {candidate} does not exist")
    env = os.environ.get(paths.WEIGHTS_ENV)
    if env:
        candidate = Path(env) / filename
        if candidate.is_file():
            return candidate
        tried.append(str(candidate))
    else:
        tried.append(f"${paths.WEIGHTS_ENV} (not set)")
    dirs = paths.kaggle_input_dirs(kaggle_root)
    for d in dirs:
        if (d / filename).is_file():
            return d / filename
    root = paths.KAGGLE_INPUT if kaggle_root is None else kaggle_root
    tried.append(f"{root}/*/{filename} ({len(dirs)} folders)")
    raise FileNotFoundError(
        f"{what} weights {filename} not found; looked at: " + "; ".join(tried) + f". Pass {what}=PATH explicitly."
    )


def _check_images(images: Sequence[np.ndarray]) -> None:
    if isinstance(images, np.ndarray):
        raise ValueError("images must be a list of (H, W, 4) arrays, got a single array; wrap it in a list")
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 4:
            found = getattr(image, "shape", type(image))
            raise ValueError(f"images[{i}] must be an (H, W, 4) R, G, B, Y array, got {found}")
        if image.size == 0:
            raise ValueError(f"images[{i}] is empty: got shape {image.shape}, expected at least 1 x 1 pixels")
        if not (image.dtype in (np.uint8, np.uint16) or np.issubdtype(image.dtype, np.floating)):
            raise ValueError(f"images[{i}] must be uint8, uint16 or float, got {image.dtype}")


class HPASegmenter(BaseSegmenter):
    """hpacellseg's nuclei and cell DPN-UNets plus ``label_cell``, with batched inference.

    Parameters
    ----------
    nuclei, cell : path, optional
        The weight files (``dpn_unet_nuclei_v1.pth``, ``dpn_unet_cell_3ch_v1.pth``) or folders
        holding them. When omitted: ``$HPA_KERNEL_WEIGHTS``, then the Kaggle input folders.
    device : {"cpu", "cuda"} or torch.device
    batch_size : int
        Images per network call (images of equal size only).
    fp16 : bool
        float16 autocast for the networks (CUDA only; ignored with a warning on CPU). Changes the
        output slightly.
    channels_last : bool
        NHWC memory format (CUDA only; ignored with a warning on CPU).
    scale_factor : float
        Downscaling before the networks (hpacellseg: 0.25).
    padding : bool
        hpacellseg's ``padding`` (default True, as the 4th-place team ran it): pad the network
        input by 32 on the top/left and up to the next multiple of 32 on the bottom/right, so that
        any H x W works (1728 -> 432 is not a multiple of 32). Without it, the scaled image sides
        must already be multiples of 32 (2048 -> 512), and the output differs near the borders.
    resize_mode : {"skimage018", "skimage"}
        Anti-aliasing of the downscale; see :mod:`.preprocess`. ``"skimage018"`` is the 2021
        behaviour.
    batchnorm : {"pickled", "running", "per_image"}
        BatchNorm statistics: as pickled in the weight files (what hpacellseg does), running
        statistics, or per-image statistics.
    nuclei_sha256, cell_sha256 : str, optional
        Expected hashes of the weight files.
    """

    name = "hpa"
    postprocess_fn = staticmethod(postprocess_maps)

    def __init__(
        self,
        nuclei: str | os.PathLike | None = None,
        cell: str | os.PathLike | None = None,
        device: str = "cpu",
        batch_size: int = 4,
        fp16: bool = False,
        channels_last: bool = False,
        scale_factor: float = 0.25,
        padding: bool = True,
        resize_mode: str = "skimage018",
        batchnorm: str = "pickled",
        nuclei_sha256: str | None = None,
        cell_sha256: str | None = None,
    ):
        import torch

        from hpa_kernel.segmentation.preprocess import _check_mode, _check_scale
        from hpa_kernel.segmentation.weights import load_dpn_unet

        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        _check_scale(scale_factor)  # checked before the weights are loaded
        _check_mode(resize_mode)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={device!r} requested but CUDA is not available; use device='cpu'")
        if self.device.type != "cuda":
            for flag, value in (("fp16", fp16), ("channels_last", channels_last)):
                if value:
                    logger.warning("%s=True only applies on CUDA; ignored on %s", flag, self.device)
            fp16 = channels_last = False
        self.batch_size = int(batch_size)
        self.fp16 = bool(fp16)
        self.channels_last = bool(channels_last)
        self.scale_factor = float(scale_factor)
        self.padding = bool(padding)
        self.resize_mode = resize_mode

        self.nuclei_path = resolve_weight_file(nuclei, NUCLEI_WEIGHTS, "nuclei")
        self.cell_path = resolve_weight_file(cell, CELL_WEIGHTS, "cell")
        self.nuclei_net, self.nuclei_weights = load_dpn_unet(self.nuclei_path, nuclei_sha256, self.device, batchnorm)
        self.cell_net, self.cell_weights = load_dpn_unet(self.cell_path, cell_sha256, self.device, batchnorm)
        self.batchnorm = batchnorm
        for net in (self.nuclei_net, self.cell_net):
            net.requires_grad_(False)
            if self.channels_last:
                net.to(memory_format=torch.channels_last)

    # -- settings ---------------------------------------------------------------------------------
    def settings(self) -> dict:
        """Everything that changes the output (cache key of the cells stage)."""
        from hpa_kernel.segmentation.postprocess import skimage_version

        return {
            "name": self.name,
            "nuclei_sha256": self.nuclei_weights.sha256,
            "cell_sha256": self.cell_weights.sha256,
            "nuclei_batchnorm_per_image": sorted(k for k, v in self.nuclei_net.batchnorm_stats().items() if v),
            "cell_batchnorm_per_image": sorted(k for k, v in self.cell_net.batchnorm_stats().items() if v),
            "scale_factor": self.scale_factor,
            "padding": self.padding,
            "resize_mode": self.resize_mode,
            "device": self.device.type,
            "fp16": self.fp16,
            "channels_last": self.channels_last,
            "postprocess": "label_cell",
            "skimage": skimage_version(),
        }

    # -- prediction -------------------------------------------------------------------------------
    def _network_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        from hpa_kernel.segmentation.preprocess import network_shape

        h, w = network_shape(shape, self.scale_factor, self.padding)
        if not self.padding and (h % 32 or w % 32):
            raise ValueError(
                f"an image of {shape[0]}x{shape[1]} scales to {h}x{w} at scale_factor={self.scale_factor}, "
                f"which is not a multiple of 32; use padding=True (or a scale that gives multiples of 32)"
            )
        return h, w

    def _run(self, net, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities (N, 3, h, w) float32 for a float32 input batch."""
        import torch

        x = torch.from_numpy(batch).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.fp16:
                with torch.autocast(device_type="cuda", dtype=torch.float16):
                    logits = net(x)
            else:
                logits = net(x)
            prob = torch.softmax(logits.float(), dim=1)
        return prob.cpu().numpy()

    def _predict_group(self, images: list[np.ndarray]) -> list[SegmentationMaps]:
        from hpa_kernel.segmentation import preprocess as P

        kw = {"scale_factor": self.scale_factor, "padding": self.padding, "resize_mode": self.resize_mode}
        shape = images[0].shape[:2]
        nuclei_in = np.stack([P.nuclei_input(im[..., 2], **kw) for im in images])
        cell_in = np.stack([P.cell_input(im[..., 0], im[..., 3], im[..., 2], **kw) for im in images])
        nuclei_prob = self._run(self.nuclei_net, nuclei_in)
        cell_prob = self._run(self.cell_net, cell_in)
        rkw = {"scale_factor": self.scale_factor, "padding": self.padding}
        return [
            SegmentationMaps(
                nuclei=P.restore_nuclei(nuclei_prob[i], shape, **rkw), cell=P.restore_cell(cell_prob[i], shape, **rkw)
            )
            for i in range(len(images))
        ]

    def predict(self, images: Sequence[np.ndarray]) -> list[SegmentationMaps]:
        """Network stage for a list of (H, W, 4) R, G, B, Y images; the order of ``images`` is kept.

        Returns
        -------
        list of SegmentationMaps
            ``nuclei`` and ``cell``: (H, W, 3) uint8, channel 1 border x255, channel 2 interior
            x255, channel 0 zero (hpacellseg's ``pred_nuclei``/``pred_cells``).
        """
        _check_images(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            shape = image.shape[:2]
            self._network_shape(shape)
            groups.setdefault(shape, []).append(i)
        out: list[SegmentationMaps | None] = [None] * len(images)
        for shape, idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                logger.debug("segmenting %d image(s) of %dx%d", len(chunk), *shape)
                for i, maps in zip(chunk, self._predict_group([images[i] for i in chunk])):
                    out[i] = maps
        return out
