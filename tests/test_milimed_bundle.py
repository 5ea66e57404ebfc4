"""Bundling the 2021 team's seven checkpoints (``hpa-kernel bundle weights --from-milimed``).

These tests need no ``efficientnet_pytorch``: the team-layout files are written from the kit's
own network under the team's key names (``test_milimed.py`` checks that layout against
efficientnet_pytorch where it is installed).
"""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")

from hpa_kernel.classifier import load_checkpoint  # noqa: E402
from hpa_kernel.classifier import milimed  # noqa: E402
from hpa_kernel.manifest import sha256_of  # noqa: E402

SEVEN = [name for g in milimed.MILIMED_GROUPS for name, _ in g.checkpoints]


# -- the bundle -------------------------------------------------------------------------------------


def team_layout_state(seed: int = 0) -> dict:
    """A B0 state_dict in the team's (efficientnet_pytorch) layout, seeded random, made without
    efficientnet_pytorch: the kit's timm network renamed key by key to the team's names."""
    from hpa_kernel.classifier import create_classifier

    torch.manual_seed(seed)
    net = create_classifier(milimed.ARCH, in_chans=4, num_classes=milimed.NUM_OUTPUTS, bn_eps=1e-3)
    # Running statistics drawn from nothing would wash the input out within a few blocks (every crop
    # would give the same output, and test_milimed's ensemble comparison would be vacuous): random
    # affine BatchNorm parameters, then statistics measured on random crops in one training pass.
    g = torch.Generator().manual_seed(seed + 1)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.momentum = None  # cumulative average over the calibration pass
        net.train()(torch.rand(4, 4, 128, 128, generator=g))
    state = net.state_dict()
    return {team: state[ours].clone() for team, ours in milimed.milimed_key_map().items()}


@pytest.fixture(scope="module")
def seven_files(tmp_path_factory):
    """The seven team files: one network, each file with its own head bias (so a mix-up shows)."""
    folder = tmp_path_factory.mktemp("cropytorchmodels")
    base = team_layout_state()
    for i, name in enumerate(SEVEN):
        state = dict(base)
        state["_fc.0.bias"] = base["_fc.0.bias"] + float(i)
        torch.save(state, folder / name)
    return folder


@pytest.fixture(scope="module")
def segmentation_files(tmp_path_factory):
    """Stand-ins for the official DPN-UNet files, in their own folder as on Kaggle (copied, not loaded)."""
    folder = tmp_path_factory.mktemp("hpasegweights")
    for name in milimed.SEGMENTATION_FILES:
        (folder / name).write_bytes(name.encode() * 10)
    return folder


@pytest.fixture(scope="module")
def bundled(seven_files, segmentation_files, tmp_path_factory):
    from hpa_kernel.cli import main

    out = tmp_path_factory.mktemp("dataset")
    argv = ["bundle", "weights", "--from-milimed", str(seven_files), "--segmentation", str(segmentation_files), "--out", str(out)]
    assert main(argv) == 0
    return out


def test_bundle_from_milimed_writes_the_team_ensemble(seven_files, segmentation_files, bundled):
    manifest = json.loads((bundled / "weights_manifest.json").read_text())
    groups = manifest["ensemble"]["groups"]
    assert [(g["name"], g["weight"]) for g in groups] == [("resize", 0.4), ("resize_and_pad", 0.4), ("old", 0.2)]
    assert [[c["weight"] for c in g["checkpoints"]] for g in groups] == [[0.2, 0.3, 0.3, 0.2], [0.5, 0.5], [1.0]]
    files = [c["file"] for g in groups for c in g["checkpoints"]]
    assert files == [name.replace(".pt", ".pth") for name in SEVEN]
    for g in groups:
        for c in g["checkpoints"]:
            assert c["sha256"] == sha256_of(bundled / c["file"])
    for key, name in zip(("nuclei", "cell"), milimed.SEGMENTATION_FILES, strict=True):
        assert manifest["segmentation"][key] == {"file": name, "sha256": sha256_of(segmentation_files / name)}
        assert (bundled / name).read_bytes() == (segmentation_files / name).read_bytes()
    for name in SEVEN:
        converted = torch.load(bundled / name.replace(".pt", ".pth"), weights_only=True)
        source = torch.load(seven_files / name, weights_only=True)
        assert torch.equal(converted["classifier.bias"], source["_fc.0.bias"]), name
        config = json.loads((bundled / name.replace(".pt", ".json")).read_text())
        assert (config["recipe"], config["source_format"], config["extra"]["source_file"]) == ("milimed2021", "efficientnet_pytorch", name)
    model, config = load_checkpoint(bundled / "b0-resize-epoch-14-finetuned.pth")
    assert (config.epoch, config.num_classes, type(model).__name__) == (14, 18, "EfficientNet")


def test_bundle_from_milimed_names_a_missing_file(seven_files, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(seven_files, src)
    (src / "b0-resize-and-pad-epoch-13-finetuned.pt").unlink()
    with pytest.raises(FileNotFoundError, match="lacks b0-resize-and-pad-epoch-13-finetuned.pt"):
        milimed.bundle_milimed(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bundle_from_milimed_refuses_an_extra_file(seven_files, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(seven_files, src)
    shutil.copy(src / "b0-old.pt", src / "b4-old.pt")
    with pytest.raises(ValueError, match=r"not the team's seven: b4-old\.pt.*--ignore-extra"):
        milimed.bundle_milimed(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bundled_manifest_loads_and_verifies(bundled):
    from hpa_kernel.manifest import load_manifest

    manifest = load_manifest(bundled / "weights_manifest.json", bundled, verify=True, require_segmentation=True)
    assert manifest.weights == (0.4, 0.4, 0.2)
    assert [len(g.checkpoints) for g in manifest.groups] == [4, 2, 1]
    assert manifest.checkpoint_weights == ((0.2, 0.3, 0.3, 0.2), (0.5, 0.5), (1.0,))
