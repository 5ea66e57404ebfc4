"""The kit's one device rule and its file lookup (argument, environment variable, Kaggle inputs)."""

from __future__ import annotations

import pytest
import torch

from hpa_kernel.paths import resolve_device, resolve_file


def test_resolve_device_default_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == "cpu"


def test_resolve_device_checks_the_name_and_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(torch.device("cpu")) == "cpu"
    for bad in ("gpu", "CUDA", "cuda:", "cpu0", ""):
        with pytest.raises(ValueError, match="expected 'cpu', 'cuda' or 'cuda:N'"):
            resolve_device(bad)
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ValueError, match="only 2 CUDA device"):
        resolve_device("cuda:2")


def test_resolve_file_order_argument_environment_kaggle(tmp_path, monkeypatch):
    kaggle = tmp_path / "input"
    (kaggle / "ds" / "inner").mkdir(parents=True)
    (kaggle / "ds" / "inner" / "w.pth").write_bytes(b"k")
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes(b"e")
    monkeypatch.delenv("MY_ENV", raising=False)
    # Kaggle (one level deeper) when nothing else is set
    assert resolve_file(None, "MY_ENV", "w.pth", "w", kaggle) == kaggle / "ds" / "inner" / "w.pth"
    # an environment folder without the file falls through to Kaggle; with it, it wins
    monkeypatch.setenv("MY_ENV", str(env_dir))
    assert resolve_file(None, "MY_ENV", "w.pth", "w", kaggle) == kaggle / "ds" / "inner" / "w.pth"
    (env_dir / "w.pth").write_bytes(b"v")
    assert resolve_file(None, "MY_ENV", "w.pth", "w", kaggle) == env_dir / "w.pth"
    # the argument wins over both: a file, or a folder holding the name
    assert resolve_file(explicit, "MY_ENV", "w.pth", "w", kaggle) == explicit
    assert resolve_file(env_dir, "MY_ENV", "w.pth", "w", kaggle) == env_dir / "w.pth"


def test_resolve_file_errors_name_the_file_and_places(tmp_path, monkeypatch):
    monkeypatch.delenv("MY_ENV", raising=False)
    with pytest.raises(FileNotFoundError, match=r"thing: .*nope\.pth does not exist"):
        resolve_file(tmp_path / "nope.pth", "MY_ENV", "w.pth", "thing", tmp_path)  # given: nothing else is tried
    with pytest.raises(FileNotFoundError) as err:
        resolve_file(None, "MY_ENV", "w.pth", "thing", tmp_path / "none", hint="Pass it.")
    msg = str(err.value)
    assert msg.startswith("thing w.pth not found") and "$MY_ENV (not set)" in msg and msg.endswith("Pass it.")
    assert str(tmp_path / "none") in msg
