"""Growing cells after the cut: an option of our models' cell rules (issue 12), kept in the model card
next to its thresholds and chosen on training rows; deepliif's own rules stay untouched."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
from scipy import ndimage
from test_deepliif_split import FAST, TINY, _truth, discs, drawn, split_model  # noqa: F401 (a fixture)

from napari_virtual_stain.cli import main
from napari_virtual_stain.errors import InputError
from napari_virtual_stain.models.card import ModelCard
from napari_virtual_stain.models.deepliif_net import deepliif_arch_args, deepliif_card
from napari_virtual_stain.seg_metrics import parse_classified_mask
from napari_virtual_stain.tasks.deepliif_calibration import calibrate, card_entry
from napari_virtual_stain.tasks.deepliif_cells import (CARD_KEY, MODEL, Thresholds, analyse_cells, check_thresholds,
                                                       model_thresholds, resolve_model_values)
from napari_virtual_stain.tasks.deepliif_grow import grow_cells
from napari_virtual_stain.tasks.deepliif_render import render_refined
from napari_virtual_stain.workflows import deepliif as workflow
from napari_virtual_stain.workflows.deepliif import DeepLIIFSettings

EIGHT = np.ones((3, 3), bool)
# two discs of radius 8 with a 4 px gap between them: grown by 3 px they would meet
CLOSE = discs((48, 64), [(24, 20), (24, 44)], radius=8)


def _random_cells(seed, shape=(160, 137)):
    rng = np.random.default_rng(seed)
    labels, _ = ndimage.label(ndimage.gaussian_filter(rng.random(shape), 3) > 0.52, structure=EIGHT)
    return labels.astype(np.int32)


def test_grown_cells_keep_their_pixels_and_never_meet():
    labels = _random_cells(0)
    for distance in (1, 2, 3, 5):
        grown = grow_cells(labels, distance)
        assert np.array_equal(grown[labels > 0], labels[labels > 0])  # only background is taken
        assert (grown > 0).sum() > (labels > 0).sum()
        # as many 8-connected regions as cells: no two grown cells touch, even at a corner
        assert ndimage.label(grown > 0, structure=EIGHT)[1] == labels.max()
        # a grown pixel is within ``distance`` of its own cell
        for cell in np.unique(grown[(grown > 0) & (labels == 0)])[:20]:
            reach = ndimage.distance_transform_edt(labels != cell)
            assert reach[(grown == cell) & (labels == 0)].max() <= distance + 1e-9
    assert grow_cells(labels, 0) is labels


def test_bands_of_rows_grow_the_same_cells_as_the_whole_image():
    for seed in range(4):
        labels = _random_cells(seed)
        for distance in (1, 3):
            assert np.array_equal(grow_cells(labels, distance, band_rows=17), grow_cells(labels, distance, 10 ** 6))


def test_growth_makes_cells_larger_and_keeps_them_apart_and_their_class():
    seg = drawn(CLOSE[0] | CLOSE[1], colour=(255, 0, 0))
    plain, grown = analyse_cells(seg), analyse_cells(seg, grow=3)
    assert plain.n_cells == grown.n_cells == 2 and grown.grow == 3
    assert np.all(grown.table["area"] > plain.table["area"])
    assert np.array_equal(grown.table["positive_px"], plain.table["positive_px"])  # classes come from the map
    refined = render_refined(grown, grown.classify(Thresholds(size=0, grow=3)))
    _, instances, classes = parse_classified_mask(refined)
    assert instances.max() == 2 and np.all(classes == 1)  # two positive cells, a border between them
    assert grown.classify(Thresholds(size=0, grow=3)).summary()["grow_px"] == 3
    assert "grow_px" not in plain.classify(Thresholds(size=0)).summary()  # deepliif's keys alone


def test_a_bad_growth_is_one_sentence():
    for bad in (0, 11, -1):
        with pytest.raises(InputError, match="growth of the cells"):
            check_thresholds(Thresholds(grow=bad))
    with pytest.raises(InputError, match="whole number"):
        analyse_cells(drawn(CLOSE[0]), grow=2.5)


def test_calibration_grows_cells_drawn_smaller_than_the_truth_and_not_others():
    small = discs((64, 96), [(32, 30), (32, 66)], radius=8)
    large = discs((64, 96), [(32, 30), (32, 66)], radius=11)
    truth = _truth(large[0] | large[1])
    method = lambda rgb: (drawn(small[0] | small[1]), np.zeros_like(truth))
    chosen, report = calibrate(method, {"field": (truth, truth, slice(None))}, **FAST)
    assert chosen.grow == 3 and report["chosen"]["aji"] > report["deepliif_defaults"]["aji"]
    exact = lambda rgb: (drawn(large[0] | large[1]), np.zeros_like(truth))
    assert calibrate(exact, {"field": (truth, truth, slice(None))}, **FAST)[0].grow is None


def test_the_card_stores_the_growth_and_a_user_value_wins():
    entry = card_entry(Thresholds(100, 60, None, None, 2, 3), "training rows")
    card = ModelCard.from_dict({**deepliif_card("c", deepliif_arch_args("small", **TINY), tile=32,
                                                overlap=8).to_dict(), "extra": {CARD_KEY: entry}})
    assert model_thresholds(ModelCard.from_dict(card.to_dict())) == Thresholds(100, 60, None, None, 2, 3)
    assert "grow" not in card_entry(Thresholds(100, 60), "rows")  # an older card's shape without growth
    assert model_thresholds(None).grow is None  # release folders, maps a user brought: deepliif's rules
    assert resolve_model_values(Thresholds(MODEL, MODEL, MODEL, MODEL, MODEL, None), card).grow is None
    assert resolve_model_values(Thresholds(MODEL, MODEL, MODEL, MODEL, MODEL, MODEL), card).grow == 3


def test_the_workflow_and_the_command_line_take_the_cards_growth(split_model, user_models, tmp_path):
    """``split_model`` (test_deepliif_split's fixture) with a growth in its card."""
    from napari_virtual_stain.models.checkpoint import load_checkpoint, save_checkpoint

    path = user_models / f"{split_model}.pt"
    net, card = load_checkpoint(path)
    card.extra[CARD_KEY]["grow"] = 2
    save_checkpoint(path, net, card)
    ihc = np.random.default_rng(0).integers(0, 256, (40, 40, 3)).astype(np.uint8)
    assert workflow.run(DeepLIIFSettings(model=split_model, device="cpu"), ihc).cells.grow == 2
    assert workflow.run(DeepLIIFSettings(model=split_model, device="cpu", grow=None), ihc).cells.grow is None
    iio.imwrite(tmp_path / "roi.png", ihc)
    assert main(["deepliif", str(tmp_path / "roi.png"), "-o", str(tmp_path / "a"), "--model", split_model,
                 "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "a" / "roi.json").read_text())["grow_px"] == 2
    assert main(["deepliif", str(tmp_path / "roi.png"), "-o", str(tmp_path / "b"), "--model", split_model,
                 "--device", "cpu", "--grow-cells", "none"]) == 0
    assert "grow_px" not in json.loads((tmp_path / "b" / "roi.json").read_text())
