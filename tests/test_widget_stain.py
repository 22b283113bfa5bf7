"""The Virtual Stain dock, driven as a user would: dock, choose, click Run, wait."""

import numpy as np
import pytest

from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.models.registry import load_model
from napari_virtual_stain.tasks.region import Region
from napari_virtual_stain.tasks.stain import run_stain
from napari_virtual_stain.widgets import _worker
from napari_virtual_stain.widgets.geometry import displayed_level
from napari_virtual_stain.widgets.stain_widget import CURRENT_VIEW, WHOLE, VirtualStainWidget

from conftest import save_tiny_model


@pytest.fixture
def dock(make_napari_viewer, user_models, monkeypatch, qtbot):
    save_tiny_model(user_models, name="tiny-2d")
    messages = []
    monkeypatch.setattr(_worker, "show_error", messages.append)
    monkeypatch.setattr(_worker, "show_info", messages.append)
    viewer = make_napari_viewer()
    widget = VirtualStainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    # Compared with CPU fp32 references below: the defaults (auto, auto) would pick a GPU and
    # bf16 on a machine that has them, and differ from the CPU by more than rounding.
    widget.device.value, widget.precision.value = "cpu", "fp32"
    widget.messages = messages
    return viewer, widget


def run_and_wait(widget, qtbot, timeout=60000):
    widget.run()  # a refused run (a sentence at once) starts no job
    qtbot.waitUntil(lambda: (widget.job is None or not widget.job.running) and widget.run_button.enabled,
                    timeout=timeout)


def expected(data, region=None):
    model, card = load_model("tiny-2d")
    return run_stain(Predictor(model, card, device="cpu", precision="fp32"), data, region=region).data


def test_whole_image_gives_one_overlay_per_channel_updated_in_place(dock, qtbot):
    viewer, widget = dock
    data = np.random.default_rng(1).random((70, 90)).astype(np.float32)
    layer = viewer.add_image(data.copy(), name="bf", scale=(0.5, 0.5), translate=(10, 20))
    widget.reset_choices()
    widget.input.value, widget.model.value, widget.scope.value = "bf", "tiny-2d", WHOLE
    run_and_wait(widget, qtbot)
    nuclei, membrane = viewer.layers["bf · nuclei"], viewer.layers["bf · membrane"]
    assert nuclei.data.shape == data.shape and nuclei.blending == "additive"
    assert tuple(nuclei.translate) == (10, 20) and tuple(nuclei.scale) == (0.5, 0.5)
    np.testing.assert_allclose(np.stack([nuclei.data, membrane.data]), expected(data), atol=1e-5)
    assert widget.progress.value == widget.progress.max
    n_layers = len(viewer.layers)
    run_and_wait(widget, qtbot)
    assert len(viewer.layers) == n_layers and viewer.layers["bf · nuclei"] is nuclei
    np.testing.assert_array_equal(layer.data, data)  # the input is never modified
    assert "bf · nuclei" not in widget.input.choices  # outputs are not offered as inputs


def test_current_view_lands_where_it_belongs_after_pan_and_zoom(dock, qtbot):
    viewer, widget = dock
    data = np.random.default_rng(2).random((400, 500)).astype(np.float32)
    viewer.add_image(data, name="bf", scale=(2.0, 2.0), translate=(-50, 30))
    widget.reset_choices()
    widget.input.value, widget.model.value, widget.scope.value = "bf", "tiny-2d", CURRENT_VIEW
    viewer.camera.zoom = 4.0  # 4 screen pixels per world unit: 8 per data pixel
    viewer.camera.center = (150.0, 330.0)  # world coords: data (100, 150)
    run_and_wait(widget, qtbot)
    out = viewer.layers["bf · nuclei"]
    h, w = out.data.shape
    assert 0 < h < 400 and 0 < w < 500  # only the visible part was predicted
    start = ((np.asarray(out.translate) - (-50, 30)) / 2.0).round().astype(int)
    # the visible box is centred on the camera centre (data pixel 100, 150)
    assert abs(start[0] + h / 2 - 100) <= 1 and abs(start[1] + w / 2 - 150) <= 1
    region = Region(tuple(start), (start[0] + h, start[1] + w))
    np.testing.assert_allclose(out.data, expected(data, region)[0], atol=1e-5)
    # pan: the same layer now covers the new view
    viewer.camera.center = (500.0, 700.0)
    run_and_wait(widget, qtbot)
    moved = ((np.asarray(out.translate) - (-50, 30)) / 2.0).round().astype(int)
    assert moved[0] > start[0] and moved[1] > start[1]


