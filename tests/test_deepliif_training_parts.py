"""The pieces the bundled DeepLIIF model is trained with: re-staining, training crops, the compact network."""

import numpy as np
import pytest
import torch

from napari_virtual_stain.io.synthetic_ihc import make_ihc
from napari_virtual_stain.models.deepliif_unet import BORDER, NEGATIVE, POSITIVE, DeepLIIFUNet, draw_segmentation
from napari_virtual_stain.tasks.deepliif_cells import NEGATIVE as CELL_NEGATIVE
from napari_virtual_stain.tasks.deepliif_cells import POSITIVE as CELL_POSITIVE
from napari_virtual_stain.tasks.deepliif_cells import analyse_cells
from napari_virtual_stain.training.deepliif_augment import StainJitter, optical_density, restain
from napari_virtual_stain.training.deepliif_samples import (SampleSettings, Source, classes_from_labels,
                                                            classes_from_mask, draw_sample, pseudo_labelled_source)

NO_JITTER = StainJitter(hematoxylin_scale=(1, 1), dab_scale=(1, 1), residual_scale=(1, 1), vector_tilt=0.0,
                        brightness=0.0, contrast=(1, 1), gamma=(1, 1), blur_probability=0.0, noise_sigma=(0, 0),
                        jpeg_probability=0.0)


@pytest.fixture(scope="module")
def field():
    field = make_ihc((128, 128), seed=0, positive_fraction=0.5)
    assert field["labels"].max() > 5
    return field


def test_restaining_without_jitter_gives_the_image_back(field):
    before = field["rgb"].copy()
    out = restain(field["rgb"], np.random.default_rng(0), NO_JITTER)
    assert np.array_equal(field["rgb"], before)
    assert np.abs(out.astype(int) - field["rgb"]).max() <= 1  # rounding only


def test_restaining_scales_the_hematoxylin_amount(field):
    from skimage.color import hed_from_rgb

    double = StainJitter(**{**NO_JITTER.__dict__, "hematoxylin_scale": (2.0, 2.0)})
    out = restain(field["rgb"], np.random.default_rng(0), double)
    h_before = (optical_density(field["rgb"]) @ hed_from_rgb)[..., 0]
    h_after = (optical_density(out) @ hed_from_rgb)[..., 0]
    nuclei = field["labels"] > 0
    ratio = np.median(h_after[nuclei]) / np.median(h_before[nuclei])
    assert 1.7 < ratio < 2.2  # saturation at dark pixels keeps it a little under 2
    assert out.mean() < field["rgb"].mean()  # darker


def test_random_restaining_varies_but_keeps_the_picture(field):
    rng = np.random.default_rng(1)
    outs = [restain(field["rgb"], rng) for _ in range(4)]
    means = [o.reshape(-1, 3).mean(axis=0) for o in outs]
    assert max(np.abs(a - b).max() for a in means for b in means) > 3  # the stains differ between draws
    nuclei = field["labels"] > 0
    for o in outs:
        grey = o.mean(axis=-1)
        assert grey[nuclei].mean() < grey[~nuclei].mean() - 5  # the nuclei stay darker than their surroundings


def test_class_maps_from_deepliif_masks_and_from_labels():
    mask = np.zeros((20, 20, 3), np.uint8)
    mask[2:8, 2:8] = (255, 0, 0)
    mask[10:16, 10:16] = (0, 0, 255)
    mask[1, 1:9] = (0, 255, 0)
    classes = classes_from_mask(mask)
    assert classes[4, 4] == POSITIVE and classes[12, 12] == NEGATIVE and classes[1, 4] == BORDER
    assert classes[18, 18] == 0
    labels = np.zeros((20, 20), np.int32)
    labels[3:9, 3:9], labels[3:9, 9:15] = 1, 2  # two touching nuclei
    drawn = classes_from_labels(labels, np.array([False, True, False]))
    assert drawn[5, 4] == POSITIVE and drawn[5, 13] == NEGATIVE
    assert (drawn[5, 8:10] == BORDER).all()  # the touching edge is border: the nuclei stay apart
    assert drawn[2, 5] == BORDER and drawn[0, 0] == 0


def test_training_crops_never_come_from_held_out_rows():
    rng = np.random.default_rng(0)
    ihc = rng.integers(0, 256, (96, 96, 3)).astype(np.uint8)
    classes = np.zeros((96, 96), np.uint8)
    classes[64:] = BORDER  # the held-out rows carry a class no training row has
    source = Source(ihc, classes, np.zeros((12, 96, 96), np.float32), slice(0, 64), "marked")
    settings = SampleSettings(crop=32, jitter=NO_JITTER)
    for _ in range(40):
        sample = draw_sample([source], [], rng, settings)
        assert sample["ihc"].shape == (3, 32, 32) and sample["modalities"].shape == (12, 32, 32)
        assert sample["classes"].shape == (32, 32) and not (sample["classes"] == BORDER).any()


