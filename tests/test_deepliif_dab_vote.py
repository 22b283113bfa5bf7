"""Positive cells from the IHC's DAB vote: the network's cells unchanged, their classes the stain's,
the same whether written strip by strip or at once, and asked for by a card, the CLI or the settings."""

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from skimage import data as skdata

from napari_virtual_stain.cli import main
from napari_virtual_stain.errors import CheckpointError, InputError
from napari_virtual_stain.models.checkpoint import save_checkpoint
from napari_virtual_stain.models.deepliif_net import DeepLIIFNet, deepliif_arch_args, deepliif_card
from napari_virtual_stain.tasks.deepliif_cells import CARD_KEY, analyse_cells, cell_pixels
from napari_virtual_stain.tasks.deepliif_classical import classical_maps, dab_votes, unmix
from napari_virtual_stain.tasks.deepliif_dab_vote import (DAB, NETWORK, card_positive_from, dab_positive, redraw,
                                                          redraw_whole)
from napari_virtual_stain.workflows import deepliif as workflow
from napari_virtual_stain.workflows.deepliif import DeepLIIFSettings

TINY = dict(trans_ngf=4, trans_blocks=1, seg_ngf=4, seg_downs=3, seg_max_mult=2, norm="batch")


def ihc_crop(size=96):
    return np.ascontiguousarray(skdata.immunohistochemistry()[:size, :size])


def fused_map(shape, seed=0):
    """A fused segmentation with every kind of pixel: background, red and blue cells, mixed, borders, R + B > 255."""
    rng = np.random.default_rng(seed)
    seg = np.zeros(shape + (3,), np.uint8)
    yy, xx = np.indices(shape)
    for _ in range(12):
        cy, cx, r = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8), rng.integers(4, 9)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        seg[disc, 0] = rng.integers(0, 256)
        seg[disc, 2] = rng.integers(0, 256)
    seg[::17, :, 1] = 255  # green border lines
    return seg


def tiny_model(user_models, name, positive_from=None):
    torch.manual_seed(0)
    net = DeepLIIFNet(**deepliif_arch_args("small", **TINY)).eval()
    card = deepliif_card(name, deepliif_arch_args("small", **TINY), tile=32, overlap=8)
    if positive_from:
        card.extra[CARD_KEY] = {"segmentation": 120, "positive_from": positive_from}
    save_checkpoint(user_models / f"{name}.pt", net, card)
    return name


def test_redraw_keeps_the_cells_and_takes_the_classes_from_the_votes():
    seg = fused_map((64, 80))
    votes = np.random.default_rng(1).random((64, 80)) > 0.5
    out = redraw(seg, votes)
    for threshold in (0, 60, 120, 254):  # every cut a user can make below 255 sees the same cells
        cell, _ = cell_pixels(seg, threshold)
        cell_after, positive_after = cell_pixels(out, threshold)
        assert np.array_equal(cell_after, cell)
        assert np.array_equal(positive_after, cell & votes)
    assert np.array_equal(out[..., 1], seg[..., 1])
    assert not np.shares_memory(out, seg) and np.array_equal(seg, fused_map((64, 80)))  # the input is not changed
    before = analyse_cells(seg, segmentation_threshold=120)
    after = analyse_cells(out, segmentation_threshold=120)
    assert np.array_equal(before.labels, after.labels)


def test_a_strip_votes_as_the_whole_image_does():
    ihc = ihc_crop(80)
    whole = dab_votes(unmix(ihc)[1])
    assert whole.any() and not whole.all()  # the crop has positive and negative nuclei
    for rows in (slice(0, 7), slice(3, 30), slice(30, 80), slice(79, 80), slice(None)):
        assert np.array_equal(dab_positive(ihc, rows), whole[rows]), rows


