"""bioimage.io packages in: the shared third-party package, a 0.4 package made here, and bad packages."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest
import tifffile
import torch

import bioimageio.core  # noqa: E402,F401  (a dependency: a missing install must fail, not skip)

from napari_virtual_stain.cli import main  # noqa: E402
from napari_virtual_stain.engine.predictor import Predictor  # noqa: E402
from napari_virtual_stain.errors import CheckpointError, InputError  # noqa: E402
from napari_virtual_stain.models.bioimageio_check import reproduce  # noqa: E402
from napari_virtual_stain.models.registry import BIOIMAGEIO, load_model, model_kind, program_notice  # noqa: E402

from conftest import DATA  # noqa: E402

NUCLEI = DATA / "bioimageio-unet2d-nuclei-broad"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Any attempt to download fails the test: packages are read from local files only."""
    import httpx

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args[:2]}")

    monkeypatch.setattr(httpx, "get", refuse)
    monkeypatch.setattr(httpx, "request", refuse)
    monkeypatch.setattr(httpx.Client, "send", refuse)


def _copy(tmp_path, skip=()):
    folder = tmp_path / "pkg"
    shutil.copytree(NUCLEI, folder, ignore=lambda d, names: [n for n in names if n in skip])
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


@pytest.mark.parametrize("weights", ["torchscript", "onnx"])
def test_shared_package_reproduces_its_test_tensor_through_our_predictor(weights):
    result = reproduce(NUCLEI, weights, device="cpu")
    assert result.weights == weights
    assert result.passed, result.line()
    assert result.max_abs_error < 1e-4  # measured 1.2e-6 (torchscript) and 1.3e-6 (onnx)


def test_shared_package_card_and_fixed_tiles(tmp_path):
    model, card = load_model(NUCLEI / "bioimageio.yaml")
    assert model_kind(NUCLEI) == BIOIMAGEIO
    assert card.input_channels == ["raw_intensity"] and card.output_channels == ["probability"]
    assert card.tile == [512, 512] and card.overlap[0] >= 64  # fixed input; twice the output halo of 32
    assert card.extra["bioimageio"]["weights"] == "torchscript"  # its state dict is only a URL
    with pytest.raises(InputError, match="exactly 512x512"):
        Predictor(model, card, device="cpu", tile=(256, 256))
    # An image smaller than the fixed tile is padded up to it; one larger is tiled and blended.
    predictor = Predictor(model, card, device="cpu", precision="fp32")
    image = np.random.default_rng(0).random((1, 100, 700)).astype(np.float32)
    out = predictor.predict(image)
    assert out.shape == (1, 100, 700) and np.isfinite(out).all() and 0 <= out.min() and out.max() <= 1


def test_zip_folder_and_description_load_alike(tmp_path):
    archive = tmp_path / "nuclei.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in NUCLEI.iterdir():
            zf.write(path, path.name)
    result = reproduce(archive, "torchscript", device="cpu")
    assert result.passed and result.max_abs_error < 1e-4
    assert load_model(NUCLEI)[1].name == load_model(archive)[1].name == "UNet 2D Nuclei Broad"


def test_torchscript_is_announced_as_a_program():
    assert "TorchScript is a program" in program_notice(NUCLEI)


def test_url_only_weights_are_not_downloaded_and_named():
    with pytest.raises(CheckpointError, match=r"only online \(http://files\.ilastik\.org.*nothing is downloaded"):
        load_model(NUCLEI, "pytorch_state_dict")


def test_missing_local_weights_fall_back_then_say_which_file(tmp_path):
    folder = _copy(tmp_path, skip=("weights.pt",))
    assert load_model(folder)[1].extra["bioimageio"]["weights"] == "onnx"  # the next local format (onnxruntime: testing extra)
    folder = _copy(tmp_path / "b", skip=("weights.pt", "weights.onnx"))
    with pytest.raises(CheckpointError, match=r"weights\.pt, named in the description, is not in pkg") as err:
        load_model(folder)
    assert "weights.onnx" in str(err.value) and "only online" in str(err.value)


