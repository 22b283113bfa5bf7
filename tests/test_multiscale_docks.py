"""The Virtual Stain, DeepLIIF and MAXIM docks on a pyramid layer, in a real viewer.

For each dock: a zoomed-out current view runs at the level napari displays and never reads
the full resolution (each level records its reads); the outputs are pyramids whose every
level lies exactly on the input's level (napari's own data -> world maps); level 0 of an
output equals the model run on that level of the input directly, and the coarser levels
are its block means. A whole-image run at a chosen level reads that level only.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.models.registry import load_model
from napari_virtual_stain.tasks.output_pyramid import (align_region, as_pyramids, block_mean, level_ratios,
                                                       pyramid_of, usable_ratios)
from napari_virtual_stain.tasks.pyramid import pyramid_stats
from napari_virtual_stain.tasks.region import Region
from napari_virtual_stain.tasks.stain import run_stain
from napari_virtual_stain.widgets import _worker
from napari_virtual_stain.widgets.deepliif_widget import CURRENT_VIEW, WHOLE, DeepLIIFWidget
from napari_virtual_stain.widgets.geometry import displayed_level
from napari_virtual_stain.widgets.maxim_widget import MaximWidget
from napari_virtual_stain.widgets.stain_widget import VirtualStainWidget
from napari_virtual_stain.workflows import deepliif as deepliif_workflow
from napari_virtual_stain.workflows import maxim as maxim_workflow

from conftest import save_tiny_model
from test_deepliif_widget import tiny_deepliif  # noqa: F401  (a fixture)
from test_maxim_core import MARKERS, good_stack
from test_maxim_widget import model_dir  # noqa: F401  (a fixture)
from test_tasks_pyramid import smooth_image


# ---- helpers ------------------------------------------------------------------------------

def recorded(levels, reads: list, chunks=64):
    """Each level as a dask array that appends (its index, the chunk's place) to ``reads``
    whenever a chunk is computed."""
    def level(k, array):
        def note(block, block_info=None):
            if block.size and block_info:  # dask calls it on empty arrays to learn the output type
                reads.append((k, tuple(block_info[0]["chunk-location"])))
            return block
        chunk = (chunks,) * 2 + array.shape[2:] if array.ndim == 3 and array.shape[-1] == 3 else \
            array.shape[:-2] + (chunks, chunks)
        return da.from_array(array, chunks=chunk).map_blocks(note, dtype=array.dtype)
    return [level(k, a) for k, a in enumerate(levels)]


def levels_read(reads) -> set:
    return {k for k, _ in reads}


def mean_pyramid(image, n, axes=(-2, -1)):
    levels = [image]
    for _ in range(n - 1):
        levels.append(block_mean(levels[-1], {a: 2 for a in axes}))
    return levels


def show_level(viewer, layer, level):
    """Zoom (centred on the layer) until napari displays ``level``."""
    viewer.reset_view()
    for _ in range(60):
        shown = displayed_level(viewer, layer)
        if shown == level:
            return
        viewer.camera.zoom *= 0.85 if shown < level else 1 / 0.85
    raise AssertionError(f"could not zoom to level {level}")


def start_of(out, layer, k):
    """The output's first pixel, in pixels of the input's level ``k`` (from its translate)."""
    step = np.asarray(layer.scale)[-2:] * layer.downsample_factors[k][-2:]
    start = (np.asarray(out.translate)[-2:] - np.asarray(layer.translate)[-2:]) / step
    assert np.allclose(start, start.round())
    return start.round().astype(int)


def assert_over_the_input(out, layer, k):
    """Every level j of ``out`` lies on the input's level k + j: pixel i on pixel start / r + i."""
    start = start_of(out, layer, k)
    lead = layer.ndim - 2  # e.g. the channel axis of a (C, Y, X) stack layer
    for j in range(len(out.data)):
        ratio = layer.downsample_factors[k + j][-2:] / layer.downsample_factors[k][-2:]
        assert np.all(start % ratio == 0)
        h, w = out.level_shapes[j][:2]
        for p in [(0, 0), (h - 1, w - 1), (h // 2, w // 3)]:
            mine = out.data_to_world(np.asarray(p) * out.downsample_factors[j][:2])
            theirs = layer.data_to_world([0] * lead + list((start / ratio + p) * layer.downsample_factors[k + j][-2:]))
            np.testing.assert_allclose(mine[-2:], theirs[-2:], atol=1e-6)


def assert_block_means(out, rgb=False):
    axes = (0, 1) if rgb else (-2, -1)
    for j in range(1, len(out.data)):
        r = int(round(out.downsample_factors[j][0]))
        mean = block_mean(np.asarray(out.data[0]), {a: r for a in axes})
        if mean.dtype.kind == "f":  # sums of sums: the same up to float rounding
            np.testing.assert_allclose(np.asarray(out.data[j]), mean, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(np.asarray(out.data[j]), mean)


def wait(widget, qtbot, timeout=60000):
    # Cancel is enabled when a run starts and disabled when it has ended (results shown)
    qtbot.waitUntil(lambda: widget.job is not None and not widget.job.running and not widget.cancel_button.enabled,
                    timeout=timeout)


@pytest.fixture
def quiet(monkeypatch):
    messages = []
    for name in ("show_error", "show_info", "show_warning"):
        monkeypatch.setattr(_worker, name, messages.append)
    return messages


# ---- the pyramid of an output -------------------------------------------------------------

def test_block_means_average_partial_blocks_and_stay_lazy_for_lazy_results():
    image = np.arange(35, dtype=np.float32).reshape(7, 5)
    mean = block_mean(image, {0: 2, 1: 2})
    assert mean.shape == (4, 3)
    assert mean[0, 0] == np.mean(image[:2, :2]) and mean[3, 2] == image[6, 4]  # a 1-pixel corner block
    assert mean[1, 2] == np.mean(image[2:4, 4])
    lazy = block_mean(da.from_array(image, chunks=3), {0: 2, 1: 2})
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), mean)
    rgb = np.full((6, 6, 3), 200, np.uint8)
    rgb[0, 0] = 0
    assert block_mean(rgb, {0: 2, 1: 2}).dtype == np.uint8 and block_mean(rgb, {0: 2, 1: 2})[0, 0, 0] == 150


def test_output_levels_follow_the_input_factors_and_the_box():
    x2 = [[1, 1], [2, 2], [4, 4], [8, 8], [16, 16], [32, 32]]
    assert level_ratios(x2, 2) == ((1, 1), (2, 2), (4, 4), (8, 8))
    assert level_ratios(x2, 0, max_ratio=16)[-1] == (16, 16)  # a view's pyramid stops at 16
    # napari's factors of a 1000 -> 500 -> 250 -> 125 -> 63 pyramid are shape ratios: 15.9 is 16
    assert level_ratios([[1, 1], [2, 2], [4, 4], [8, 8], [1000 / 63] * 2], 1) == ((1, 1), (2, 2), (4, 4), (8, 8))
    assert level_ratios([[1, 1], [3, 3]], 0) == ((1, 1), (3, 3))
    assert level_ratios([[1, 1], [2.5, 2.5]], 0) == ((1, 1),)  # not a whole factor: no coarser level
    box = align_region(Region((5, 9), (30, 41)), (4, 4), (32, 100))
    assert box == Region((4, 8), (32, 44))
    assert usable_ratios(((1, 1), (2, 2), (4, 4)), (4, 6)) == ((1, 1), (2, 2))
    tuples = as_pyramids([(np.ones((8, 8)), {"name": "a"}, "image"), ([np.zeros((2, 2))], {"name": "b"}, "shapes")],
                         ((1, 1), (2, 2)), (0, 0))
    assert tuples[0][1]["multiscale"] and [a.shape for a in tuples[0][0]] == [(8, 8), (4, 4)]
    assert tuples[1][2] == "shapes" and "multiscale" not in tuples[1][1]


def test_a_pyramid_sums_each_pixel_once_and_equals_block_means_of_the_full_level():
    image = np.random.default_rng(0).random((203, 190)).astype(np.float32)
    ratios = ((1, 1), (2, 2), (4, 4), (8, 8))
    levels = pyramid_of(image, ratios, (0, 1))
    assert [level.shape for level in levels] == [(203, 190), (102, 95), (51, 48), (26, 24)]
    for level, ratio in zip(levels[1:], ratios[1:]):
        np.testing.assert_allclose(level, block_mean(image, dict(zip((0, 1), ratio))), rtol=1e-5)
    lazy = pyramid_of(da.from_array(image, chunks=64), ratios, (0, 1))
    assert all(isinstance(level, da.Array) for level in lazy[1:])
    np.testing.assert_allclose(lazy[3].compute(), levels[3], rtol=1e-5)
    thirds = pyramid_of(image, ((1, 1), (2, 2), (3, 3)), (0, 1))  # 3 is not a multiple of 2: from the full level
    np.testing.assert_allclose(thirds[2], block_mean(image, {0: 3, 1: 3}), rtol=1e-6)


# ---- Virtual Stain ------------------------------------------------------------------------

def test_stain_view_of_a_zoomed_out_slide_is_a_pyramid_over_it_without_reading_the_full_resolution(
        make_napari_viewer, user_models, qtbot, quiet):
    _, card = save_tiny_model(user_models, name="tiny-2d")
    levels = mean_pyramid(smooth_image(2048), 5)  # 2048 ... 128; statistics come from 1024 x 1024
    reads = []
    viewer = make_napari_viewer()
    layer = viewer.add_image(recorded(levels, reads), multiscale=True, name="slide", scale=(0.5, 0.5),
                             translate=(3.0, -8.0), contrast_limits=(0, 1000))
    widget = VirtualStainWidget(viewer)
    widget.reset_choices()
    widget.input.value, widget.model.value, widget.scope.value = "slide", "tiny-2d", "current view"
    widget.device.value, widget.precision.value = "cpu", "fp32"
    show_level(viewer, layer, 2)
    reads.clear()
    widget.run()
    wait(widget, qtbot)
    assert levels_read(reads) == {1, 2}, (quiet, widget.info.value)  # 1: the statistics level; never 0
    out = viewer.layers["slide · nuclei"]
    assert out.multiscale and len(out.data) == 3 and out.metadata["pyramid_level"] == 2
    assert_over_the_input(out, layer, 2)
    assert_block_means(out)
    start = start_of(out, layer, 2)
    region = Region(tuple(int(v) for v in start), tuple(int(v) for v in start + out.level_shapes[0]))
    model, _ = load_model("tiny-2d")
    direct = run_stain(Predictor(model, card, device="cpu", precision="fp32"), levels[2], region=region,
                       stats=pyramid_stats(levels, card)).data[0]
    np.testing.assert_allclose(np.asarray(out.data[0]), direct, atol=1e-5)


def test_stain_whole_image_runs_at_the_model_scale_level_and_shows_all_coarser_ones(
        make_napari_viewer, user_models, qtbot, quiet):
    # a model trained at 1 um pixels, a slide of 0.25 um: the whole image is predicted at level 2
    _, card = save_tiny_model(user_models, name="tiny-2d", pixel_size_um=1.0)
    levels = mean_pyramid(smooth_image(2048), 5)
    reads = []
    viewer = make_napari_viewer()
    layer = viewer.add_image(recorded(levels, reads), multiscale=True, name="slide", contrast_limits=(0, 1000),
                             metadata={"pixel_size_um": (0.25, 0.25)})
    widget = VirtualStainWidget(viewer)
    widget.reset_choices()
    widget.input.value, widget.model.value, widget.scope.value = "slide", "tiny-2d", "whole image / stack"
    widget.device.value, widget.precision.value = "cpu", "fp32"
    viewer.reset_view()
    reads.clear()
    widget.run()
    wait(widget, qtbot)
    assert levels_read(reads) == {1, 2}, quiet
    out = viewer.layers["slide · membrane"]
    assert [tuple(s) for s in out.level_shapes] == [(512, 512), (256, 256), (128, 128)]
    assert_over_the_input(out, layer, 2)
    assert_block_means(out)
    model, _ = load_model("tiny-2d")
    direct = run_stain(Predictor(model, card, device="cpu", precision="fp32"), levels[2],
                       stats=pyramid_stats(levels, card)).data[1]
    np.testing.assert_allclose(np.asarray(out.data[0]), direct, atol=1e-5)


# ---- DeepLIIF -----------------------------------------------------------------------------

@pytest.fixture
def ihc_slide(make_napari_viewer, quiet, tiny_deepliif):  # noqa: F811
    rng = np.random.default_rng(3)
    ihc = rng.integers(0, 256, (512, 512, 3)).astype(np.uint8)
    levels = mean_pyramid(ihc, 4, axes=(0, 1))  # 512 ... 64
    reads = []
    viewer = make_napari_viewer()
    layer = viewer.add_image(recorded(levels, reads), multiscale=True, rgb=True, name="ihc", scale=(0.25, 0.25),
                             translate=(10.0, 20.0))
    widget = DeepLIIFWidget(viewer)
    widget.reset_choices()
    return viewer, widget, layer, levels, reads


def _direct_deepliif(widget, data, region):
    return deepliif_workflow.run(widget.settings.copy(), data, region=region, analyse=False)


def test_deepliif_view_runs_at_the_displayed_level_and_shows_pyramids(ihc_slide, qtbot, tiny_deepliif, tmp_path):
    viewer, widget, layer, levels, reads = ihc_slide
    assert widget.input.value == "ihc" and widget.model.value == tiny_deepliif
    widget.scope.value = CURRENT_VIEW
    show_level(viewer, layer, 2)
    reads.clear()
    widget.run()
    wait(widget, qtbot)
    assert levels_read(reads) == {2}, widget.run_state_label.value
    out = viewer.layers["ihc · DAPI"]
    assert out.multiscale and out.rgb and len(out.data) == 2
    assert_over_the_input(out, layer, 2)
    assert_block_means(out, rgb=True)
    assert widget.result.region.start == tuple(int(v) for v in start_of(out, layer, 2))
    direct = _direct_deepliif(widget, levels[2], widget.result.region)
    np.testing.assert_array_equal(np.asarray(out.data[0]), direct.images["DAPI"])
    cells = widget.cell_layer  # the cells lie on the same pixels
    np.testing.assert_allclose(cells.scale, out.scale)
    np.testing.assert_allclose(cells.translate, out.translate)

    # known cells in the view's maps: exported in the full resolution's pixels (level 2: x4)
    from test_deepliif_widget import known_segmentation
    from napari_virtual_stain.tasks.deepliif import cell_rows

    seg = np.zeros(widget.result.region.shape + (3,), np.uint8)
    seg[:64, :64] = known_segmentation()
    widget.result.images["Segmentation"] = seg
    widget.relabel()
    assert widget.result.cells.n_cells == 4
    lines = widget.export(tmp_path / "cells.csv", "csv").read_text().splitlines()
    header = lines[0].split(",")
    exported = [dict(zip(header, line.split(","))) for line in lines[1:]]
    on_level = cell_rows(widget.result.cells, widget.classification, widget.result.region.start)
    assert len(exported) == len(on_level) == 4
    for full, level in zip(exported, on_level):
        assert float(full["centroid_y"]) == pytest.approx(4 * level["centroid_y"], abs=0.02)
        assert float(full["centroid_x"]) == pytest.approx(4 * level["centroid_x"], abs=0.02)
        assert int(full["area_px"]) == 16 * level["area_px"]


def test_deepliif_whole_image_at_a_chosen_level_reads_only_that_level(ihc_slide, qtbot, tiny_deepliif):
    viewer, widget, layer, levels, reads = ihc_slide
    assert widget.level.choices == ("auto", "0: 512 x 512", "1: 256 x 256", "2: 128 x 128", "3: 64 x 64")
    widget.scope.value, widget.level.value = WHOLE, "1: 256 x 256"
    widget.settings.tile = (256,)  # deepliif's rule: 256-pixel tiles are a 20x scan, so level 1 is 10x
    viewer.reset_view()
    reads.clear()
    widget.run()
    wait(widget, qtbot)
    assert levels_read(reads) == {1}
    out = viewer.layers["ihc · Hematoxylin"]
    assert [tuple(s[:2]) for s in out.level_shapes] == [(256, 256), (128, 128), (64, 64)]
    assert_over_the_input(out, layer, 1)
    direct = _direct_deepliif(widget, levels[1], None)
    np.testing.assert_array_equal(np.asarray(out.data[0]), direct.images["Hematoxylin"])
    assert widget.result.downsample == 2.0 and widget.classification.resolution == "10x"
    widget.relabel()  # a new threshold: the cells are rebuilt at the level's magnification too
    assert widget.classification.resolution == "10x"


def test_the_automatic_magnification_follows_the_pyramid_level():
    settings = deepliif_workflow.DeepLIIFSettings()
    assert [settings.resolution_for(512, f) for f in (1, 2, 4, 16)] == ["40x", "20x", "10x", "10x"]
    assert settings.resolution_for(256, 2) == "10x"
    settings.resolution = "40x"  # chosen by the user: as chosen
    assert settings.resolution_for(512, 4) == "40x"


# ---- MAXIM --------------------------------------------------------------------------------

def test_maxim_view_imputes_at_the_displayed_level_reading_only_it(make_napari_viewer, qtbot, quiet, model_dir):
    stack = good_stack(shape=(1024, 1024), seed=0)
    levels = mean_pyramid(stack, 3)  # (5, 1024, 1024), (5, 512, 512), (5, 256, 256)
    reads = []
    viewer = make_napari_viewer()
    layer = viewer.add_image(recorded(levels, reads, chunks=128), multiscale=True, name="panel", scale=(0.5, 0.5),
                             translate=(4.0, 8.0), metadata={"channel_names": MARKERS})
    widget = MaximWidget(viewer)
    widget.reset_choices()
    widget.source.value, widget.folder.value, widget.target.value = "panel", str(model_dir), "Ki67"
    widget.scope.value = "current view"
    show_level(viewer, layer, 1)
    viewer.camera.center = (4.0 + 0.5 * 1000, 8.0 + 0.5 * 990)  # a pan: the bottom-right corner only
    level = displayed_level(viewer, layer)
    assert level == 1
    reads.clear()
    widget.impute()
    wait(widget, qtbot)
    assert levels_read(reads) == {1}, quiet
    assert len({place for _, place in reads}) < 16  # of level 1's 4 x 4 chunks: those of the view and its margin
    out = viewer.layers["panel · Ki67 (imputed)"]
    assert out.multiscale and len(out.data) == 2
    assert np.all(out.level_shapes[0] < levels[1].shape[-2:])  # the view, not the whole level
    assert_over_the_input(out, layer, level)
    assert_block_means(out)
    start = start_of(out, layer, level)
    region = Region(tuple(int(v) for v in start), tuple(int(v) for v in start + out.level_shapes[0]))
    settings = widget.settings.copy()
    direct = maxim_workflow.impute(settings, maxim_workflow.MarkerInput.from_stack(levels[level], MARKERS),
                                   region=region)
    np.testing.assert_allclose(np.asarray(out.data[0]), direct.data, atol=1e-6)


def test_maxim_qc_of_a_whole_pyramid_at_a_chosen_level_finds_the_box_where_it_is(make_napari_viewer, qtbot, quiet,
                                                                                   model_dir):
    from test_maxim_widget import _bad_stack

    coarse = _bad_stack()  # CD3 blank over [16:40, 20:44]
    levels = [np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2), coarse]  # level 1 is exactly the known stack
    reads = []
    viewer = make_napari_viewer()
    layer = viewer.add_image(recorded(levels, reads, chunks=32), multiscale=True, name="panel", scale=(0.5, 0.5),
                             translate=(4.0, 8.0), metadata={"channel_names": MARKERS})
    widget = MaximWidget(viewer)
    widget.reset_choices()
    widget.source.value, widget.folder.value = "panel", str(model_dir)
    widget.scope.value, widget.level.value = WHOLE, "1: 64 x 64"
    reads.clear()
    widget.qc()
    wait(widget, qtbot)
    assert widget.last_report.flagged == ["CD3"], quiet
    assert levels_read(reads) == {1}
    overlay = viewer.layers["panel · QC disagreement CD3"]
    assert overlay.multiscale and tuple(overlay.scale) == (1.0, 1.0)  # level pixels are twice the layer's
    assert_over_the_input(overlay, layer, 1)
    boxes = viewer.layers["panel · QC flagged regions"]
    np.testing.assert_allclose(boxes.scale, (1.0, 1.0))
    # the box's row centres the camera on the blank area: level-1 pixels [16:40, 20:44] are
    # full-resolution [32:80, 40:88], world 4 + 0.5 * y, 8 + 0.5 * x
    row = next(r for r, f in enumerate(widget._rows) if "start" in f)
    widget.go_to_row(row)
    finding = widget._rows[row]
    assert 12 <= finding["start"][0] <= 20 and 36 <= finding["stop"][0] <= 44  # level-1 pixels
    centre = np.add(finding["start"], finding["stop"]) / 2 * 2  # full-resolution pixels
    np.testing.assert_allclose(viewer.camera.center[-2:], (4.0, 8.0) + 0.5 * centre)
