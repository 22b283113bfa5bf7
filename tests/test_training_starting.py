"""Starting points: fresh architectures and fine-tuning checkpoints (channels, heads)."""

import pytest
import torch

from napari_virtual_stain.errors import InputError
from napari_virtual_stain.models.checkpoint import load_checkpoint, save_checkpoint
from napari_virtual_stain.models.unet import UNet
from napari_virtual_stain.training.starting import model_for_training

from conftest import save_tiny_model


def test_fresh_unet_defaults_in_2d_and_3d():
    model, card = model_for_training(arch="unet", n_in=2, n_out=3, spatial_dims=3,
                                     input_names=["bf", "phase"], output_names=["a", "b", "c"])
    assert isinstance(model, UNet) and model.depth == 3
    assert card.arch_args["base"] == 16 and card.spatial_dims == 3 and card.tile == [40, 320, 320]
    assert card.input_channels == ["bf", "phase"] and card.output_channels == ["a", "b", "c"]
    out = model(torch.rand(1, 2, 8, 16, 16))
    assert out.shape == (1, 3, 8, 16, 16)
    _, card2 = model_for_training(arch="unet", n_in=1, n_out=1, spatial_dims=2, arch_args={"base": 8})
    assert card2.arch_args["depth"] == 4 and card2.arch_args["base"] == 8 and card2.output_activation == "sigmoid"


def test_resnet_generator_is_2d_only_and_uses_tanh():
    _, card = model_for_training(arch="resnet_generator", n_in=3, n_out=1, spatial_dims=2,
                                 arch_args={"ngf": 4, "n_blocks": 1})
    assert card.output_activation == "tanh"
    with pytest.raises(InputError, match="2D only"):
        model_for_training(arch="resnet_generator", n_in=1, n_out=1, spatial_dims=3)
    with pytest.raises(InputError, match="no architecture called 'vit'"):
        model_for_training(arch="vit", n_in=1, n_out=1)
    with pytest.raises(InputError, match="either a model to fine-tune or an architecture"):
        model_for_training(from_model="x", arch="unet")


def test_fine_tune_by_name_keeps_weights_and_records_the_origin(user_models):
    save_tiny_model(user_models, name="tiny-2d")
    original, _ = load_checkpoint(user_models / "tiny-2d.pt")
    model, card = model_for_training(from_model="tiny-2d", n_in=1, n_out=2, spatial_dims=2)
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in model.state_dict().items())
    assert card.output_channels == ["nuclei", "membrane"] and card.name == "tiny-2d-finetuned"
    assert "fine-tuned from 'tiny-2d'" in card.training["started_from"]


def test_fine_tune_refuses_other_input_channels_or_dimensions(user_models):
    path, _ = save_tiny_model(user_models, name="tiny-2d")
    with pytest.raises(InputError, match="expects 1 input channel\\(s\\) \\(brightfield\\) but 2 were chosen \\(bf, dapi\\)"):
        model_for_training(from_model=str(path), n_in=2, n_out=2, spatial_dims=2, input_names=["bf", "dapi"])
    with pytest.raises(InputError, match="is 2D but the chosen data is 3D"):
        model_for_training(from_model=str(path), n_in=1, n_out=2, spatial_dims=3)


def test_fewer_outputs_replace_the_head_and_keep_the_matching_row(user_models, tmp_path):
    path, _ = save_tiny_model(user_models, name="tiny-2d")
    original, _ = load_checkpoint(path)
    model, card = model_for_training(from_model=str(path), n_in=1, n_out=2, spatial_dims=2,
                                     output_names=["membrane", "actin"])
    assert model.head.out_channels == 2 and card.arch_args["out_channels"] == 2
    assert torch.equal(model.head.weight[0], original.head.weight[1])  # membrane kept
    assert not torch.equal(model.head.weight[1], original.head.weight[0])
    assert "head replaced" in card.training["started_from"] and "kept the weights for membrane" in card.training["started_from"]
    # The card describes the new network exactly: it saves and loads.
    save_checkpoint(tmp_path / "new.pt", model, card)
    loaded, loaded_card = load_checkpoint(tmp_path / "new.pt")
    assert loaded_card.output_channels == ["membrane", "actin"]
    assert loaded(torch.rand(1, 1, 16, 16)).shape == (1, 2, 16, 16)


def test_renamed_outputs_of_the_same_count_keep_the_head(user_models):
    path, _ = save_tiny_model(user_models, name="tiny-2d")
    original, _ = load_checkpoint(path)
    model, card = model_for_training(from_model=str(path), n_in=1, n_out=2, spatial_dims=2,
                                     output_names=["dapi", "wga"])
    assert torch.equal(model.head.weight, original.head.weight)
    assert card.output_channels == ["dapi", "wga"] and "retrained as dapi, wga" in card.training["started_from"]


def test_output_head_replacement_works_for_a_transposed_convolution_head():
    import torch

    from napari_virtual_stain.models.factory import build_model
    from napari_virtual_stain.training.starting import replace_output_head

    model = build_model("pix2pix_unet", dict(in_channels=1, out_channels=3, num_downs=3, ngf=4)).eval()
    x = torch.rand(1, 1, 16, 16)
    before = model(x)
    replace_output_head(model, [2, None, 0, 1])
    after = model(x)
    assert after.shape == (1, 4, 16, 16)
    torch.testing.assert_close(after[:, 0], before[:, 2])  # kept rows predict what they did
    torch.testing.assert_close(after[:, 2], before[:, 0])


def test_output_head_replacement_moves_a_stem_unets_pixel_rows_together(tmp_path):
    # With a 4x4 space-to-depth stem each output channel is 16 head rows (one per pixel of a
    # block, pixel_shuffle order): a kept channel keeps all 16, so it predicts what it did.
    from napari_virtual_stain.models.card import ModelCard
    from napari_virtual_stain.training.starting import replace_output_head

    args = dict(in_channels=1, out_channels=2, depth=2, base=4, stem=4, fold_bn=True)
    model = UNet(**args).eval()
    x = torch.rand(1, 1, 40, 36)
    with torch.no_grad():
        before = model(x)
        replace_output_head(model, [1, None, 0])
        after = model(x)
    assert model.head.out_channels == 3 * 16 and after.shape == (1, 3, 40, 36)
    torch.testing.assert_close(after[:, 0], before[:, 1])
    torch.testing.assert_close(after[:, 2], before[:, 0])
    # Fine-tuning a saved stem model onto fewer outputs gives a network its card describes.
    card = ModelCard(name="fast", task="stain", architecture="unet", arch_args=args, spatial_dims=2,
                     input_channels=["bf"], output_channels=["nuclei", "membrane"], tile=[64, 64], overlap=[16, 16])
    save_checkpoint(tmp_path / "fast.pt", UNet(**args), card)
    tuned, tuned_card = model_for_training(from_model=str(tmp_path / "fast.pt"), n_in=1, n_out=1, spatial_dims=2,
                                           output_names=["membrane"])
    save_checkpoint(tmp_path / "tuned.pt", tuned, tuned_card)
    loaded, _ = load_checkpoint(tmp_path / "tuned.pt")
    assert loaded(torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32)
