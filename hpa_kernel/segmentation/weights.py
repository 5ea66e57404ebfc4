"""Loading the official HPA-Cell-Segmentation weight files without pytorch_zoo and without running pickled code.

``dpn_unet_nuclei_v1.pth`` and ``dpn_unet_cell_3ch_v1.pth`` are ``torch.save(model)`` pickles of
whole pytorch_zoo models (``pytorch_zoo.unet.DPNUnet`` with submodules from ``pytorch_zoo.dpn``),
possibly wrapped in ``torch.nn.DataParallel``, in the zip format or the legacy (torch < 1.6)
format. Unpickling them normally needs pytorch_zoo installed and runs whatever the pickle says.

:func:`load_weights` instead unpickles with a restricted unpickler:

* allowed globals: torch's tensor and storage rebuilders, ``collections.OrderedDict``,
  ``builtins.set``, ``torch.device``, ``torch.Size`` and a fixed list of ``torch.nn`` module classes
  (:data:`ALLOWED_NN_CLASSES`);
* every class of the ``pytorch_zoo`` package becomes an empty placeholder ``nn.Module`` subclass
  that carries the pickled attributes and has no behaviour;
* any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) raises
  :class:`UnsafeWeightsError` naming it, before anything is called.

The state_dict is then collected from the unpickled module tree (``_parameters`` and persistent
``_buffers``, recursively), a leading ``module.`` is stripped, and the pickled train/eval flag of
every module is reported: hpacellseg never calls ``.eval()``, so those flags decide whether its
BatchNorm layers used running statistics or per-image statistics (see :mod:`.dpn_unet`).
"""

from __future__ import annotations

import _compat_pickle
import collections
import logging
import pickle
import re
import types
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from hpa_kernel.manifest import sha256_of

__all__ = [
    "ALLOWED_NN_CLASSES",
    "UnsafeWeightsError",
    "WeightsHashError",
    "LoadedWeights",
    "load_weights",
    "load_dpn_unet",
]

logger = logging.getLogger(__name__)

#: ``torch.nn`` classes that a pickled DPNUnet (and a DataParallel around it) may contain.
ALLOWED_NN_CLASSES: tuple[str, ...] = (
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.ModuleDict",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.conv.ConvTranspose2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.activation.ELU",
    "torch.nn.modules.activation.Sigmoid",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.pooling.AvgPool2d",
    "torch.nn.modules.pooling.AdaptiveAvgPool2d",
    "torch.nn.modules.pooling.AdaptiveMaxPool2d",
    "torch.nn.modules.upsampling.Upsample",
    "torch.nn.modules.upsampling.UpsamplingNearest2d",
    "torch.nn.modules.upsampling.UpsamplingBilinear2d",
    "torch.nn.modules.dropout.Dropout",
    "torch.nn.modules.dropout.Dropout2d",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.linear.Identity",
    "torch.nn.parallel.data_parallel.DataParallel",
)

# Tensor/storage rebuilders and plain containers that torch.save writes for parameters and buffers.
_ALLOWED_OTHER: tuple[str, ...] = (
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch.storage.UntypedStorage",
    "torch.UntypedStorage",
    "torch.device",
    "torch.Size",
    "collections.OrderedDict",
    "builtins.set",
    "builtins.frozenset",
)

#: Top-level packages whose classes become placeholders.
_PLACEHOLDER_PACKAGES: tuple[str, ...] = ("pytorch_zoo",)


class UnsafeWeightsError(pickle.UnpicklingError, ValueError):
    """The weight file is refused: a global outside the allow-list, or not a plain pickle / torch zip.

    A ``ValueError`` too, so that the command line reports it in one line like its other errors.
    """


class WeightsHashError(ValueError):
    """The weight file's sha256 differs from the expected one."""


