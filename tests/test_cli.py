"""The command line frame: every sub-command is registered, and --help stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hpa_kernel import cli


def test_every_listed_command_is_registered():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    registered = set(sub.choices)
    expected = {name.replace("_", "-") for name in cli.COMMANDS}
    assert registered == expected


@pytest.mark.parametrize("argv", [["--help"], ["submit", "--help"], ["train", "--help"], ["cells", "--help"]])
def test_help_imports_no_heavy_library(argv):
    code = (
        "import sys, json\n"
        "from hpa_kernel.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(m for m in ('torch', 'timm', 'cv2', 'pandas', 'skimage', 'scipy') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_library_errors_become_exit_code_1(tmp_path, capsys):
    # A missing competition folder is a FileNotFoundError inside the command: logged, exit 1.
    assert cli.main(["validate-submission", str(tmp_path / "none.csv"), "--sample", str(tmp_path / "none.csv")]) == 1
