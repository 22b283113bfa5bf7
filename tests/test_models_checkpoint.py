import json

import pytest
import torch

from napari_virtual_stain.errors import CheckpointError
from napari_virtual_stain.models.card import ModelCard
from napari_virtual_stain.models.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from napari_virtual_stain.models.factory import build_model
from napari_virtual_stain.models.registry import list_models, load_model, resolve_model

from conftest import save_tiny_model, tiny_unet_card


def test_round_trip_gives_identical_outputs(tmp_path):
    card = tiny_unet_card()
    model = build_model(card.architecture, card.arch_args).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, card)
    loaded, card2 = load_checkpoint(path)
    x = torch.rand(1, 1, 20, 28)
    assert torch.equal(model(x), loaded(x))
    assert card2 == card
    json.dumps(card2.to_dict())  # the card stays plain data


@pytest.mark.parametrize("arch,args,shape", [
    ("unet", dict(in_channels=2, out_channels=3, spatial_dims=3, depth=2, base=4), (1, 2, 9, 17, 13)),
    ("resnet_generator", dict(in_channels=3, out_channels=4, ngf=4, n_blocks=1), (1, 3, 21, 18)),
    ("unet", dict(in_channels=1, out_channels=1, depth=3, base=4, norm="instance", activation="tanh"), (2, 1, 33, 47)),
    # The speed options: a space-to-depth stem (sizes that are not multiples of stem * 2**depth
    # are padded and cropped back), additive skips, folded batch norm.
    ("unet", dict(in_channels=1, out_channels=3, depth=2, base=4, stem=4, fold_bn=True), (1, 1, 37, 50)),
    ("unet", dict(in_channels=2, out_channels=2, depth=3, base=4, stem=2, skip="add"), (2, 2, 64, 19)),
    ("unet", dict(in_channels=1, out_channels=1, depth=1, base=4, stem=2), (1, 1, 5, 3)),
])
def test_generators_keep_any_spatial_shape(arch, args, shape):
    model = build_model(arch, args).eval()
    y = model(torch.rand(*shape))
    assert y.shape == (shape[0], args["out_channels"], *shape[2:])


