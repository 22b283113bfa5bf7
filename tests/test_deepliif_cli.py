"""`virtual-stain deepliif` and `virtual-stain evaluate` end to end on tiny files."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch

from napari_virtual_stain.cli import main
from napari_virtual_stain.models.checkpoint import save_checkpoint
from napari_virtual_stain.models.deepliif_net import DeepLIIFNet, deepliif_arch_args, deepliif_card

TINY = dict(trans_ngf=4, trans_blocks=1, seg_ngf=4, seg_downs=4, seg_max_mult=2, norm="batch")



@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    args = deepliif_arch_args("small", **TINY)
    path = tmp_path_factory.mktemp("models") / "tiny-deepliif.pt"
    save_checkpoint(path, DeepLIIFNet(**args).eval(), deepliif_card("tiny-deepliif", args, tile=32, overlap=8))
    return path


def test_deepliif_command_writes_deepliifs_files(tmp_path, model_path):
    ihc = np.random.default_rng(0).integers(0, 256, (40, 56, 3)).astype(np.uint8)
    iio.imwrite(tmp_path / "roi.png", ihc)
    out = tmp_path / "out"
    code = main(["deepliif", str(tmp_path / "roi.png"), "-o", str(out), "--model", str(model_path),
                 "--size-thresh", "0", "--marker-thresh", "200"])
    assert code == 0
    for suffix in ("Hema", "DAPI", "Lap2", "Marker", "Seg", "SegRefined"):
        img = iio.imread(out / f"roi_{suffix}.png")
        assert img.shape == (40, 56, 3), suffix
    mask = iio.imread(out / "roi_SegRefined.png")
    colours = {tuple(c) for c in mask.reshape(-1, 3)}
    assert colours <= {(0, 0, 0), (255, 0, 0), (0, 0, 255), (0, 255, 0)}
    labels = tifffile.imread(out / "roi_labels.tif")
    info = json.loads((out / "roi.json").read_text())
    assert {k: info[k] for k in ("seg_thresh", "size_thresh", "size_thresh_upper", "marker_thresh")} == \
        {"seg_thresh": 120, "size_thresh": 0, "size_thresh_upper": None, "marker_thresh": 200}
    areas = np.bincount(labels.ravel())[1:]
    # size 0 keeps every region but deepliif's noise (4 pixels or fewer)
    assert info["num_total"] == info["num_pos"] + info["num_neg"] == np.count_nonzero(areas > 4)
    rows = (out / "roi_cells.csv").read_text().splitlines()
    assert len(rows) == 1 + labels.max()
    geo = json.loads((out / "roi_cells.geojson").read_text())
    assert len(geo["features"]) == info["num_total"]


def test_deepliif_command_refuses_a_grey_image(tmp_path, model_path, capsys):
    iio.imwrite(tmp_path / "grey.png", np.zeros((40, 40), np.uint8))
    code = main(["deepliif", str(tmp_path / "grey.png"), "-o", str(tmp_path / "o"), "--model", str(model_path)])
    assert code == 2
    assert "grey image" in capsys.readouterr().err


def test_evaluate_scores_folders_of_masks(tmp_path, capsys):
    truth = np.zeros((32, 32, 3), np.uint8)
    truth[2:10, 2:10] = (255, 0, 0)
    truth[20:28, 20:28] = (0, 0, 255)
    pred = truth.copy()
    pred[20:28, 20:28] = (255, 0, 0)  # one class wrong, shapes perfect
    (tmp_path / "t").mkdir()
    (tmp_path / "p").mkdir()
    iio.imwrite(tmp_path / "t" / "a.png", np.concatenate([truth] * 6, axis=1)[:, :192])  # a 6-panel file
    iio.imwrite(tmp_path / "p" / "a_SegRefined.png", pred)
    code = main(["evaluate", str(tmp_path / "p"), str(tmp_path / "t"), "--json", str(tmp_path / "s.json")])
    assert code == 0
    scores = json.loads((tmp_path / "s.json").read_text())["images"]["a"]
    assert scores["dice"] == 1.0 and scores["aji"] == 1.0 and scores["percent_positive_diff"] == 50.0
    assert "percent_positive_diff" in capsys.readouterr().out


def test_evaluate_refuses_masks_of_different_sizes(tmp_path, capsys):
    iio.imwrite(tmp_path / "p.png", np.zeros((10, 12, 3), np.uint8))
    iio.imwrite(tmp_path / "t.png", np.zeros((10, 10, 3), np.uint8))
    assert main(["evaluate", str(tmp_path / "p.png"), str(tmp_path / "t.png")]) == 2
    assert "same size" in capsys.readouterr().err


def test_deepliif_command_reads_a_channels_first_tiff(tmp_path, model_path):
    ihc = np.random.default_rng(1).integers(0, 256, (3, 32, 40)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "roi.tif", ihc, photometric="minisblack", metadata={"axes": "CYX"})
    assert main(["deepliif", str(tmp_path / "roi.tif"), "-o", str(tmp_path / "out"), "--model", str(model_path)]) == 0
    assert iio.imread(tmp_path / "out" / "roi_SegRefined.png").shape == (32, 40, 3)
