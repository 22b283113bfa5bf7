"""pix2pix U-Net-256, pix2pixHD generator, multi-scale critic and pix2pixHD's objective."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

import napari_virtual_stain.models.pix2pix_unet  # noqa: F401  (registers "pix2pix_unet")
from napari_virtual_stain.models.card import ModelCard
from napari_virtual_stain.models.checkpoint import load_checkpoint, save_checkpoint
from napari_virtual_stain.models.factory import build_model
from napari_virtual_stain.models.pix2pixhd import MultiscaleDiscriminator, Pix2PixHDGenerator
from napari_virtual_stain.training import pix2pixhd_loss as hd
from napari_virtual_stain.training.adversarial import mask_for_critic
from napari_virtual_stain.training.strategies import Pix2PixHDFeatureMatching
from napari_virtual_stain.training.starting import model_for_training
from napari_virtual_stain.training.trainer import TrainConfig, Trainer

TINY_UNET = dict(in_channels=1, out_channels=2, num_downs=5, ngf=4)
TINY_HD = dict(in_channels=1, out_channels=2, ngf=4, n_downsample_global=2, n_blocks_global=1,
               n_local_enhancers=1, n_blocks_local=1)



@pytest.mark.parametrize("arch,args", [
    ("pix2pix_unet", TINY_UNET),
    ("pix2pix_unet", dict(TINY_UNET, norm="instance", activation="sigmoid")),
    ("pix2pixhd", TINY_HD),
    ("pix2pixhd", dict(TINY_HD, n_local_enhancers=0)),
    ("pix2pixhd", dict(TINY_HD, n_local_enhancers=2, norm="batch")),
])
@pytest.mark.parametrize("spatial", [(13, 37), (40, 3)])
def test_generators_keep_any_spatial_shape(arch, args, spatial):
    model = build_model(arch, args).eval()
    with torch.no_grad():
        y = model(torch.rand(2, 1, *spatial))
    assert y.shape == (2, 2, *spatial)
    assert torch.isfinite(y).all()


def test_pix2pix_unet_256_is_pix2pix_unetgenerator():
    # pix2pix prints "[Network G] Total number of parameters : 54.414 M" for unet_256 (RGB -> RGB).
    model = build_model("pix2pix_unet", dict(in_channels=3, out_channels=3))
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 3) == 54.414
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in model.modules()) == 8
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 3  # num_downs - 5 levels
    assert model.size_multiple == 256


def test_pix2pix_unet_dropout_is_noise_in_training_only():
    model = build_model("pix2pix_unet", dict(in_channels=1, out_channels=1, num_downs=6, ngf=2, dropout=0.5))
    x = torch.rand(2, 1, 64, 64)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_pix2pixhd_runs_the_global_generator_on_the_coarsest_scale():
    seen = []
    for n_local in (0, 1, 2):
        model = Pix2PixHDGenerator(**dict(TINY_HD, n_local_enhancers=n_local)).eval()
        hook = model.global_generator.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[-2:]))
        with torch.no_grad():
            model(torch.rand(1, 1, 64, 64))
        hook.remove()
        assert len(model.enhancers) == n_local
    assert seen == [(64, 64), (32, 32), (16, 16)]


def test_multiscale_discriminator_returns_features_and_scores_per_scale():
    critic = build_model("multiscale_patchgan", dict(in_channels=3, ndf=4, n_layers=2, num_D=3))
    outputs = critic(torch.rand(2, 3, 64, 64))
    assert len(outputs) == 3
    assert all(len(scale) == 2 + 2 for scale in outputs)  # n_layers + 1 feature maps, then the scores
    scores = MultiscaleDiscriminator.scores(outputs)
    assert [s.shape[1] for s in scores] == [1, 1, 1]
    # Each scale sees the input halved once more: its first feature map is half the size again.
    assert [scale[0].shape[-1] for scale in outputs] == [32, 16, 8]
    assert scores[0].shape[-1] > scores[1].shape[-1] > scores[2].shape[-1] >= 1
    # The staged forward is the same computation as the plain PatchGAN of that scale.
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(critic(x)[0][-1], critic.discriminators[0](x))


@pytest.mark.parametrize("arch,args,spatial", [
    ("pix2pix_unet", TINY_UNET, (20, 28)),
    ("pix2pixhd", TINY_HD, (20, 28)),
])
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, arch, args, spatial):
    model = build_model(arch, args).eval()
    card = ModelCard(name=f"tiny-{arch}", task="stain", architecture=arch, arch_args=args, spatial_dims=2,
                     input_channels=["brightfield"], output_channels=["nuclei", "membrane"], output_activation="tanh",
                     tile=[32, 32], overlap=[8, 8])
    loaded, card2 = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model, card))
    x = torch.rand(1, 1, *spatial)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.eval()(x))
    assert card2 == card and type(loaded) is type(model)


def _pair(spatial=(32, 32), seed=0):
    rng = np.random.default_rng(seed)
    spots = ndimage.gaussian_filter((rng.random(spatial) > 0.97).astype(np.float32), 1.5)
    spots /= spots.max()
    x = ndimage.gaussian_filter(spots, 1.0) + rng.normal(0, 0.05, spatial)
    target = np.stack([spots, ndimage.gaussian_gradient_magnitude(spots, 1.0)])
    target = 2 * target / target.max(axis=(1, 2), keepdims=True) - 1  # tanh range
    return torch.tensor(x, dtype=torch.float32)[None, None], torch.tensor(target, dtype=torch.float32)[None]


@pytest.mark.parametrize("arch,args", [("pix2pix_unet", dict(TINY_UNET, dropout=0.0)), ("pix2pixhd", TINY_HD)])
def test_each_generator_overfits_a_single_pair(arch, args):
    torch.manual_seed(0)
    x, y = _pair()
    model = build_model(arch, dict(args, ngf=8)).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = (model(x) - y).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def _cells(seed=0, spatial=(64, 64)):
    rng = np.random.default_rng(seed)
    spots = ndimage.gaussian_filter((rng.random(spatial) > 0.985).astype(np.float32), 1.5)
    spots /= spots.max()
    x = (ndimage.gaussian_filter(spots, 1.0) * 50 + 100 + rng.normal(0, 1, spatial)).astype(np.float32)[None]
    return x, np.stack([spots, ndimage.gaussian_gradient_magnitude(spots, 1.0)]).astype(np.float32)


def _hd_trainer(steps, critic=None):
    x, y = _cells()
    model, card = model_for_training(arch="pix2pixhd", n_in=1, n_out=2, arch_args=dict(TINY_HD, ngf=8),
                                     input_names=["brightfield"], output_names=["nuclei", "membrane"])
    config = TrainConfig(patch=(32, 32), batch_size=4, steps=steps, val_every=steps, preview_every=steps,
                         lr=2e-3, val_fraction=0.3, gan="lsgan", critic_width=8)
    return Trainer(model, card, [x], [y], config, critic=critic)


def test_pix2pixhd_generator_trains_with_the_trainer_and_a_patchgan_critic():
    trainer = _hd_trainer(steps=30)
    assert trainer.card.output_activation == "tanh"  # the Trainer maps [-1, 1] to the targets' [0, 1]
    result = trainer.run()
    train = [loss for _, loss in result.history["train"]]
    assert np.mean(train[-5:]) < 0.5 * np.mean(train[:5])
    val = dict(result.history["val"])
    assert val[30] < val[0]


# ---- pix2pixHD's objective -------------------------------------------------------------------------


def _outputs(features, scores):
    """Hand-made critic outputs: per scale, feature maps then a score map."""
    return [[*f, s] for f, s in zip(features, scores)]


def test_multiscale_gan_losses_sum_over_all_scales():
    ones, zeros = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    feats = [[torch.zeros(2, 3, 8, 8)]] * 3
    perfect_real, perfect_fake = _outputs(feats, [ones] * 3), _outputs(feats, [zeros] * 3)
    assert float(hd.multiscale_critic_loss("lsgan", perfect_real, perfect_fake)) == 0.0
    # Fooled at every scale: 0.5 * (0 + 1) per scale, three scales.
    assert float(hd.multiscale_critic_loss("lsgan", perfect_real, perfect_real)) == pytest.approx(1.5)
    assert float(hd.multiscale_generator_loss("lsgan", perfect_fake)) == pytest.approx(3.0)
    # Only the coarsest scale is fooled: only it counts.
    mixed = _outputs(feats, [zeros, zeros, ones])
    assert float(hd.multiscale_critic_loss("lsgan", perfect_real, mixed)) == pytest.approx(0.5)
    assert float(hd.multiscale_generator_loss("lsgan", mixed)) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="WGAN-GP"):
        hd.multiscale_critic_loss("wgan-gp", perfect_real, perfect_fake)


def test_feature_matching_weights_as_pix2pixhd_and_ignores_the_scores():
    # 2 scales, n_layers 1 (two feature maps + scores each); every feature differs by 1.
    real = _outputs([[torch.zeros(1, 2, 8, 8), torch.zeros(1, 4, 4, 4)]] * 2, [torch.zeros(1, 1, 3, 3)] * 2)
    fake = _outputs([[torch.ones(1, 2, 8, 8), -torch.ones(1, 4, 4, 4)]] * 2, [torch.full((1, 1, 3, 3), 9.0)] * 2)
    # lambda_feat / num_D * 4 / (n_layers + 1) = 10 / 2 * 2 = 10 per map, four maps of L1 = 1.
    assert float(hd.feature_matching_loss(fake, real)) == pytest.approx(40.0)
    assert float(hd.feature_matching_loss(fake, real, lambda_feat=1.0)) == pytest.approx(4.0)
    assert float(hd.feature_matching_loss(real, real)) == 0.0


def test_feature_matching_is_zero_for_identical_images_and_grows_with_the_difference():
    torch.manual_seed(0)
    critic = MultiscaleDiscriminator(3, ndf=4, n_layers=2, num_D=2).requires_grad_(False)
    x, y = torch.rand(2, 1, 48, 48), torch.rand(2, 2, 48, 48)
    real = critic(torch.cat([x, y], 1))
    assert float(hd.feature_matching_loss(critic(torch.cat([x, y], 1)), real)) == 0.0
    near = float(hd.feature_matching_loss(critic(torch.cat([x, y + 0.01], 1)), real))
    far = float(hd.feature_matching_loss(critic(torch.cat([x, y + 0.5], 1)), real))
    assert 0 < near < far


def test_predictions_where_the_target_is_missing_change_no_loss():
    torch.manual_seed(0)
    critic = MultiscaleDiscriminator(3, ndf=4, n_layers=2, num_D=2)
    x, y = torch.rand(1, 1, 48, 48), torch.rand(1, 2, 48, 48)
    mask = torch.ones_like(y)
    mask[:, 1] = 0  # channel 2 not imaged
    mask[:, 0, :20] = 0  # and the top of channel 1 missing
    pred = torch.rand_like(y, requires_grad=True)
    real = critic(torch.cat([x, mask_for_critic(y, mask)], 1))
    fake = critic(torch.cat([x, mask_for_critic(pred, mask)], 1))
    loss = hd.feature_matching_loss(fake, real) + hd.multiscale_generator_loss("lsgan", fake)
    (grad,) = torch.autograd.grad(loss, pred)
    assert float(grad[mask == 0].abs().max()) == 0.0 and float(grad[mask > 0].abs().max()) > 0
    # A batch with no target at all: real and fake look the same to the critic.
    nothing = torch.zeros_like(mask)
    fm = hd.feature_matching_loss(critic(torch.cat([x, mask_for_critic(pred, nothing)], 1)),
                                  critic(torch.cat([x, mask_for_critic(y, nothing)], 1)))
    assert float(fm.detach()) == 0.0


@pytest.mark.parametrize("patch", [(16, 16), (24, 40), (32, 32), (64, 64), (256, 256)])
def test_multiscale_critic_is_sized_to_the_patch(patch):
    critic = hd.make_multiscale_critic(1, 2, patch, num_D=3, ndf=4)
    outputs = critic(torch.rand(1, 3, *patch))
    assert all(min(scale[-1].shape[-2:]) >= 1 for scale in outputs)
    assert len(outputs) == (3 if min(patch) >= 24 else 2)


def test_the_full_pix2pixhd_objective_trains_through_the_trainer():
    critic = hd.make_multiscale_critic(1, 2, (32, 32), num_D=2, ndf=8)
    trainer = _hd_trainer(steps=30, critic=critic)
    before = [p.detach().clone() for p in critic.parameters()]
    assert isinstance(trainer.strategy, Pix2PixHDFeatureMatching)  # chosen for the multi-scale critic
    records = []

    class Recording(Pix2PixHDFeatureMatching):
        def step(self, trainer, batch):
            out = super().step(trainer, batch)
            records.append(out)
            return out

    trainer.strategy = Recording()
    result = trainer.run()
    assert len(records) == 30
    assert all(np.isfinite([r["critic_loss"], r["gen_adv_loss"], r["feature_matching"]]).all() for r in records)
    assert any(r["feature_matching"] > 0 for r in records)
    assert any(not torch.equal(b, p) for b, p in zip(before, critic.parameters()))  # the critic learned
    assert all(p.requires_grad for p in critic.parameters())  # and was unfrozen again
    train = [loss for _, loss in result.history["train"]]
    assert np.mean(train[-5:]) < 0.5 * np.mean(train[:5])


def test_trainer_uses_the_multiscale_critic_with_feature_matching_when_asked():
    import numpy as np
    from scipy import ndimage as ndi

    from napari_virtual_stain.errors import InputError
    from napari_virtual_stain.models.card import ModelCard
    from napari_virtual_stain.models.factory import build_model
    from napari_virtual_stain.models.pix2pixhd import MultiscaleDiscriminator
    from napari_virtual_stain.training.trainer import Trainer, TrainConfig

    rng = np.random.default_rng(0)
    x = ndi.gaussian_filter(rng.random((96, 96)), 2).astype(np.float32)[None]
    y = np.clip(x - x.mean(), 0, None) * 4
    args = dict(in_channels=1, out_channels=1, ngf=4, n_downsample_global=2, n_blocks_global=1,
                n_local_enhancers=1, n_blocks_local=1)
    card = ModelCard(name="hd", task="stain", architecture="pix2pixhd", arch_args=args, spatial_dims=2,
                     input_channels=["bf"], output_channels=["nuclei"], output_activation="tanh")
    config = TrainConfig(patch=(32, 32), batch_size=2, steps=4, gan="lsgan", critic="multiscale", critic_width=4,
                         val_every=2, device="cpu")
    trainer = Trainer(build_model("pix2pixhd", args), card, [x], [y], config)
    assert isinstance(trainer.critic, MultiscaleDiscriminator)
    seen = []
    result = trainer.run(on_update=lambda u: seen.append(u))
    assert result.steps == 4 and all(np.isfinite(u.train_loss) for u in seen)
    assert all(u.critic_loss is not None and np.isfinite(u.critic_loss) for u in seen)
    with pytest.raises(InputError, match="multi-scale critic"):
        TrainConfig(patch=(32, 32), gan="wgan-gp", critic="multiscale").check(2)
