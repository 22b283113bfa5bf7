"""Splitting touching nuclei: an option of our models' cell rules (issue 12), kept in the model
card next to its thresholds, chosen on training rows; deepliif's own rules stay untouched."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import segmentation

from napari_virtual_stain.cli import main
from napari_virtual_stain.errors import CheckpointError, InputError
from napari_virtual_stain.models.card import ModelCard
from napari_virtual_stain.models.checkpoint import save_checkpoint
from napari_virtual_stain.models.deepliif_net import DeepLIIFNet, deepliif_arch_args, deepliif_card
from napari_virtual_stain.seg_metrics import classified_mask_scores
from napari_virtual_stain.tasks.deepliif_calibration import calibrate, card_entry
from napari_virtual_stain.tasks.deepliif_cells import (AUTO, CARD_KEY, MODEL, Thresholds, analyse_cells,
                                                       check_thresholds, model_thresholds, resolve_model_values)
from napari_virtual_stain.tasks.deepliif_render import render_refined
from napari_virtual_stain.tasks.deepliif_split import raster_order, split_regions
from napari_virtual_stain.workflows import deepliif as workflow
from napari_virtual_stain.workflows.deepliif import DeepLIIFSettings

TINY = dict(trans_ngf=4, trans_blocks=1, seg_ngf=4, seg_downs=3, seg_max_mult=2, norm="batch")


def discs(shape, centres, radius=12):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return [(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2 for cy, cx in centres]


def drawn(mask, colour=(0, 0, 255)):
    seg = np.zeros(mask.shape + (3,), np.uint8)
    seg[mask] = colour
    return seg


# two discs of radius 12, centres 22 px apart: a neck about 5 px from its edge, peaks 12 px: 7 px deep
PAIR = discs((64, 96), [(32, 30), (32, 52)])


def test_the_split_separates_two_touching_nuclei_that_deepliifs_rule_merges():
    seg = drawn(PAIR[0] | PAIR[1])
    plain = analyse_cells(seg)
    assert plain.n_cells == 1
    split = analyse_cells(seg, split=3)
    assert split.n_cells == 2 and split.split == 3
    # each piece holds one disc's centre, and about half of the pixels
    assert split.labels[32, 30] != split.labels[32, 52] and min(split.labels[32, 30], split.labels[32, 52]) > 0
    assert abs(int(split.table["area"][0]) - int(split.table["area"][1])) < 30
    # deepliif's drawing puts a green border between them, so the scorer sees two cells
    refined = render_refined(split, split.classify(Thresholds(split=3)))
    assert classified_mask_scores(refined, refined)["cells_pred"] == 2
    plain_refined = render_refined(plain, plain.classify())
    assert classified_mask_scores(plain_refined, plain_refined)["cells_pred"] == 1
    # a neck shallower than h is no cut: 7 px deep splits at 6, not at 8
    assert analyse_cells(seg, split=6).n_cells == 2 and analyse_cells(seg, split=8).n_cells == 1


def test_one_round_nucleus_or_a_bump_on_it_is_never_cut():
    one = discs((64, 64), [(32, 32)])[0]
    bump = one | discs((64, 64), [(32, 46)], radius=4)[0]
    for mask in (one, bump):
        assert analyse_cells(drawn(mask), split=1).n_cells == 1
    labels = analyse_cells(drawn(bump)).labels
    assert np.array_equal(split_regions(labels, 2), labels)  # nothing to cut: the very same labels


def test_split_labels_keep_deepliifs_raster_order_and_the_table_matches():
    # a merged pair first, then a lone disc further down and one to the right of the pair's rows
    lone = discs((96, 128), [(80, 20), (20, 110)], radius=8)
    pair = discs((96, 128), [(30, 30), (30, 52)])
    seg = drawn(pair[0] | pair[1] | lone[0] | lone[1])
    cells = analyse_cells(seg, split=2)
    firsts = [np.flatnonzero(cells.labels.ravel() == i)[0] for i in range(1, cells.n_cells + 1)]
    assert cells.n_cells == 4 and firsts == sorted(firsts)
    assert np.array_equal(cells.table["area"], np.bincount(cells.labels.ravel())[1:])
    scrambled = np.where(cells.labels > 0, 5 - cells.labels, 0).astype(np.int32)
    assert np.array_equal(raster_order(scrambled, rows=7), cells.labels)  # strip by strip: the same order


def test_a_bad_split_depth_is_one_sentence():
    with pytest.raises(InputError, match="split depth"):
        check_thresholds(Thresholds(split=0))
    with pytest.raises(InputError, match="split depth"):
        analyse_cells(drawn(PAIR[0]), split=-2)
    with pytest.raises(InputError, match="whole number"):
        check_thresholds(Thresholds(split=2.5))


def test_deepliifs_rules_are_untouched_without_a_split(tmp_path):
    """Release folders, maps a user brought and cards without a split: deepliif's regions exactly."""
    from test_workflow_deepliif import release_folder

    assert Thresholds().split is None and model_thresholds(None).split is None
    assert workflow.recommended_thresholds(str(release_folder(tmp_path / "release"))).split is None
    seg = drawn(PAIR[0] | PAIR[1])
    settings = DeepLIIFSettings()  # every threshold left to the model: for maps, deepliif's
    result = workflow.count_maps(seg, seg, seg, ("ihc", "seg", "marker"), settings)
    assert result.cells.split is None and result.cells.n_cells == 1
    assert np.array_equal(result.cells.labels, analyse_cells(seg).labels)
    assert "split_depth" not in workflow.classify(result, settings).summary()  # deepliif's keys alone


