"""DeepLIIF networks: our composite, and official release folders (TorchScript) we serialise ourselves."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.errors import CheckpointError
from napari_virtual_stain.models.checkpoint import load_checkpoint, save_checkpoint
from napari_virtual_stain.models.deepliif_net import (DEFAULT_SEG_WEIGHTS, DeepLIIFNet, segmenter,
                                                      deepliif_arch_args, deepliif_card, output_channel_names)
from napari_virtual_stain.models.deepliif_official import load_release_folder, parse_train_options
from napari_virtual_stain.models.resnet import ResnetBlock, ResnetGenerator




TINY = dict(trans_ngf=4, trans_blocks=1, seg_ngf=4, seg_downs=4, seg_max_mult=2, norm="batch")


def tiny_net(**kw):
    torch.manual_seed(0)
    return DeepLIIFNet(**deepliif_arch_args("small", **dict(TINY, **kw))).eval()


def test_composite_outputs_four_modalities_and_the_weighted_fusion():
    net = tiny_net(seg_weights=[0.5, 0.1, 0.1, 0.2, 0.1])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        y = net(x)
        modalities, segs = net.forward_parts(x)
    assert y.shape == (2, 15, 32, 32)
    assert y.abs().max() <= 1.0
    expected = 0.5 * segs[0] + 0.1 * segs[1] + 0.1 * segs[2] + 0.2 * segs[3] + 0.1 * segs[4]
    torch.testing.assert_close(y[:, 12:], expected)
    torch.testing.assert_close(y[:, 3:6], modalities[1])
    # the segmenters after the first see the inferred modalities, not the IHC
    with torch.no_grad():
        torch.testing.assert_close(segs[2], net.segmenters[2](modalities[1]))


def test_full_configuration_has_the_papers_sizes():
    args = deepliif_arch_args("full")
    assert (args["trans_ngf"], args["trans_blocks"], args["seg_ngf"], args["seg_downs"]) == (64, 9, 64, 9)
    assert args["seg_weights"] == list(DEFAULT_SEG_WEIGHTS) == [0.25, 0.15, 0.25, 0.1, 0.25]
    unet = segmenter(3, ngf=64, downs=9)
    assert unet.size_multiple == 512
    assert len(unet.downs) == 9 and unet.downs[0][0].out_channels == 64 and unet.downs[-1][-1].out_channels == 512
    resnet = ResnetGenerator(3, 3, ngf=64, n_blocks=9, norm="batch")
    assert sum(isinstance(m, ResnetBlock) for m in resnet.modules()) == 9


def test_small_model_checkpoint_round_trip(tmp_path):
    net = tiny_net()
    card = deepliif_card("tiny", deepliif_arch_args("small", **TINY), tile=64, overlap=16)
    assert card.output_channels == output_channel_names() and len(card.output_channels) == 15
    assert card.extra["seg_weights"] == list(DEFAULT_SEG_WEIGHTS)
    save_checkpoint(tmp_path / "tiny.pt", net, card)
    loaded, card2 = load_checkpoint(tmp_path / "tiny.pt")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    assert card2.task == "deepliif" and card2.batch_independent


# ---- official release folders -----------------------------------------------------------------

def _batch_stat(module: torch.nn.Module) -> torch.nn.Module:
    """Drop running statistics, as DeepLIIF does before tracing: every batch normalises itself."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return module.eval()


