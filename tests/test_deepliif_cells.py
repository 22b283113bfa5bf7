"""DeepLIIF cells (labels, classes, thresholds, corrections), segmentation metrics, 6-panel import."""

from pathlib import Path

import numpy as np
import pytest

from napari_virtual_stain.errors import InputError, ReaderError
from napari_virtual_stain.io.deepliif_panels import (PANEL_NAMES, get_panels_reader, read_deepliif_panels,
                                                     read_panels, split_panels)
from napari_virtual_stain.seg_metrics import aji, classified_mask_scores, pixel_scores
from napari_virtual_stain.tasks.deepliif_cells import (EXCLUDED, NEGATIVE, POSITIVE, Thresholds, analyse_cells,
                                                       auto_marker_threshold, auto_size_threshold,
                                                       render_classified_mask)

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "deepliif-sample" / "train" / "Lung1.png"


def disc(img, cy, cx, r, colour):
    yy, xx = np.ogrid[:img.shape[0], :img.shape[1]]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = colour


@pytest.fixture
def scene():
    """Three red cells, two blue cells, one red speck (debris); a bright marker in one blue cell."""
    seg = np.zeros((64, 96, 3), np.uint8)
    marker = np.zeros((64, 96, 3), np.uint8)
    for cx in (10, 30, 50):
        disc(seg, 12, cx, 6, (230, 0, 20))
    disc(seg, 40, 15, 6, (10, 0, 240))
    disc(seg, 40, 40, 6, (10, 0, 240))
    disc(seg, 50, 80, 1, (255, 0, 0))  # 5 pixels
    disc(marker, 40, 40, 2, (200, 200, 200))
    marker[12, 10] = 60
    return seg, marker


def test_cells_are_labelled_and_classified_with_deepliifs_rules(scene):
    seg, marker = scene
    cells = analyse_cells(seg, marker)
    assert cells.n_cells == 6
    result = cells.classify(Thresholds(size=20, marker=250))  # marker too high to matter
    assert (result.positive, result.negative, result.total) == (3, 2, 5)  # the speck is below the size
    assert result.percent_positive == pytest.approx(60.0)
    speck = cells.labels[50, 80]
    assert result.classes[speck] == EXCLUDED and cells.table["area"][speck - 1] == 5


def test_thresholds_recount_without_touching_pixels(scene):
    seg, marker = scene
    cells = analyse_cells(seg, marker)
    labels_before = cells.labels.copy()
    # a marker threshold below the bright blue cell's marker makes it positive (DeepLIIF: max marker > thresh)
    assert cells.classify(Thresholds(size=20, marker=150)).positive == 4
    # ... and the weak marker pixel in a red cell changes nothing: it is already positive
    assert cells.classify(Thresholds(size=20, marker=50)).positive == 4
    # a size threshold of 0 keeps the speck, a huge one drops everything
    assert cells.classify(Thresholds(size=0, marker=250)).total == 6
    assert cells.classify(Thresholds(size=10_000, marker=250)).total == 0
    assert cells.classify(Thresholds(size=20, size_upper=50, marker=250)).total == 0
    np.testing.assert_array_equal(cells.labels, labels_before)


def test_segmentation_threshold_decides_which_pixels_are_cells(scene):
    seg, marker = scene
    seg = seg.copy()
    disc(seg, 40, 65, 6, (60, 0, 60))  # a faint cell: red + blue = 120
    assert analyse_cells(seg, marker, segmentation_threshold=150).n_cells == 6
    assert analyse_cells(seg, marker, segmentation_threshold=100).n_cells == 7
    with pytest.raises(InputError, match="between 0 and 510"):
        analyse_cells(seg, marker, segmentation_threshold=600)


def test_green_boundaries_enclosed_by_a_cell_belong_to_it():
    seg = np.zeros((32, 32, 3), np.uint8)
    disc(seg, 16, 16, 8, (0, 0, 255))
    disc(seg, 16, 16, 2, (0, 255, 0))  # an enclosed green blob is part of the cell, not background
    cells = analyse_cells(seg)
    assert cells.n_cells == 1 and cells.labels[16, 16] == 1


def test_clicks_flip_and_exclude_cells(scene):
    seg, marker = scene
    cells = analyse_cells(seg, marker)
    t = Thresholds(size=20, marker=250)
    first = cells.classify(t)
    red = cells.labels[12, 10]
    cells.toggle(red, first)
    second = cells.classify(t)
    assert second.classes[red] == NEGATIVE and (second.positive, second.negative) == (2, 3)
    cells.toggle(red, second, exclude=True)
    third = cells.classify(t)
    assert third.classes[red] == EXCLUDED and third.total == 4
    cells.toggle(red, third, exclude=True)  # excluding again restores the automatic class
    assert cells.classify(t).classes[red] == POSITIVE


def test_automatic_size_threshold_separates_debris_from_cells():
    rng = np.random.default_rng(0)
    areas = np.concatenate([rng.normal(9, 2, 200).clip(1), rng.normal(150, 20, 300)])  # sqrt 3 and ~12
    thresh = auto_size_threshold(areas)
    assert 16 <= thresh <= 100
    assert np.mean(areas[:200] <= thresh) > 0.95 and np.mean(areas[200:] > thresh) > 0.95
    assert auto_size_threshold(np.array([])) == 0


def test_automatic_marker_threshold_is_90_percent_of_the_range():
    marker = np.concatenate([np.zeros(100), np.linspace(10, 210, 1001)])
    assert auto_marker_threshold(marker) == pytest.approx(10 + 0.9 * 200, abs=2)
    assert auto_marker_threshold(np.zeros(10)) == 0


