"""DeepLIIF task: an RGB layer through the Predictor into modalities, cells and exports."""

import json
import threading

import numpy as np
import pytest
import torch

from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.errors import Cancelled, InputError
from napari_virtual_stain.models.deepliif_net import DeepLIIFNet, deepliif_arch_args, deepliif_card
from napari_virtual_stain.tasks.deepliif import (IMAGES, cell_polygons, cell_rows, run_deepliif, split_outputs,
                                                 write_csv)
from napari_virtual_stain.tasks.deepliif_cells import Thresholds
from napari_virtual_stain.tasks.region import Region

TINY = dict(trans_ngf=4, trans_blocks=1, seg_ngf=4, seg_downs=3, seg_max_mult=2, norm="batch")



@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    args = deepliif_arch_args("small", **TINY)
    net = DeepLIIFNet(**args).eval()
    return Predictor(net, deepliif_card("tiny", args, tile=32, overlap=8), device="cpu", precision="fp32")


@pytest.fixture
def ihc():
    return np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)


def test_whole_image_gives_five_rgb_renderings_of_its_size(predictor, ihc):
    calls = []
    result = run_deepliif(predictor, ihc, progress=lambda d, t: calls.append((d, t)))
    assert list(result.images) == list(IMAGES)
    assert all(img.shape == (64, 64, 3) and img.dtype == np.uint8 for img in result.images.values())
    assert calls[-1][0] == calls[-1][1] > 1
    # the strip-wise uint8 conversion equals converting the full float output at once
    direct = split_outputs(predictor.predict(ihc.transpose(2, 0, 1)))
    for name in IMAGES:
        np.testing.assert_array_equal(result.images[name], direct[name])
    assert result.cells is not None and result.cells.labels.shape == (64, 64)


def test_zarr_store_matches_memory(predictor, ihc, tmp_path):
    in_memory = run_deepliif(predictor, ihc, analyse=False)
    on_disk = run_deepliif(predictor, ihc, analyse=False, store=tmp_path / "out.zarr")
    assert not isinstance(on_disk.images["DAPI"], np.ndarray)
    for name in IMAGES:
        np.testing.assert_array_equal(np.asarray(on_disk.images[name]), in_memory.images[name])
    # cells read the zarr maps strip by strip and find the same table
    disk_cells, memory_cells = on_disk.analyse(segmentation_threshold=100), in_memory.analyse(segmentation_threshold=100)
    np.testing.assert_array_equal(disk_cells.labels, memory_cells.labels)
    for column, values in memory_cells.table.items():
        np.testing.assert_allclose(disk_cells.table[column], values)


def test_current_view_is_cropped_to_the_region(predictor, ihc):
    region = Region((16, 8), (48, 40))
    result = run_deepliif(predictor, ihc, region=region)
    assert result.images["Marker"].shape == (32, 32, 3) and result.region == region


def test_image_smaller_than_a_tile_is_padded_and_cropped_back(predictor):
    small = np.full((20, 24, 3), 200, np.uint8)
    result = run_deepliif(predictor, small)
    assert result.images["Segmentation"].shape == (20, 24, 3)


@pytest.mark.parametrize("data, message", [
    (np.zeros((64, 64), np.uint8), "grey"),
    (np.zeros((64, 64, 3), np.uint16), "16-bit"),
    (np.zeros((64, 64, 4), np.uint8), "transparency"),
    (np.zeros((8, 8, 3), np.uint8), "at least 16"),
])
def test_bad_inputs_are_sentences(predictor, data, message):
    with pytest.raises(InputError, match=message):
        run_deepliif(predictor, data)


def test_opaque_rgba_is_accepted(predictor, ihc):
    rgba = np.concatenate([ihc, np.full((64, 64, 1), 255, np.uint8)], axis=-1)
    assert run_deepliif(predictor, rgba, analyse=False).images["DAPI"].shape == (64, 64, 3)


def test_cancel_stops_the_run(predictor, ihc):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        run_deepliif(predictor, ihc, cancel=cancel)


def test_exports_have_one_row_and_one_polygon_per_kept_cell(predictor, ihc, tmp_path):
    result = run_deepliif(predictor, ihc, analyse=False)
    seg = np.zeros((64, 64, 3), np.uint8)
    seg[5:15, 5:15] = (255, 0, 0)
    seg[30:42, 30:40] = (0, 0, 255)
    result.images["Segmentation"] = seg
    cells = result.analyse()
    classes = cells.classify(Thresholds(size=10, marker=255))
    rows = cell_rows(cells, classes, offset=(100, 200), pixel_size_um=0.5)
    assert [r["class"] for r in rows] == ["positive", "negative"]
    assert rows[0]["area_px"] == 100 and rows[0]["area_um2"] == 25.0
    assert (rows[0]["centroid_y"], rows[0]["centroid_x"]) == (109.5, 209.5)
    path = write_csv(tmp_path / "cells.csv", rows)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("id,class,area_px") and len(lines) == 3
    geo = cell_polygons(cells, classes, offset=(100, 200))
    assert len(geo["features"]) == 2
    ring = np.array(geo["features"][1]["geometry"]["coordinates"][0])
    assert ring[0].tolist() == ring[-1].tolist()
    assert ring[:, 0].min() >= 229 and ring[:, 0].max() <= 240 and ring[:, 1].min() >= 129  # x, y in pixels
    assert geo["features"][1]["properties"]["class"] == "negative"
    json.dumps(geo)


def test_hand_corrections_survive_a_new_segmentation_threshold(predictor, ihc):
    result = run_deepliif(predictor, ihc, analyse=False)
    seg = np.zeros((64, 64, 3), np.uint8)
    seg[5:15, 5:15] = (255, 0, 0)
    seg[30:42, 30:40] = (0, 0, 255)
    seg[50:60, 2:6] = (80, 0, 40)  # a faint cell that only a low threshold keeps
    result.images["Segmentation"] = seg
    cells = result.analyse(segmentation_threshold=150)
    t = Thresholds(size=10, marker=255)
    cells.toggle(cells.labels[35, 35], cells.classify(t))  # negative -> positive by hand
    assert cells.classify(t).positive == 2
    relabelled = result.analyse(segmentation_threshold=100)
    assert relabelled.n_cells == 3
    after = relabelled.classify(t)
    assert after.classes[relabelled.labels[35, 35]] == 2 and after.positive == 3  # the faint one is red too
