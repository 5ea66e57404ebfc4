"""Offline distribution: the wheelhouse and the weights dataset that a Kaggle notebook attaches.

Kaggle code submissions have no internet, so everything the kit needs beyond the Kaggle image
travels as two datasets:

* **wheels** (:func:`bundle_wheels`): the kit's own pure-Python wheel plus a wheel for every base
  requirement of the kit that the Kaggle image lacks or has in a version that does not satisfy it
  (:func:`missing_requirements`, from :data:`KAGGLE_PREINSTALLED`; today there are none), a lock
  file of exact versions and sha256 hashes, ``dataset-metadata.json`` for the Kaggle CLI and a README
  for the dataset page.
* **weights** (:func:`bundle_weights`): the ensemble checkpoints, the segmentation weights when
  present, and ``weights_manifest.json`` with verified hashes. The same folder also uploads as a
  Kaggle Model (:func:`write_model_metadata`: ``model-metadata.json``, whose description is the
  model card, ``model-instance-metadata.json`` for ``kaggle models instances create -p DIR``, and the
  card as ``README.md``); attached, a Model is mounted at
  ``<Kaggle input>/<model>/pytorch/default/<version>/``, where :mod:`hpa_kernel.paths` finds it.

The install on Kaggle is then ``pip install --no-index --find-links <Kaggle input>/<wheels> hpa_kernel``
(:func:`install_command`): it adds the kit and nothing the image already has. OpenCV is not a base
requirement (see :mod:`hpa_kernel._cv2`), so the image's ``opencv-python`` is used as it is.

Building the wheelhouse needs the package registry (``pip download``) only when something is
missing; installing from it never does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from hpa_kernel import __version__
from hpa_kernel.manifest import sha256_of
from hpa_kernel.paths import KAGGLE_INPUT

__all__ = [
    "KAGGLE_PYTHON",
    "KAGGLE_PLATFORMS",
    "KAGGLE_PREINSTALLED",
    "WheelTarget",
    "WheelhouseResult",
    "find_project_root",
    "build_kit_wheel",
    "kit_requirements",
    "missing_requirements",
    "bundle_wheels",
    "bundle_weights",
    "write_model_metadata",
    "install_command",
    "kaggle_wheels_dir",
]

logger = logging.getLogger(__name__)

#: The Kaggle image this kit targets (2026).
KAGGLE_PYTHON = "3.12"
KAGGLE_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
#: What the Kaggle image has preinstalled (distribution -> version). The one list the wheelhouse is
#: computed from: a base requirement of the kit that is absent here, or whose version this one
#: does not satisfy, gets its wheel in the wheels dataset. OpenCV is ``opencv-python`` (not
#: headless) there. scipy, tqdm and numba are on the image; their versions here are lower
#: estimates, far above the kit's bounds.
KAGGLE_PREINSTALLED: dict[str, str] = {
    "torch": "2.10",
    "timm": "1.0.26",
    "numpy": "2.4",
    "pandas": "2.3",
    "scikit-image": "0.25.2",
    "opencv-python": "4.13",
    "pycocotools": "2.0.11",
    "scipy": "1.15",
    "tqdm": "4.67",
    "numba": "0.61",
    "nbconvert": "6.4.5",
    "papermill": "2.6",
}
#: Where the weights and wheels datasets' ids come from when none is given and none was written before.
DEFAULT_WHEELS_ID = "your-kaggle-username/hpa-kernel-wheels"
DEFAULT_WEIGHTS_ID = "your-kaggle-username/hpa-kernel-weights"


def find_project_root(start: Path | None = None) -> Path:
    """The source checkout that holds hpa-kernel's ``pyproject.toml``.

    Raises
    ------
    FileNotFoundError
        When the kit runs from an installed wheel: its wheel cannot be rebuilt then; pass
        ``kit_wheel=`` instead.
    """
    here = Path(start or Path(__file__).resolve().parent)
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and 'name = "hpa-kernel"' in candidate.read_text():
            return folder
    raise FileNotFoundError(
        f"no hpa-kernel source checkout above {here}: the kit's wheel can only be built from the repository; "
        "pass an existing wheel with --kit-wheel"
    )


def _run(cmd: list[str]) -> None:
    logger.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")


def build_kit_wheel(out: str | os.PathLike, project_root: str | os.PathLike | None = None) -> Path:
    """Build the kit's pure-Python wheel into ``out`` with pip, without build isolation (offline)."""
    root = Path(project_root) if project_root else find_project_root()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # setuptools leaves these in the checkout; remove only the ones this build creates.
    leftovers = [root / name for name in ("build", "hpa_kernel.egg-info") if not (root / name).exists()]
    with tempfile.TemporaryDirectory() as tmp:
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp, str(root)])
        wheels = list(Path(tmp).glob("hpa_kernel-*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"expected one hpa_kernel wheel from the build, found {[w.name for w in wheels]}")
        target = out / wheels[0].name
        shutil.move(str(wheels[0]), target)
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True)
    with zipfile.ZipFile(target) as zf:
        names = zf.namelist()
    if not any(n.startswith("hpa_kernel/notebooks/") and n.endswith(".ipynb") for n in names):
        raise RuntimeError(f"{target.name} carries no notebooks: check setup.py's hpa_kernel.notebooks mapping")
    if any(n.endswith((".so", ".pyd")) for n in names):
        raise RuntimeError(f"{target.name} is not pure Python")
    return target


def _download(requirements: list[str], out: Path, python: str, platforms: tuple[str, ...], find_links: list[str]) -> None:
    if not requirements:
        return
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(out)]
    cmd += ["--python-version", python, "--implementation", "cp"]
    for platform in platforms:
        cmd += ["--platform", platform]
    for link in find_links:
        cmd += ["--find-links", link]
    _run(cmd + requirements)


