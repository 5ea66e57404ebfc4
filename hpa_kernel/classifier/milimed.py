"""The 4th-place team's (CroDoc / milimed, HPA 2021) EfficientNet-B0 checkpoints, run by the kit.

The team published their submission notebook (``HPAsubmission.ipynb`` in
``CroDoc/HPA2021-data-centric-approach``) and its seven trained checkpoints as a Kaggle dataset
(``cropytorchmodels``). Each ``.pt`` file is the ``state_dict`` of::

    net = efficientnet_pytorch.EfficientNet.from_name('efficientnet-b0', in_channels=4,
                                                     num_classes=18, image_size=512)
    net._fc = nn.Sequential(nn.Linear(1280, 18), nn.Sigmoid())

This module maps that key layout (``_conv_stem``, ``_bn0``, ``_blocks.N._depthwise_conv``,
``_se_reduce``, ``_project_conv``, ``_conv_head``, ``_bn1``, ``_fc.0``, ...) onto timm's
``tf_efficientnet_b0`` with 4 input channels and 18 outputs, without importing
``efficientnet_pytorch`` (a test-only dependency). The two networks compute the same function:

* both use TF "same" padding. ``efficientnet_pytorch`` pads statically for ``image_size=512`` and
  timm pads dynamically; the two agree whenever every stride-2 convolution sees an even size,
  which holds for every input side that is a multiple of 32 (the kit's ``input_size`` always is);
* BatchNorm uses eps 1e-3 and momentum 0.01 (``efficientnet_pytorch``'s 1 - 0.99) through
  :data:`hpa_kernel.classifier.checkpoint.SOURCE_FORMATS`; the momentum only matters when training;
* the head's ``Sigmoid`` is dropped: the kit's networks return logits and
  :class:`~hpa_kernel.classifier.ensemble.Ensemble` applies the sigmoid.

Inputs: the team feeds channels R, G, B, Y as 16-bit crops divided by 65535, with no mean/std;
8-bit PNGs are first multiplied by 257, so a value ``v`` becomes ``257 v / 65535 = v / 255``. The
milimed2021 recipe's crops are uint16 cut as theirs (:mod:`hpa_kernel.cells.crops`) and
:func:`~hpa_kernel.classifier.checkpoint.prepare_batch` divides them by 65535 with mean 0 and
std 1: the same numbers. (kit2025's crops are uint8, divided by 255: the same scale, but a 16-bit
source image loses its low 8 bits there.)

Ensemble weights (their In[21]-In[24]): group ``resize`` 0.4 with per-checkpoint weights
0.2/0.3/0.3/0.2 for epochs 12-15, ``resize_and_pad`` 0.4 with 0.5/0.5 for epochs 12-13, and
``old`` 0.2.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from hpa_kernel.classifier.checkpoint import SOURCE_FORMATS, CheckpointConfig, save_checkpoint
from hpa_kernel.classifier.keymap import milimed_key_map
from hpa_kernel.io import CHANNELS, atomic_write

__all__ = [
    "ARCH",
    "NUM_OUTPUTS",
    "RECIPE",
    "SOURCE_FORMAT",
    "MILIMED_GROUPS",
    "MilimedGroup",
    "milimed_key_map",
    "milimed_config",
    "read_milimed_state",
    "convert_state_dict",
    "load_milimed",
    "convert_milimed_checkpoint",
    "bundle_milimed",
]

logger = logging.getLogger(__name__)

ARCH = "tf_efficientnet_b0"
NUM_OUTPUTS = 18
RECIPE = "milimed2021"
SOURCE_FORMAT = "efficientnet_pytorch"
INPUT_SIZE = 512
#: Blocks per stage of EfficientNet-B0 (both libraries): 16 blocks, flat-numbered by efficientnet_pytorch.
SEGMENTATION_FILES = ("dpn_unet_nuclei_v1.pth", "dpn_unet_cell_3ch_v1.pth")

@dataclass(frozen=True)
class MilimedGroup:
    """One group of the team's ensemble: its name, its weight, and (file, weight) per checkpoint."""

    name: str
    weight: float
    checkpoints: tuple[tuple[str, float], ...]


