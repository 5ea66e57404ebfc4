"""The weights manifest: which files the kit needs, with their sha256, and the ensemble layout.

``weights_manifest.json`` lives in the weights folder (a copy ships at the top of the repository)::

    {
      "format": 1,
      "segmentation": {"nuclei": {"file": "dpn_unet_nuclei_v1.pth", "sha256": null},
                       "cell":   {"file": "dpn_unet_cell_3ch_v1.pth", "sha256": null}},
      "ensemble": {"groups": [
          {"name": "g1", "weight": 0.2, "checkpoints": [{"file": "g1_m0.pth", "sha256": "..."}]},
          {"name": "g2", "weight": 0.4, "checkpoints": [{"file": "g2_m0.pth", "sha256": "...", "weight": 0.5},
                                                        {"file": "g2_m1.pth", "sha256": "...", "weight": 0.5}]},
          ...]}
    }

Per-checkpoint weights: a checkpoint entry may carry ``"weight"``; within a group the weights must
sum to 1 (tolerance 1e-6); a group where no entry has one is uniform; a group where some have one
and others not is a :class:`ManifestError`. The group's probability is the weighted mean of its
checkpoints' sigmoid outputs (the team used 0.2/0.3/0.3/0.2 and 0.5/0.5).

File names are relative to the weights folder. Every classifier checkpoint ``X.pth`` has its
config ``X.json`` beside it (:mod:`hpa_kernel.classifier.checkpoint`); the manifest pins the
``.pth``. A ``null`` hash means "not pinned": the file is used with one warning per load. A
mismatching hash is an error naming the file, the expected and the found hash.

:func:`load_manifest` is the one way in. The weights folder is the ``weights_dir`` argument when
given; else, when a manifest file was given explicitly, the folder that holds it (a different
``$HPA_KERNEL_WEIGHTS`` is then ignored with a WARNING naming both); else ``$HPA_KERNEL_WEIGHTS``,
then the Kaggle input folders (:func:`hpa_kernel.paths.resolve_dir`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from hpa_kernel import paths
from hpa_kernel.io import atomic_write, read_json_object
from hpa_kernel.options import say_option

__all__ = [
    "MANIFEST_NAME",
    "FORMAT_VERSION",
    "WeightFile",
    "SegmentationWeights",
    "EnsembleGroup",
    "Manifest",
    "ManifestError",
    "sha256_of",
    "find_weights_dir",
    "load_manifest",
    "verify_files",
    "write_manifest",
    "update_hashes",
    "default_manifest",
    "DEFAULT_LAYOUT",
    "DEFAULT_CHECKPOINT_WEIGHTS",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "weights_manifest.json"
FORMAT_VERSION = 1
WEIGHT_TOLERANCE = 1e-6
_HEX = set("0123456789abcdef")


class ManifestError(ValueError):
    """The manifest is malformed, or a file it lists does not match its pinned hash.

    ``json_path`` (keys and indices, e.g. ``("ensemble", "groups", 0)``) is the part of the
    manifest an error is about, when known; :func:`load_manifest` turns it into a line and column.
    """

    json_path: tuple = ()


def _located(keys: tuple, build):
    """``build()``, with ``keys`` recorded on a :class:`ManifestError` it raises (the innermost wins)."""
    try:
        return build()
    except ManifestError as exc:
        if not exc.json_path:
            exc.json_path = keys
        raise


@dataclass(frozen=True)
class WeightFile:
    """One file, relative to the weights folder, its sha256 (``None``: not pinned) and, for an
    ensemble checkpoint, its weight within its group (``None``: uniform group)."""

    file: str
    sha256: str | None = None
    weight: float | None = None

    def __post_init__(self):
        if not isinstance(self.file, str) or not self.file.strip():
            raise ManifestError(f"a weight file entry needs a non-empty 'file', got {self.file!r}")
        if Path(self.file).is_absolute() or ".." in Path(self.file).parts:
            raise ManifestError(f"weight file {self.file!r} must be relative to the weights folder, without '..'")
        if self.sha256 is not None:
            digest = str(self.sha256).lower()
            if len(digest) != 64 or not set(digest) <= _HEX:
                raise ManifestError(f"sha256 of {self.file} must be 64 hex digits or null, got {self.sha256!r}")
            object.__setattr__(self, "sha256", digest)
        if self.weight is not None:
            try:
                weight = float(self.weight)
            except (TypeError, ValueError):
                raise ManifestError(f"weight of {self.file} must be a number in [0, 1], got {self.weight!r}") from None
            if isinstance(self.weight, bool) or not 0.0 <= weight <= 1.0:
                raise ManifestError(f"weight of {self.file} must be a number in [0, 1], got {self.weight!r}")
            object.__setattr__(self, "weight", weight)

    @classmethod
    def from_dict(cls, data, where: str, weighted: bool = False) -> WeightFile:
        """Parse ``NAME`` or ``{"file", "sha256"[, "weight" when ``weighted``]}``."""
        if isinstance(data, str):
            return cls(data)
        keys = {"file", "sha256", "weight"} if weighted else {"file", "sha256"}
        if not isinstance(data, dict) or "file" not in data:
            raise ManifestError(f"{where}: expected {{'file': NAME, 'sha256': HEX or null}}, got {data!r}")
        unknown = set(data) - keys
        if unknown:
            raise ManifestError(f"{where}: unknown keys {sorted(unknown)}; expected {', '.join(sorted(keys))}")
        return cls(data["file"], data.get("sha256"), data.get("weight"))

    def to_dict(self) -> dict:
        out = {"file": self.file, "sha256": self.sha256}
        if self.weight is not None:
            out["weight"] = self.weight
        return out


@dataclass(frozen=True)
class SegmentationWeights:
    """The two HPA-Cell-Segmentation DPN-UNet files."""

    nuclei: WeightFile = WeightFile("dpn_unet_nuclei_v1.pth")
    cell: WeightFile = WeightFile("dpn_unet_cell_3ch_v1.pth")

    def files(self) -> list[WeightFile]:
        return [self.nuclei, self.cell]


@dataclass(frozen=True)
class EnsembleGroup:
    """A group of checkpoints: their sigmoid outputs are averaged, then weighted by ``weight``."""

    name: str
    weight: float
    checkpoints: tuple[WeightFile, ...]

    def __post_init__(self):
        object.__setattr__(self, "checkpoints", tuple(self.checkpoints))
        if not self.name:
            raise ManifestError("an ensemble group needs a name")
        try:
            object.__setattr__(self, "weight", float(self.weight))
        except (TypeError, ValueError):
            raise ManifestError(f"group {self.name}: weight must be a number in [0, 1], got {self.weight!r}") from None
        if not 0.0 <= self.weight <= 1.0:
            raise ManifestError(f"group {self.name}: weight must be in [0, 1], got {self.weight}")
        if not self.checkpoints:
            raise ManifestError(f"group {self.name}: needs at least one checkpoint, got none")
        for ck in self.checkpoints:
            if not ck.file.endswith(".pth"):
                raise ManifestError(f"group {self.name}: checkpoint {ck.file} must be a .pth file")
        given = [ck.weight is not None for ck in self.checkpoints]
        if any(given) and not all(given):
            without = [ck.file for ck in self.checkpoints if ck.weight is None]
            raise ManifestError(
                f"group {self.name}: either every checkpoint has a 'weight' or none has; {', '.join(without)} lack one"
            )
        if all(given):
            total = sum(ck.weight for ck in self.checkpoints)
            if abs(total - 1.0) > WEIGHT_TOLERANCE:
                detail = ", ".join(f"{ck.file}={ck.weight}" for ck in self.checkpoints)
                raise ManifestError(
                    f"group {self.name}: checkpoint weights must sum to 1 (tolerance {WEIGHT_TOLERANCE}), got {total!r} ({detail})"
                )

    @property
    def checkpoint_weights(self) -> tuple[float, ...]:
        """The weight of each checkpoint within the group (uniform when the manifest gives none)."""
        if self.checkpoints[0].weight is None:
            return tuple(1.0 / len(self.checkpoints) for _ in self.checkpoints)
        return tuple(ck.weight for ck in self.checkpoints)


@dataclass(frozen=True)
class Manifest:
    """A loaded manifest. ``weights_dir`` is where its files were (or will be) looked up."""

    groups: tuple[EnsembleGroup, ...]
    segmentation: SegmentationWeights = field(default_factory=SegmentationWeights)
    weights_dir: Path | None = None
    source: Path | None = None

    def __post_init__(self):
        object.__setattr__(self, "groups", tuple(self.groups))
        if not self.groups:
            raise ManifestError("the ensemble needs at least one group")
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ManifestError(f"group names must be unique, got {names}")
        total = sum(g.weight for g in self.groups)
        if abs(total - 1.0) > WEIGHT_TOLERANCE:
            detail = ", ".join(f"{g.name}={g.weight}" for g in self.groups)
            raise ManifestError(f"group weights must sum to 1 (tolerance {WEIGHT_TOLERANCE}), got {total!r} ({detail})")
        files = [ck.file for g in self.groups for ck in g.checkpoints]
        if len(set(files)) != len(files):
            raise ManifestError(f"a checkpoint is listed twice in the ensemble: {sorted(f for f in files if files.count(f) > 1)}")

    # -- paths -------------------------------------------------------------------------------
    def path_of(self, entry: WeightFile | str) -> Path:
        """Absolute path of a manifest entry in :attr:`weights_dir`."""
        if self.weights_dir is None:
            raise ValueError("this manifest has no weights_dir; load it with load_manifest(weights_dir=...)")
        name = entry.file if isinstance(entry, WeightFile) else entry
        return self.weights_dir / name

    def checkpoint_paths(self) -> list[list[Path]]:
        """The checkpoint paths, group by group."""
        return [[self.path_of(ck) for ck in g.checkpoints] for g in self.groups]

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(g.weight for g in self.groups)

    @property
    def checkpoint_weights(self) -> tuple[tuple[float, ...], ...]:
        """Per group, the weights of its checkpoints (each tuple sums to 1)."""
        return tuple(g.checkpoint_weights for g in self.groups)

    @property
    def n_checkpoints(self) -> int:
        return sum(len(g.checkpoints) for g in self.groups)

    def segmentation_present(self) -> bool:
        """True if both segmentation files exist in the weights folder (their hashes are not checked here)."""
        return self.weights_dir is not None and all(self.path_of(f).is_file() for f in self.segmentation.files())

    def all_files(self, segmentation: bool = True) -> list[WeightFile]:
        files = [ck for g in self.groups for ck in g.checkpoints]
        return (self.segmentation.files() if segmentation else []) + files

    # -- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT_VERSION,
            "segmentation": {"nuclei": self.segmentation.nuclei.to_dict(), "cell": self.segmentation.cell.to_dict()},
            "ensemble": {
                "groups": [
                    {"name": g.name, "weight": g.weight, "checkpoints": [c.to_dict() for c in g.checkpoints]} for g in self.groups
                ]
            },
        }

    @classmethod
    def from_dict(cls, data: dict, weights_dir: Path | None = None, source: Path | None = None) -> Manifest:
        where = str(source) if source else "manifest"
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ManifestError(f"{where}: format {version!r} is not supported; expected {FORMAT_VERSION}")
        unknown = set(data) - {"format", "segmentation", "ensemble", "comment"}
        if unknown:
            raise ManifestError(f"{where}: unknown keys {sorted(unknown)}; expected format, segmentation, ensemble")
        seg = data.get("segmentation") or {}
        if not isinstance(seg, dict) or set(seg) - {"nuclei", "cell"}:
            raise ManifestError(f"{where}: segmentation must be {{'nuclei': ..., 'cell': ...}}, got {seg!r}")
        segmentation = SegmentationWeights(**{
            k: _located(("segmentation", k), lambda v=v, k=k: WeightFile.from_dict(v, f"{where}: segmentation.{k}"))
            for k, v in seg.items()
        })
        ens = data.get("ensemble")
        if not isinstance(ens, dict) or not isinstance(ens.get("groups"), list):
            raise ManifestError(f"{where}: expected 'ensemble': {{'groups': [...]}}")
        groups = [_located(("ensemble", "groups", i), lambda i=i, g=g: _group(i, g, where)) for i, g in enumerate(ens["groups"])]
        return _located(("ensemble", "groups"), lambda: cls(tuple(groups), segmentation, weights_dir, source))


def _group(i: int, g, where: str) -> EnsembleGroup:
    """Group ``i`` of the manifest's ``ensemble.groups``."""
    if not isinstance(g, dict) or not {"weight", "checkpoints"} <= set(g):
        raise ManifestError(f"{where}: group {i} needs 'weight' and 'checkpoints', got {g!r}")
    name = str(g.get("name", f"g{i + 1}"))
    cks = [
        _located(("ensemble", "groups", i, "checkpoints", j),
                 lambda j=j, c=c: WeightFile.from_dict(c, f"{where}: group {name} checkpoint {j}", weighted=True))
        for j, c in enumerate(g["checkpoints"])
    ]
    return _located(("ensemble", "groups", i, "weight"), lambda: EnsembleGroup(name, g["weight"], tuple(cks)))