def _wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return name.replace("_", "-").lower(), version


def _requires_dist(kit_wheel: Path) -> list[str]:
    with zipfile.ZipFile(kit_wheel) as zf:
        metadata = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        if len(metadata) != 1:
            raise ValueError(f"{kit_wheel.name}: expected one .dist-info/METADATA, found {metadata}")
        text = zf.read(metadata[0]).decode("utf-8")
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def kit_requirements(kit_wheel: str | os.PathLike) -> list[str]:
    """The base requirements (``Requires-Dist`` without an ``extra`` marker) of a built kit wheel."""
    from packaging.requirements import Requirement

    return [r for r in _requires_dist(Path(kit_wheel)) if "extra" not in str(Requirement(r).marker or "")]


def missing_requirements(requirements: list[str], preinstalled: dict[str, str] = KAGGLE_PREINSTALLED,
                         python: str = KAGGLE_PYTHON) -> list[str]:
    """The requirements that ``preinstalled`` (distribution -> version) does not satisfy.

    Requirements whose environment marker is false for Python ``python`` on Linux are skipped.

    >>> missing_requirements(["numpy>=1.24", "numba>=0.58", "tqdm"], {"numpy": "2.4", "numba": "0.55"})
    ['numba>=0.58', 'tqdm']
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    have = {canonicalize_name(name): version for name, version in preinstalled.items()}
    env = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix", "extra": ""}
    missing = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        version = have.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            req.marker = None
            missing.append(str(req))
    return missing


@dataclass
class WheelhouseResult:
    """What :func:`bundle_wheels` wrote."""

    folder: Path
    kit_wheel: Path
    wheels: list[Path] = field(default_factory=list)
    lock: Path | None = None
    dependencies: list[str] = field(default_factory=list)


_WHEELS_README = """# hpa-kernel wheels (offline)

Attach this dataset to a Kaggle notebook that has internet disabled, then install with:

    {install}