MILIMED_GROUPS: tuple[MilimedGroup, ...] = (
    MilimedGroup(
        "resize",
        0.4,
        tuple((f"b0-resize-epoch-{e}-finetuned.pt", w) for e, w in ((12, 0.2), (13, 0.3), (14, 0.3), (15, 0.2))),
    ),
    MilimedGroup("resize_and_pad", 0.4, tuple((f"b0-resize-and-pad-epoch-{e}-finetuned.pt", 0.5) for e in (12, 13))),
    MilimedGroup("old", 0.2, (("b0-old.pt", 1.0),)),
)


def milimed_config(source: str | os.PathLike | None = None, **overrides) -> CheckpointConfig:
    """The kit's :class:`CheckpointConfig` for a converted team checkpoint.

    ``tf_efficientnet_b0``, 4 channels R, G, B, Y, 18 outputs, input 512, mean 0 and std 1 (the
    uint16 crop / 65535 as the team's; a uint8 crop / 255 is the same scale), ``source_format="efficientnet_pytorch"``
    and ``recipe="milimed2021"``. ``source`` (the original file's name) and the input scaling are
    recorded in ``extra``; ``overrides`` replace any of these fields (e.g. ``epoch=12``).
    """
    extra = {"input_scaling": "uint8 / 255 (the team: uint16 / 65535, 8-bit PNGs x 257 first), mean 0, std 1"}
    if source is not None:
        extra["source_file"] = Path(source).name
    fields = dict(
        arch=ARCH,
        in_chans=4,
        num_classes=NUM_OUTPUTS,
        input_size=INPUT_SIZE,
        channels=CHANNELS,
        mean=(0.0,) * 4,
        std=(1.0,) * 4,
        recipe=RECIPE,
        source_format=SOURCE_FORMAT,
        extra=extra,
    )
    fields.update(overrides)
    return CheckpointConfig(**fields)


def read_milimed_state(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)``, checked to be a flat ``{name: tensor}`` state_dict."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"team checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or pickled-object file
        raise ValueError(f"cannot load team checkpoint {path} with weights_only=True: {exc}") from exc
    if not isinstance(state, dict):
        raise ValueError(f"team checkpoint {path} holds a {type(state).__name__}, expected a state_dict (dict of tensors)")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise ValueError(f"team checkpoint {path} is not a flat state_dict: entry {bad[0]!r} is not a named tensor")
    return state


def convert_state_dict(state: dict, model, source: str | os.PathLike = "state_dict") -> dict:
    """Rename an ``efficientnet_pytorch`` B0 state_dict to ``model``'s (timm) names, checking it fits.

    Parameters
    ----------
    state : dict
        The team's state_dict (``_conv_stem.weight`` ... ``_fc.0.bias``).
    model : torch.nn.Module
        A ``tf_efficientnet_b0`` with 4 inputs and 18 outputs; its state_dict gives the expected shapes.
    source : path or str
        Named in error messages.

    Raises
    ------
    ValueError
        Naming ``source`` and the first key that is missing, unexpected, or of another shape.
    """
    mapping = milimed_key_map()
    expected = model.state_dict()
    if set(mapping.values()) != set(expected):
        raise ValueError(f"{source}: the target network is not a B0 with the expected layout (got {type(model).__name__})")
    for key in mapping:
        if key not in state:
            raise ValueError(f"{source} does not fit efficientnet-b0 (4 in, 18 out): missing key {key!r}")
    for key in state:
        if key not in mapping:
            raise ValueError(f"{source} does not fit efficientnet-b0 (4 in, 18 out): unexpected key {key!r}")
    converted = {}
    for key, name in mapping.items():
        found, want = tuple(state[key].shape), tuple(expected[name].shape)
        if found != want:
            raise ValueError(f"{source} does not fit efficientnet-b0 (4 in, 18 out): {key!r} has shape {found}, expected {want}")
        converted[name] = state[key]
    return converted


def _new_model():
    from hpa_kernel.classifier.model import create_classifier

    return create_classifier(ARCH, in_chans=4, num_classes=NUM_OUTPUTS, **SOURCE_FORMATS[SOURCE_FORMAT])


