"""ImageNet weights for the classifier: found on disk like the kit's other weights, loaded with the recipe's stem.

Nothing downloads unless asked for by name. ``pretrained`` (of :func:`~.model.create_classifier`,
``TrainConfig.pretrained``, ``hpa-kernel train --pretrained`` and the training notebook) is one of:

* ``None``: random weights;
* ``"imagenet"``: a local file, looked for as :func:`find_imagenet_weights` says: the folder named by
  ``$HPA_KERNEL_WEIGHTS``, then the Kaggle input folders (:mod:`hpa_kernel.paths`), under the names
  of :func:`imagenet_file_names`: ``{arch}_imagenet.pth`` (a timm state_dict with 3 input channels,
  e.g. ``tf_efficientnet_b0_imagenet.pth``) and, for ``tf_efficientnet_b0``, ``efficientnet-b0-355c32eb.pth``
  (efficientnet_pytorch's own ImageNet file, the team's; converted with the key map of
  :mod:`hpa_kernel.classifier.milimed`);
* a path: that file (any name), or a folder holding one of those names;
* ``"hub"``: timm's hub (online only; ``tf_efficientnet_b0`` takes the ``aa_in1k`` tag, the
  AutoAugment ImageNet weights ported from TensorFlow).

The 3-channel stem becomes a 4-channel one in one of two ways (``stem``): ``"adapt"``, timm's
``adapt_input_conv`` (the RGB filters repeated to 4 channels and scaled by 3/4), or ``"random"``,
the team's: efficientnet_pytorch's ``from_pretrained(..., in_channels=4)`` replaces the stem after
loading by a new ``Conv2d`` with PyTorch's default initialisation, which the kit reproduces
(``reset_parameters``); every other layer holds the ImageNet weights. The 1000-class head is
dropped in both cases.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hpa_kernel import paths
from hpa_kernel.options import say_option

__all__ = [
    "IMAGENET",
    "HUB",
    "STEMS",
    "EFFICIENTNET_PYTORCH_FILE",
    "missing_weights_hint",
    "imagenet_file_names",
    "find_imagenet_weights",
    "resolve_pretrained",
    "read_imagenet_state",
    "hub_state",
    "load_imagenet",
]

logger = logging.getLogger(__name__)

#: ``pretrained`` value: ImageNet weights from a local file found by :func:`find_imagenet_weights`.
IMAGENET = "imagenet"
#: ``pretrained`` value: ImageNet weights downloaded from timm's hub (online only).
HUB = "hub"
#: How the 3-channel ImageNet stem becomes a 4-channel one.
STEMS = ("adapt", "random")
#: efficientnet_pytorch 0.7's ImageNet B0 file, the one the team's ``from_pretrained`` loaded.
EFFICIENTNET_PYTORCH_FILE = "efficientnet-b0-355c32eb.pth"
_HUB_TAGS = {"tf_efficientnet_b0": "aa_in1k"}
_TORCH_SUFFIXES = (".pth", ".pt", ".bin")


def missing_weights_hint() -> str:
    """How to get past a missing file, in the caller's words (:func:`hpa_kernel.options.say_option`).

    >>> from hpa_kernel.options import option_style
    >>> with option_style("cli"):
    ...     missing_weights_hint().split(" (")[0]
    'set --pretrained PATH'
    >>> missing_weights_hint().split(" (")[0]
    'set pretrained = "PATH"'
    """
    return (f"set {say_option('pretrained', 'PATH')} (the file, or a folder holding it), "
            f"{say_option('pretrained', HUB)} to download timm's weights (online), "
            f"or {say_option('pretrained', None)} to start from random weights")


def imagenet_file_names(arch: str) -> tuple[str, ...]:
    """The file names that hold ImageNet weights of ``arch``, in the order they are looked for.

    >>> imagenet_file_names("tf_efficientnet_b0")
    ('tf_efficientnet_b0_imagenet.pth', 'efficientnet-b0-355c32eb.pth')
    >>> imagenet_file_names("resnet18")
    ('resnet18_imagenet.pth',)
    """
    names = (f"{arch}_imagenet.pth",)
    return names + ((EFFICIENTNET_PYTORCH_FILE,) if arch == "tf_efficientnet_b0" else ())


def find_imagenet_weights(arch: str, explicit: str | os.PathLike | None = None, *, kaggle_root: Path | None = None) -> Path:
    """The ImageNet weight file of ``arch``: ``explicit``, then ``$HPA_KERNEL_WEIGHTS``, then the Kaggle input folders.

    Each place is searched for the names of :func:`imagenet_file_names` (through
    :func:`hpa_kernel.paths.resolve_file`); an explicit file is taken whatever its name.

    Raises
    ------
    FileNotFoundError
        Naming the file names, every place looked at, and how to pass a file or train without one.
    """
    names, env = imagenet_file_names(arch), os.environ.get(paths.WEIGHTS_ENV)
    if explicit is None and env:  # the folder of $HPA_KERNEL_WEIGHTS before any Kaggle input, whichever name it holds
        for name in names:
            if (Path(env) / name).is_file():
                return Path(env) / name
    errors = []
    for name in names:
        try:
            return paths.resolve_file(explicit, paths.WEIGHTS_ENV, name, f"ImageNet weights of {arch}", kaggle_root, hint="")
        except FileNotFoundError as exc:
            errors.append(str(exc).strip())
    raise FileNotFoundError(" ".join(errors) + f" To train without the internet, {missing_weights_hint()}.")


def resolve_pretrained(pretrained, arch: str, *, kaggle_root: Path | None = None) -> str | None:
    """``pretrained`` with ``"imagenet"`` (or a folder) replaced by the file found: None, ``"hub"`` or a file path.

    Fails at once (no download, no network) when the file is not found; see :func:`find_imagenet_weights`.

    >>> resolve_pretrained(None, "tf_efficientnet_b0"), resolve_pretrained("HUB", "tf_efficientnet_b0")
    (None, 'hub')
    """
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True:
        raise ValueError(f"pretrained=True is ambiguous: {missing_weights_hint()}, or {say_option('pretrained', IMAGENET)} "
                         "for a local file found by name")
    text = str(pretrained)
    if text.strip().lower() == HUB:
        return HUB
    explicit = None if text.strip().lower() == IMAGENET else text
    return str(find_imagenet_weights(arch, explicit, kaggle_root=kaggle_root))


def _load_file(path: Path) -> dict:
    """A flat ``{name: tensor}`` state_dict from a ``.safetensors`` or ``torch.save`` file (``weights_only``)."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a corrupt or pickled-object file
            raise ValueError(f"cannot load ImageNet weights {path} with weights_only=True: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise ValueError(f"ImageNet weights {path}: expected a state_dict (a dict of named tensors)")
    return state


def _from_efficientnet_pytorch(state: dict, path: Path) -> dict:
    """efficientnet_pytorch B0 names -> timm names (the 1000-class ``_fc`` head dropped)."""
    from hpa_kernel.classifier.keymap import milimed_key_map

    mapping = milimed_key_map()
    out = {}
    for key, value in state.items():
        if key in ("_fc.weight", "_fc.bias"):
            continue
        if key not in mapping:
            raise ValueError(f"ImageNet weights {path}: key {key!r} is not one of an efficientnet_pytorch B0")
        out[mapping[key]] = value
    return out


def read_imagenet_state(path: str | os.PathLike) -> dict:
    """The state_dict of an ImageNet weight file with timm's names (efficientnet_pytorch files are renamed).

    Raises
    ------
    FileNotFoundError, ValueError
        The file is missing, cannot be read without running code, or is not a state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet weight file {path} not found")
    if path.suffix not in (*_TORCH_SUFFIXES, ".safetensors"):
        logger.warning("ImageNet weights %s: unusual suffix, reading it as a torch.save file", path)
    state = _load_file(path)
    if "_conv_stem.weight" in state:
        logger.info("%s: efficientnet_pytorch names, mapped to timm's", path.name)
        return _from_efficientnet_pytorch(state, path)
    return state


def hub_state(arch: str) -> dict:
    """timm's ImageNet state_dict of ``arch``, downloaded from its hub (online only)."""
    import timm

    name = f"{arch}.{_HUB_TAGS[arch]}" if arch in _HUB_TAGS else arch
    logger.info("%s: ImageNet weights from timm's hub (%s; needs the internet)", arch, name)
    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except OSError as exc:
        raise ValueError(f"cannot fetch the ImageNet weights of {arch} from timm's hub ({exc}); {missing_weights_hint()}") from exc


def load_imagenet(model, state: dict, *, stem: str = "adapt", source: str | os.PathLike = "ImageNet weights"):
    """Load a 3-channel ImageNet state_dict (timm names) into ``model``: the stem as ``stem`` says, no head.

    Parameters
    ----------
    model : torch.nn.Module
        A timm network (any number of input channels and outputs).
    state : dict
        From :func:`read_imagenet_state` or :func:`hub_state`.
    stem : str
        ``"adapt"``: timm's ``adapt_input_conv`` of the ImageNet stem. ``"random"``: the stem keeps
        no ImageNet weight and is initialised as a new ``torch.nn.Conv2d`` (the team's).
    source : str or path
        Named in errors.

    Raises
    ------
    ValueError
        The weights do not fit the network (the first key missing, unexpected or of another shape).
    """
    from timm.models import adapt_input_conv

    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    first, head = model.pretrained_cfg["first_conv"], model.pretrained_cfg["classifier"]
    stem_key = f"{first}.weight"
    state = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
    if stem_key not in state:
        raise ValueError(f"{source} does not fit the network: no stem weight {stem_key!r}")
    stem_weight = state.pop(stem_key)
    if stem == "adapt":
        state[stem_key] = adapt_input_conv(model.get_submodule(first).in_channels, stem_weight)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shared keys with other shapes
        raise ValueError(f"{source} does not fit the network: {str(exc).splitlines()[-1].strip()}") from exc
    allowed = {stem_key} | {k for k in model.state_dict() if k.startswith(f"{head}.")}
    missing = [k for k in missing if k not in allowed and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{source} does not fit the network: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    if stem == "random":
        model.get_submodule(first).reset_parameters()
    return model
