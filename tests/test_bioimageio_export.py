"""bioimage.io packages out: `virtual-stain export` writes a package `bioimageio test` accepts,
which imported back predicts what the original predicts."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import bioimageio.core  # noqa: E402,F401  (a dependency: a missing install must fail, not skip)

from napari_virtual_stain.cli import main  # noqa: E402
from napari_virtual_stain.engine.predictor import Predictor  # noqa: E402
from napari_virtual_stain.models.bioimageio_export import preprocessing  # noqa: E402
from napari_virtual_stain.models.registry import load_model  # noqa: E402

from conftest import save_tiny_model, tiny_unet_card  # noqa: E402

# The second card is DeepLIIF-like: 8-bit RGB in, fixed range to [-1, 1] with clipping, tanh out.
CARDS = {
    "percentile-sigmoid": dict(scores={"summary": {"pcc": 0.91}}, training={"data": "synthetic cells, seeds 1-3"}),
    "range-tanh": dict(n_in=3, input_normalisation={"kind": "range", "min": 0, "max": 255, "to": [-1.0, 1.0],
                                                    "clip": True}, output_activation="tanh"),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each tiny model exported once through the command line: {kind: (checkpoint, package)}."""
    folder = tmp_path_factory.mktemp("export")
    out = {}
    for kind, extra in CARDS.items():
        kw = dict(extra)
        if kind == "range-tanh":
            kw["name"] = "tiny-rgb"
            card = tiny_unet_card(**kw)
            card.arch_args["activation"] = "tanh"
            from napari_virtual_stain.models.checkpoint import save_checkpoint
            from napari_virtual_stain.models.factory import build_model
            import torch

            torch.manual_seed(0)
            path = save_checkpoint(folder / "tiny-rgb.pt", build_model(card.architecture, card.arch_args), card)
        else:
            path, _ = save_tiny_model(folder, **kw)
        package = folder / f"{kind}.zip"
        assert main(["export", str(path), "-o", str(package), "--author", "A. Tester"]) == 0
        out[kind] = (path, package)
    return out


@pytest.mark.parametrize("kind", list(CARDS))
def test_bioimageio_test_passes_on_the_export(exported, kind):
    from bioimageio.core import test_model  # what `bioimageio test PKG.zip` runs

    summary = test_model(str(exported[kind][1]))
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    tested = {d.loc[1] for d in summary.details if d.name.startswith("Reproduce test outputs") and len(d.loc) > 1}
    assert {"pytorch_state_dict", "torchscript"} <= tested


@pytest.mark.parametrize("kind", list(CARDS))
@pytest.mark.parametrize("weights", [None, "torchscript", "pytorch_state_dict"])
def test_imported_back_it_predicts_what_the_original_predicts(exported, kind, weights):
    original, package = exported[kind]
    model, card = load_model(original)
    again, card_again = load_model(package, weights)
    assert card_again.output_channels == card.output_channels
    n_in = card.n_in
    image = np.random.default_rng(5).random((n_in, 70, 90)).astype(np.float32) * 255
    # Tiles of 32 with overlap 8 on a 70 x 90 image: several tiles, blended.
    expected = Predictor(model, card, device="cpu", precision="fp32").predict(image)
    actual = Predictor(again, card_again, device="cpu", precision="fp32").predict(image)
    if weights is None:  # our own package: the original network from its state dict, same card
        assert card_again.to_dict() == card.to_dict()
        assert np.array_equal(actual, expected)
    else:  # the package's own steps (scale_range/scale_linear/clip) and weights, through bioimageio.core
        assert card_again.architecture == "bioimageio"
        assert np.abs(actual - expected).max() < 1e-4


def test_package_holds_card_documentation_cover_and_licence(exported):
    _, package = exported["percentile-sigmoid"]
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        readme = zf.read("README.md").decode()
        import yaml

        rdf = yaml.safe_load(zf.read("rdf.yaml" if "rdf.yaml" in names else "bioimageio.yaml"))
    assert {"weights.pt", "weights_torchscript.pt", "test_input.npy", "test_output.npy", "cover.png"} <= names
    assert "synthetic cells, seeds 1-3" in readme and "summary.pcc: 0.91" in readme
    assert rdf["license"] == "BSD-3-Clause" and rdf["authors"] == [{"name": "A. Tester"}]
    assert rdf["format_version"].startswith("0.5") and any("doi" in c for c in rdf["cite"])
    assert rdf["config"]["napari_virtual_stain"]["card"]["name"] == "tiny-2d"
    steps = [s["id"] for s in rdf["inputs"][0]["preprocessing"]]
    assert "scale_range" in steps
    size = rdf["inputs"][0]["axes"][2]["size"]
    assert size == {"min": 16, "step": 4} or (size["step"] == 4 and size["min"] % 4 == 0)