def _with_real_looking_norms(model):
    """Random batch-norm statistics and affine weights, as after training (fresh ones are 0/1)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.2)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model


@pytest.mark.parametrize("args,shape", [
    (dict(spatial_dims=2, depth=2, base=8, stem=2, skip="add"), (2, 1, 48, 40)),
    (dict(spatial_dims=2, depth=3, base=8), (1, 1, 40, 56)),
    (dict(spatial_dims=3, depth=2, base=4), (1, 1, 12, 20, 16)),
])
def test_folded_batch_norm_in_eval_equals_the_unfolded_network(args, shape):
    torch.manual_seed(0)
    plain = _with_real_looking_norms(build_model("unet", dict(in_channels=1, out_channels=2, **args)))
    folded = build_model("unet", dict(in_channels=1, out_channels=2, fold_bn=True, **args))
    folded.load_state_dict(plain.state_dict())  # same weights, same names: folding adds none
    calls = []
    for m in folded.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.register_forward_hook(lambda *a: calls.append(1))
    x = torch.rand(*shape)
    with torch.no_grad():
        expected = plain.eval()(x)
        got = folded.eval()(x)
    assert not calls  # the batch norms were folded, not run
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # Training uses the batch norms themselves (batch statistics), like the plain network.
    plain.train(), folded.train()
    torch.testing.assert_close(folded(x), plain(x), atol=1e-6, rtol=0)
    assert calls


def test_folded_eval_network_still_passes_gradients_to_its_weights():
    model = _with_real_looking_norms(build_model("unet", dict(in_channels=1, out_channels=1, depth=2, base=4,
                                                              stem=2, fold_bn=True))).eval()
    model(torch.rand(1, 1, 32, 32)).sum().backward()
    first_conv, first_norm = model.encoders[0][0], model.encoders[0][1]
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    assert first_norm.weight.grad is not None and first_norm.weight.grad.abs().sum() > 0


def test_a_bundled_unet_loads_as_before_and_folds_to_the_same_outputs():
    # deepliif-small's trunk: the original U-Net (no stem, concatenated skips, batch norm)
    # with real trained weights and statistics; it folds them at inference (DeepLIIFUNet's
    # default), which changes outputs by rounding only.
    from napari_virtual_stain.models.unet import UNet

    model, card = load_model("deepliif-small")
    trunk = model.trunk
    assert trunk.stem == 1 and trunk.skip == "cat" and trunk.size_multiple == 16
    assert any(type(m).__name__ == "FoldedConvBlock" for m in trunk.modules())
    args = {k: v for k, v in card.arch_args.items() if k != "in_channels"}
    plain = UNet(card.arch_args.get("in_channels", 3), trunk.head.out_channels, activation="none",
                 fold_bn=False, **args)
    plain.load_state_dict(trunk.state_dict())
    x = torch.rand(1, 3, 96, 80) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(trunk.eval()(x), plain.eval()(x), atol=1e-5, rtol=0)


def test_fast_unet_checkpoint_round_trip(tmp_path):
    card = tiny_unet_card(name="fast")
    card.arch_args.update(norm="batch", stem=4, skip="add", fold_bn=True)
    model = _with_real_looking_norms(build_model(card.architecture, card.arch_args)).eval()
    loaded, card2 = load_checkpoint(save_checkpoint(tmp_path / "fast.pt", model, card))
    assert card2.arch_args == card.arch_args and loaded.size_multiple == 16
    x = torch.rand(1, 1, 45, 30)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.eval()(x))


@pytest.mark.parametrize("args,match", [
    (dict(stem=3), "stem must be 1"),
    (dict(stem=2, spatial_dims=3), "2D only"),
    (dict(skip="sum"), "skip must be"),
])
def test_impossible_speed_options_are_refused_with_a_sentence(args, match):
    with pytest.raises(CheckpointError, match=match):
        build_model("unet", dict(in_channels=1, out_channels=1, depth=2, base=4, **args))


def test_patchgan_2d_and_3d_score_patches():
    for dims, shape in ((2, (2, 3, 64, 64)), (3, (1, 3, 32, 32, 32))):
        critic = build_model("patchgan", dict(in_channels=3, ndf=4, spatial_dims=dims, norm="none"))
        out = critic(torch.rand(*shape))
        assert out.shape[:2] == (shape[0], 1) and out.ndim == len(shape)
        assert all(s > 1 for s in out.shape[2:])  # a map of patch scores, not one number


def test_loading_never_unpickles_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    path = tmp_path / "evil.pt"
    torch.save({"format": "napari-virtual-stain/1", "card": Evil(), "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="run code"):
        read_checkpoint(path)


@pytest.mark.parametrize("content,match", [
    (b"not a torch file at all", "not a readable"),
    (b"", "not a readable"),
])
def test_corrupt_files_are_refused_with_a_sentence(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_truncated_checkpoint_is_refused(tmp_path):
    path, _ = save_tiny_model(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_foreign_checkpoint_is_refused(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save(build_model("unet", dict(in_channels=1, out_channels=1, depth=1, base=2)).state_dict(), path)
    with pytest.raises(CheckpointError, match="not a napari-virtual-stain model"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_card(tmp_path):
    card = tiny_unet_card()
    other = build_model("unet", dict(card.arch_args, base=8))
    path = tmp_path / "mismatch.pt"
    torch.save({"format": "napari-virtual-stain/1", "card": card.to_dict(), "state_dict": other.state_dict()}, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path)


def test_unknown_architecture_and_invalid_card():
    with pytest.raises(CheckpointError, match="does not know"):
        build_model("hypernet", {})
    with pytest.raises(CheckpointError, match="spatial_dims"):
        tiny_unet_card(spatial_dims=4)
    with pytest.raises(CheckpointError, match="lacks"):
        ModelCard.from_dict({"name": "x"})


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path, card = save_tiny_model(tmp_path)
    before = path.read_bytes()

    def broken_save(obj, fh, *a, **k):
        fh.write(b"half a file")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, build_model(card.architecture, card.arch_args), card)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_registry_prefers_user_models_and_lists_problems(user_models):
    save_tiny_model(user_models, name="mine")
    (user_models / "broken.pt").write_bytes(b"junk")
    (user_models / "mine.state.pt").write_bytes(b"trainer state, not a model")
    entries = {e.name: e for e in list_models()}
    assert entries["mine"].source == "user" and entries["mine"].card.name == "mine"
    assert entries["broken"].card is None and "not a readable" in entries["broken"].problem
    assert "mine.state" not in entries
    assert resolve_model("mine") == user_models / "mine.pt"
    model, card = load_model("mine")
    assert card.output_channels == ["nuclei", "membrane"]
    with pytest.raises(CheckpointError, match="no model called 'nope'"):
        resolve_model("nope")


def test_saved_models_are_readable_by_others_like_any_file(tmp_path):
    import os
    old = os.umask(0o022)
    try:
        path, _ = save_tiny_model(tmp_path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


def test_listing_models_keeps_no_weights_in_memory(user_models):
    import gc

    import torch

    from conftest import save_tiny_model
    from napari_virtual_stain.models import registry

    save_tiny_model(user_models, name="listed")
    assert any(e.name == "listed" for e in registry.list_models())
    gc.collect()
    held = [v for v in registry._CARDS.values() if isinstance(v, (tuple, dict, torch.Tensor))]
    assert held == [] and all(isinstance(v, registry.ModelCard) for v in registry._CARDS.values())


def test_a_model_saved_again_is_listed_with_its_new_card_and_the_old_one_is_forgotten(user_models):
    import os

    from conftest import save_tiny_model
    from napari_virtual_stain.models import registry

    path, _ = save_tiny_model(user_models, name="resaved")
    assert registry.model_card("resaved").output_channels == ["nuclei", "membrane"]
    path, _ = save_tiny_model(user_models, name="resaved", outputs=("nuclei",))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later save, even on a coarse clock
    assert registry.model_card("resaved").output_channels == ["nuclei"]
    assert sum(1 for key in registry._CARDS if key[0] == str(path)) == 1
