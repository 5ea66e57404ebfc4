"""Every shell line of the README runs as written, or is listed here with the reason it cannot.

The README's fenced code blocks are read as a newcomer reads them. A block fenced as ```text is a
synopsis (capitals are placeholders): its options are checked against ``hpa-kernel SUB --help``.
Every other block holds shell lines. A line listed in ``NOT_RUN`` needs Kaggle, the package
registry, real data or the suite itself, and the reason is printed with the skip; every other line
runs, in a scratch folder laid out as a fresh clone after ``make demo`` (``notebooks/`` and a
``demo_out/`` written by ``hpa-kernel demo --no-train``), and must exit 0.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Lines that cannot run here, with the reason. Keys are the lines as the README has them (continuations
# joined, a notebook's leading "!" dropped, comments cut).
NOT_RUN = {
    "make demo": "3-5 CPU-minutes of training; the command it runs after the set-up, `hpa-kernel demo`, "
                 "writes this test's demo_out (with --no-train)",
    "make test": "the test suite itself",
    "hpa-kernel bundle wheels --out wheels --dataset-id YOUR_KAGGLE_USER/hpa-kernel-wheels":
        "needs the package registry (network) and your Kaggle user name",
    "hpa-kernel bundle weights --weights runs/ensemble --out weights_dataset "
    "--dataset-id YOUR_KAGGLE_USER/hpa-kernel-weights":
        "needs your trained checkpoints in runs/ensemble and your Kaggle user name",
    "pip install --no-index --find-links /kaggle/input/hpa-kernel-wheels --upgrade hpa_kernel":
        "Kaggle only: the attached wheels dataset",
    "hpa-kernel bundle weights --from-milimed /kaggle/input/cropytorchmodels "
    "--segmentation /kaggle/input/hpasegweights --out /kaggle/working/milimed_weights":
        "Kaggle only: the team's checkpoints and the HPA segmentation weights as attached datasets",
}

FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\n(?P<body>.*?)^(?P=indent)```", re.S | re.M)


def readme_blocks(text: str) -> list[tuple[str, list[str]]]:
    """The fenced blocks as (language, logical lines): continuations joined, comments and blanks dropped."""
    blocks = []
    for match in FENCE.finditer(text):
        joined = re.sub(r"\\\n\s*", "", match.group("body"))
        lines = []
        for raw in joined.splitlines():
            line = raw.strip().lstrip("!")
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(" ".join(line.split()))
        blocks.append((match.group("lang"), lines))
    return blocks


def shell_lines() -> list[str]:
    return [line for lang, lines in readme_blocks(README.read_text()) if lang != "text" for line in lines]


def synopsis_lines() -> list[str]:
    return [line for lang, lines in readme_blocks(README.read_text()) if lang == "text" for line in lines]


def test_readme_blocks_are_found():
    """The parser sees the README's blocks: the two set-up commands first, and a synopsis."""
    lines = shell_lines()
    assert lines[:2] == ["make demo", "make test"]
    assert any(line.startswith("hpa-kernel submit") for line in synopsis_lines())


def test_not_run_lines_are_still_in_the_readme():
    """A stale entry would hide a changed line: every key of NOT_RUN is a README line."""
    lines = set(shell_lines())
    assert [line for line in NOT_RUN if line not in lines] == []


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("HPA_KERNEL_WEIGHTS", None)
    return env


def _run(command: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("line", synopsis_lines())
def test_synopsis_options_exist(line):
    """Each synopsis line names a real subcommand, and each --option it shows is in that command's --help."""
    words = shlex.split(line)
    assert words[0] == "hpa-kernel"
    command = [words[1]]
    if len(words) > 2 and (words[1], words[2]) in (("label", "export"), ("bundle", "wheels"), ("bundle", "weights")):
        command.append(words[2])
    help_text = _run(shlex.join(["hpa-kernel", *command, "--help"]), ROOT, timeout=120)
    assert help_text.returncode == 0, help_text.stderr
    options = set(re.findall(r"(--[a-z][a-z0-9-]*)", line))
    missing = sorted(o for o in options if o not in help_text.stdout)
    assert missing == [], f"{line!r}: options not in `hpa-kernel {' '.join(command)} --help`: {missing}"


@pytest.fixture(scope="module")
def after_make_demo(tmp_path_factory) -> Path:
    """A scratch folder laid out as a fresh clone after ``make demo``: notebooks/ and demo_out/."""
    folder = tmp_path_factory.mktemp("clone")
    (folder / "notebooks").symlink_to(ROOT / "notebooks", target_is_directory=True)
    demo = _run("hpa-kernel demo --no-train --n-train 6 --n-test 3 --out demo_out", folder)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-4000:]
    return folder


@pytest.mark.slow
def test_readme_shell_lines_run_as_written(after_make_demo):
    """Each shell line not in NOT_RUN runs, in README order, in the same folder, and exits 0."""
    ran = []
    for line in shell_lines():
        if line in NOT_RUN:
            continue
        result = _run(line, after_make_demo)
        assert result.returncode == 0, f"README line failed: {line}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        ran.append(line)
    assert ran, "no README line ran: every one is in NOT_RUN"