def test_2d_model_on_a_stack_runs_plane_by_plane_and_view_is_the_current_plane(dock, qtbot):
    viewer, widget = dock
    stack = np.random.default_rng(3).random((4, 40, 50)).astype(np.float32)
    viewer.add_image(stack, name="zs")
    widget.reset_choices()
    widget.input.value, widget.model.value = "zs", "tiny-2d"
    widget.scope.value = WHOLE
    run_and_wait(widget, qtbot)
    assert viewer.layers["zs · nuclei"].data.shape == (4, 40, 50)
    viewer.layers.remove("zs · nuclei")
    viewer.layers.remove("zs · membrane")
    viewer.dims.set_current_step(0, 2)
    widget.scope.value = CURRENT_VIEW
    viewer.reset_view()
    run_and_wait(widget, qtbot)
    out = viewer.layers["zs · nuclei"]
    assert out.data.shape[0] == 1 and out.translate[0] == 2  # exactly the current plane
    # the plane is normalised with the whole stack's statistics, as in a whole-stack run
    np.testing.assert_allclose(out.data, expected(stack, Region((2, 0, 0), (3, 40, 50)))[0], atol=1e-5)


def test_cancel_stops_the_run_and_publishes_nothing(dock, qtbot):
    viewer, widget = dock
    viewer.add_image(np.random.default_rng(4).random((64, 256, 256)).astype(np.float32), name="big")
    widget.reset_choices()
    widget.input.value, widget.model.value, widget.scope.value = "big", "tiny-2d", WHOLE
    widget.relay.progressed.connect(lambda done, total: widget.cancel())
    run_and_wait(widget, qtbot)
    assert "big · nuclei" not in viewer.layers
    assert any("cancelled" in str(m) for m in widget.messages)


def test_rgb_layer_for_a_grey_model_is_a_clear_message_not_a_crash(dock, qtbot):
    viewer, widget = dock
    rgb = np.random.default_rng(5).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    viewer.add_image(rgb.copy(), name="photo", rgb=True)
    widget.reset_choices()
    widget.input.value, widget.model.value, widget.scope.value = "photo", "tiny-2d", WHOLE
    run_and_wait(widget, qtbot)
    assert any("RGB image" in str(m) for m in widget.messages)
    assert [l.name for l in viewer.layers] == ["photo"]
    np.testing.assert_array_equal(viewer.layers["photo"].data, rgb)


def test_3d_model_runs_in_3d_on_the_whole_stack_and_on_a_slab_for_the_view(dock, qtbot, user_models):
    viewer, widget = dock
    save_tiny_model(user_models, name="tiny-3d", spatial_dims=3)
    widget.reset_choices()
    stack = np.random.default_rng(6).random((12, 40, 50)).astype(np.float32)
    viewer.add_image(stack, name="zs")
    widget.reset_choices()
    widget.input.value, widget.model.value, widget.scope.value = "zs", "tiny-3d", WHOLE
    run_and_wait(widget, qtbot)
    whole = viewer.layers["zs · nuclei"].data
    assert whole.shape == (12, 40, 50)
    model, card = load_model("tiny-3d")
    np.testing.assert_allclose(whole, run_stain(Predictor(model, card, device="cpu", precision="fp32"), stack).data[0],
                               atol=1e-5)
    viewer.dims.set_current_step(0, 6)
    viewer.reset_view()
    widget.scope.value = CURRENT_VIEW
    run_and_wait(widget, qtbot)
    slab = viewer.layers["zs · nuclei"]
    assert slab.data.shape[0] == card.tile[0] and slab.translate[0] <= 6 < slab.translate[0] + slab.data.shape[0]


def test_precision_choice_fp32_is_bit_faithful_and_fp16_on_cpu_is_refused(dock, qtbot, monkeypatch):
    from napari_virtual_stain.widgets import stain_widget

    viewer, widget = dock
    data = np.random.default_rng(7).random((48, 64)).astype(np.float32)
    viewer.add_image(data, name="bf")
    widget.reset_choices()
    widget.input.value, widget.model.value, widget.scope.value = "bf", "tiny-2d", WHOLE
    widget.device.value, widget.precision.value = "cpu", "fp32"
    run_and_wait(widget, qtbot)
    model, card = load_model("tiny-2d")
    exact = run_stain(Predictor(model, card, device="cpu", precision="fp32"), data).data
    np.testing.assert_array_equal(viewer.layers["bf · nuclei"].data, exact[0])
    widget.precision.value = "fp16"  # Run is disabled at once, with the reason as its tooltip
    assert not widget.run_button.enabled and "fp16 is not useful on the CPU" in widget.run_button.tooltip
    said = []
    monkeypatch.setattr(stain_widget, "show_warning", said.append)
    widget.run()  # and a run asked for anyway is the same sentence, not a job
    assert "fp16 is not useful on the CPU" in said[-1]
    widget.precision.value = "fp32"
    assert widget.run_button.enabled


