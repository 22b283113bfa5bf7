"""The two shortcuts deepliif's inference takes, taken by our release-folder model with the same answers:
empty tiles are not run through the networks, and zero-weight segmentations are not computed."""

import numpy as np
import pytest
import torch
from PIL import Image

from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.models.deepliif_official import (BACKGROUND_COLOURS, EMPTY_TILE_VARIANCE,
                                                           background_colours, is_empty_tile, load_release_folder)
from test_deepliif_model import make_release


def deepliif_variance(rgb: np.ndarray) -> float:
    """deepliif.util.image_variance_gray, as it is written there (PIL "L", 0 and 255 left out)."""
    px = np.asarray(Image.fromarray(rgb).convert("L"))
    val = px[np.logical_and(px != 255, px != 0)]
    return 0.0 if val.shape[0] == 0 else float(np.var(val))


def as_tile(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1)[None]


class Counting(torch.nn.Module):
    """Wraps a network and counts its calls."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def counted(model):
    model.translators = torch.nn.ModuleList(Counting(g) for g in model.translators)
    model.segmenters = torch.nn.ModuleList(Counting(g) for g in model.segmenters)
    return model


@pytest.mark.parametrize("spread", [0, 1, 2, 3, 4, 6, 20])
def test_the_empty_rule_decides_as_deepliifs_variance_does(spread):
    rng = np.random.default_rng(spread)
    rgb = np.clip(230 + rng.normal(0, spread, (64, 64, 3)), 0, 255).astype(np.uint8)
    rgb[:4] = 255  # white padding and black pixels are left out by deepliif
    rgb[-2:] = 0
    assert is_empty_tile(as_tile(rgb)) == (deepliif_variance(rgb) < EMPTY_TILE_VARIANCE)


def test_a_real_tissue_tile_is_not_empty_and_blank_glass_is():
    from napari_virtual_stain.io.tiff_reader import load_image
    from conftest import DATA

    tissue = load_image(DATA.parent / "fixtures" / "deepliif-official" / "inputs" / "ihc_512.png").data[..., :3]
    assert not is_empty_tile(as_tile(np.ascontiguousarray(tissue[:256, :256])))
    assert is_empty_tile(as_tile(np.full((64, 64, 3), 255, np.uint8)))


def test_an_empty_tile_gets_deepliifs_background_without_running_a_network(tmp_path):
    model, card = load_release_folder(make_release(tmp_path / "rel"))
    model = counted(model)
    glass = np.clip(235 + np.random.default_rng(0).normal(0, 1, (3, 64, 64)), 0, 255).astype(np.uint8)
    out = Predictor(model, card, device="cpu", precision="fp32").predict(glass)
    assert all(g.calls == 0 for g in list(model.translators) + list(model.segmenters))
    levels = np.floor(out * 255).astype(int)  # deepliif writes uint8((y + 1) / 2 * 255), truncating
    for k, colour in enumerate(BACKGROUND_COLOURS):
        assert (levels[3 * k:3 * k + 3].reshape(3, -1) == np.array(colour)[:, None]).all()
    assert (levels[12:] == 0).all()


def test_tissue_tiles_run_every_network_and_skipping_can_be_turned_off(tmp_path):
    model, card = load_release_folder(make_release(tmp_path / "rel"))
    model = counted(model)
    rgb = np.random.default_rng(1).integers(0, 256, (3, 64, 64)).astype(np.uint8)
    Predictor(model, card, device="cpu", precision="fp32").predict(rgb)
    assert all(g.calls == 1 for g in list(model.translators) + list(model.segmenters))
    model.skip_empty = False
    glass = np.full((3, 64, 64), 240, np.uint8)
    Predictor(model, card, device="cpu", precision="fp32").predict(glass)
    assert model.translators[0].calls == 2


def test_zero_weight_segmentations_are_not_run_and_the_fusion_is_unchanged(tmp_path):
    weights = (0.5, 0.0, 0.0, 0.0, 0.5)  # the released model's fusion
    model, _ = load_release_folder(make_release(tmp_path / "rel", weights=weights))
    model = counted(model)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        y = model(x)
        mods = [g.net(x) for g in model.translators]
        expected = 0.5 * model.segmenters[0].net(x) + 0.5 * model.segmenters[4].net(mods[3])
    assert [g.calls for g in model.segmenters] == [1, 0, 0, 0, 1]
    torch.testing.assert_close(y[:, 12:], expected)


def test_background_colours_come_from_the_options_when_they_name_them():
    named = [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]
    assert background_colours({"background_colors": named}) == tuple(tuple(c) for c in named)
    assert background_colours({}) == BACKGROUND_COLOURS
    assert background_colours({"background_colors": "junk"}) == BACKGROUND_COLOURS
