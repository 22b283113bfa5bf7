"""TransUNet: any tile size (interpolated position embedding), checkpoints, learning, tiled prediction."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.models.card import ModelCard
from napari_virtual_stain.models.checkpoint import load_checkpoint, save_checkpoint
from napari_virtual_stain.models.factory import build_model
from napari_virtual_stain.models.transunet import TransUNet

TINY = dict(in_channels=1, out_channels=2, base=4, hidden=16, layers=1, heads=2, img_size=32)



@pytest.mark.parametrize("args", [TINY, dict(TINY, norm="instance", activation="tanh"), dict(TINY, norm="group")])
@pytest.mark.parametrize("spatial", [(13, 37), (33, 16), (5, 9)])
def test_any_spatial_shape_gives_a_same_shaped_output(args, spatial):
    model = build_model("transunet", args).eval()
    with torch.no_grad():
        y = model(torch.rand(2, 1, *spatial))
    assert y.shape == (2, 2, *spatial)
    assert torch.isfinite(y).all()


def test_position_embedding_is_interpolated_for_other_tile_sizes():
    torch.manual_seed(0)
    model = TransUNet(**TINY).eval()  # learned on a 2x2 token grid (32 px tiles)
    assert model.position_embedding((2, 2)) is model.position
    resized = model.position_embedding((4, 6))
    assert resized.shape == (1, 16, 4, 6)
    # Interpolation keeps the embedding's range and varies smoothly (no zero padding).
    with torch.no_grad():
        resized = model.position_embedding((4, 6))
    assert float(resized.abs().max()) <= 2 * float(model.position.detach().abs().max())
    assert float(resized.std()) > 0
    # Two tile sizes: the position embedding takes part in both.
    for size in ((32, 32), (64, 96)):
        x = torch.rand(1, 1, *size)
        with torch.no_grad():
            before = model(x)
            saved = model.position.detach().clone()
            model.position.add_(torch.randn_like(model.position))
            after = model(x)
            model.position.copy_(saved)
        assert before.shape == (1, 2, *size)
        assert not torch.allclose(before, after)


def test_attention_sees_the_whole_tile():
    # A change in one corner does not reach the opposite corner's CNN features, but the
    # transformer carries it to the opposite corner's token.
    torch.manual_seed(0)
    model = TransUNet(**TINY).eval()
    seen = {"cnn": [], "tokens": []}
    model.stage3.register_forward_hook(lambda m, i, out: seen["cnn"].append(out.flatten(2)[..., -1]))
    model.transformer.register_forward_hook(lambda m, i, out: seen["tokens"].append(out[:, -1]))
    x = torch.rand(1, 1, 128, 128)
    changed = x.clone()
    changed[..., :16, :16] += 5
    with torch.no_grad():
        model(x)
        model(changed)
    assert torch.equal(*seen["cnn"])  # the far corner's CNN features are untouched
    assert float((seen["tokens"][0] - seen["tokens"][1]).abs().max()) > 1e-3


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="multiple of heads"):
        TransUNet(1, 1, hidden=10, heads=4)
    with pytest.raises(ValueError, match="at least one transformer layer"):
        TransUNet(1, 1, layers=0)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model = build_model("transunet", TINY).eval()
    card = ModelCard(name="tiny-transunet", task="stain", architecture="transunet", arch_args=TINY, spatial_dims=2,
                     input_channels=["brightfield"], output_channels=["nuclei", "membrane"], tile=[32, 32],
                     overlap=[8, 8])
    loaded, card2 = load_checkpoint(save_checkpoint(tmp_path / "t.pt", model, card))
    x = torch.rand(1, 1, 40, 72)  # not the learned grid: the interpolated embedding round-trips too
    with torch.no_grad():
        assert torch.equal(model(x), loaded.eval()(x))
    assert card2 == card and isinstance(loaded, TransUNet)


def test_tiled_prediction_on_an_odd_image_matches_the_image_shape():
    model = build_model("transunet", TINY).eval()
    card = ModelCard(name="tiny-transunet", task="stain", architecture="transunet", arch_args=TINY, spatial_dims=2,
                     input_channels=["brightfield"], output_channels=["nuclei", "membrane"], tile=[64, 64],
                     overlap=[8, 8])
    image = np.random.default_rng(0).random((1, 100, 77)).astype(np.float32)  # two tiles on each axis
    out = Predictor(model, card, device="cpu", precision="fp32").predict(image)
    assert out.shape == (2, 100, 77)
    assert np.isfinite(out).all() and 0 <= out.min() and out.max() <= 1


def test_overfits_a_single_pair():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    spots = ndimage.gaussian_filter((rng.random((32, 32)) > 0.97).astype(np.float32), 1.5)
    spots /= spots.max()
    x = torch.tensor(ndimage.gaussian_filter(spots, 1.0) + rng.normal(0, 0.05, spots.shape), dtype=torch.float32)
    y = torch.tensor(np.stack([spots, 1 - spots]), dtype=torch.float32)[None]
    model = build_model("transunet", dict(TINY, base=8, hidden=32)).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = (model(x[None, None]) - y).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