def test_range_normalisation_becomes_one_scale_linear_per_channel():
    card = tiny_unet_card(n_in=2, input_normalisation={"kind": "range", "min": [0, 10], "max": [255, 10],
                                                        "to": [-1.0, 1.0], "clip": True})
    steps = preprocessing(card)
    linear = next(s for s in steps if s["id"] == "scale_linear")["kwargs"]
    assert linear["gain"] == pytest.approx([2 / 255, 0.0]) and linear["offset"] == pytest.approx([-1.0, 0.0])
    assert steps[-1] == {"id": "clip", "kwargs": {"min": -1.0, "max": 1.0}}


def test_cli_export_refuses_before_work(tmp_path, exported, capsys):
    original, package = exported["percentile-sigmoid"]
    cases = [
        (["export", str(original), "-o", str(package)], "exists; add --overwrite"),
        (["export", str(original), "-o", str(tmp_path / "pkg.tar")], "must end in .zip"),
        (["export", "no-such-model", "-o", str(tmp_path / "x.zip")], "There is no model called"),
        (["export", str(original), "-o", str(tmp_path / "y.zip"), "--license", "not a licence"], "is not an SPDX licence"),
        (["export", str(package), "-o", str(tmp_path / "z.zip")], None),  # re-export of our own package: fine
    ]
    for argv, message in cases:
        capsys.readouterr()
        rc = main(argv)
        err = capsys.readouterr().err.strip()
        if message is None:
            assert rc == 0, err
            continue
        assert rc == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x.zip").exists() and not (tmp_path / "y.zip").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary file left


def test_rdf_config_round_trips_the_card(exported):
    _, package = exported["range-tanh"]
    with zipfile.ZipFile(package) as zf:
        import yaml

        names = zf.namelist()
        rdf = yaml.safe_load(zf.read("rdf.yaml" if "rdf.yaml" in names else "bioimageio.yaml"))
    card = rdf["config"]["napari_virtual_stain"]["card"]
    assert card["output_activation"] == "tanh" and json.dumps(card)
    assert rdf["outputs"][0]["postprocessing"][0] == {"id": "scale_linear", "kwargs": {"gain": 0.5, "offset": 0.5}}


@pytest.mark.slow
def test_the_bioimageio_command_accepts_the_export(exported):
    """The `bioimageio test PKG.zip` command itself (a fresh process, as a user runs it)."""
    import subprocess
    import sys

    _, package = exported["percentile-sigmoid"]
    run = subprocess.run([sys.executable, "-m", "bioimageio.core", "test", str(package)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "passed" in run.stdout


def test_our_exported_package_can_be_fine_tuned(exported, tmp_path):
    import tifffile

    _, package = exported["percentile-sigmoid"]
    data = np.random.default_rng(6).random((64, 64)).astype(np.float32)
    tifffile.imwrite(tmp_path / "in.tif", data)
    tifffile.imwrite(tmp_path / "a.tif", data)
    tifffile.imwrite(tmp_path / "b.tif", 1 - data)
    rc = main(["train", str(tmp_path / "in.tif"), str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "--from",
               str(package), "-o", str(tmp_path / "tuned.pt"), "--steps", "2", "--patch", "32", "--device", "cpu"])
    assert rc == 0 and load_model(tmp_path / "tuned.pt")[1].training.get("started_from", "") != ""


def test_a_2_5d_model_is_refused_with_one_sentence_and_nothing_written(tmp_path, capsys):
    from napari_virtual_stain.models.checkpoint import save_checkpoint
    from napari_virtual_stain.training.starting import model_for_training

    net, card = model_for_training(arch="unet-2.5d", n_in=1, n_out=1, spatial_dims=2, input_names=["bf"],
                                   output_names=["dapi"], name="focal",
                                   arch_args={"planes": 3, "centre": 1, "depth": 2, "base": 4})
    save_checkpoint(tmp_path / "focal.pt", net, card)
    assert main(["export", str(tmp_path / "focal.pt"), "-o", str(tmp_path / "focal.zip")]) == 2
    err = capsys.readouterr().err.strip()
    assert "2.5D model (a window of 3 z planes" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "focal.zip").exists() and not list(tmp_path.glob(".focal*"))