def test_the_card_stores_the_split_and_a_user_value_wins():
    entry = card_entry(Thresholds(100, 60, None, None, 3), "training rows")
    card = ModelCard.from_dict({**deepliif_card("c", deepliif_arch_args("small", **TINY), tile=32,
                                                overlap=8).to_dict(), "extra": {CARD_KEY: entry}})
    assert model_thresholds(ModelCard.from_dict(card.to_dict())) == Thresholds(100, 60, None, None, 3)
    assert "split" not in card_entry(Thresholds(100, 60), "rows")  # an old card's shape when nothing splits
    asked = Thresholds(MODEL, MODEL, MODEL, MODEL, None)  # the user said: no split
    assert resolve_model_values(asked, card).split is None
    assert resolve_model_values(Thresholds(MODEL, MODEL, MODEL, MODEL, MODEL), card).split == 3
    card.extra[CARD_KEY]["split"] = 0
    with pytest.raises(CheckpointError, match="unusable cell thresholds"):
        model_thresholds(card)


@pytest.fixture
def split_model(user_models):
    torch.manual_seed(0)
    net = DeepLIIFNet(**deepliif_arch_args("small", **TINY)).eval()
    card = deepliif_card("tiny-split", deepliif_arch_args("small", **TINY), tile=32, overlap=8)
    card.extra[CARD_KEY] = {"segmentation": 0, "size": 0, "split": 2}
    save_checkpoint(user_models / "tiny-split.pt", net, card)
    return "tiny-split"