def test_synthetic_crops_carry_no_modality_targets(field):
    synthetic = Source(field["rgb"], classes_from_labels(field["labels"], field["positive"]))
    sample = draw_sample([], [synthetic], np.random.default_rng(0), SampleSettings(crop=48))
    assert sample["modalities"] is None and sample["ihc"].dtype == np.float32
    assert -1.0 <= sample["ihc"].min() and sample["ihc"].max() <= 1.0


def test_pseudo_labelled_images_are_drawn_at_their_share_without_modalities(field):
    real = Source(field["rgb"], classes_from_labels(field["labels"], field["positive"]),
                  np.zeros((12, 128, 128), np.float32), slice(None), "real")
    empty = np.zeros(field["labels"].shape, np.int32)  # a labeller that found nothing: all background
    pseudo = pseudo_labelled_source(field["rgb"], empty, np.zeros(1, bool), "pseudo")
    settings = SampleSettings(crop=32, jitter=NO_JITTER, pseudo_fraction=0.5)
    rng = np.random.default_rng(1)
    samples = [draw_sample([real], [], rng, settings, [pseudo]) for _ in range(200)]
    from_pseudo = [s for s in samples if s["modalities"] is None]
    assert 70 <= len(from_pseudo) <= 130  # about half
    assert all(not s["classes"].any() for s in from_pseudo)  # its labels, not the real source's


def test_a_pseudo_share_without_pseudo_labelled_images_changes_no_draw(field):
    """The bundled model's recipe has none: its samples must stay what they were (no extra random draw)."""
    real = Source(field["rgb"], classes_from_labels(field["labels"], field["positive"]),
                  np.zeros((12, 128, 128), np.float32))
    synthetic = Source(field["rgb"][::-1].copy(), classes_from_labels(field["labels"][::-1], field["positive"]))
    settings = SampleSettings(crop=32, jitter=NO_JITTER, pseudo_fraction=0.5)
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    a = [draw_sample([real], [synthetic], rng_a, settings)["ihc"] for _ in range(10)]
    b = [draw_sample([real], [synthetic], rng_b, SampleSettings(crop=32, jitter=NO_JITTER), ())["ihc"]
         for _ in range(10)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_compact_network_draws_classes_the_way_deepliif_reads_them():
    logits = torch.full((1, 4, 8, 8), -10.0)
    logits[:, POSITIVE, :, :4] = 10.0  # a positive cell on the left
    logits[:, BORDER, :, 4] = 10.0  # a border between the two
    logits[:, NEGATIVE, :, 5:] = 10.0  # a negative cell on the right
    seg = ((draw_segmentation(logits)[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    analysis = analyse_cells(seg)
    classification = analysis.classify()
    classes = classification.classes[analysis.labels]
    assert (classes[:, :4] == CELL_POSITIVE).all() and (classes[:, 5:] == CELL_NEGATIVE).all()


def test_compact_network_keeps_the_deepliif_layout_on_any_tile_size():
    model = DeepLIIFUNet(depth=2, base=4, max_width=8).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 37, 50))
    assert out.shape == (2, 15, 37, 50) and out.abs().max() <= 1.0
    probabilities = (out[:, 12:] + 1) / 2  # positive, border, negative: three of the four class probabilities
    assert (probabilities.sum(dim=1) <= 1.0 + 1e-5).all()


def test_gap_weights_weigh_the_narrow_gap_between_two_nuclei_not_the_open_background():
    from napari_virtual_stain.training.deepliif_samples import gap_weights

    classes = np.zeros((40, 60), np.uint8)
    classes[10:30, 5:28] = NEGATIVE
    classes[10:30, 30:55] = POSITIVE  # a 2-pixel gap (columns 28-29) between the two nuclei
    w = gap_weights(classes, w0=10.0, sigma=4.0)
    assert w[20, 28] > 8 and w[20, 29] > 8  # d1 + d2 is 3 px there
    assert w[2, 2] < 1.01 and w[20, 15] == 1.0  # far from both nuclei; inside one
    assert np.all(gap_weights(classes[:, :28], 10.0, 4.0) <= 1.0 + 10.0 * np.exp(-0.5))  # one nucleus: no gap


def test_loss_weights_are_cropped_scaled_and_turned_with_the_classes():
    rng = np.random.default_rng(1)
    ihc = rng.integers(0, 256, (96, 96, 3)).astype(np.uint8)
    classes = rng.integers(0, 4, (96, 96)).astype(np.uint8)
    source = Source(ihc, classes, None, slice(None), "w", weights=classes.astype(np.float32) + 1.0)
    settings = SampleSettings(crop=32, scale=(1.0, 1.0), jitter=NO_JITTER)
    for _ in range(10):
        sample = draw_sample([], [source], rng, settings)
        np.testing.assert_array_equal(sample["weights"], sample["classes"] + 1.0)
    assert draw_sample([], [Source(ihc, classes)], rng, settings)["weights"] is None