def make_release(folder, weights=(0.2, 0.3, 0.1, 0.3, 0.1), net_gs="unet_64"):
    """A DeepLIIF release folder with tiny traced networks (ngf 4)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    sample = torch.rand(1, 3, 64, 64)
    for name in ("G1", "G2", "G3", "G4"):
        net = _batch_stat(ResnetGenerator(3, 3, ngf=4, n_blocks=1, norm="batch"))
        torch.jit.trace(net, sample, check_trace=False).save(str(folder / f"{name}.pt"))
    for name in ("G51", "G52", "G53", "G54", "G55"):
        net = _batch_stat(segmenter(3, ngf=4, downs=6, max_mult=2))
        torch.jit.trace(net, sample, check_trace=False).save(str(folder / f"{name}.pt"))
    (folder / "train_opt.txt").write_text(
        "----------------- Options ---------------\n"
        "                    model: DeepLIIF                      \t[default: DeepLIIF]\n"
        f"                   net_gs: {net_gs}                      \n"
        "                      ngf: 4                             \t[default: 64]\n"
        "         modalities_names: ['IHC', 'Hema', 'DAPI', 'Lap2', 'Marker']\n"
        f"              seg_weights: {list(weights)}              \n"
        "----------------- End -------------------\n")
    return folder


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_release(tmp_path_factory.mktemp("deepliif") / "rel")


def copy_of(release, tmp_path):
    return Path(shutil.copytree(release, tmp_path / "rel"))


def test_release_folder_loads_and_fuses_with_the_weights_of_train_opt(release):
    model, card = load_release_folder(release)
    assert model.seg_weights == [0.2, 0.3, 0.1, 0.3, 0.1]
    assert card.batch_independent is False and card.tile == [64, 64] and len(card.output_channels) == 15
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        y = model(x)
        mods = [g(x) for g in model.translators]
        segs = [model.segmenters[0](x)] + [g(m) for g, m in zip(model.segmenters[1:], mods)]
    fused = sum(w * s for w, s in zip([0.2, 0.3, 0.1, 0.3, 0.1], segs))
    torch.testing.assert_close(y[:, 12:], fused)


def test_batch_statistics_networks_give_the_one_tile_at_a_time_result(release):
    model, card = load_release_folder(release)
    torch.manual_seed(2)
    tiles = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        raw_together = model.translators[0](tiles)
        raw_alone = torch.cat([model.translators[0](t[None]) for t in tiles])
        together = model(tiles)
        alone = torch.cat([model(t[None]) for t in tiles])
    assert (raw_together - raw_alone).abs().max() > 1e-3  # the traced nets really use batch statistics
    torch.testing.assert_close(together, alone)
    predictor = Predictor(model, card, device="cpu", batch_size=8, precision="fp32")
    assert predictor.batch_size == 1
    image = np.random.default_rng(0).integers(0, 256, (3, 64, 64)).astype(np.uint8)
    out = predictor.predict(image)
    x = torch.from_numpy(image.astype(np.float32) / 127.5 - 1)[None]
    with torch.no_grad():
        expected = (model(x)[0].numpy() + 1) / 2
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_release_folder_missing_a_network_says_which(release, tmp_path):
    folder = copy_of(release, tmp_path)
    (folder / "G53.pt").unlink()
    with pytest.raises(CheckpointError, match=r"lacks G53\.pt"):
        load_release_folder(folder)


@pytest.mark.parametrize("text", [
    "\x00\x01garbage without any option lines\n",
    "modalities_names: ['IHC', 'Hema', 'DAPI', 'Lap2', 'Marker']\nseg_weights: [0.5, 0.5]\n",
    "modalities_names: ['IHC', 'Hema', 'DAPI', 'Lap2', 'Marker']\nseg_weights: not-a-list\n",
])
def test_unparsable_train_opt_is_a_checkpoint_error(release, tmp_path, text):
    folder = copy_of(release, tmp_path)
    (folder / "train_opt.txt").write_text(text)
    with pytest.raises(CheckpointError, match="does not parse"):
        load_release_folder(folder)


def test_train_opt_values_are_literals_never_code(tmp_path):
    path = tmp_path / "train_opt.txt"
    path.write_text("  name: __import__('os').getcwd()   [default: x]\n  lr: 0.0002\n  seg_gen: True\n")
    options = parse_train_options(path)
    assert options == {"name": "__import__('os').getcwd()", "lr": 0.0002, "seg_gen": True}


def test_bundled_model_is_small_says_what_it_learnt_from_and_works_on_held_out_tissue():
    """On rows it never trained on (the bottom 128 of Lung1) and on the project's own synthetic sample."""
    from napari_virtual_stain.io.deepliif_panels import read_panels
    from napari_virtual_stain.io.sample_data import SEED
    from napari_virtual_stain.io.synthetic_ihc import make_ihc
    from napari_virtual_stain.metrics import pcc
    from napari_virtual_stain.models.registry import BUNDLED_DIR, load_model
    from napari_virtual_stain.tasks.deepliif import run_deepliif

    path = BUNDLED_DIR / "deepliif-small.pt"
    assert path.stat().st_size < 8 * 2**20
    model, card = load_model("deepliif-small")
    assert card.task == "deepliif" and card.architecture == "deepliif-unet"
    assert card.training["data"] == ["Bladder1", "Lung1"] and "bottom 128 rows" in card.training["held_out"]
    held_out = card.scores["held_out"]
    assert any(k.startswith("classical") for k in held_out)  # scored next to the baseline, with one scorer
    predictor = Predictor(model, card, device="cpu", precision="fp32")
    panels = read_panels(Path(__file__).resolve().parents[2] / "shared" / "data" / "deepliif-sample" / "train"
                         / "Lung1.png")
    rows = slice(384, 512)  # held out from training
    result = run_deepliif(predictor, panels.ihc[rows])
    assert pcc(result.images["DAPI"].mean(axis=-1), panels.dapi[rows].mean(axis=-1)) > 0.5
    assert result.cells.n_cells > 5
    synthetic = make_ihc((512, 512), seed=SEED)  # the DeepLIIF sample of the Plugins menu
    found = run_deepliif(predictor, synthetic["rgb"]).cells.classify().total
    assert found > 0.5 * int(synthetic["labels"].max())


