"""Offline distribution: the wheelhouse and the weights dataset that a Kaggle notebook attaches.

Kaggle code submissions have no internet, so everything the kit needs beyond the Kaggle image
travels as two datasets:

* **wheels** (:func:`bundle_wheels`): the kit's own pure-Python wheel plus the dependency wheels
  that the Kaggle image lacks or has in a version we cannot use (:data:`EXTRA_REQUIREMENTS`), a lock
  file of exact versions and sha256 hashes, ``dataset-metadata.json`` for the Kaggle CLI and a README
  for the dataset page.
* **weights** (:func:`bundle_weights`): the ensemble checkpoints, the segmentation weights when
  present, and ``weights_manifest.json`` with verified hashes.

Building the wheelhouse needs the package registry (``pip download``); installing from it does not.
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
    "EXTRA_REQUIREMENTS",
    "WheelhouseResult",
    "find_project_root",
    "build_kit_wheel",
    "bundle_wheels",
    "bundle_weights",
    "install_command",
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
#: What the Kaggle image already has; the kit's wheel declares lower bounds that these satisfy.
KAGGLE_PREINSTALLED = {
    "torch": "2.10",
    "timm": "1.0.26",
    "scikit-image": "0.25.2",
    "numpy": "2.4",
    "pandas": "2.3",
    "opencv-python-headless": "4.13",
    "pycocotools": "2.0.11",
    "nbconvert": "6.4.5",
}
#: Wheels the Kaggle image lacks or has in an unusable version, with the reason.
EXTRA_REQUIREMENTS = {
    "scikit-image==0.24.0": (
        "the 2021 watershed: scikit-image >= 0.25 changed segmentation.watershed, so label_cell "
        "would no longer equal the masks the test set was made with"
    ),
}


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


@dataclass
class WheelhouseResult:
    """What :func:`bundle_wheels` wrote."""

    folder: Path
    kit_wheel: Path
    wheels: list[Path] = field(default_factory=list)
    lock: Path | None = None


_WHEELS_README = """# hpa-kernel wheels (offline)

Attach this dataset to a Kaggle notebook that has internet disabled, then install with:

    {install}

Contents: the kit's wheel `{kit}` and the dependency wheels the Kaggle image lacks
or has in a version the kit cannot use:

{extras}

`wheels.lock` lists every wheel with its version and sha256. Target: Python {python},
{platform}. Built by `hpa-kernel bundle wheels` ({version}).
"""


def install_command(wheels_dir: str | os.PathLike, extra: dict[str, str] | None = None) -> str:
    """The pip command that installs the kit offline from a wheels folder.

    ``extra`` (requirement -> reason) names the pinned extras in the folder; :data:`EXTRA_REQUIREMENTS`
    by default.
    """
    extra = EXTRA_REQUIREMENTS if extra is None else extra
    return " ".join(["pip install --no-index --find-links", str(wheels_dir), "hpa_kernel", *sorted(extra)])


def bundle_wheels(
    out: str | os.PathLike,
    *,
    python: str = KAGGLE_PYTHON,
    platforms: tuple[str, ...] = KAGGLE_PLATFORMS,
    extra: dict[str, str] | None = None,
    kit_wheel: str | os.PathLike | None = None,
    find_links: list[str] | None = None,
    dataset_id: str = "your-kaggle-username/hpa-kernel-wheels",
) -> WheelhouseResult:
    """Fill ``out`` with the kit's wheel, the extra dependency wheels, a lock file and Kaggle metadata.

    Parameters
    ----------
    out : path
        The wheelhouse folder (created). Old ``*.whl`` files in it are removed first.
    python, platforms
        Target interpreter version and platform tags for ``pip download`` (Kaggle by default).
    extra : dict, optional
        Requirement → reason; :data:`EXTRA_REQUIREMENTS` by default.
    kit_wheel : path, optional
        Use this prebuilt kit wheel instead of building one from the checkout.
    find_links : list of str, optional
        Extra ``--find-links`` for ``pip download``.
    dataset_id : str
        Kaggle dataset id written to ``dataset-metadata.json``; Kaggle mounts the dataset under its
        last part, which the README's install command names.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    extra = EXTRA_REQUIREMENTS if extra is None else extra
    if kit_wheel is not None:
        kit_wheel = Path(kit_wheel)
        if not kit_wheel.is_file():
            raise FileNotFoundError(f"kit wheel {kit_wheel} does not exist")
        kit = out / kit_wheel.name
        shutil.copy2(kit_wheel, kit)
    else:
        kit = build_kit_wheel(out)
    _download(sorted(extra), out, python, tuple(platforms), list(find_links or []))
    wheels = sorted(out.glob("*.whl"))
    lock_lines = ["# name==version  sha256  file   (written by hpa-kernel bundle wheels)"]
    for wheel in wheels:
        name, version = _wheel_name_version(wheel)
        lock_lines.append(f"{name}=={version}  sha256:{sha256_of(wheel)}  {wheel.name}")
    lock = out / "wheels.lock"
    lock.write_text("\n".join(lock_lines) + "\n")
    metadata = {"title": "hpa-kernel wheels", "id": dataset_id, "licenses": [{"name": "MIT"}]}
    (out / "dataset-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    extras_md = "\n".join(f"* `{req}`: {why}" for req, why in sorted(extra.items())) or "* (none)"
    (out / "README.md").write_text(
        _WHEELS_README.format(
            install=install_command(KAGGLE_INPUT / dataset_id.rsplit("/", 1)[-1], extra),
            kit=kit.name,
            extras=extras_md,
            python=python,
            platform=", ".join(platforms),
            version=__version__,
        )
    )
    logger.info("wheelhouse %s: %d wheels, lock file %s", out, len(wheels), lock.name)
    return WheelhouseResult(folder=out, kit_wheel=kit, wheels=wheels, lock=lock)


def bundle_weights(
    weights_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    manifest: str | os.PathLike | None = None,
    dataset_id: str = "your-kaggle-username/hpa-kernel-weights",
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
    dataset_id : str
        Kaggle dataset id written to ``dataset-metadata.json``.

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
    metadata = {"title": "hpa-kernel weights", "id": dataset_id, "licenses": [{"name": "other"}]}
    (out / "dataset-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    logger.info("weights dataset %s: %d files, segmentation %s", out, len(names), "included" if with_segmentation else "absent")
    return target