def test_the_workflow_and_the_command_line_take_the_cards_split(split_model, tmp_path):
    ihc = np.random.default_rng(0).integers(0, 256, (40, 40, 3)).astype(np.uint8)
    result = workflow.run(DeepLIIFSettings(model=split_model, device="cpu"), ihc)
    assert result.cells.split == 2
    assert workflow.reanalyse(result, DeepLIIFSettings(model=split_model, seg_threshold=10)).split == 2
    assert workflow.run(DeepLIIFSettings(model=split_model, device="cpu", split=None), ihc).cells.split is None
    iio.imwrite(tmp_path / "roi.png", ihc)
    assert main(["deepliif", str(tmp_path / "roi.png"), "-o", str(tmp_path / "a"), "--model", split_model,
                 "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "a" / "roi.json").read_text())["split_depth"] == 2
    assert main(["deepliif", str(tmp_path / "roi.png"), "-o", str(tmp_path / "b"), "--model", split_model,
                 "--device", "cpu", "--split-nuclei", "none"]) == 0
    assert "split_depth" not in json.loads((tmp_path / "b" / "roi.json").read_text())


def _truth(mask, cut_column=None):
    """A classified truth mask in deepliif's colours: blue cells, a green line down ``cut_column``
    where two cells meet."""
    truth = drawn(mask)
    if cut_column is not None:
        truth[mask & (np.arange(mask.shape[1]) == cut_column)[None, :]] = (0, 255, 0)
    return truth


FAST = dict(seg_grid=(120,), size_grid=(AUTO, 0), marker_grid=(None,))


def test_calibration_keeps_no_split_when_splitting_hurts():
    """One peanut-shaped nucleus in the truth, drawn as it is: every split depth cuts it in two."""
    peanut = PAIR[0] | PAIR[1]
    truth = _truth(peanut)
    method = lambda rgb: (drawn(peanut), np.zeros_like(truth))
    chosen, report = calibrate(method, {"field": (truth, truth, slice(None))}, **FAST)
    assert chosen.split is None and report["chosen"]["cells_pred"] == 1
    again, _ = calibrate(method, {"field": (truth, truth, slice(None))}, **dict(FAST, split_grid=(2, 3)))
    assert again.split == 2  # without "off" in the grid a split is taken: the case is no tie


def test_calibration_takes_a_split_when_the_truth_has_two_cells():
    truth = _truth(PAIR[0] | PAIR[1], cut_column=41)  # the neck between the two discs
    method = lambda rgb: (drawn(PAIR[0] | PAIR[1]), np.zeros_like(truth))
    chosen, report = calibrate(method, {"field": (truth, truth, slice(None))}, **FAST)
    assert chosen.split is not None and report["chosen"]["cells_pred"] == 2
    assert report["deepliif_defaults"]["cells_pred"] == 1


def test_every_score_table_row_is_drawn_with_its_split():
    """The report scores a row through ``refined_mask``: a row whose thresholds split must be scored split."""
    from napari_virtual_stain.tasks.deepliif_evaluation import refined_mask, score_table

    seg = drawn(PAIR[0] | PAIR[1])
    truth = _truth(PAIR[0] | PAIR[1], cut_column=41)
    assert classified_mask_scores(refined_mask(seg, seg, Thresholds(split=3)), truth)["cells_pred"] == 2
    method = lambda rgb: (seg, np.zeros_like(seg))
    table = score_table({"plain": method, "split": method}, {"field": (truth, truth, slice(None))},
                        {"split": Thresholds(split=3)})
    assert (table["plain"]["mean"]["cells_pred"], table["split"]["mean"]["cells_pred"]) == (1, 2)


def _one_region_at_a_time(labels, h):
    """The reference: every region cut alone in its own padded box (what the bands must equal)."""
    from napari_virtual_stain.tasks.deepliif_split import dome_markers

    out = labels.copy()
    next_id = int(labels.max()) + 1
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        inside = labels[grown] == label
        region = np.pad(inside, 1)
        distance, markers, n = dome_markers(region, h)
        if n < 2:
            continue
        pieces = segmentation.watershed(-distance, markers, mask=region, watershed_line=True)[1:-1, 1:-1]
        window = out[grown]
        window[inside] = np.where(pieces[inside] == 0, 0,
                                  np.where(pieces[inside] == 1, label, next_id + pieces[inside] - 2))
        next_id += n - 1
    return raster_order(out)


def test_bands_of_rows_cut_the_same_cells_as_one_region_at_a_time():
    """Windows of several regions change only the watershed's order among equal distances: the
    same cells, a line pixel moved at most here and there."""
    rng = np.random.default_rng(3)
    centres = rng.integers(0, 160, (60, 2))
    radii = rng.integers(5, 13, 60)
    field = np.logical_or.reduce([m for (cy, cx), r in zip(centres, radii) for m in discs((160, 160), [(cy, cx)], r)])
    labels = analyse_cells(drawn(field)).labels
    for h in (1, 2, 4):
        reference = _one_region_at_a_time(labels, h)
        assert reference.max() > labels.max()  # the field has merged nuclei to cut
        for rows in (7, 40, 512):
            banded = split_regions(labels, h, rows=rows)
            assert banded.max() == reference.max()
            assert np.count_nonzero(banded != reference) <= 0.002 * np.count_nonzero(field)


# --- the fast split equals the first implementation, bit for bit ---------------------------------

from pathlib import Path  # noqa: E402

from skimage import morphology  # noqa: E402

from napari_virtual_stain.tasks.deepliif_split import dome_order, piece_ids, squared_distance  # noqa: E402

OFFICIAL_MAPS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "deepliif-official" / "postprocess" / "maps"


def reference_split(labels, h, rows=512):
    """The first implementation of :func:`split_regions` (scipy's distance, skimage's grey
    reconstruction, the watershed on the whole window): what the fast one must equal. Only the
    bookkeeping of the pieces' ids (``piece_ids``) is shared with it."""
    out = np.array(labels, dtype=np.int32, copy=True)
    n_labels = int(out.max(initial=0))
    if n_labels == 0:
        return out
    areas = np.bincount(out.ravel(), minlength=n_labels + 1)
    boxes = ndimage.find_objects(out)
    first_row = np.array([b[0].start if b is not None else -1 for b in boxes])
    candidates = np.nonzero((areas[1:] >= 2 * (h + 1) ** 2) & (first_row >= 0))[0] + 1
    next_id = n_labels + 1
    for start in range(0, out.shape[0], rows):
        ids = candidates[(first_row[candidates - 1] >= start) & (first_row[candidates - 1] < start + rows)]
        if ids.size == 0:
            continue
        window = tuple(slice(max(min(boxes[i - 1][d].start for i in ids) - 1, 0),
                             max(boxes[i - 1][d].stop for i in ids) + 1) for d in (0, 1))
        member = np.zeros(next_id, dtype=bool)
        member[ids] = True
        view = out[window]
        region_labels = np.pad(np.where(member[view], view, 0), 1)
        region = region_labels > 0
        distance = ndimage.distance_transform_edt(region)
        domes = morphology.reconstruction(distance - h, distance, method="dilation")
        markers, n = ndimage.label(morphology.local_maxima(domes, connectivity=2) & region, structure=np.ones((3, 3), bool))
        if n < 2:
            continue
        per_region, new_id, next_id = piece_ids(markers, n, region_labels, n_labels, next_id)
        if new_id is None:
            continue
        cut_ids = np.nonzero(per_region >= 2)[0]
        cut = np.isin(region_labels, cut_ids)
        pieces = segmentation.watershed(-distance, np.where(cut, markers, 0), mask=cut, watershed_line=True)
        inner = cut[1:-1, 1:-1]
        view[inner] = new_id[pieces[1:-1, 1:-1][inner]]
    return raster_order(out) if next_id > n_labels + 1 else out


def official_labels():
    """deepliif's regions of the released model's real Seg maps, cut low (60) and at deepliif's
    default (120) and higher (150): low joins more touching nuclei."""
    maps = sorted(OFFICIAL_MAPS.glob("*_fake_B_5.png"))
    assert maps, f"the deepliif-official fixture maps are missing from {OFFICIAL_MAPS}"
    return [analyse_cells(iio.imread(p)[..., :3], segmentation_threshold=t).labels for p in maps for t in (60, 120, 150)]


def random_fields():
    """Random fields of touching discs, exact twins (equal peaks), thin shapes, noise, an empty image."""
    rng = np.random.default_rng(11)
    fields = []
    for k in range(6):
        shape = (int(rng.integers(40, 200)), int(rng.integers(40, 200)))
        count = int(rng.integers(3, 40))
        centres = np.stack([rng.integers(0, shape[0], count), rng.integers(0, shape[1], count)], axis=1)
        radii = rng.integers(3, 16, count)
        fields.append(np.logical_or.reduce([m for c, r in zip(centres, radii) for m in discs(shape, [c], r)]))
    twins = discs((60, 120), [(30, 30), (30, 56), (30, 90)], radius=10)  # equal peaks, one dome each
    fields.append(twins[0] | twins[1] | twins[2])
    lines = np.zeros((50, 80), bool)
    lines[10:12, 5:75] = lines[20:40, 30] = lines[30:45, 50:70] = True
    fields.append(lines)
    fields.append(rng.random((90, 90)) < 0.55)  # noise: ragged, holed regions
    fields.append(np.zeros((20, 30), bool))
    return [ndimage.label(f, structure=np.ones((3, 3), bool))[0].astype(np.int32) for f in fields]


def test_the_distance_is_scipys_exactly():
    for labels in official_labels()[:3] + random_fields():
        region = np.pad(labels > 0, 1)
        squared = squared_distance(region)
        distance = ndimage.distance_transform_edt(region)
        assert np.array_equal(np.sqrt(squared, dtype=np.float64), distance)  # the very same floats
    with pytest.raises(ValueError, match="frame"):
        squared_distance(np.ones((5, 5), bool))


def test_the_domes_are_skimages_grey_reconstruction_exactly():
    cases = [labels > 0 for labels in official_labels() + random_fields()]
    cases += [PAIR[0] | PAIR[1], discs((40, 40), [(20, 20)], radius=3)[0]]  # a deep pair; a disc no deeper than h
    checked_flat = 0
    for mask in cases:
        region = np.pad(mask, 1)
        distance = ndimage.distance_transform_edt(region)
        for h in (1, 2, 3, 5, 8):
            codes, values = dome_order(squared_distance(region), h)
            reference = morphology.reconstruction(distance - h, distance, method="dilation")
            assert np.array_equal(values[codes], reference)
            # the codes keep the values' order, so both have the same maxima
            assert np.array_equal(morphology.local_maxima(codes, connectivity=2),
                                  morphology.local_maxima(reference, connectivity=2))
            checked_flat += values.size == 1
    assert checked_flat > 0  # the constant case (no pixel deeper than h) was among them


def test_the_fast_split_gives_the_first_implementations_labels_bit_for_bit():
    cut_any = 0
    for labels in official_labels() + random_fields():
        for h in (1, 2, 3, 5):
            for rows in (512, 37):
                fast, reference = split_regions(labels, h, rows=rows), reference_split(labels, h, rows=rows)
                assert fast.dtype == reference.dtype and np.array_equal(fast, reference)
                cut_any += int(fast.max()) > int(labels.max())
    assert cut_any > 20  # the cases do cut
