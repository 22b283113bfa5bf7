"""The DeepLIIF dock: run in a worker, then thresholds and clicks recount without the networks."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_virtual_stain.models.checkpoint import save_checkpoint
from napari_virtual_stain.models.deepliif_net import DeepLIIFNet, deepliif_arch_args, deepliif_card
from napari_virtual_stain.tasks.deepliif_cells import NEGATIVE, POSITIVE, Thresholds
from napari_virtual_stain.widgets.deepliif_widget import MARKER_MANUAL, MARKER_OFF, WHOLE, DeepLIIFWidget

TINY = dict(trans_ngf=4, trans_blocks=1, seg_ngf=4, seg_downs=3, seg_max_mult=2, norm="batch")



@pytest.fixture
def tiny_deepliif(user_models):
    torch.manual_seed(0)
    args = deepliif_arch_args("small", **TINY)
    save_checkpoint(user_models / "tiny-deepliif.pt", DeepLIIFNet(**args).eval(),
                    deepliif_card("tiny-deepliif", args, tile=32, overlap=8))
    return "tiny-deepliif"


def disc(img, cy, cx, r, colour):
    yy, xx = np.ogrid[:img.shape[0], :img.shape[1]]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = colour


def known_segmentation():
    """Two positive cells, one negative cell, one 5-pixel positive speck."""
    seg = np.zeros((64, 64, 3), np.uint8)
    disc(seg, 12, 12, 6, (240, 0, 10))
    disc(seg, 12, 40, 6, (240, 0, 10))
    disc(seg, 40, 20, 6, (10, 0, 240))
    disc(seg, 50, 50, 1, (255, 0, 0))
    return seg


def test_run_then_thresholds_and_clicks_recount(make_napari_viewer, qtbot, tiny_deepliif):
    viewer = make_napari_viewer()
    ihc = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    viewer.add_image(ihc, name="ihc", rgb=True)
    widget = DeepLIIFWidget(viewer)
    widget.reset_choices()
    assert widget.input.value == "ihc" and widget.model.value == tiny_deepliif
    widget.scope.value = WHOLE
    widget.run()
    qtbot.waitUntil(lambda: widget.cell_layer is not None and not widget.job.running, timeout=60000)
    for name in ("Hematoxylin", "DAPI", "Lap2", "Marker"):
        assert viewer.layers[f"ihc · {name}"].data.shape == (64, 64, 3)

    # Replace the random network's segmentation by a known one; the slider relabels without networks.
    widget.result.images["Segmentation"] = known_segmentation()
    widget.size_auto.value = False
    widget.size_slider.value = 0
    widget.marker_mode.value = MARKER_MANUAL
    widget.marker_slider.value = 255
    widget.seg_slider.value = 149
    qtbot.waitUntil(lambda: widget.classification is not None and widget.classification.total == 4, timeout=5000)
    c = widget.classification
    assert (c.positive, c.negative) == (3, 1)
    assert "4 cells: 3 positive, 1 negative" in widget.counts.value
    assert widget.cell_layer.metadata["deepliif"]["percent_pos"] == 75.0

    widget.size_slider.value = 20  # the speck goes
    assert (widget.classification.positive, widget.classification.negative) == (2, 1)
    assert "66.7% positive" in widget.counts.value
    assert list(widget.cell_layer.features["class"]).count("excluded") == 1

    # a click on the negative cell flips it; a shift-click on a positive cell excludes it
    layer = widget.cell_layer
    layer.mode = "pan_zoom"
    negative = layer.data[40, 20]
    widget._on_click(layer, SimpleNamespace(position=(40.0, 20.0), modifiers=()))
    assert widget.classification.classes[negative] == POSITIVE
    assert (widget.classification.positive, widget.classification.negative) == (3, 0)
    widget._on_click(layer, SimpleNamespace(position=(12.0, 12.0), modifiers=("Shift",)))
    assert (widget.classification.positive, widget.classification.negative) == (2, 0)
    widget._on_click(layer, SimpleNamespace(position=(40.0, 20.0), modifiers=()))
    assert widget.classification.classes[negative] == NEGATIVE
    assert widget.cell_layer.colormap.color_dict[int(negative)][2] > 0.9  # drawn blue


def _dock_with_cells(make_napari_viewer, qtbot):
    """The DeepLIIF dock after a whole-image run of the tiny model on a flat 64 x 64 image."""
    viewer = make_napari_viewer()
    viewer.add_image(np.full((64, 64, 3), 180, np.uint8), name="ihc", rgb=True)
    widget = DeepLIIFWidget(viewer)
    widget.reset_choices()
    widget.scope.value = WHOLE
    widget.run()
    qtbot.waitUntil(lambda: widget.cell_layer is not None and not widget.job.running, timeout=60000)
    return widget


def test_the_split_slider_cuts_touching_nuclei_and_zero_turns_it_off(make_napari_viewer, qtbot, tiny_deepliif):
    widget = _dock_with_cells(make_napari_viewer, qtbot)
    assert widget.split_slider.value == 0  # the tiny model's card asks for no split
    seg = np.zeros((64, 64, 3), np.uint8)  # two round nuclei that touch: one region for deepliif
    disc(seg, 32, 22, 9, (240, 0, 10))
    disc(seg, 32, 38, 9, (240, 0, 10))
    widget.result.images["Segmentation"] = seg
    widget.size_auto.value = False
    widget.size_slider.value = 0
    widget.relabel()
    assert widget.classification.total == 1
    widget.split_slider.value = 2
    qtbot.waitUntil(lambda: widget.classification.total == 2, timeout=5000)  # relabelled when the slider rests
    assert widget.settings.split == 2 and widget.cell_layer.metadata["deepliif"]["split_depth"] == 2
    widget.split_slider.value = 0
    qtbot.waitUntil(lambda: widget.classification.total == 1, timeout=5000)
    assert widget.settings.split is None


def test_export_writes_the_current_classes(make_napari_viewer, qtbot, tiny_deepliif, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.full((64, 64, 3), 180, np.uint8), name="ihc", rgb=True)
    widget = DeepLIIFWidget(viewer)
    widget.reset_choices()
    widget.scope.value = WHOLE
    widget.run()
    qtbot.waitUntil(lambda: widget.cell_layer is not None and not widget.job.running, timeout=60000)
    widget.result.images["Segmentation"] = known_segmentation()
    widget.size_auto.value = False
    widget.size_slider.value = 20
    widget.relabel()
    path = widget.export(tmp_path / "cells.csv", "csv")
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 4 and sum("positive" in line.split(",")[1] for line in lines[1:]) >= 2


def test_grey_layer_is_not_offered(make_napari_viewer, tiny_deepliif):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.uint8), name="grey")
    widget = DeepLIIFWidget(viewer)
    widget.reset_choices()
    assert widget.input.value is None


def test_current_view_runs_on_the_visible_box_only(make_napari_viewer, qtbot, tiny_deepliif):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(1).integers(0, 256, (128, 128, 3)).astype(np.uint8), name="ihc", rgb=True)
    viewer.camera.center = (64, 64)
    viewer.camera.zoom = 20  # a few dozen pixels visible
    widget = DeepLIIFWidget(viewer)
    widget.reset_choices()
    widget.run()
    qtbot.waitUntil(lambda: widget.cell_layer is not None and not widget.job.running, timeout=60000)
    region = widget.result.region
    assert all(s < 128 for s in region.shape) and region.start[0] <= 64 < region.stop[0]
    layer = viewer.layers["ihc · DAPI"]
    assert layer.data.shape[:2] == region.shape
    assert tuple(layer.translate) == tuple(float(s) for s in region.start)


def test_cancel_publishes_nothing(make_napari_viewer, qtbot, tiny_deepliif):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(2).integers(0, 256, (256, 256, 3)).astype(np.uint8), name="ihc", rgb=True)
    widget = DeepLIIFWidget(viewer)
    widget.reset_choices()
    widget.scope.value = WHOLE
    widget.run()
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.job.running, timeout=60000)
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=5000)
    assert widget.cell_layer is None and widget.result is None
    assert [layer.name for layer in viewer.layers] == ["ihc"]


# ---- maps someone already has, and folders that are not releases ---------------------------------

MAPS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "deepliif-official" / "postprocess"
needs_maps = pytest.mark.skipif(not MAPS.exists(), reason="deepliif-official fixtures (../shared) not available")


def test_defaults_are_the_models_own_and_deepliifs_for_a_release_folder(make_napari_viewer, tmp_path):
    from test_workflow_deepliif import release_folder

    from napari_virtual_stain.workflows.deepliif import recommended_thresholds

    widget = DeepLIIFWidget(make_napari_viewer())
    widget.model.value = "deepliif-small"  # its card's thresholds, chosen on its training rows
    assert widget.thresholds() == recommended_thresholds("deepliif-small")
    widget.folder.value = str(release_folder(tmp_path / "DeepLIIF_Latest_Model"))
    t = widget.thresholds()
    assert (t.segmentation, t.size, t.size_upper, t.marker) == (120, "auto", None, None)
    assert widget.marker_mode.value == MARKER_OFF


@needs_maps
def test_existing_maps_are_counted_like_deepliif_without_a_network(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    import imageio.v3 as iio

    from napari_virtual_stain.tasks import deepliif as deepliif_task

    monkeypatch.setattr(deepliif_task, "load_deepliif_model", None)  # no network may run
    read = lambda name: iio.imread(MAPS / "maps" / name)[..., :3]
    viewer = make_napari_viewer()
    viewer.add_image(read("22_2_real_A.png"), name="22_2", rgb=True)
    viewer.add_image(read("22_2_fake_B_5.png"), name="22_2_Seg", rgb=True)  # as deepliif test names them
    viewer.add_image(read("22_2_fake_B_4.png"), name="22_2_mod4-Marker", rgb=True)
    widget = DeepLIIFWidget(viewer)
    widget.reset_choices()
    widget.input.value = "22_2"
    assert (widget.seg_layer.value, widget.marker_layer.value) == ("22_2_Seg", "22_2_mod4-Marker")
    widget.count_maps()
    qtbot.waitUntil(lambda: widget.classification is not None and not widget.job.running, timeout=30000)
    # the dock showing another model's recommended values (as when the model list changes, e.g. while
    # the viewer closes) is no reason to relabel: only the user's moves are
    widget._show_thresholds(Thresholds(segmentation=110, split=2))
    assert widget.split_slider.value == 2 and not widget._relabel_timer.isActive()
    widget._show_thresholds(Thresholds(segmentation=120))
    c = widget.classification
    assert (c.total, c.positive, c.thresholds.size) == (114, 8, 61)  # deepliif 1.2.7's answer on these maps
    assert "114 cells: 8 positive" in widget.counts.value
    # deepliif's marker60_upper400 setting, live
    widget.upper_slider.value = 400
    widget.marker_mode.value = MARKER_MANUAL
    widget.marker_slider.value = 60
    assert (widget.classification.total, widget.classification.positive) == (18, 0)
    # a click flips a cell, and the export has it
    label = int(np.argmax(widget.classification.classes == NEGATIVE))
    y, x = np.argwhere(widget.cell_layer.data == label)[0]
    widget.cell_layer.mode = "pan_zoom"
    widget._on_click(widget.cell_layer, SimpleNamespace(position=(float(y), float(x)), modifiers=()))
    assert widget.classification.positive == 1
    lines = widget.export(tmp_path / "cells.csv", "csv").read_text().splitlines()
    assert sum(line.split(",")[1] == "positive" for line in lines[1:]) == 1


def test_an_upper_size_below_the_lower_is_a_notification(make_napari_viewer, messages):
    widget = DeepLIIFWidget(make_napari_viewer())
    widget.size_auto.value = False
    widget.size_slider.value = 50
    widget.upper_slider.value = 20
    widget.viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="ihc", rgb=True)
    widget.reset_choices()
    widget.folder.value = str(Path(__file__).parent)
    widget.run()
    assert widget.job is None and any("upper size threshold" in m for m in messages)


@pytest.mark.parametrize("make, sentence", [
    (lambda f: (f / "notes.txt").write_text("hello"), "is not a DeepLIIF release"),
    (lambda f: (f / "train_opt.txt").write_text("model: DeepLIIFExt\nmodalities_no: 4\n"), "DeepLIIFExt"),
    (lambda f: [(f / "train_opt.txt").write_text("model: DeepLIIF\n")] +
     [(f / f"G{n}.pt").write_bytes(b"junk") for n in (1, 2, 3, 4, 51, 52, 53, 54, 55)], "not a readable TorchScript"),
])
def test_bad_release_folders_are_notifications(make_napari_viewer, qtbot, tmp_path, messages, make, sentence):
    folder = tmp_path / "model"
    folder.mkdir()
    make(folder)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="ihc", rgb=True)
    widget = DeepLIIFWidget(viewer)
    widget.reset_choices()
    widget.scope.value = WHOLE
    widget.folder.value = str(folder)
    widget.run()
    if widget.job is not None:
        qtbot.waitUntil(lambda: not widget.job.running and widget.run_button.enabled, timeout=30000)
    assert any(sentence in m for m in messages), messages
    assert [layer.name for layer in viewer.layers] == ["ihc"]


def test_an_on_disk_result_is_removed_when_a_new_one_replaces_it(make_napari_viewer, qtbot, tiny_deepliif,
                                                                  monkeypatch):
    from napari_virtual_stain.tasks import deepliif as deepliif_task

    monkeypatch.setattr(deepliif_task, "needs_store", lambda shape: True)  # as for a 10000 x 10000 region
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8), name="ihc", rgb=True)
    widget = DeepLIIFWidget(viewer)
    widget.reset_choices()
    widget.scope.value, widget.precision.value = WHOLE, "fp32"
    stores = []
    for _ in range(2):
        widget.run()
        qtbot.waitUntil(lambda: widget.result is not None and widget.result.store not in stores[-1:]
                        and not widget.job.running, timeout=60000)
        stores.append(widget.result.store)
        assert Path(stores[-1]).is_dir()
    assert not Path(stores[0]).exists()  # the first run's store went with its result
    assert viewer.layers["ihc · DAPI"].data.shape == (64, 64, 3)  # the layers show the second


def test_a_release_folder_is_said_to_be_a_program_when_chosen(make_napari_viewer, tmp_path, monkeypatch):
    from test_deepliif_model import make_release

    from napari_virtual_stain.widgets import deepliif_widget

    said = []
    monkeypatch.setattr(deepliif_widget, "show_warning", said.append)
    make_release(tmp_path / "release")
    widget = DeepLIIFWidget(make_napari_viewer())
    widget.folder.value = str(tmp_path / "release")
    assert said and "TorchScript is a program" in said[-1]  # before anything is loaded or run


# ---- the dock as a view of its settings ---------------------------------------------------------

def test_the_dock_says_which_model_is_active_and_what_it_learnt_from(make_napari_viewer, tmp_path):
    from test_workflow_deepliif import release_folder

    widget = DeepLIIFWidget(make_napari_viewer())
    widget.model.value = "deepliif-small"
    info = widget.model_info.value
    assert "deepliif-small: trained on Bladder1, Lung1 and 24 synthetic IHC fields" in info
    assert "Held-out real rows: Dice" in info and "classical colour deconvolution" in info
    widget.folder.value = str(release_folder(tmp_path / "DeepLIIF_Latest_Model"))
    assert widget.settings.model == str(tmp_path / "DeepLIIF_Latest_Model")
    assert widget.model_info.value.startswith("Official DeepLIIF release 'DeepLIIF_Latest_Model'")


def test_run_is_disabled_with_the_reason_and_the_run_state_is_shown(make_napari_viewer, qtbot, tiny_deepliif):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).integers(0, 256, (48, 48, 3)).astype(np.uint8), name="ihc", rgb=True)
    widget = DeepLIIFWidget(viewer)
    widget.reset_choices()
    assert widget.run_button.enabled and widget.run_state_label.value == "state: ready"
    widget.size_auto.value = False
    widget.size_slider.value, widget.upper_slider.value = 50, 20
    assert not widget.run_button.enabled and "upper size threshold" in widget.run_button.tooltip
    widget.upper_slider.value = 0
    assert widget.run_button.enabled and widget.settings.thresholds().size == 50
    widget.scope.value = WHOLE
    widget.run()
    qtbot.waitUntil(lambda: widget.cell_layer is not None and not widget.job.running, timeout=60000)
    # the worker stops running before its finished signal reaches the label: wait for the label itself
    qtbot.waitUntil(lambda: widget.run_state_label.value == "state: done", timeout=10000)
    again = DeepLIIFWidget(viewer)  # a new launch remembers what ran
    assert (again.size_auto.value, again.size_slider.value, again.model.value) == (False, 50, tiny_deepliif)


def test_positive_cells_from_the_dab_vote_at_the_next_run(make_napari_viewer, qtbot, tiny_deepliif):
    from skimage import data as skdata

    from napari_virtual_stain.tasks.deepliif_dab_vote import redraw_whole

    viewer = make_napari_viewer()
    ihc = np.ascontiguousarray(skdata.immunohistochemistry()[:64, :64])
    viewer.add_image(ihc, name="ihc", rgb=True)
    widget = DeepLIIFWidget(viewer)
    widget.reset_choices()
    widget.scope.value = WHOLE
    assert widget.positive_from.value == "model" == widget.settings.positive_from
    widget.run()
    qtbot.waitUntil(lambda: widget.cell_layer is not None and not widget.job.running, timeout=60000)
    network = widget.result.images["Segmentation"].copy()
    widget.positive_from.value = "dab"
    assert widget.settings.positive_from == "dab"
    widget.run()
    qtbot.waitUntil(lambda: not widget.job.running and widget.result is not None
                    and widget.result.images["Segmentation"] is not None
                    and not np.array_equal(widget.result.images["Segmentation"], network), timeout=60000)
    assert np.array_equal(widget.result.images["Segmentation"], redraw_whole(ihc, network))


def test_the_grow_slider_enlarges_the_cells_and_zero_turns_it_off(make_napari_viewer, qtbot, tiny_deepliif):
    widget = _dock_with_cells(make_napari_viewer, qtbot)
    assert widget.grow_slider.value == 0  # the tiny model's card asks for no growth
    seg = np.zeros((64, 64, 3), np.uint8)  # two nuclei 6 px apart
    disc(seg, 32, 16, 8, (240, 0, 10))
    disc(seg, 32, 46, 8, (240, 0, 10))
    widget.result.images["Segmentation"] = seg
    widget.size_auto.value = False
    widget.size_slider.value = 0
    widget.relabel()
    plain = int((widget.cell_layer.data > 0).sum())
    widget.grow_slider.value = 3
    qtbot.waitUntil(lambda: int((widget.cell_layer.data > 0).sum()) > plain, timeout=5000)
    assert widget.classification.total == 2  # grown, never merged
    assert widget.settings.grow == 3 and widget.cell_layer.metadata["deepliif"]["grow_px"] == 3
    widget.grow_slider.value = 0
    qtbot.waitUntil(lambda: int((widget.cell_layer.data > 0).sum()) == plain, timeout=5000)
    assert widget.settings.grow is None
