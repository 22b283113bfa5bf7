"""The current view of a multiscale layer: predicted at the right level, only its visible box,
placed over the input exactly, and reused per level (a headless viewer model: no canvas)."""

import numpy as np
import pytest
from napari.components import ViewerModel

import napari_virtual_stain.tasks.stain as stain_task
from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.engine.predictor_cache import PredictorCache
from napari_virtual_stain.models.registry import load_model
from napari_virtual_stain.tasks.pyramid import pyramid_stats
from napari_virtual_stain.tasks.stain import run_stain
from napari_virtual_stain.tasks.view_cache import LevelViewCaches
from napari_virtual_stain.widgets.geometry import displayed_level, level_view, placement
from napari_virtual_stain.workflows.stain import StainSettings, run_level

from conftest import save_tiny_model
from test_tasks_pyramid import block_mean, raising_level, smooth_image


@pytest.fixture
def tiny(user_models):
    _, card = save_tiny_model(user_models, name="tiny-2d")
    return card


def settings():
    return StainSettings(model="tiny-2d", device="cpu", precision="fp32")


def slide_viewer(levels, **layer_kwargs):
    """A headless viewer (canvas taken as 600 x 800) showing a multiscale layer of ``levels``."""
    viewer = ViewerModel()
    layer = viewer.add_image(levels, multiscale=True, contrast_limits=(0, 1000), name="slide", **layer_kwargs)
    return viewer, layer


def slide_levels():
    """A 4096^2 'slide' whose two finest levels raise when read; levels 2-4 are real."""
    full = smooth_image(1024)  # what levels 2-4 are downsampled from (level 2's pixels)
    return [raising_level((4096, 4096)), raising_level((2048, 2048)), full, block_mean(full, 2), block_mean(full, 4)]


def expected(levels, level, region, card):
    model, _ = load_model("tiny-2d")
    stats = pyramid_stats(levels, card)
    return run_stain(Predictor(model, card, device="cpu", precision="fp32"), levels[level], region=region,
                     stats=stats).data


def test_a_zoomed_out_view_is_predicted_at_the_displayed_level_without_reading_the_full_resolution(tiny):
    levels = slide_levels()
    viewer, layer = slide_viewer(levels, scale=(0.5, 0.5), translate=(100.0, -40.0))
    viewer.reset_view()
    viewer.camera.zoom /= 4  # the slide fills a quarter of the canvas: its coarsest level is on screen
    view = level_view(viewer, layer, tiny)
    assert view.level == displayed_level(viewer, layer) == 4 and view.downsample == (16.0, 16.0)
    assert view.region.shape == (256, 256)  # the whole coarsest level, clipped to the image
    result = run_level(settings(), levels, view.level, region=view.region, cache=PredictorCache(),
                       load=load_model)
    np.testing.assert_allclose(result.data, expected(levels, 4, view.region, tiny), atol=1e-5)


def test_a_zoomed_in_view_predicts_only_its_box_at_the_model_pixel_size(user_models):
    # The model was trained at 1 um pixels, the slide's full resolution has 0.25 um: zoomed in
    # to the full resolution, the view is still predicted at level 2 (1 um), reading neither finer level.
    _, card = save_tiny_model(user_models, name="tiny-2d", pixel_size_um=1.0)
    levels = slide_levels()
    viewer, layer = slide_viewer(levels, metadata={"pixel_size_um": (0.25, 0.25)})
    viewer.camera.center, viewer.camera.zoom = (2000.0, 1000.0), 2.0  # 300 x 400 full-resolution pixels
    assert displayed_level(viewer, layer) == 0
    view = level_view(viewer, layer, card)
    assert view.level == 2 and view.note is None
    # the box of level 2 (4x coarser) around data (2000, 1000) -> level-2 pixel (500, 250): about
    # 76 x 101 pixels, grown to the 4-pixel blocks of levels 3 and 4 (the output's own pyramid)
    assert view.ratios == ((1, 1), (2, 2), (4, 4))
    assert all(v % 4 == 0 for v in view.region.start + view.region.stop)
    assert 76 <= view.region.shape[0] <= 77 + 6 and 100 <= view.region.shape[1] <= 102 + 6
    centre = np.add(view.region.start, view.region.stop) / 2
    np.testing.assert_allclose(centre, (500, 250), atol=4)
    result = run_level(settings(), levels, view.level, region=view.region, cache=PredictorCache(), load=load_model)
    np.testing.assert_allclose(result.data, expected(levels, 2, view.region, card), atol=1e-5)


def test_a_level_output_overlays_the_input():
    levels = [np.zeros((256, 384), np.float32), np.zeros((128, 192), np.float32), np.zeros((64, 96), np.float32)]
    viewer, layer = slide_viewer(levels, scale=(0.5, 2.0), translate=(10.0, -7.0))
    start, factors = (5, 11), tuple(layer.downsample_factors[2])
    place = placement(layer, (0, 1), start, factors)
    assert place["scale"] == (0.5 * 4, 2.0 * 4)
    out = viewer.add_image(np.zeros((20, 30), np.float32), name="out", **place)
    for pixel in [(0, 0), (3, 7), (19, 29)]:
        # napari draws level-2 pixel q centred on full-resolution data coordinate q * 4
        level_pixel = np.add(pixel, start)
        np.testing.assert_allclose(out.data_to_world(pixel), layer.data_to_world(level_pixel * np.asarray(factors)),
                                   atol=1e-9)


def test_panning_and_zooming_back_reuses_each_level(tiny, monkeypatch):
    full = smooth_image(512)
    levels = [full, block_mean(full, 2), block_mean(full, 4)]
    viewer, layer = slide_viewer(levels)
    predicted = []
    original = stain_task.run_stain
    monkeypatch.setattr(stain_task, "run_stain",
                        lambda *a, **kw: predicted.append(kw["region"]) or original(*a, **kw))
    caches, stats, cache = LevelViewCaches(tiny.n_out), None, PredictorCache()

    def look(centre, zoom):
        nonlocal stats
        viewer.camera.center, viewer.camera.zoom = centre, zoom
        view = level_view(viewer, layer, tiny)
        spatial = levels[view.level].shape
        result = run_level(settings(), levels, view.level, region=view.region, stats=stats,
                           view_cache=caches.for_level(view.level, spatial), cache=cache, load=load_model)
        stats = result.stats
        return view, result

    out_view, out_first = look((256.0, 256.0), 0.2)  # zoomed out: level 2
    in_view, in_first = look((100.0, 120.0), 4.0)  # zoomed in: level 0
    assert (out_view.level, in_view.level) == (2, 0) and len(predicted) == 2
    _, out_again = look((256.0, 256.0), 0.2)  # back out: all known at level 2
    _, in_again = look((100.0, 120.0), 4.0)  # and in again: all known at level 0
    assert len(predicted) == 2
    np.testing.assert_array_equal(out_again.data, out_first.data)
    np.testing.assert_array_equal(in_again.data, in_first.data)
    pan_view, _ = look((100.0, 150.0), 4.0)  # a pan at level 0: only the new columns
    assert pan_view.level == 0 and len(predicted) == 3
    assert predicted[-1].shape[0] == pan_view.region.shape[0] and predicted[-1].shape[1] <= 31
