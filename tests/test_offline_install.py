"""Issue: offline distribution. The kit installs from a wheelhouse with --no-index and no network,
into a fresh virtualenv that already has the target's main packages (as the Kaggle image does),
and the submission notebook then writes a valid submission.csv with the installed copy."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from hpa_kernel import bundle

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_bundle_wheels_downloads_the_extras_for_the_kaggle_target(tmp_path, monkeypatch):
    """The dependency download asks pip for Kaggle's interpreter and platforms, binary wheels only."""
    calls = []

    def fake_run(cmd):
        calls.append(cmd)
        if "download" in cmd:
            out = Path(cmd[cmd.index("-d") + 1])
            (out / "scikit_image-0.24.0-cp312-cp312-manylinux_2_17_x86_64.whl").write_bytes(b"fake wheel")

    monkeypatch.setattr(bundle, "_run", fake_run)
    kit = tmp_path / "hpa_kernel-0.1.0-py3-none-any.whl"
    kit.write_bytes(b"kit")
    result = bundle.bundle_wheels(tmp_path / "wheels", kit_wheel=kit)
    (download,) = calls
    assert download[download.index("--python-version") + 1] == "3.12"
    assert "--only-binary=:all:" in download and "--no-deps" in download
    assert "manylinux2014_x86_64" in download and "scikit-image==0.24.0" in download
    lock = result.lock.read_text().splitlines()
    assert any(line.startswith("scikit-image==0.24.0  sha256:") for line in lock)
    assert any(line.startswith("hpa-kernel==0.1.0  sha256:") for line in lock)
    assert (tmp_path / "wheels" / "dataset-metadata.json").is_file()
    assert "--no-index" in (tmp_path / "wheels" / "README.md").read_text()


def _base_view(folder: Path) -> Path:
    """The dev environment's site-packages without hpa_kernel: what a Kaggle image has preinstalled."""
    site = Path(sysconfig.get_paths()["purelib"])
    folder.mkdir()
    for entry in site.iterdir():
        if entry.name.startswith(("hpa_kernel", "__editable__", "_hpa_kernel")):
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


@pytest.mark.slow
def test_offline_install_then_submission_notebook(tmp_path, synthetic_competition):
    from hpa_kernel.demo import random_ensemble
    from hpa_kernel.submission import check_submission

    wheels = bundle.bundle_wheels(tmp_path / "wheels", extra={}).folder
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env_site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    (env_site / "_kaggle_image.pth").write_text(str(_base_view(tmp_path / "preinstalled")) + "\n")

    offline = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", http_proxy="http://127.0.0.1:9",
                   https_proxy="http://127.0.0.1:9", PYTHONPATH="")
    probe = "import importlib.util; print(importlib.util.find_spec('hpa_kernel'))"
    assert subprocess.check_output([python, "-c", probe], text=True, cwd=tmp_path, env=offline).strip() == "None"
    cmd = [str(python), "-m"] + bundle.install_command(wheels, extra={}).split()  # the extras are preinstalled here
    subprocess.run(cmd, check=True, cwd=tmp_path, env=offline, capture_output=True)
    where = subprocess.check_output([python, "-c", "import hpa_kernel; print(hpa_kernel.__file__)"], text=True, cwd=tmp_path, env=offline)
    assert Path(where.strip()).is_relative_to(env_site), where

    nb_dir = tmp_path / "nb"
    subprocess.run([env_dir / "bin" / "hpa-kernel", "notebooks", "--out", nb_dir], check=True, cwd=tmp_path, env=offline)
    weights = tmp_path / "weights"
    random_ensemble(weights, sizes=(1, 1, 1), input_size=64)
    out = tmp_path / "submission.csv"
    run = [python, "-m", "papermill", nb_dir / "submission.ipynb", tmp_path / "executed.ipynb", "-k", "python3",
           "-p", "data_dir", synthetic_competition.root, "-p", "weights_dir", weights, "-p", "output", out,
           "-p", "device", "cpu", "-p", "segmenter", "classic", "-p", "tta", "False", "-p", "workers", "0",
           "-p", "budget_hours", "0.25", "-p", "torch_threads", "1", "-p", "progress", "False"]
    proc = subprocess.run([str(a) for a in run], cwd=tmp_path, env=offline, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = check_submission(out, synthetic_competition.sample_submission)
    assert report.ok, report