def test_a_card_asks_for_the_dab_vote_and_the_written_map_is_redrawn(user_models):
    dab, plain = tiny_model(user_models, "tiny-dab", DAB), tiny_model(user_models, "tiny-net")
    ihc = ihc_crop(72)
    network = workflow.run(DeepLIIFSettings(model=plain, device="cpu"), ihc)
    voted = workflow.run(DeepLIIFSettings(model=dab, device="cpu"), ihc)
    expected = redraw_whole(ihc, network.images["Segmentation"])
    assert np.array_equal(voted.images["Segmentation"], expected)  # strip by strip, as at once
    assert np.array_equal(voted.images["Marker"], network.images["Marker"])
    # a user's choice wins over the card's, both ways
    asked = workflow.run(DeepLIIFSettings(model=dab, device="cpu", positive_from=NETWORK), ihc)
    assert np.array_equal(asked.images["Segmentation"], network.images["Segmentation"])
    asked = workflow.run(DeepLIIFSettings(model=plain, device="cpu", positive_from=DAB), ihc)
    assert np.array_equal(asked.images["Segmentation"], expected)
    assert "DAB vote" in workflow.describe_model(voted.card)
    assert "DAB vote" not in workflow.describe_model(network.card)


def test_cards_and_settings_that_say_something_else_are_one_sentence():
    card = deepliif_card("odd", deepliif_arch_args("small", **TINY), tile=32, overlap=8)
    assert card_positive_from(card) == NETWORK == card_positive_from(None)
    card.extra[CARD_KEY] = {"positive_from": "hematoxylin"}
    with pytest.raises(CheckpointError, match="hematoxylin"):
        card_positive_from(card)
    problems = DeepLIIFSettings(positive_from="colour").cell_problems()
    assert problems and "colour" in problems[0]


def test_counting_maps_a_user_brought_by_the_dab_vote(tmp_path, capsys):
    ihc = ihc_crop(256)
    seg, marker = classical_maps(ihc)  # cells where the nuclei are ...
    seg[..., 2] = np.maximum(seg[..., 0], seg[..., 2])
    seg[..., 0] = 0  # ... all drawn negative
    for name, image in (("ihc.png", ihc), ("seg.png", seg), ("marker.png", marker)):
        iio.imwrite(tmp_path / name, image)
    common = ["deepliif-cells", str(tmp_path / "ihc.png"), "--seg", str(tmp_path / "seg.png"), "--marker",
              str(tmp_path / "marker.png"), "--size-thresh", "0"]
    assert main(common + ["-o", str(tmp_path / "net")]) == 0
    network = capsys.readouterr().err
    assert main(common + ["-o", str(tmp_path / "dab"), "--positive-from", "dab"]) == 0
    voted = capsys.readouterr().err
    cells = lambda text: int(text.split(": ", 1)[1].split(" cells")[0])
    positive = lambda text: int(text.split("cells, ", 1)[1].split(" positive")[0])
    assert cells(network) == cells(voted) > 5  # the same cells ...
    assert positive(network) == 0 < positive(voted) < cells(voted)  # ... classed by the stain
    with pytest.raises(SystemExit) as refused:
        main(common + ["-o", str(tmp_path / "bad"), "--positive-from", "eosin"])
    assert refused.value.code == 2 and "eosin" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_the_dab_vote_needs_the_ihc_image():
    seg = fused_map((32, 32))
    with pytest.raises(InputError, match="IHC image"):
        workflow.count_maps(None, seg, np.zeros_like(seg), ("IHC", "Seg", "Marker"),
                            DeepLIIFSettings(positive_from=DAB))


def test_the_bundled_model_asks_for_the_dab_vote_and_says_so():
    from napari_virtual_stain.models.registry import model_card

    card = model_card("deepliif-small")
    assert card_positive_from(card) == DAB
    assert "DAB vote" in workflow.describe_model(card)
    held_out = card.scores["held_out"]
    assert any("DAB vote" in row for row in held_out)  # its scores say which rule they are of
