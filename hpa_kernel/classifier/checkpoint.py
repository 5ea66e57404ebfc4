"""Checkpoint format: ``NAME.pth`` (a plain state_dict) + ``NAME.json`` (a :class:`CheckpointConfig`).

The state_dict is saved without any pickled classes, so it loads with
``torch.load(path, weights_only=True)``. The JSON travels with it and says how to build the
network and how to feed it: architecture, input size, channel order and normalisation, plus the
training recipe (group, augmentation, loss) for provenance.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpa_kernel.cells.crops import CROP_SCALE
from hpa_kernel.classes import NUM_CLASSES
from hpa_kernel.diskspace import torch_save
from hpa_kernel.io import CHANNELS, atomic_write, read_json_object

__all__ = ["CROP_SCALE", "CheckpointConfig", "config_path_for", "save_checkpoint", "load_config", "load_checkpoint", "prepare_batch"]

logger = logging.getLogger(__name__)

#: Where a checkpoint's weights came from, and the ``timm.create_model`` keywords that rebuild that
#: source's network exactly: ``efficientnet_pytorch`` files (the 2021 team's, converted by
#: :mod:`hpa_kernel.classifier.milimed`, and the kit's milimed2021 training, which builds their
#: network: ``TrainConfig.batchnorm``) need BatchNorm eps 1e-3 and momentum 0.01 (= 1 - 0.99).
SOURCE_FORMATS: dict[str, dict] = {"timm": {}, "efficientnet_pytorch": {"bn_eps": 1e-3, "bn_momentum": 0.01}}

@dataclass(frozen=True)
class CheckpointConfig:
    """How a checkpoint was built and how to feed it.

    Inputs are uint8 or uint16 crops (N, S, S, 4); they are scaled to [0, 1] by their dtype
    (:data:`CROP_SCALE`), put in ``channels`` order, resized to ``input_size`` and normalised per
    channel with ``mean`` and ``std``.

    ``num_classes`` is the number of outputs: 18 (classes 0-17, Negative computed at inference)
    for the ``milimed2021`` recipe, 19 for ``kit2025``. ``recipe`` names the recipe the checkpoint
    was trained with (None: not recorded); inference refuses a checkpoint whose ``num_classes``
    does not fit the recipe it runs (:class:`hpa_kernel.classifier.Ensemble`).
    """

    arch: str = "efficientnet_b0"
    in_chans: int = 4
    num_classes: int = NUM_CLASSES
    input_size: int = 512
    channels: tuple[str, ...] = CHANNELS
    mean: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    group: int | None = None
    augmentation: dict = field(default_factory=dict)
    loss: dict = field(default_factory=dict)
    epoch: int | None = None
    step: int | None = None
    extra: dict = field(default_factory=dict)
    recipe: str | None = None
    source_format: str = "timm"

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.in_chans != len(self.channels):
            raise ValueError(f"in_chans={self.in_chans} but channels has {len(self.channels)} entries: {self.channels}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"mean and std need {self.in_chans} values, got {len(self.mean)} and {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if unknown := set(self.channels) - set(CHANNELS):
            raise ValueError(f"unknown channels {sorted(unknown)}: expected names from {CHANNELS}")
        if self.input_size < 32 or self.input_size % 32:
            raise ValueError(f"input_size must be a positive multiple of 32, got {self.input_size}")
        if self.recipe is not None and (not isinstance(self.recipe, str) or not self.recipe):
            raise ValueError(f"recipe must be a recipe name or None, got {self.recipe!r}")
        if self.source_format not in SOURCE_FORMATS:
            raise ValueError(f"source_format must be one of {sorted(SOURCE_FORMATS)}, got {self.source_format!r}")
        if self.source_format == "efficientnet_pytorch" and not self.arch.startswith("tf_efficientnet"):
            raise ValueError(f"source_format 'efficientnet_pytorch' needs a tf_efficientnet_* arch (TF 'same' padding), got {self.arch!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CheckpointConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown checkpoint config keys {sorted(unknown)}; expected some of {sorted(names)}")
        return cls(**data)


def config_path_for(weights_path: str | os.PathLike) -> Path:
    """The JSON config that belongs to a ``.pth`` file: same folder and stem."""
    return Path(weights_path).with_suffix(".json")


def save_checkpoint(model, config: CheckpointConfig, path: str | os.PathLike) -> tuple[Path, Path]:
    """Save ``model``'s state_dict to ``path`` (``.pth``) and ``config`` beside it (``.json``).

    A DistributedDataParallel/DataParallel wrapper is unwrapped first. Both files are written
    atomically. Returns the two paths.
    """
    path = Path(path)
    if path.suffix != ".pth":
        raise ValueError(f"checkpoint path must end in .pth, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    module = getattr(model, "module", model)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    atomic_write(path, lambda tmp: torch_save(state, tmp))
    cfg_path = config_path_for(path)
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write(cfg_path, lambda tmp: tmp.write_text(text))
    return path, cfg_path


def load_config(weights_path: str | os.PathLike) -> CheckpointConfig:
    """Read the JSON config of a checkpoint; FileNotFoundError names the missing file."""
    cfg_path = config_path_for(weights_path)
    if not cfg_path.is_file():
        raise FileNotFoundError(f"checkpoint config {cfg_path} not found (every .pth needs its .json beside it)")
    data = read_json_object(cfg_path, "checkpoint config")
    try:
        return CheckpointConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint config {cfg_path}: {exc}") from exc


def load_checkpoint(path: str | os.PathLike, map_location="cpu"):
    """Build the network from the JSON config and load the state_dict with ``weights_only=True``.

    Returns
    -------
    model : torch.nn.Module
        In eval mode.
    config : CheckpointConfig
    """
    import torch

    from hpa_kernel.classifier.model import create_classifier

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    config = load_config(path)
    model = create_classifier(config.arch, in_chans=config.in_chans, num_classes=config.num_classes, **SOURCE_FORMATS[config.source_format])
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or non-tensor file
        raise ValueError(f"cannot load checkpoint {path} with weights_only=True: {exc}") from exc
    fits = f"checkpoint {path} does not fit {config.arch} (in_chans={config.in_chans}, num_classes={config.num_classes})"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shared keys with other shapes
        raise ValueError(f"{fits}: {str(exc).splitlines()[-1].strip()}") from exc
    if missing or unexpected:
        raise ValueError(f"{fits}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    model.eval()
    return model, config


def prepare_batch(crops: np.ndarray, config: CheckpointConfig, device="cpu", channels_last: bool = False):
    """Turn crops (N, S, S, C) in ``hpa_kernel.io.CHANNELS`` order into a normalised tensor.

    The crops are scaled to [0, 1] by their dtype (:data:`CROP_SCALE`: uint8 / 255, the kit2025
    crop; uint16 / 65535, the milimed2021 crop), the channels reordered to ``config.channels``,
    the crops resized to ``config.input_size`` (bilinear, antialiased when shrinking) and
    normalised with ``config.mean`` and ``config.std``. A uint8 value ``v`` and the uint16 value
    ``257 v`` give the same input. Returns a float32 tensor (N, C, input_size, input_size) on
    ``device``.
    """
    import torch
    import torch.nn.functional as F

    if crops.ndim != 4 or crops.shape[-1] != len(CHANNELS):
        raise ValueError(f"crops must have shape (N, S, S, {len(CHANNELS)}), got {crops.shape}")
    if crops.dtype not in CROP_SCALE:
        raise ValueError(f"crops must be uint8 or uint16, got {crops.dtype}")
    order = [CHANNELS.index(c) for c in config.channels]
    x = torch.from_numpy(np.ascontiguousarray(crops[..., order]))
    if crops.dtype == np.uint16:
        x = x.float()  # converted on the host: uint16 tensors have little support on devices
    x = x.to(device).permute(0, 3, 1, 2).float().div_(CROP_SCALE[crops.dtype])
    if x.shape[-1] != config.input_size or x.shape[-2] != config.input_size:
        shrink = x.shape[-1] > config.input_size
        x = F.interpolate(x, size=(config.input_size, config.input_size), mode="bilinear", align_corners=False, antialias=shrink)
    mean = torch.tensor(config.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(config.std, device=x.device).view(1, -1, 1, 1)
    x = (x - mean) / std
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