def test_a_changed_weight_file_is_refused(tmp_path):
    folder = _copy(tmp_path)
    data = bytearray((folder / "weights.pt").read_bytes())
    data[-100] ^= 0xFF
    (folder / "weights.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_model(folder)


# ---- a format 0.4 package made here ----------------------------------------------------------

class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


RDF_04 = """
format_version: 0.4.10
type: model
name: tiny 0.4 model
description: a 3x3 convolution for tests
authors: [{name: Test Author}]
cite: [{text: "Test citation", doi: 10.1007/978-3-319-24574-4_28}]
license: MIT
documentation: README.md
timestamp: "2024-01-01T00:00:00"
test_inputs: [test_input.npy]
test_outputs: [test_output.npy]
inputs:
  - name: raw
    axes: bcyx
    data_type: float32
    shape: {min: [1, 1, 16, 16], step: [0, 0, 8, 8]}
    preprocessing:
      - name: zero_mean_unit_variance
        kwargs: {mode: per_sample, axes: xy}
outputs:
  - name: out
    axes: bcyx
    data_type: float32
    shape: {reference_tensor: raw, scale: [1, 1, 1, 1], offset: [0, 0, 0, 0]}
    postprocessing:
      - name: sigmoid
weights:
  torchscript: {source: weights.pt}
"""


def _package_04(folder):
    folder.mkdir()
    net = _Tiny().eval()
    x = np.random.default_rng(1).normal(50, 10, (1, 1, 40, 48)).astype(np.float32)
    z = (x - x.mean()) / (x.std() + 1e-6)
    with torch.no_grad():
        y = torch.sigmoid(net(torch.from_numpy(z))).numpy()
    np.save(folder / "test_input.npy", x)
    np.save(folder / "test_output.npy", y)
    torch.jit.script(net).save(str(folder / "weights.pt"))
    (folder / "README.md").write_text("# tiny\n")
    (folder / "rdf.yaml").write_text(RDF_04)
    return folder


def test_format_04_package_is_read_and_reproduces(tmp_path):
    folder = _package_04(tmp_path / "p04")
    model, card = load_model(folder / "rdf.yaml")
    assert card.n_in == 1 and card.n_out == 1 and card.spatial_dims == 2
    assert model.size_multiple == 8 and tuple(model.min_tile) == (16, 16)
    result = reproduce(folder, device="cpu")
    assert result.passed and result.max_abs_error < 1e-5


def test_zero_mean_unit_variance_uses_the_whole_image_not_each_tile(tmp_path):
    """Tiles normalised by their own statistics would disagree where they meet; ours equal one pass."""
    model, card = load_model(_package_04(tmp_path / "p04"))
    image = np.random.default_rng(2).gamma(2, 30, (1, 96, 120)).astype(np.float32)
    whole = Predictor(model, card, device="cpu", precision="fp32", tile=(96, 120), overlap=(0, 0)).predict(image)
    tiled = Predictor(model, card, device="cpu", precision="fp32", tile=(48, 48), overlap=(16, 16)).predict(image)
    assert np.abs(whole - tiled).max() < 1e-5


def test_tiles_off_the_package_grid_are_refused(tmp_path):
    model, card = load_model(_package_04(tmp_path / "p04"))
    with pytest.raises(InputError, match=r"16 \+ a multiple of 8"):
        Predictor(model, card, device="cpu", tile=(30, 30), overlap=(4, 4))


# ---- bad input: one sentence, exit status 2 ---------------------------------------------------

def _bad_description(tmp_path):
    folder = _package_04(tmp_path / "bad")
    (folder / "rdf.yaml").write_text(RDF_04.replace("license: MIT", "license: 17"))
    return folder


def _neither(tmp_path):
    folder = tmp_path / "stuff"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    return folder


def _missing_weights(tmp_path):
    folder = _package_04(tmp_path / "nowt")
    (folder / "weights.pt").unlink()
    return folder


@pytest.mark.parametrize("make, message", [
    (_neither, "is not a DeepLIIF release .* nor a bioimage.io package"),
    (_bad_description, "does not validate"),
    (_missing_weights, "weights.pt, named in the description, is not in nowt"),
])
def test_cli_bad_packages_exit_2_with_one_sentence(tmp_path, capsys, make, message):
    image = tmp_path / "in.tif"
    tifffile.imwrite(image, np.zeros((32, 32), np.float32))
    rc = main(["predict", str(image), "-o", str(tmp_path / "out.tif"), "--model", str(make(tmp_path))])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    import re
    assert re.search(message, err), err
    assert not (tmp_path / "out.tif").exists()


def test_cli_wrong_channel_count_for_the_package(tmp_path, capsys):
    folder = _package_04(tmp_path / "p04")
    image = tmp_path / "rgb.tif"
    tifffile.imwrite(image, np.zeros((3, 32, 32), np.float32), metadata={"axes": "CYX"})
    rc = main(["predict", str(image), "-o", str(tmp_path / "out.tif"), "--model", str(folder), "--channel", "0"])
    assert rc == 0  # one channel chosen: runs
    capsys.readouterr()
    rc = main(["predict", str(image), "-o", str(tmp_path / "out2.tif"), "--model", str(folder), "--axes", "YXS"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("virtual-stain predict: error:") and "expects one grey channel" in last, last
    assert not (tmp_path / "out2.tif").exists()


def test_wrong_channel_count_through_the_predictor(tmp_path):
    model, card = load_model(_package_04(tmp_path / "p04"))
    with pytest.raises(InputError, match=r"expects 1 input channel\(s\) \(channel0\) but the image has 3"):
        Predictor(model, card, device="cpu").predict(np.zeros((3, 32, 32), np.float32))


def test_cli_predicts_with_a_package(tmp_path):
    folder = _package_04(tmp_path / "p04")
    image = tmp_path / "in.tif"
    data = np.random.default_rng(3).random((40, 56)).astype(np.float32)
    tifffile.imwrite(image, data)
    assert main(["predict", str(image), "-o", str(tmp_path / "out.tif"), "--model", str(folder / "rdf.yaml")]) == 0
    out = tifffile.imread(tmp_path / "out.tif")
    model, card = load_model(folder)
    expected = Predictor(model, card, device="cpu", precision="fp32").predict(data[None])
    assert out.shape[-2:] == (40, 56) and np.allclose(np.squeeze(out), expected, atol=1e-5)


def test_auto_precision_is_fp32_for_a_package_even_where_the_cpu_has_bf16(tmp_path, monkeypatch):
    """A package's answers are its authors': "auto" may not pick bf16 for it (ours still do)."""
    from napari_virtual_stain.engine import device as device_module
    from napari_virtual_stain.models.registry import BUNDLED_DIR

    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    model, card = load_model(_package_04(tmp_path / "p04"))
    assert Predictor(model, card, device="cpu").precision == "fp32"
    assert Predictor(model, card, device="cpu", precision="bf16").precision == "bf16"  # asked for: given
    ours, our_card = load_model(BUNDLED_DIR / "demo-2d-nuclei-membrane.pt")
    assert Predictor(ours, our_card, device="cpu").precision == "bf16"


def test_a_foreign_package_runs_but_is_not_fine_tuned(tmp_path, capsys):
    folder = _package_04(tmp_path / "p04")
    data = np.random.default_rng(4).random((64, 64)).astype(np.float32)
    tifffile.imwrite(tmp_path / "in.tif", data)
    tifffile.imwrite(tmp_path / "target.tif", data)
    rc = main(["train", str(tmp_path / "in.tif"), str(tmp_path / "target.tif"), "--from", str(folder),
               "-o", str(tmp_path / "tuned.pt"), "--steps", "1", "--patch", "32", "--device", "cpu"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "can be run, but only napari-virtual-stain models" in last, last
    assert not (tmp_path / "tuned.pt").exists()