def test_segmenter_files_are_found_as_deepliif_finds_them(tmp_path):
    from napari_virtual_stain.models.deepliif_options import release_options

    for name in ("G1", "G2", "G3", "G4", "GS0", "GS1", "GS2", "GS3", "GS4"):
        (tmp_path / f"{name}.pt").write_bytes(b"")
    (tmp_path / "train_opt.txt").write_text(
        "model: DeepLIIFKD\nmodalities_names: ['IHC', 'Hema', 'DAPI', 'Lap2', 'Ki67Marker']\n"
        "seg_weights: 0.2 0.2 0.2 0.2 0.2   [default: None]\nnet_gs: unet_256\n")
    opts = release_options(tmp_path)
    assert opts.model == "DeepLIIFKD" and opts.segmenters == ["GS0", "GS1", "GS2", "GS3", "GS4"]
    assert opts.seg_weights == [0.2] * 5 and opts.seg_size == 256 and not opts.names_forced


def test_a_network_from_another_model_is_a_sentence_when_it_runs(release, tmp_path):
    folder = copy_of(release, tmp_path)
    stranger = _batch_stat(segmenter(4, ngf=4, downs=6, max_mult=2))  # expects 4 channels, gets 3
    torch.jit.trace(stranger, torch.rand(1, 4, 64, 64), check_trace=False).save(str(folder / "G52.pt"))
    model, _ = load_release_folder(folder)
    with pytest.raises(CheckpointError, match="do not fit together"):
        model(torch.rand(1, 3, 64, 64))


def test_checkpoints_from_before_the_u_nets_were_merged_still_load(tmp_path):
    """Older files named the segmenters' levels down/up (a separate U-Net class then)."""
    from napari_virtual_stain.models.checkpoint import FORMAT, load_checkpoint

    net = tiny_net().eval()
    args = deepliif_arch_args("small", **TINY)
    old_names = {k.replace(".downs.", ".down.").replace(".ups.", ".up."): v for k, v in net.state_dict().items()}
    assert any(".down." in k for k in old_names)
    torch.save({"format": FORMAT, "card": deepliif_card("old", args, tile=64, overlap=16).to_dict(),
                "state_dict": old_names}, tmp_path / "old.pt")
    loaded, _ = load_checkpoint(tmp_path / "old.pt")
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))


def test_colour_channels_are_named_one_way_in_deepliif_cards_and_in_training():
    """A DeepLIIF card and a model trained on an RGB layer (dock or command line) name the
    colour channels the same way, so an RGB model fits either door's image."""
    from napari_virtual_stain.models.deepliif_net import deepliif_card, output_channel_names
    from napari_virtual_stain.training.defaults import rgb_channel_names

    card = deepliif_card("x", {"seg_downs": 6})
    assert card.input_channels == rgb_channel_names(3) == ["R", "G", "B"]
    assert output_channel_names()[:3] == ["Hematoxylin R", "Hematoxylin G", "Hematoxylin B"]
    assert rgb_channel_names(4) == ["R", "G", "B", "A"]


def test_the_compact_model_folds_its_batch_norms_at_inference_with_the_same_answer():
    from napari_virtual_stain.models.deepliif_unet import DeepLIIFUNet
    from test_models_checkpoint import _with_real_looking_norms

    torch.manual_seed(0)
    plain = _with_real_looking_norms(DeepLIIFUNet(depth=2, base=8, fold_bn=False)).eval()
    folded = DeepLIIFUNet(depth=2, base=8).eval()  # folding is the default
    folded.load_state_dict(plain.state_dict())  # the same weights and names: old checkpoints load
    calls = []
    for m in folded.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.register_forward_hook(lambda *a: calls.append(1))
    x = torch.rand(1, 3, 48, 64) * 2 - 1
    with torch.no_grad():
        np.testing.assert_allclose(folded(x).numpy(), plain(x).numpy(), atol=1e-4)
    assert calls == []  # no batch norm ran: each was folded into its convolution
    folded.train()
    folded(x)
    assert calls  # training normalises with the batch, as before