#: The layout of :func:`default_manifest` and the team's weights within its groups (HPAsubmission
#: In[21]-In[24]: "old" 1 checkpoint, "resize + pad" 0.5/0.5, "resize" 0.2/0.3/0.3/0.2).
DEFAULT_LAYOUT: tuple[int, ...] = (1, 2, 4)
DEFAULT_CHECKPOINT_WEIGHTS: tuple[tuple[float, ...] | None, ...] = (None, (0.5, 0.5), (0.2, 0.3, 0.3, 0.2))


def default_manifest(
    checkpoints_per_group: tuple[int, ...] = DEFAULT_LAYOUT,
    weights: tuple[float, ...] = (0.2, 0.4, 0.4),
    checkpoint_weights: tuple[tuple[float, ...] | None, ...] | None = None,
) -> Manifest:
    """The kit's ensemble layout with unpinned hashes: groups ``g1..gK``, files ``gK_mJ.pth``.

    ``checkpoint_weights`` gives each group's per-checkpoint weights (None for a uniform group);
    by default the team's (:data:`DEFAULT_CHECKPOINT_WEIGHTS`) for the default layout, and uniform
    groups for any other layout.

    >>> m = default_manifest()
    >>> [len(g.checkpoints) for g in m.groups], m.weights
    ([1, 2, 4], (0.2, 0.4, 0.4))
    >>> m.groups[1].checkpoints[1].file, m.checkpoint_weights[2]
    ('g2_m1.pth', (0.2, 0.3, 0.3, 0.2))
    """
    if len(checkpoints_per_group) != len(weights):
        raise ValueError(f"checkpoints_per_group {checkpoints_per_group} and weights {weights} differ in length")
    if checkpoint_weights is None:
        same = tuple(checkpoints_per_group) == DEFAULT_LAYOUT
        checkpoint_weights = DEFAULT_CHECKPOINT_WEIGHTS if same else (None,) * len(weights)
    if len(checkpoint_weights) != len(weights):
        raise ValueError(f"checkpoint_weights must give one entry per group, got {checkpoint_weights}")
    groups = []
    for i, (n, w, cw) in enumerate(zip(checkpoints_per_group, weights, checkpoint_weights, strict=True)):
        if cw is not None and len(cw) != n:
            raise ValueError(f"group g{i + 1}: {len(cw)} checkpoint weights for {n} checkpoints")
        files = tuple(WeightFile(f"g{i + 1}_m{j}.pth", weight=None if cw is None else cw[j]) for j in range(n))
        groups.append(EnsembleGroup(f"g{i + 1}", w, files))
    return Manifest(tuple(groups))


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _has_manifest(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file()


def _manifest_folder(path: Path) -> Path:
    """The weights folder of an explicit manifest file: its own folder; a different ``$HPA_KERNEL_WEIGHTS`` is warned about."""
    folder = path.parent
    env = os.environ.get(paths.WEIGHTS_ENV)
    if env and Path(env).resolve() != folder.resolve():
        logger.warning(
            "weights manifest %s given: its folder %s is the weights folder; $%s=%s is ignored "
            "(set %s to use another folder)",
            path, folder, paths.WEIGHTS_ENV, env, say_option("weights"),
        )
    return folder


def find_weights_dir(weights_dir: str | os.PathLike | None = None, kaggle_root: Path | None = None) -> Path:
    """The weights folder: ``weights_dir``, then ``$HPA_KERNEL_WEIGHTS``, then a Kaggle input folder
    holding ``weights_manifest.json``.

    Raises
    ------
    FileNotFoundError
        Naming every place that was tried.
    """
    return paths.resolve_dir(weights_dir, paths.WEIGHTS_ENV, _has_manifest, "weights folder", kaggle_root)


def load_manifest(
    path: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    verify: bool = True,
    require_segmentation: bool = True,
    kaggle_root: Path | None = None,
) -> Manifest:
    """Load and check the weights manifest.

    Parameters
    ----------
    path : path, optional
        The manifest file. Default: ``weights_manifest.json`` in the weights folder.
    weights_dir : path, optional
        The weights folder. Default: when ``path`` is given, the folder that holds ``path`` (a
        ``$HPA_KERNEL_WEIGHTS`` naming another folder is ignored with a WARNING naming both, and
        the Kaggle input folders are not searched); otherwise ``$HPA_KERNEL_WEIGHTS``, then the
        Kaggle input folders.
    verify : bool
        Check that every listed file exists and that pinned hashes match. The group weights are
        always checked (they must sum to 1 within 1e-6).
    require_segmentation : bool
        With ``verify``, also require the two segmentation files. Pass False when the classic
        segmenter will be used.
    kaggle_root : path, optional
        Override of the Kaggle input folder (tests).

    Returns
    -------
    Manifest

    Raises
    ------
    FileNotFoundError
        The manifest, the weights folder or a listed file is missing (the message names it and the
        folder it was looked for in).
    ManifestError
        The manifest is malformed, or a file's sha256 differs from the pinned one.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"weights manifest {path} not found")
        folder = find_weights_dir(weights_dir) if weights_dir is not None else _manifest_folder(path)
    else:
        folder = find_weights_dir(weights_dir, kaggle_root)
        path = folder / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"weights manifest {MANIFEST_NAME} not found in the weights folder {folder}")
    data = read_json_object(path, "weights manifest", ManifestError)
    try:
        manifest = Manifest.from_dict(data, weights_dir=folder, source=path)
    except ManifestError as exc:
        raise _with_position(exc, path) from None
    if verify:
        verify_files(manifest, segmentation=require_segmentation)
    logger.info(
        "weights manifest %s: %d groups (%s checkpoints, weights %s), folder %s",
        path,
        len(manifest.groups),
        "/".join(str(len(g.checkpoints)) for g in manifest.groups),
        "/".join(f"{w:g}" for w in manifest.weights),
        folder,
    )
    return manifest


def _with_position(exc: ManifestError, path: Path) -> ManifestError:
    """``exc`` naming the file, and the line and column of ``exc.json_path`` when it is known."""
    from hpa_kernel.readers import json_position, read_text

    message = str(exc).removeprefix(f"{path}: ")
    where = json_position(read_text(path, "weights manifest"), exc.json_path) if exc.json_path else None
    if where is None:
        return ManifestError(f"{path}: {message}")
    dotted = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in exc.json_path).lstrip(".")
    return ManifestError(f"{path}, line {where[0]}, column {where[1]} ({dotted}): {message}")


def verify_files(manifest: Manifest, segmentation: bool = True) -> None:
    """Check that the manifest's files exist and match their pinned hashes.

    Unpinned files (``sha256: null``) are reported in one warning. Each checkpoint also needs its
    ``.json`` config beside it.
    """
    missing = []
    for entry in manifest.all_files(segmentation):
        p = manifest.path_of(entry)
        if not p.is_file():
            missing.append(entry.file)
        elif entry.file.endswith(".pth") and entry not in manifest.segmentation.files() and not p.with_suffix(".json").is_file():
            missing.append(str(Path(entry.file).with_suffix(".json")))
    if missing:
        raise FileNotFoundError(f"weights folder {manifest.weights_dir} lacks {len(missing)} file(s) listed in the manifest: {', '.join(missing)}")
    unpinned = []
    for entry in manifest.all_files(segmentation):
        if entry.sha256 is None:
            unpinned.append(entry.file)
            continue
        found = sha256_of(manifest.path_of(entry))
        if found != entry.sha256:
            raise ManifestError(
                f"{manifest.path_of(entry)}: sha256 mismatch: the manifest expects {entry.sha256}, the file has {found}"
            )
    if unpinned:
        logger.warning("%d weight file(s) have no pinned sha256 and are used unchecked: %s", len(unpinned), ", ".join(unpinned))


def write_manifest(manifest: Manifest, path: str | os.PathLike) -> Path:
    """Write ``manifest`` as JSON to ``path`` (atomically). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest.to_dict(), indent=2) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def update_hashes(
    path: str | os.PathLike, weights_dir: str | os.PathLike | None = None, segmentation: bool = True
) -> Manifest:
    """Compute the sha256 of every listed file present in the weights folder and write them into the manifest.

    Files that are absent keep their entry (and are logged). Returns the updated manifest.

    Parameters
    ----------
    path : path
        The manifest file to update in place.
    weights_dir : path, optional
        Where the files are; default the folder of ``path``.
    segmentation : bool
        Also hash the segmentation files.
    """
    path = Path(path)
    manifest = load_manifest(path, weights_dir or path.parent, verify=False)

    def pin(entry: WeightFile) -> WeightFile:
        p = manifest.path_of(entry)
        if not p.is_file():
            logger.info("%s is not in %s (yet); its hash stays %s", entry.file, manifest.weights_dir, entry.sha256)
            return entry
        return replace(entry, sha256=sha256_of(p))

    seg = manifest.segmentation
    if segmentation:
        seg = SegmentationWeights(pin(seg.nuclei), pin(seg.cell))
    groups = tuple(replace(g, checkpoints=tuple(pin(c) for c in g.checkpoints)) for g in manifest.groups)
    updated = Manifest(groups, seg, manifest.weights_dir, path)
    write_manifest(updated, path)
    return updated