def test_classified_mask_uses_deepliifs_colours(scene):
    seg, marker = scene
    cells = analyse_cells(seg, marker)
    rgb = render_classified_mask(cells, cells.classify(Thresholds(size=20, marker=250)))
    assert rgb.shape == seg.shape and rgb.dtype == np.uint8
    assert tuple(rgb[12, 10]) == (255, 0, 0) and tuple(rgb[40, 15]) == (0, 0, 255)
    assert tuple(rgb[12, 16]) == (255, 0, 0)  # the cell's last pixel: deepliif draws its border outside
    assert [tuple(rgb[12, x]) for x in (17, 18, 19, 20)] == [(0, 255, 0)] * 3 + [(0, 0, 0)]  # 3 px of border
    assert tuple(rgb[6, 10]) == (0, 255, 0)  # the first pixel of the cell, where deepliif starts, is green too
    assert tuple(rgb[0, 0]) == (0, 0, 0) and tuple(rgb[50, 80]) == (0, 0, 0)  # background, excluded speck
    # round trip: our own mask scores perfectly against itself and keeps the classes
    scores = classified_mask_scores(rgb, rgb)
    assert scores["dice"] == 1.0 and scores["aji"] == 1.0 and scores["percent_positive_pred"] == 60.0


# ---- metrics --------------------------------------------------------------------------------

def test_pixel_scores_and_aji_on_a_hand_computed_case():
    true = np.zeros((20, 40), np.int32)
    pred = np.zeros((20, 40), np.int32)
    true[0:10, 0:10] = 1  # 100 px
    pred[0:10, 5:15] = 1  # overlaps 50 px
    pred[15:19, 30:35] = 2  # 20 px, matches nothing
    assert aji(pred, true) == pytest.approx(50 / (150 + 20))
    s = pixel_scores(pred > 0, true > 0)
    tp, fp, fn = 50, 70, 50
    assert s["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert s["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert s["pixel_accuracy"] == pytest.approx(1 - (fp + fn) / 800)


def test_percent_positive_difference():
    truth = np.zeros((20, 40, 3), np.uint8)
    truth[2:6, 2:6] = (255, 0, 0)
    truth[2:6, 10:14] = (0, 0, 255)
    pred = truth.copy()
    pred[2:6, 10:14] = (255, 0, 0)
    s = classified_mask_scores(pred, truth)
    assert (s["percent_positive_true"], s["percent_positive_pred"], s["percent_positive_diff"]) == (50.0, 100.0, 50.0)
    assert s["dice"] == 1.0 and s["cells_true"] == 2


# ---- 6-panel import -------------------------------------------------------------------------

def test_real_six_panel_file_opens_as_six_layers():
    if not SAMPLE.exists():
        pytest.skip("DeepLIIF sample data not available")
    panels = read_panels(SAMPLE)
    assert all(p.shape == (512, 512, 3) for p in panels.panels)
    assert np.array_equal(panels.dapi[..., 0], panels.dapi[..., 1])  # DAPI is a grey rendering
    assert get_panels_reader(str(SAMPLE)) is read_deepliif_panels
    layers = read_deepliif_panels(str(SAMPLE))
    assert [kw["name"] for _, kw, _ in layers] == [f"Lung1 · {n}" for n in PANEL_NAMES]
    assert all(kind == "image" and kw["rgb"] for _, kw, kind in layers)


def test_six_panel_errors_are_sentences(tmp_path):
    with pytest.raises(ReaderError, match="six times"):
        split_panels(np.zeros((10, 50, 3), np.uint8))
    with pytest.raises(ReaderError, match="grey"):
        split_panels(np.zeros((10, 60), np.uint8))
    with pytest.raises(ReaderError, match="16-bit"):
        split_panels(np.zeros((10, 60, 3), np.uint16))
    rgba = np.zeros((10, 60, 4), np.uint8)
    with pytest.raises(ReaderError, match="transparency"):
        split_panels(rgba)
    rgba[..., 3] = 255
    assert split_panels(rgba).ihc.shape == (10, 10, 3)
    import imageio.v3 as iio
    wide = tmp_path / "wide.png"
    iio.imwrite(wide, np.zeros((10, 50, 3), np.uint8))
    assert get_panels_reader(str(wide)) is None  # not claimed by the 6-panel reader


def test_table_built_in_strips_equals_one_pass(scene, monkeypatch):
    from napari_virtual_stain.tasks import deepliif_cells

    seg, marker = scene
    modalities = {"dapi": marker, "lap2": seg}
    one_pass = analyse_cells(seg, marker, modalities)
    monkeypatch.setattr(deepliif_cells, "STRIP_ROWS", 7)
    strips = analyse_cells(seg, marker, modalities)
    for column, values in one_pass.table.items():
        np.testing.assert_allclose(strips.table[column], values, err_msg=column)
    assert one_pass.table["marker_max"][one_pass.labels[40, 40] - 1] == 200
    assert np.isnan(one_pass.table["mean_hematoxylin"]).all()


def test_the_tables_grey_is_bit_for_bit_the_float32_mean_of_rgb():
    from napari_virtual_stain.tasks.deepliif_cells import _grey

    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3)).astype(np.uint8)
    rgb[0, :3] = [[255, 255, 255], [0, 0, 0], [255, 254, 1]]  # the extremes of the integer sum
    reference = rgb.astype(np.float32).mean(axis=-1)
    got = _grey(rgb)
    assert got.dtype == np.float32 and np.array_equal(got, reference)
    strided = rgb[::2, ::3]  # a view, as a strip of the table is
    assert np.array_equal(_grey(strided), strided.astype(np.float32).mean(axis=-1))
