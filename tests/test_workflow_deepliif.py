"""The DeepLIIF workflow: one set of settings for the dock and ``virtual-stain deepliif``."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from napari_virtual_stain.cli import main
from napari_virtual_stain.models.checkpoint import save_checkpoint
from napari_virtual_stain.models.deepliif_net import DeepLIIFNet, deepliif_arch_args, deepliif_card
from napari_virtual_stain.models.registry import model_card
from napari_virtual_stain.workflows import deepliif as workflow
from napari_virtual_stain.workflows.deepliif import DeepLIIFSettings, describe_model
from napari_virtual_stain.workflows.settings_files import settings_file

TINY = dict(trans_ngf=4, trans_blocks=1, seg_ngf=4, seg_downs=3, seg_max_mult=2, norm="batch")


@pytest.fixture
def tiny(user_models):
    torch.manual_seed(0)
    args = deepliif_arch_args("small", **TINY)
    save_checkpoint(user_models / "tiny-deepliif.pt", DeepLIIFNet(**args).eval(),
                    deepliif_card("tiny-deepliif", args, tile=32, overlap=8))
    return "tiny-deepliif"


def release_folder(folder, nets=(1, 2, 3, 4, 51, 52, 53, 54, 55)):
    """A release folder as far as its card goes: options and file names (the networks are not read)."""
    folder.mkdir()
    (folder / "train_opt.txt").write_text("model: DeepLIIF\nnet_gs: unet_512\n"
                                          "modalities_names: ['IHC', 'Hema', 'DAPI', 'Lap2', 'Marker']\n"
                                          "seg_weights: [0.25, 0.15, 0.25, 0.1, 0.25]\n")
    for n in nets:
        (folder / f"G{n}.pt").write_bytes(b"not read for the card")
    return folder


def test_problems_are_sentences(tiny, tmp_path):
    assert DeepLIIFSettings(model=tiny, device="cpu").problems() == []
    assert "upper size threshold" in DeepLIIFSettings(model=tiny, size=50, size_upper=20).problems()[0]
    assert "between 0 and 510" in DeepLIIFSettings(model=tiny, seg_threshold=600).problems()[0]
    assert "overlap must be smaller" in DeepLIIFSettings(model=tiny, tile=(32,), overlap=(40,)).problems()[0]
    assert "is a stain model" in DeepLIIFSettings(model="demo-2d-nuclei-membrane").problems()[0]
    assert "lacks G53.pt" in DeepLIIFSettings(
        model=str(release_folder(tmp_path / "r", nets=(1, 2, 3, 4, 51, 52, 54, 55)))).problems()[0]


def test_settings_are_remembered(tiny):
    path = settings_file("deepliif")
    DeepLIIFSettings(model=tiny, size=40, marker="auto", resolution="20x", tile=(64, 64)).save(path)
    loaded = DeepLIIFSettings.load(path)
    assert (loaded.model, loaded.size, loaded.marker, loaded.resolution, loaded.tile) == (tiny, 40, "auto", "20x", (64, 64))
    assert loaded.thresholds().size == 40 and DeepLIIFSettings().resolution_for(512) == "40x"


def test_the_command_line_and_the_workflow_give_the_same_maps_and_counts(tiny, tmp_path):
    ihc = np.random.default_rng(0).integers(0, 256, (48, 40, 3)).astype(np.uint8)
    iio.imwrite(tmp_path / "roi.png", ihc)
    assert main(["deepliif", str(tmp_path / "roi.png"), "-o", str(tmp_path / "out"), "--model", tiny,
                 "--device", "cpu", "--seg-thresh", "100", "--size-thresh", "3"]) == 0
    settings = DeepLIIFSettings(model=tiny, device="cpu", seg_threshold=100, size=3)
    result = workflow.run(settings, ihc, name="roi")
    np.testing.assert_array_equal(iio.imread(tmp_path / "out" / "roi_DAPI.png"), result.images["DAPI"])
    counted = result.cells.classify(settings.thresholds())
    written = json.loads((tmp_path / "out" / "roi.json").read_text())
    assert (written["num_total"], written["num_pos"]) == (counted.total, counted.positive)
    tuples = workflow.modality_tuples(result, "roi", {"scale": (1, 1), "translate": (0, 0)})
    assert [t[1]["name"] for t in tuples] == ["roi · Hematoxylin", "roi · DAPI", "roi · Lap2", "roi · Marker"]


def test_a_model_says_what_it_was_trained_on_and_a_release_says_it_is_official(tmp_path):
    card = model_card("deepliif-small")
    bundled = describe_model(card)
    assert ", ".join(card.training["data"]) in bundled and f"{card.training['steps']} steps" in bundled
    official = describe_model(model_card(release_folder(tmp_path / "DeepLIIF_Latest_Model")))
    assert official.startswith("Official DeepLIIF release 'DeepLIIF_Latest_Model'") and "unet_512" in official


def test_counting_existing_maps_uses_the_same_settings_from_the_shell_and_the_dock(tmp_path):
    ihc = np.full((40, 40, 3), 200, np.uint8)
    seg = np.zeros((40, 40, 3), np.uint8)
    seg[5:15, 5:15] = (255, 0, 0)
    seg[25:35, 20:32] = (0, 0, 255)
    marker = np.zeros((40, 40, 3), np.uint8)
    for name, image in (("roi.png", ihc), ("roi_Seg.png", seg), ("roi_Marker.png", marker)):
        iio.imwrite(tmp_path / name, image)
    assert main(["deepliif-cells", str(tmp_path / "roi.png"), "--seg", str(tmp_path / "roi_Seg.png"), "--marker",
                 str(tmp_path / "roi_Marker.png"), "--size-thresh", "10", "--tile-size", "256",
                 "-o", str(tmp_path / "out")]) == 0
    written = json.loads((tmp_path / "out" / "roi.json").read_text())
    settings = DeepLIIFSettings(size=10, tile=(256,))  # what the command built from its arguments
    assert settings.cell_problems() == [] and settings.resolution_for(256) == written["resolution"] == "20x"
    result = workflow.count_maps(ihc, seg, marker, ("IHC", "Seg", "Marker"), settings)
    counted = workflow.classify(result, settings)
    assert (written["num_total"], written["num_pos"], written["num_neg"]) == (counted.total, counted.positive,
                                                                            counted.negative) == (2, 1, 1)
    # The dock's count takes deepliif's 512 tile (40x) unless told otherwise; no model is needed for it.
    assert workflow.reanalyse(result, DeepLIIFSettings(model="")).resolution == "40x"
    assert "upper size threshold" in DeepLIIFSettings(model="", size=50, size_upper=20).cell_problems()[0]
    assert "tile size must be positive" in DeepLIIFSettings(tile=(0,)).cell_problems()[0]