def load_milimed(path: str | os.PathLike, model=None):
    """Load one of the team's ``.pt`` files into the kit's network (eval mode, logits out).

    Parameters
    ----------
    path : path
        The team's state_dict file.
    model : torch.nn.Module, optional
        A ``tf_efficientnet_b0`` (4 in, 18 out, built as :data:`SOURCE_FORMATS` says) to load into,
        e.g. to convert several files with one network; a new one by default.

    Returns
    -------
    model : torch.nn.Module
        timm ``tf_efficientnet_b0``; ``torch.sigmoid(model(x))`` equals the team's ``net(x)``.
    config : CheckpointConfig
        :func:`milimed_config` for ``path``.
    """
    model = _new_model() if model is None else model
    model.load_state_dict(convert_state_dict(read_milimed_state(path), model, path), strict=True)
    model.eval()
    return model, milimed_config(path)


def convert_milimed_checkpoint(source: str | os.PathLike, dest: str | os.PathLike, *, model=None, **config_overrides) -> tuple[Path, Path]:
    """Convert a team ``.pt`` into the kit's checkpoint format: ``dest`` (``.pth``) + its ``.json``.

    ``config_overrides`` replace fields of :func:`milimed_config` (e.g. ``epoch``). The written
    pair is read back (``weights_only=True``, and the JSON through
    :func:`~hpa_kernel.classifier.checkpoint.load_config`) and compared with the conversion.
    ``model`` is as in :func:`load_milimed`.
    """
    import torch

    from hpa_kernel.classifier.checkpoint import load_config

    model, _ = load_milimed(source, model)
    config = milimed_config(source, **config_overrides)
    paths = save_checkpoint(model, config, dest)
    written = torch.load(paths[0], map_location="cpu", weights_only=True)
    expected = model.state_dict()
    if set(written) != set(expected) or any(not torch.equal(written[k], v) for k, v in expected.items()):
        raise RuntimeError(f"converted checkpoint {paths[0]} does not read back equal to the conversion of {source}")
    if load_config(paths[0]) != config:
        raise RuntimeError(f"checkpoint config {paths[1]} does not read back equal to what was written")
    return paths


def _check_source_folder(src: Path, ignore_extra: bool) -> None:
    if not src.is_dir():
        raise FileNotFoundError(f"team checkpoint folder {src} does not exist")
    wanted = {name for g in MILIMED_GROUPS for name, _ in g.checkpoints}
    present = {p.name for p in src.iterdir() if p.is_file() and p.suffix in (".pt", ".pth")}
    missing = sorted(wanted - present)
    if missing:
        raise FileNotFoundError(f"team checkpoint folder {src} lacks {', '.join(missing)} (expected the seven files {sorted(wanted)})")
    extra = sorted(present - wanted - set(SEGMENTATION_FILES))
    if extra and not ignore_extra:
        raise ValueError(
            f"team checkpoint folder {src} holds checkpoint files that are not the team's seven: {', '.join(extra)}; "
            "remove them or pass ignore_extra=True (--ignore-extra) to leave them out"
        )
    if extra:
        logger.warning("leaving out %s: not part of the team's ensemble", ", ".join(extra))


def _convert_groups(src: Path, out: Path) -> list[dict]:
    """Convert every checkpoint of :data:`MILIMED_GROUPS` from ``src`` into ``out``; the manifest's groups."""
    from hpa_kernel.manifest import sha256_of

    model = _new_model()
    groups = []
    for group in MILIMED_GROUPS:
        entries = []
        for name, weight in group.checkpoints:
            epoch = re.search(r"epoch-(\d+)", name)
            dest, _ = convert_milimed_checkpoint(
                src / name, out / (Path(name).stem + ".pth"), model=model, epoch=int(epoch.group(1)) if epoch else None
            )
            entries.append({"file": dest.name, "sha256": sha256_of(dest), "weight": weight})
            logger.info("converted %s -> %s", name, dest.name)
        groups.append({"name": group.name, "weight": group.weight, "checkpoints": entries})
    return groups


