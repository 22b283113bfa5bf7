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
])
def test_generators_keep_any_spatial_shape(arch, args, shape):
    model = build_model(arch, args).eval()
    y = model(torch.rand(*shape))
    assert y.shape == (shape[0], args["out_channels"], *shape[2:])


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