(the submission notebook's first cell does exactly this). Contents: the kit's wheel `{kit}` and a
wheel for every base requirement of the kit that the Kaggle image lacks:

{extras}

OpenCV is not among the kit's requirements: the Kaggle image's `opencv-python` is used as it is.
`wheels.lock` lists every wheel with its version and sha256. Target: Python {python},
{platform}. Built by `hpa-kernel bundle wheels` ({version}).
"""


def install_command(wheels_dir: str | os.PathLike) -> str:
    """The pip command that installs the kit offline from a wheels folder, as the notebook runs it on Kaggle.

    ``--upgrade`` replaces an older kit; the kit's requirements are left as the image has them.

    >>> install_command("/data/hpa-kernel-wheels")
    'pip install --no-index --find-links /data/hpa-kernel-wheels --upgrade hpa_kernel'
    """
    return " ".join(["pip install --no-index --find-links", str(wheels_dir), "--upgrade hpa_kernel"])


_MODEL_CARD = """# hpa-kernel weights

Classifier ensemble and cell-segmentation weights for the hpa-kernel submission to the Kaggle
competition "Human Protein Atlas - Single Cell Classification" (HPA 2021). `weights_manifest.json`
lists every file with its sha256 and the ensemble weights; the kit checks them before use.

## Usage

Attach this {kind} to the submission notebook (internet off) together with the wheels dataset and
the competition data. The kit finds `weights_manifest.json` under the Kaggle input folder by
itself, as a dataset (`<input>/{name}/`) or as a Model
(`<input>/{name}/pytorch/{instance}/<version>/`); or pass the folder as `weights_dir`
(`--weights` on the command line).

## Files

{files}

Written by `hpa-kernel bundle weights` ({version}).
"""


def _model_card(out: Path, name: str, instance: str) -> str:
    files = "\n".join(f"- `{p.relative_to(out).as_posix()}`" for p in sorted(out.rglob("*"))
                      if p.is_file() and p.suffix in (".pth", ".json") and not p.name.endswith("metadata.json"))
    return _MODEL_CARD.format(kind="dataset or Model", name=name, instance=instance, files=files or "(none)",
                              version=__version__)


def write_model_metadata(out: str | os.PathLike, model_id: str, instance: str = "default",
                         license_name: str = "Apache 2.0") -> Path:
    """Make the weights folder ``out`` uploadable as a Kaggle Model as well as a dataset.

    Writes ``model-metadata.json`` (``kaggle models create -p DIR``; its ``description`` is the
    model card), ``model-instance-metadata.json`` (``kaggle models instances create -p DIR``: the
    PyTorch variation ``instance`` of the model ``owner/name`` = ``model_id``) and the model card as
    ``README.md``. Attached to a notebook, the Model is mounted at
    ``<Kaggle input>/<name>/pytorch/<instance>/<version>/``.

    Parameters
    ----------
    out : path
        The weights folder written by :func:`bundle_weights` (or ``bundle_milimed``).
    model_id : str
        ``owner/name``, as the dataset id.
    instance : str
        The variation's slug.
    license_name : str
        One of Kaggle's license names.

    Returns
    -------
    Path
        ``out/model-instance-metadata.json``.
    """
    out = Path(out)
    owner, _, name = str(model_id).partition("/")
    if not owner or not name or "/" in name:
        raise ValueError(f"model_id must be OWNER/NAME, got {model_id!r}")
    card = _model_card(out, name, instance)
    model = {"ownerSlug": owner, "title": "hpa-kernel weights", "slug": name, "subtitle": "", "isPrivate": True,
             "description": card, "publishTime": "", "provenanceSources": ""}
    variation = {"ownerSlug": owner, "modelSlug": name, "instanceSlug": instance, "framework": "pyTorch",
                 "overview": "Classifier ensemble and segmentation weights of hpa-kernel (HPA single-cell classification).",
                 "usage": card, "licenseName": license_name, "fineTunable": False, "trainingData": [],
                 "modelInstanceType": "Unspecified", "baseModelInstance": "", "externalBaseModelUrl": ""}
    (out / "model-metadata.json").write_text(json.dumps(model, indent=2) + "\n")
    (out / "README.md").write_text(card)
    target = out / "model-instance-metadata.json"
    target.write_text(json.dumps(variation, indent=2) + "\n")
    logger.info("Kaggle Model metadata in %s: kaggle models create -p %s, then kaggle models instances create -p %s; "
                "attached, it is mounted at <input>/%s/pytorch/%s/<version>/", out, out, out, name, instance)
    return target


def kaggle_wheels_dir(dataset_id: str) -> Path:
    """Where Kaggle mounts the wheels dataset ``owner/name``: ``name`` in :data:`hpa_kernel.paths.KAGGLE_INPUT`."""
    return KAGGLE_INPUT / dataset_id.rsplit("/", 1)[-1]


def _dataset_id(out: Path, dataset_id: str | None, default: str) -> str:
    """``dataset_id``, else the id already in ``out/dataset-metadata.json``, else ``default``."""
    if dataset_id:
        return dataset_id
    previous = out / "dataset-metadata.json"
    if previous.is_file():
        from hpa_kernel.io import read_json_object

        found = read_json_object(previous, "Kaggle dataset metadata").get("id")
        if isinstance(found, str) and "/" in found:
            return found
    return default


def _write_dataset_metadata(out: Path, title: str, dataset_id: str, license_name: str) -> None:
    metadata = {"title": title, "id": dataset_id, "licenses": [{"name": license_name}]}
    (out / "dataset-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")


@dataclass(frozen=True)
class WheelTarget:
    """The image a wheelhouse is for: its Python, its platform tags and what it has preinstalled.

    Attributes
    ----------
    python : str
        Target interpreter version for ``pip download`` (:data:`KAGGLE_PYTHON`).
    platforms : tuple of str
        Platform tags for ``pip download`` (:data:`KAGGLE_PLATFORMS`).
    preinstalled : dict
        Distribution -> version of what the target image has (:data:`KAGGLE_PREINSTALLED`). Every
        base requirement of the kit it does not satisfy is downloaded (:func:`missing_requirements`).

    Examples
    --------
    >>> WheelTarget().python == KAGGLE_PYTHON
    True
    >>> WheelTarget(python="3.11", platforms=("manylinux2014_x86_64",)).platforms
    ('manylinux2014_x86_64',)
    """

    python: str = KAGGLE_PYTHON
    platforms: tuple[str, ...] = KAGGLE_PLATFORMS
    preinstalled: dict[str, str] = field(default_factory=lambda: KAGGLE_PREINSTALLED)


def _place_kit_wheel(out: Path, kit_wheel: str | os.PathLike | None) -> Path:
    """Copy the prebuilt ``kit_wheel`` into ``out``, or build the kit's wheel there; its path in ``out``."""
    if kit_wheel is None:
        return build_kit_wheel(out)
    kit_wheel = Path(kit_wheel)
    if not kit_wheel.is_file():
        raise FileNotFoundError(f"kit wheel {kit_wheel} does not exist")
    kit = out / kit_wheel.name
    shutil.copy2(kit_wheel, kit)
    return kit


def _write_wheels_lock(out: Path, wheels: list[Path]) -> Path:
    """Write ``out/wheels.lock``: one ``name==version  sha256:...  file`` line per wheel."""
    lock_lines = ["# name==version  sha256  file   (written by hpa-kernel bundle wheels)"]
    for wheel in wheels:
        name, version = _wheel_name_version(wheel)
        lock_lines.append(f"{name}=={version}  sha256:{sha256_of(wheel)}  {wheel.name}")
    lock = out / "wheels.lock"
    lock.write_text("\n".join(lock_lines) + "\n")
    return lock


def bundle_wheels(
    out: str | os.PathLike,
    *,
    target: WheelTarget | None = None,
    kit_wheel: str | os.PathLike | None = None,
    find_links: list[str] | None = None,
    dataset_id: str | None = None,
) -> WheelhouseResult:
    """Fill ``out`` with the kit's wheel, the wheels the target image lacks, a lock file and Kaggle metadata.

    Parameters
    ----------
    out : path
        The wheelhouse folder (created). Old ``*.whl`` files in it are removed first.
    target : WheelTarget, optional
        The target image's Python, platform tags and preinstalled distributions (Kaggle's by default).
    kit_wheel : path, optional
        Use this prebuilt kit wheel instead of building one from the checkout.
    find_links : list of str, optional
        Extra ``--find-links`` for ``pip download``.
    dataset_id : str, optional
        Kaggle dataset id (``owner/name``) for ``dataset-metadata.json``; default: the id already in
        ``out/dataset-metadata.json``, else a placeholder. Kaggle mounts the dataset under ``name``,
        which the README's install command names.
    """
    target = WheelTarget() if target is None else target
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset_id = _dataset_id(out, dataset_id, DEFAULT_WHEELS_ID)
    for old in out.glob("*.whl"):
        old.unlink()
    kit = _place_kit_wheel(out, kit_wheel)
    missing = missing_requirements(kit_requirements(kit), target.preinstalled, target.python)
    logger.info("base requirements missing from the target image: %s", ", ".join(missing) or "none")
    _download(missing, out, target.python, tuple(target.platforms), list(find_links or []))
    wheels = sorted(out.glob("*.whl"))
    lock = _write_wheels_lock(out, wheels)
    _write_dataset_metadata(out, "hpa-kernel wheels", dataset_id, "MIT")
    extras_md = "\n".join(f"* `{req}`" for req in missing) or "* none: the image has every base requirement"
    (out / "README.md").write_text(
        _WHEELS_README.format(
            install=install_command(kaggle_wheels_dir(dataset_id)),
            kit=kit.name,
            extras=extras_md,
            python=target.python,
            platform=", ".join(target.platforms),
            version=__version__,
        )
    )
    logger.info("wheelhouse %s (dataset %s): %d wheels, lock file %s", out, dataset_id, len(wheels), lock.name)
    return WheelhouseResult(folder=out, kit_wheel=kit, wheels=wheels, lock=lock, dependencies=missing)


def bundle_weights(
    weights_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    manifest: str | os.PathLike | None = None,
    dataset_id: str | None = None,
) -> Path:
    """Gather the weights dataset: checkpoints (``.pth`` + ``.json``), segmentation weights when
    present, and ``weights_manifest.json`` with every hash pinned and verified.

    Parameters
    ----------
    weights_dir : path
        Where the trained checkpoints (and optionally the two DPN-UNet files) are.
    out : path
        The dataset folder to write (created).
    manifest : path, optional
        The manifest describing the ensemble; default ``weights_dir/weights_manifest.json``, else
        the kit's default layout (:func:`hpa_kernel.manifest.default_manifest`).
    dataset_id : str, optional
        Kaggle dataset id for ``dataset-metadata.json``, also the Model's ``owner/name``
        (:func:`write_model_metadata`); default: the id already in ``out/dataset-metadata.json``,
        else a placeholder.

    Returns
    -------
    Path
        The written ``weights_manifest.json``.

    Raises
    ------
    FileNotFoundError
        A checkpoint or its config listed by the manifest is missing.
    hpa_kernel.manifest.ManifestError
        A file does not match a hash already pinned in the source manifest.
    """
    from hpa_kernel import manifest as mf

    weights_dir, out = Path(weights_dir), Path(out)
    if not weights_dir.is_dir():
        raise FileNotFoundError(f"weights folder {weights_dir} does not exist")
    if manifest is None and (weights_dir / mf.MANIFEST_NAME).is_file():
        manifest = weights_dir / mf.MANIFEST_NAME
    if manifest is not None:
        source = mf.load_manifest(manifest, weights_dir, verify=True, require_segmentation=False)
    else:
        source = dataclasses.replace(mf.default_manifest(), weights_dir=weights_dir)
        mf.verify_files(source, segmentation=False)
    with_segmentation = source.segmentation_present()
    out.mkdir(parents=True, exist_ok=True)
    names = [ck.file for g in source.groups for ck in g.checkpoints]
    names += [str(Path(n).with_suffix(".json")) for n in names]
    if with_segmentation:
        names += [f.file for f in source.segmentation.files()]
    else:
        logger.warning(
            "segmentation weights (%s) are not in %s: the dataset carries none, and submissions need "
            "them attached separately or --segmenter classic",
            ", ".join(f.file for f in source.segmentation.files()),
            weights_dir,
        )
    for name in names:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(weights_dir / name, out / name)
    target = mf.write_manifest(dataclasses.replace(source, weights_dir=out), out / mf.MANIFEST_NAME)
    # Hashes pinned in the source must hold for the copies; then pin every file from those copies.
    mf.load_manifest(target, out, verify=True, require_segmentation=with_segmentation)
    pinned = mf.update_hashes(target, out, segmentation=with_segmentation)
    unpinned = [f.file for f in pinned.all_files(with_segmentation) if f.sha256 is None]
    if unpinned:
        raise RuntimeError(f"hashes could not be pinned for {unpinned}")
    dataset_id = _dataset_id(out, dataset_id, DEFAULT_WEIGHTS_ID)
    _write_dataset_metadata(out, "hpa-kernel weights", dataset_id, "other")
    write_model_metadata(out, dataset_id)
    logger.info("weights dataset %s: %d files, segmentation %s", out, len(names), "included" if with_segmentation else "absent")
    return target