def _copy_segmentation(seg_dir: Path, out: Path) -> dict:
    """Copy the official segmentation files found in ``seg_dir`` to ``out``; the manifest's segmentation part.

    A missing file is logged and gets ``"sha256": None``.
    """
    from hpa_kernel.manifest import sha256_of

    segmentation = {}
    for key, name in zip(("nuclei", "cell"), SEGMENTATION_FILES, strict=True):
        entry = {"file": name, "sha256": None}
        if (seg_dir / name).is_file():
            shutil.copy2(seg_dir / name, out / name)
            entry["sha256"] = sha256_of(out / name)
        else:
            logger.warning(
                "segmentation weights %s are not in %s: the dataset needs them, or submit with --segmenter classic", name, seg_dir
            )
        segmentation[key] = entry
    return segmentation


def _write_milimed_manifest(out: Path, groups: list[dict], segmentation: dict, dataset_id: str) -> Path:
    """Write ``weights_manifest.json`` (atomically) and ``dataset-metadata.json`` in ``out``; the manifest's path."""
    from hpa_kernel.manifest import FORMAT_VERSION, MANIFEST_NAME

    manifest = {
        "format": FORMAT_VERSION,
        "comment": "The HPA 2021 4th-place team's EfficientNet-B0 ensemble, converted by hpa-kernel bundle weights --from-milimed",
        "segmentation": segmentation,
        "ensemble": {"groups": groups},
    }
    text = json.dumps(manifest, indent=2) + "\n"
    target = atomic_write(out / MANIFEST_NAME, lambda tmp: tmp.write_text(text))
    metadata = {"title": "hpa-kernel weights (HPA 2021 4th place, converted)", "id": dataset_id, "licenses": [{"name": "other"}]}
    (out / "dataset-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return target


def bundle_milimed(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    segmentation_dir: str | os.PathLike | None = None,
    ignore_extra: bool = False,
    dataset_id: str = "your-kaggle-username/hpa-kernel-weights",
) -> Path:
    """Write a weights dataset from the team's seven checkpoints, with their ensemble weights.

    Each ``NAME.pt`` becomes ``NAME.pth`` + ``NAME.json`` in ``out`` (:func:`convert_milimed_checkpoint`).
    ``weights_manifest.json`` lists the groups of :data:`MILIMED_GROUPS` with per-checkpoint
    ``"weight"`` entries and every sha256 pinned. The official segmentation files
    (``dpn_unet_nuclei_v1.pth``, ``dpn_unet_cell_3ch_v1.pth``) are copied and pinned when
    ``segmentation_dir`` (default ``src``) holds them: the kit looks for them in the weights folder.

    Parameters
    ----------
    src : path
        Folder with ``b0-resize-epoch-{12,13,14,15}-finetuned.pt``,
        ``b0-resize-and-pad-epoch-{12,13}-finetuned.pt`` and ``b0-old.pt``.
    out : path
        The dataset folder to write (created).
    segmentation_dir : path, optional
        Where the two segmentation files are (on Kaggle: the attached ``hpasegweights``); ``src`` by default.
    ignore_extra : bool
        Leave out other ``.pt``/``.pth`` files in ``src`` instead of refusing them.
    dataset_id : str
        Kaggle dataset id written to ``dataset-metadata.json``.

    Returns
    -------
    Path
        The written ``weights_manifest.json``.

    Raises
    ------
    FileNotFoundError
        ``src`` or one of the seven files is missing (all missing files are named).
    ValueError
        ``src`` holds other checkpoint files (without ``ignore_extra``), or a file does not fit the
        network (the file and the first mismatching key are named).
    """
    src, out = Path(src), Path(out)
    _check_source_folder(src, ignore_extra)
    seg_dir = src if segmentation_dir is None else Path(segmentation_dir)
    if not seg_dir.is_dir():
        raise FileNotFoundError(f"segmentation weights folder {seg_dir} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    groups = _convert_groups(src, out)
    segmentation = _copy_segmentation(seg_dir, out)
    target = _write_milimed_manifest(out, groups, segmentation, dataset_id)
    logger.info("weights dataset %s: 7 converted checkpoints, manifest %s", out, target.name)
    return target
