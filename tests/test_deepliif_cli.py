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

TINY = dict(trans_ngf=4, trans_blocks=1, seg_ngf=4, seg_downs=3, seg_max_mult=2, norm="batch")



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


# ---- everything is checked before any network runs; failures leave no output behind -----------

@pytest.fixture
def roi(tmp_path):
    path = tmp_path / "roi.png"
    iio.imwrite(path, np.random.default_rng(2).integers(0, 256, (40, 40, 3)).astype(np.uint8))
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Any model load or network run fails the test: the command must refuse before."""
    from napari_virtual_stain.tasks import deepliif

    def forbidden(*_, **__):
        raise AssertionError("a model was loaded or a network ran before the arguments were checked")

    monkeypatch.setattr(deepliif, "load_deepliif_model", forbidden)
    monkeypatch.setattr(deepliif, "run_deepliif", forbidden)


@pytest.mark.parametrize("extra, sentence", [
    (["--size-thresh", "-5"], "size threshold must be 0 or more"),
    (["--size-thresh", "50", "--size-thresh-upper", "20"], "upper size threshold (20 px) leaves no cell"),
    (["--seg-thresh", "600"], "between 0 and 510"),
    (["--marker-thresh", "300"], "between 0 and 255"),
])
def test_bad_thresholds_are_refused_before_the_networks(roi, tmp_path, capsys, no_network, extra, sentence):
    out = tmp_path / "out"
    assert main(["deepliif", str(roi), "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and sentence in err[0]
    assert not out.exists()


def test_an_output_that_is_a_file_is_refused(roi, tmp_path, capsys, no_network):
    (tmp_path / "taken").write_text("mine")
    assert main(["deepliif", str(roi), "-o", str(tmp_path / "taken")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "mine"


def test_an_unreadable_input_leaves_no_output_folder(tmp_path, capsys, no_network):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    assert main(["deepliif", str(tmp_path / "broken.png"), "-o", str(tmp_path / "out" / "deeper")]) == 2
    assert "could not be read" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png"]


def test_a_failure_during_the_run_leaves_the_output_as_it_was(roi, tmp_path, model_path, monkeypatch, capsys):
    from napari_virtual_stain.errors import InputError
    from napari_virtual_stain.tasks import deepliif

    def fails_halfway(predictor, data, *, store=None, **kwargs):
        raise InputError("the disk is full.")

    monkeypatch.setattr(deepliif, "run_deepliif", fails_halfway)
    new = tmp_path / "new"
    assert main(["deepliif", str(roi), "-o", str(new), "--model", str(model_path)]) == 2
    assert not new.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["roi.png"]
    old = tmp_path / "old"
    old.mkdir()
    (old / "roi.json").write_text("earlier")
    assert main(["deepliif", str(roi), "-o", str(old), "--model", str(model_path)]) == 2
    assert [p.name for p in old.iterdir()] == ["roi.json"] and (old / "roi.json").read_text() == "earlier"


def release_like(folder, opt_text="model: DeepLIIF\n", nets=(1, 2, 3, 4, 51, 52, 53, 54, 55)):
    folder.mkdir()
    (folder / "train_opt.txt").write_text(opt_text)
    for n in nets:
        (folder / f"G{n}.pt").write_bytes(b"not torchscript")
    return folder


@pytest.mark.parametrize("make, sentence", [
    (lambda f: f.mkdir() or (f / "readme.txt").write_text("x"), "is not a DeepLIIF release"),
    (lambda f: release_like(f, nets=(1, 2, 3, 4, 51, 52, 54, 55)), "lacks G53.pt"),
    (lambda f: release_like(f), "G1.pt in m is not a readable TorchScript model"),
    (lambda f: release_like(f, "model: DeepLIIFExt\nmodalities_no: 4\n"), "only DeepLIIF and DeepLIIFKD"),
    (lambda f: release_like(f, "model: DeepLIIF\nmodalities_no: 3\n"), "translates to 3 modalities"),
    (lambda f: release_like(f, "model: DeepLIIFKD\nmodalities_names: ['IHC', 'Hema', 'DAPI', 'Lap2', 'Marker']\n"),
     "has no seg_weights"),
    (lambda f: release_like(f, "model: DeepLIIF\nnet_gs: ['unet_512', 'resnet_9blocks']\n"), "unet_<size>"),
    (lambda f: release_like(f, nets=()) and (f / "latest_net_G1.pth").write_bytes(b""), "deepliif serialize"),
])
def test_folders_that_are_not_releases_are_one_sentence(roi, tmp_path, capsys, make, sentence):
    make(tmp_path / "m")
    out = tmp_path / "out"
    assert main(["deepliif", str(roi), "-o", str(out), "--model", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and sentence in err[0], err
    assert not out.exists()


def test_deepliif_cells_refuses_maps_of_another_size(roi, tmp_path, capsys):
    iio.imwrite(tmp_path / "roi_Seg.png", np.zeros((40, 48, 3), np.uint8))
    iio.imwrite(tmp_path / "roi_Marker.png", np.zeros((40, 40, 3), np.uint8))
    out = tmp_path / "out"
    assert main(["deepliif-cells", str(roi), "--seg", str(tmp_path / "roi_Seg.png"), "--marker",
                 str(tmp_path / "roi_Marker.png"), "-o", str(out)]) == 2
    assert "must have the size of the IHC image" in capsys.readouterr().err
    assert not out.exists()


def test_deepliif_cells_counts_maps_and_writes_what_deepliif_writes(roi, tmp_path):
    seg = np.zeros((40, 40, 3), np.uint8)
    seg[5:15, 5:15] = (255, 0, 0)
    seg[25:35, 20:32] = (0, 0, 255)
    seg[30:32, 2:4] = (255, 0, 0)  # 4 pixels: deepliif's noise, never a cell
    marker = np.zeros((40, 40, 3), np.uint8)
    marker[28, 25] = (0, 0, 90)  # the blue cell's brightest marker pixel: max of R, G, B = 90
    iio.imwrite(tmp_path / "roi_Seg.png", seg)
    iio.imwrite(tmp_path / "roi_mod4-Marker.png", marker)
    args = ["deepliif-cells", str(roi), "--seg", str(tmp_path / "roi_Seg.png"), "--marker",
            str(tmp_path / "roi_mod4-Marker.png"), "--size-thresh", "10"]
    assert main(args + ["-o", str(tmp_path / "a")]) == 0
    info = json.loads((tmp_path / "a" / "roi.json").read_text())
    assert (info["num_total"], info["num_pos"], info["num_neg"], info["percent_pos"]) == (2, 1, 1, 50.0)
    assert info["marker_thresh"] is None and info["seg_thresh"] == 120 and info["resolution"] == "40x"
    assert main(args + ["-o", str(tmp_path / "b"), "--marker-thresh", "89"]) == 0  # 90 > 89: positive
    assert json.loads((tmp_path / "b" / "roi.json").read_text())["num_pos"] == 2
    for name in ("roi_SegRefined.png", "roi_SegOverlaid.png", "roi_labels.tif", "roi_cells.csv", "roi_cells.geojson"):
        assert (tmp_path / "a" / name).is_file(), name
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging folder left