def test_panning_predicts_only_the_newly_visible_pixels(dock, qtbot, monkeypatch):
    from napari_virtual_stain.tasks import stain as tasks_stain

    viewer, widget = dock
    data = np.random.default_rng(3).random((300, 400)).astype(np.float32)
    viewer.add_image(data, name="bf")
    widget.reset_choices()
    widget.input.value, widget.model.value, widget.scope.value = "bf", "tiny-2d", CURRENT_VIEW
    viewer.camera.zoom, viewer.camera.center = 4.0, (150.0, 150.0)
    predicted = []
    real = tasks_stain.run_stain

    def counting(predictor, layer_data, **kw):
        predicted.append(int(np.prod(kw["region"].shape)))
        return real(predictor, layer_data, **kw)

    monkeypatch.setattr(tasks_stain, "run_stain", counting)  # what run_stain_reusing calls
    run_and_wait(widget, qtbot)
    first = viewer.layers["bf · nuclei"].data.shape
    viewer.camera.center = (150.0, 170.0)  # 20 pixels to the right
    run_and_wait(widget, qtbot)
    out = viewer.layers["bf · nuclei"]
    assert out.data.shape == first
    assert predicted[-1] < 0.25 * first[0] * first[1]  # only the new strip went through the network
    start = np.asarray(out.translate).round().astype(int)
    region = Region(tuple(start), (start[0] + first[0], start[1] + first[1]))
    # where the reused and the new part meet, values differ from one fresh view as two blended
    # tiles do (this tiny model sees 8 pixels of context): a few thousandths
    np.testing.assert_allclose(out.data, expected(data, region)[0], atol=5e-3)


def test_tta_checkbox_reaches_the_run_and_never_reuses_plain_pixels(dock, qtbot, monkeypatch):
    from napari_virtual_stain.tasks import stain as tasks_stain

    viewer, widget = dock
    data = np.random.default_rng(5).random((200, 240)).astype(np.float32)
    viewer.add_image(data, name="bf")
    widget.reset_choices()
    widget.input.value, widget.model.value, widget.scope.value = "bf", "tiny-2d", CURRENT_VIEW
    viewer.camera.zoom, viewer.camera.center = 3.0, (100.0, 120.0)
    seen = []
    real = tasks_stain.run_stain

    def recording(predictor, layer_data, **kw):
        seen.append((kw["region"].shape, kw.get("tta")))
        return real(predictor, layer_data, **kw)

    monkeypatch.setattr(tasks_stain, "run_stain", recording)
    run_and_wait(widget, qtbot)
    plain = np.array(viewer.layers["bf · nuclei"].data)
    widget.tta.value = True
    assert widget.settings.tta
    run_and_wait(widget, qtbot)  # the same view: the cache of plain pixels must not answer it
    out = viewer.layers["bf · nuclei"]
    assert seen[-1] == (seen[0][0], True)  # the whole view went through the network again, with TTA
    start = np.asarray(out.translate).round().astype(int)
    region = Region(tuple(start), (start[0] + plain.shape[0], start[1] + plain.shape[1]))
    model, card = load_model("tiny-2d")
    with_tta = run_stain(Predictor(model, card, device="cpu", precision="fp32"), data, region=region, tta=True).data[0]
    np.testing.assert_allclose(out.data, with_tta, atol=1e-5)
    assert np.abs(out.data - plain).max() > 1e-3  # the tiny model is not equivariant: TTA changed the view


def napari_draws(viewer, layer) -> int:
    """The level napari itself picks on a draw (the test viewer's window is hidden: draw by hand)."""
    viewer.window._qt_viewer.canvas.on_draw(None)
    return layer.data_level