class PickledModule(nn.Module):
    """Base of the placeholders that stand in for pytorch_zoo classes while unpickling.

    A placeholder keeps the pickled attributes (``_parameters``, ``_buffers``, ``_modules``,
    ``training`` and whatever else) and has no behaviour of its own. ``pickled_global`` is the
    ``module.Class`` name found in the file.
    """

    pickled_global: str = ""

    def __init__(self, *args, **kwargs):
        # Unpickling creates instances with __new__ + __setstate__; a call means the pickle asks to
        # run the original constructor, which is code we do not have and do not run.
        raise UnsafeWeightsError(
            f"the weight file calls {self.pickled_global}(...) while unpickling; "
            "only plain module pickles (torch.save(model)) can be loaded without pytorch_zoo"
        )

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"{self.pickled_global} is a placeholder for a pickled module and cannot run")


def _resolve(qualname: str):
    module_name, _, attr = qualname.rpartition(".")
    import importlib

    obj = importlib.import_module(module_name)
    return getattr(obj, attr)


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` only returns allow-listed globals or placeholders."""

    def find_class(self, module: str, name: str):
        # Protocol < 3 pickles name Python 2 modules (``__builtin__.set``); map them as pickle does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualname = f"{module}.{name}"
        if qualname in ALLOWED_NN_CLASSES or qualname in _ALLOWED_OTHER:
            return _resolve(qualname)
        if module.split(".", 1)[0] in _PLACEHOLDER_PACKAGES:
            return _placeholder(qualname)
        raise UnsafeWeightsError(
            f"refusing to load global {qualname!r} from a weight file: it is not a torch tensor/storage "
            f"rebuilder, an allowed torch.nn module class or a pytorch_zoo class. The file may be corrupt "
            f"or malicious; nothing from it was executed"
        )


_PLACEHOLDER_CACHE: dict[str, type] = {}


def _placeholder(qualname: str) -> type:
    cls = _PLACEHOLDER_CACHE.get(qualname)
    if cls is None:
        name = qualname.rsplit(".", 1)[-1]
        cls = type(name, (PickledModule,), {"pickled_global": qualname, "__module__": __name__})
        _PLACEHOLDER_CACHE[qualname] = cls
    return cls


# Members of a ``torch.save`` zip archive below its single root folder; anything else (TorchScript's
# ``code/`` and ``constants.pkl``, extra pickles) makes the file something other than a weight file.
_TORCH_ZIP_MEMBER = re.compile(
    r"(data\.pkl|version|byteorder|\.format_version|\.storage_alignment|data/\d+|\.data/version|\.data/serialization_id)"
)

# A legacy (torch < 1.6) file is a sequence of pickles; the first is the magic number, written with
# protocol 2 by torch.save. Any pickle written with protocol 2..5 starts with PROTO (0x80) + version.
_PICKLE_PROTOCOLS = (2, 3, 4, 5)


def _check_container(path: Path) -> str:
    """``"zip"`` or ``"legacy"`` if ``path`` is a torch zip of ``data.pkl`` or a plain pickle; else refuse.

    This runs before any torch call: ``torch.load`` hands a TorchScript archive to ``torch.jit.load``,
    which runs the archive's code, before our restricted unpickler sees anything.
    """
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise ValueError(f"weight file {path} is not a readable zip archive: {exc}") from exc
        roots = {name.split("/", 1)[0] for name in names}
        odd = [n for n in names if "/" not in n or not _TORCH_ZIP_MEMBER.fullmatch(n.split("/", 1)[1])]
        if len(roots) != 1 or odd or not any(n.endswith("/data.pkl") for n in names):
            kind = "a TorchScript archive" if any(n.endswith("/constants.pkl") or "/code/" in n for n in names) else "not a torch.save archive"
            shown = ", ".join(odd[:3]) or f"{len(roots)} root folders"
            raise UnsafeWeightsError(
                f"weight file {path} is {kind} (unexpected zip entries: {shown}); only torch.save files of a "
                "pickled model or state_dict are loaded, and nothing from this file was executed"
            )
        return "zip"
    with open(path, "rb") as fh:
        head = fh.read(2)
    if len(head) < 2 or head[0] != 0x80 or head[1] not in _PICKLE_PROTOCOLS:
        raise UnsafeWeightsError(
            f"weight file {path} is neither a torch zip archive nor a pickle (it starts with {head!r}); "
            "nothing from it was executed"
        )
    return "legacy"


def _restricted_load(file, **kwargs):
    return _RestrictedUnpickler(file, **kwargs).load()


def _restricted_pickle_module() -> types.ModuleType:
    """A stand-in for the ``pickle`` module, for ``torch.load(pickle_module=...)``."""
    mod = types.ModuleType("hpa_kernel_restricted_pickle")
    mod.Unpickler = _RestrictedUnpickler
    mod.load = _restricted_load
    mod.UnpicklingError = pickle.UnpicklingError
    return mod


@dataclass
class LoadedWeights:
    """A weight file read by :func:`load_weights`.

    Attributes
    ----------
    path : Path
    sha256 : str
        Of the file's bytes.
    state_dict : OrderedDict
        Keys without the ``module.`` prefix, in the order of the pickled module tree.
    was_dataparallel : bool
        The file held a ``DataParallel`` (keys had a leading ``module.``).
    file_format : {"zip", "legacy"}
    root_class : str
        ``module.Class`` of the pickled root object (``collections.OrderedDict`` for a plain
        state_dict); the DataParallel wrapper is skipped.
    training_flags : dict
        ``{"train": n, "eval": m}``: how many pickled modules had ``training`` True/False.
        Empty for a plain state_dict file (no flags stored).
    batchnorm_training : dict
        BatchNorm layer name (without ``module.``) -> its pickled ``training`` flag.
    dropout_training : list of str
        Dropout layers pickled in train mode (random in the original; run as identity here).
    """

    path: Path
    sha256: str
    state_dict: OrderedDict
    was_dataparallel: bool
    file_format: str
    root_class: str
    training_flags: dict = field(default_factory=dict)
    batchnorm_training: dict = field(default_factory=dict)
    dropout_training: list = field(default_factory=list)

    @property
    def batchnorm_per_image(self) -> bool:
        """True if any BatchNorm layer was pickled in train mode (per-image statistics in hpacellseg)."""
        return any(self.batchnorm_training.values())

    def summary(self) -> dict:
        """A JSON-friendly description (no tensors)."""
        bn = self.batchnorm_training
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "file_format": self.file_format,
            "root_class": self.root_class,
            "was_dataparallel": self.was_dataparallel,
            "n_entries": len(self.state_dict),
            "training_flags": dict(self.training_flags),
            "batchnorm_layers": len(bn),
            "batchnorm_train_mode": sum(bool(v) for v in bn.values()),
            "dropout_train_mode": list(self.dropout_training),
        }


def _qualname(obj) -> str:
    cls = type(obj)
    return getattr(cls, "pickled_global", "") or f"{cls.__module__}.{cls.__qualname__}"


def _is_dataparallel(obj) -> bool:
    return isinstance(obj, nn.DataParallel) or _qualname(obj).endswith(".DataParallel")


def _walk_modules(root: nn.Module, prefix: str = ""):
    """Yield (name, module) depth-first in registration order, from the pickled ``_modules`` dicts."""
    yield prefix, root
    children = root.__dict__.get("_modules") or {}
    for name, child in children.items():
        if child is None:
            continue
        yield from _walk_modules(child, f"{prefix}.{name}" if prefix else name)


def _collect_state(root: nn.Module) -> tuple[OrderedDict, dict, dict, list]:
    state: OrderedDict = OrderedDict()
    flags = collections.Counter()
    bn_training: dict[str, bool] = {}
    dropout_training: list[str] = []
    for name, module in _walk_modules(root):
        d = module.__dict__
        if "training" in d:
            flags["train" if d["training"] else "eval"] += 1
        cls_name = type(module).__name__
        if "BatchNorm" in cls_name:
            bn_training[name] = bool(d.get("training", False))
        if "Dropout" in cls_name and d.get("training", False):
            dropout_training.append(name)
        pre = f"{name}." if name else ""
        for key, value in (d.get("_parameters") or {}).items():
            if value is not None:
                state[pre + key] = value.detach() if isinstance(value, torch.Tensor) else value
        non_persistent = d.get("_non_persistent_buffers_set") or set()
        for key, value in (d.get("_buffers") or {}).items():
            if value is not None and key not in non_persistent:
                state[pre + key] = value
    return state, dict(flags), bn_training, dropout_training


def _strip_prefix(state: dict, prefix: str = "module.") -> tuple[OrderedDict, bool]:
    if state and all(k.startswith(prefix) for k in state):
        return OrderedDict((k[len(prefix):], v) for k, v in state.items()), True
    return OrderedDict(state), False


# A state_dict key: dotted names of submodules and a tensor, none private (``_backward_hooks``,
# ``_parameters`` and the like are nn.Module internals, not weights).
_STATE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*(\.[A-Za-z0-9][A-Za-z0-9_]*)*")


def _check_state_dict(path: Path, obj) -> None:
    """Refuse a root dict that is not a plain ``name -> tensor`` state_dict."""
    bad = [k for k in obj if not isinstance(k, str) or not _STATE_KEY.fullmatch(k)]
    # Module.state_dict() attaches ``_metadata`` (per-module versions) to the dict it returns.
    extra = sorted(a for a in getattr(obj, "__dict__", {}) if a != "_metadata")
    if bad or extra:
        shown = ", ".join(repr(k) for k in (bad or extra)[:3])
        raise ValueError(
            f"weight file {path}: the pickled dict is not a state_dict (keys must be dotted parameter names, "
            f"and a state_dict carries no attributes but _metadata); found {shown}"
        )


def _check_file(path: Path, expected_sha256: str | None) -> str:
    """The sha256 of ``path`` after checking that it exists and, if asked, that the hash matches."""
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} does not exist")
    sha = sha256_of(path)
    if expected_sha256 is not None and sha.lower() != expected_sha256.lower():
        raise WeightsHashError(f"weight file {path}: sha256 mismatch: expected {expected_sha256.lower()}, found {sha}")
    return sha


def _restricted_torch_load(path: Path):
    """``torch.load`` of ``path`` through the restricted unpickler; refusals name the file.

    Call only after :func:`_check_container` accepted the file (a TorchScript archive would run
    its code inside ``torch.load``).
    """
    with warnings.catch_warnings():
        # Legacy files store each module class's source; comparing it with ours (or failing to find
        # the placeholder's source) only warns, and the comparison has no bearing on the weights.
        warnings.filterwarnings("ignore", message=r".*source code.*")
        warnings.filterwarnings("ignore", category=torch.serialization.SourceChangeWarning)
        try:
            return torch.load(path, map_location="cpu", pickle_module=_restricted_pickle_module(), weights_only=False)
        except UnsafeWeightsError as exc:
            raise UnsafeWeightsError(f"weight file {path}: {exc}") from None
        except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
            # TypeError/AttributeError/...: a pickle whose BUILD/REDUCE opcodes feed allowed classes
            # state they do not take (a setattr gadget); the file is refused like any unreadable one.
            raise ValueError(
                f"weight file {path} is not a readable torch file (expected a pickled DPNUnet in zip or legacy format): {exc}"
            ) from exc


def _extract_state(path: Path, obj) -> tuple[str, OrderedDict, bool, dict, dict, list]:
    """``(root_class, state_dict, was_dataparallel, training_flags, bn_training, dropout_training)`` of an unpickled object.

    ``obj`` is a pickled module (possibly in a DataParallel) or a plain state_dict; anything else
    is refused.
    """
    was_dp = False
    if isinstance(obj, nn.Module):
        if _is_dataparallel(obj):
            was_dp = True
            inner = obj.__dict__.get("_modules", {}).get("module")
            if inner is None:
                raise ValueError(f"weight file {path}: DataParallel without a 'module' child")
            obj = inner
        root_class = _qualname(obj)
        state, flags, bn_training, dropout_training = _collect_state(obj)
        state, prefixed = _strip_prefix(state)
        was_dp = was_dp or prefixed
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        _check_state_dict(path, obj)
        root_class = _qualname(obj)
        state, was_dp = _strip_prefix(obj)
        flags, bn_training, dropout_training = {}, {}, []
    else:
        raise ValueError(
            f"weight file {path}: expected a pickled nn.Module or a state_dict of tensors, got {type(obj).__name__}"
        )
    return root_class, state, was_dp, flags, bn_training, dropout_training


def load_weights(path: str | Path, expected_sha256: str | None = None) -> LoadedWeights:
    """Read an hpacellseg weight file (whole-model pickle or plain state_dict) safely.

    Parameters
    ----------
    path : path
        ``dpn_unet_nuclei_v1.pth`` or ``dpn_unet_cell_3ch_v1.pth`` (or any file of that kind).
    expected_sha256 : str, optional
        If given, the file's sha256 must equal it.

    Returns
    -------
    LoadedWeights

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    WeightsHashError
        If the sha256 differs from ``expected_sha256`` (names the file and both hashes).
    UnsafeWeightsError
        If the pickle references a global outside the allow-list (names the global); nothing from
        the file is executed.
    ValueError
        If the file holds something other than a module or a state_dict.
    """
    path = Path(path)
    sha = _check_file(path, expected_sha256)
    file_format = _check_container(path)  # before any torch call: refuses TorchScript and non-pickles
    obj = _restricted_torch_load(path)
    root_class, state, was_dp, flags, bn_training, dropout_training = _extract_state(path, obj)
    if dropout_training:
        logger.warning(
            "%s: %d dropout layer(s) were pickled in train mode (random in hpacellseg); they run as identity here",
            path.name,
            len(dropout_training),
        )
    loaded = LoadedWeights(
        path=path,
        sha256=sha,
        state_dict=state,
        was_dataparallel=was_dp,
        file_format=file_format,
        root_class=root_class,
        training_flags=flags,
        batchnorm_training={k.removeprefix("module."): v for k, v in bn_training.items()},
        dropout_training=dropout_training,
    )
    logger.info("loaded %s: %s", path.name, loaded.summary())
    return loaded


def load_dpn_unet(
    path: str | Path,
    expected_sha256: str | None = None,
    device: str | torch.device = "cpu",
    batchnorm: str = "pickled",
):
    """Build a :class:`~hpa_kernel.segmentation.dpn_unet.DPNUnet` from a weight file.

    The network is put in eval mode. Its BatchNorm layers use per-image statistics where the file
    pickled them in train mode (``batchnorm="pickled"``, what hpacellseg does), or running
    statistics everywhere (``"running"``) or per-image statistics everywhere (``"per_image"``).

    Parameters
    ----------
    path : path
        The weight file (see :func:`load_weights`).
    expected_sha256 : str, optional
        If given, the file's sha256 must equal it.
    device : str or torch.device
        Where the network is put.
    batchnorm : {"pickled", "running", "per_image"}
        Which BatchNorm statistics the network uses (see above).

    Returns
    -------
    (DPNUnet, LoadedWeights)

    Raises
    ------
    ValueError
        If the state_dict does not fit the DPNUnet layout, or ``batchnorm`` is unknown.
    """
    from hpa_kernel.segmentation.dpn_unet import DPNUnet

    if batchnorm not in ("pickled", "running", "per_image"):
        raise ValueError(f"batchnorm must be 'pickled', 'running' or 'per_image', got {batchnorm!r}")
    loaded = load_weights(path, expected_sha256)
    with torch.device("meta"):
        net = DPNUnet()
    try:
        net.load_state_dict(loaded.state_dict, strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"weight file {path} does not fit the DPNUnet (dpn92) layout: {exc}") from exc
    net.eval()
    if batchnorm == "pickled":
        layers = net.batchnorm_layers()
        net.set_batchnorm_stats({k: v for k, v in loaded.batchnorm_training.items() if k in layers})
    else:
        net.set_batchnorm_stats(batchnorm == "per_image")
    return net.to(device), loaded
