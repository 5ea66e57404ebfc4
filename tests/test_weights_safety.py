"""Weight files that are not plain pickles: TorchScript archives, setattr gadgets, fake state_dicts (issue 16, items 1-2)."""

from __future__ import annotations

import copyreg
import logging
import sys
import textwrap
import types
from collections import OrderedDict

import pytest
import torch
from torch import nn

from hpa_kernel.segmentation.weights import UnsafeWeightsError, load_weights

# A scripted module whose __setstate__ writes a file: torch.jit.load runs it while loading.
_SCRIPTED = textwrap.dedent(
    '''
    import torch


    class Writer(torch.nn.Module):
        def __init__(self, target: str):
            super().__init__()
            self.x = torch.zeros(1)
            self.target = target

        def forward(self, x):
            return x

        @torch.jit.export
        def __getstate__(self):
            return (self.x, self.target, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[torch.Tensor, str, bool]):
            self.x = state[0]
            self.target = state[1]
            self.training = state[2]
            torch.ops.aten.save(self.x, self.target)
    '''
)


@pytest.fixture
def torchscript_file(tmp_path, monkeypatch):
    """A TorchScript archive whose loading writes ``tmp_path / "pwned"`` (checked to work with torch.jit.load)."""
    (tmp_path / "ts_writer.py").write_text(_SCRIPTED)
    monkeypatch.syspath_prepend(str(tmp_path))
    import ts_writer

    target = tmp_path / "pwned"
    path = tmp_path / "dpn_unet_nuclei_v1.pth"
    torch.jit.script(ts_writer.Writer(str(target))).save(str(path))
    sys.modules.pop("ts_writer", None)
    torch.jit.load(str(path))  # the archive really runs code when torch loads it
    assert target.exists()
    target.unlink()
    return path, target


def test_torchscript_archive_is_refused_before_its_code_runs(torchscript_file):
    path, target = torchscript_file
    with pytest.raises(UnsafeWeightsError, match=r"dpn_unet_nuclei_v1\.pth.*TorchScript"):
        load_weights(path)
    assert not target.exists()


def test_classifier_checkpoint_loader_refuses_torchscript(torchscript_file, tmp_path):
    # torch.load(weights_only=True) refuses TorchScript archives itself (no jit.load); this keeps it so.
    import shutil

    from hpa_kernel.classifier.checkpoint import load_checkpoint
    from hpa_kernel.demo import random_ensemble

    path, target = torchscript_file
    random_ensemble(tmp_path / "w", sizes=(1,), weights=(1.0,), arch="resnet18", input_size=32)
    checkpoint = tmp_path / "w" / "g1_m0.pth"
    shutil.copyfile(path, checkpoint)  # the JSON config stays: torch.load is reached
    with pytest.raises(ValueError, match=r"g1_m0\.pth.*weights_only"):
        load_checkpoint(checkpoint)
    assert not target.exists()


def test_zip_with_extra_entries_and_non_pickles_are_refused(tmp_path):
    import zipfile

    path = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(1)}, path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("w/extra.pkl", b"\x80\x02N.")
    with pytest.raises(UnsafeWeightsError, match=r"w\.pth.*extra\.pkl"):
        load_weights(path)
    (tmp_path / "text.pth").write_bytes(b"cos\nsystem\n(S'touch x'\ntR.")  # a protocol-0 pickle
    with pytest.raises(UnsafeWeightsError, match=r"text\.pth"):
        load_weights(tmp_path / "text.pth")


class _Gadget:
    """Pickles as NEWOBJ of a pytorch_zoo class followed by BUILD with a (dict, slots) state."""

    def __reduce_ex__(self, protocol):
        return (copyreg.__newobj__, (type(self),), (None, {1: 2}))


def test_setattr_gadget_is_a_value_error_naming_the_file(tmp_path):
    zoo = types.ModuleType("pytorch_zoo")
    cls = type("Gadget", (_Gadget,), {"__module__": "pytorch_zoo", "__qualname__": "Gadget"})
    zoo.Gadget = cls
    sys.modules["pytorch_zoo"] = zoo
    try:
        torch.save(cls(), tmp_path / "gadget.pth")
    finally:
        sys.modules.pop("pytorch_zoo", None)
    with pytest.raises(ValueError, match=r"gadget\.pth") as err:
        load_weights(tmp_path / "gadget.pth")
    assert not isinstance(err.value, TypeError)


def test_refused_global_names_the_file(tmp_path):
    path = tmp_path / "np.pth"
    import numpy as np

    torch.save(OrderedDict(a=torch.zeros(1), b=np.float32(1)), path)
    with pytest.raises(UnsafeWeightsError, match=r"np\.pth.*numpy"):
        load_weights(path)


def test_dict_with_module_internals_is_not_a_state_dict(tmp_path):
    torch.save(OrderedDict(_backward_hooks=torch.zeros(1)), tmp_path / "hooks.pth")
    with pytest.raises(ValueError, match=r"hooks\.pth.*_backward_hooks"):
        load_weights(tmp_path / "hooks.pth")
    # a real state_dict (it carries _metadata) still loads
    torch.save(nn.Linear(2, 3).state_dict(), tmp_path / "real.pth")
    assert list(load_weights(tmp_path / "real.pth").state_dict) == ["weight", "bias"]


def test_cli_reports_a_refused_weight_file_in_one_line(tmp_path, caplog):
    import numpy as np

    from hpa_kernel.cli import main
    from hpa_kernel.io import write_image

    write_image(tmp_path / "images", "img0", np.zeros((32, 32, 4), np.uint8))
    evil = tmp_path / "dpn_unet_nuclei_v1.pth"
    torch.save(OrderedDict(a=torch.zeros(1), b=np.float32(1)), evil)
    with caplog.at_level(logging.ERROR):
        rc = main(["segment", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "out"),
                   "--nuclei", str(evil), "--cell", str(evil)])  # fmt: skip
    assert rc == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert str(evil) in errors[0] and "numpy" in errors[0]