def test_current_view_of_a_multiscale_layer_follows_the_displayed_level(dock, qtbot):
    viewer, widget = dock
    rng = np.random.default_rng(5)
    full = rng.random((512, 512)).astype(np.float32)
    levels = [full, full[::2, ::2].copy(), full[::4, ::4].copy()]  # 512 / 256 / 128
    layer = viewer.add_image(levels, multiscale=True, name="slide", scale=(0.5, 0.5), translate=(3.0, -8.0))
    widget.reset_choices()
    widget.input.value, widget.model.value, widget.scope.value = "slide", "tiny-2d", CURRENT_VIEW
    viewer.reset_view()
    viewer.camera.zoom /= 8  # far out: napari shows the coarsest level
    drawn_level = napari_draws(viewer, layer)
    assert drawn_level == displayed_level(viewer, layer) == 2  # the dock's level is napari's
    run_and_wait(widget, qtbot)
    out = viewer.layers["slide · nuclei"]
    assert out.multiscale and len(out.data) == 1  # the coarsest level has no coarser ones below it
    assert out.data[0].shape == (128, 128) and out.metadata["pyramid_level"] == 2
    assert tuple(out.scale) == (2.0, 2.0) and tuple(out.translate) == (3.0, -8.0)  # level pixel q sits at q * 4
    model, card = load_model("tiny-2d")
    stats = run_stain(Predictor(model, card, device="cpu", precision="fp32"), full).stats  # whole-image statistics
    reference = run_stain(Predictor(model, card, device="cpu", precision="fp32"), levels[2], stats=stats).data
    np.testing.assert_allclose(out.data[0], reference[0], atol=1e-5)
    assert "level 2" in widget.info.value

    viewer.camera.center, viewer.camera.zoom = (3.0 + 0.5 * 200, -8.0 + 0.5 * 300), 8.0  # in: full resolution
    assert napari_draws(viewer, layer) == displayed_level(viewer, layer) == 0
    run_and_wait(widget, qtbot)
    assert out.metadata["pyramid_level"] == 0 and tuple(out.scale) == (0.5, 0.5)
    start = ((np.asarray(out.translate) - (3.0, -8.0)) / 0.5).round().astype(int)
    h, w = out.data[0].shape
    # the visible box grown to the 4-pixel blocks of the output's levels 1 and 2 (the input's factors)
    assert len(out.data) == 3 and all(v % 4 == 0 for v in (*start, h, w))
    assert h < 512 and w < 512 and abs(start[0] + h / 2 - 200) <= 4 and abs(start[1] + w / 2 - 300) <= 4
    region = Region(tuple(start), (start[0] + h, start[1] + w))
    np.testing.assert_allclose(out.data[0], expected(full, region)[0], atol=1e-5)

    # back out: the coarse view comes from the level's cache, not from the network
    calls = []
    widget.relay.progressed.connect(lambda *args: calls.append(args))
    viewer.reset_view()
    viewer.camera.zoom /= 8
    run_and_wait(widget, qtbot)
    assert out.metadata["pyramid_level"] == 2 and out.data[0].shape == (128, 128)
    np.testing.assert_allclose(out.data[0], reference[0], atol=1e-5)
    assert not calls
    np.testing.assert_array_equal(layer.data[0], full)  # the input is never modified


def test_a_large_current_view_fills_in_block_by_block_middle_first(dock, qtbot, monkeypatch):
    from napari_virtual_stain.widgets import stain_widget

    viewer, widget = dock
    data = np.random.default_rng(5).random((1200, 1400)).astype(np.float32)
    viewer.add_image(data, name="bf")
    widget.reset_choices()
    widget.input.value, widget.model.value, widget.scope.value = "bf", "tiny-2d", CURRENT_VIEW
    viewer.camera.zoom, viewer.camera.center = 0.45, (600.0, 700.0)  # the view spans several 512 blocks
    shown = []
    real = stain_widget.publish

    def recording(viewer_, tuples):
        nuclei = tuples[0][0]
        shown.append(float(np.count_nonzero(nuclei)) / nuclei.size)
        return real(viewer_, tuples)

    monkeypatch.setattr(stain_widget, "publish", recording)
    run_and_wait(widget, qtbot)
    out = viewer.layers["bf · nuclei"]
    assert min(out.data.shape) > stain_widget.PROGRESSIVE_BLOCK  # more than one block
    assert len(shown) >= 3 and shown[0] < 1.0 and shown[-1] == 1.0  # shown while filling in, then whole
    assert shown == sorted(shown)
    start = np.asarray(out.translate).round().astype(int)
    region = Region(tuple(start), tuple(start + np.asarray(out.data.shape)))
    np.testing.assert_allclose(out.data, expected(data, region)[0], atol=5e-3)  # blocks meet like blended tiles
