"""The one viewer-geometry module: what the user sees, in any dims order and under any layer
transform, and results placed back exactly on the pixels they came from."""

import numpy as np
import pytest

from napari_virtual_stain.errors import InputError
from napari_virtual_stain.tasks.region import Region
from napari_virtual_stain.widgets.geometry import displayed_layer_axes, placement, spatial_axes, visible_region


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def test_a_transposed_view_gives_the_box_of_the_displayed_axes(viewer):
    stack = np.zeros((30, 40, 50), np.float32)
    layer = viewer.add_image(stack, name="zs")
    viewer.dims.order = (1, 0, 2)  # the screen shows Z (rows) against X (columns); Y is the slider
    viewer.dims.set_current_step(1, 12)
    viewer.reset_view()
    assert displayed_layer_axes(viewer, layer) == (0, 2)
    region = visible_region(viewer, layer, (0, 1, 2), stack.shape)
    assert region.start[1] == 12 and region.stop[1] == 13  # one Y plane: the current one
    assert region.shape[0] == 30 and region.shape[2] == 50  # all of Z and X are on screen


def test_the_last_two_axes_are_not_assumed_displayed(viewer):
    layer = viewer.add_image(np.zeros((30, 40, 50), np.float32), name="zs")
    viewer.dims.order = (2, 0, 1)  # Z against Y
    assert displayed_layer_axes(viewer, layer) == (0, 1)


def test_a_rotated_layer_puts_its_result_back_rotated(viewer):
    data = np.zeros((60, 80), np.float32)
    layer = viewer.add_image(data, name="bf", scale=(0.5, 0.5), translate=(10, 20), rotate=30)
    place = placement(layer, (0, 1), (6, 8))
    out = viewer.add_image(np.zeros((10, 10), np.float32), name="out", **place)
    for pixel in [(0, 0), (3, 7), (9, 9)]:  # the output's pixel p is the input's pixel p + start
        np.testing.assert_allclose(out.data_to_world(pixel), layer.data_to_world(np.add(pixel, (6, 8))), atol=1e-9)
    assert "affine" in place


def test_a_scaled_translated_layer_keeps_plain_scale_and_translate(viewer):
    layer = viewer.add_image(np.zeros((3, 60, 80), np.float32), name="cyx", scale=(1, 2, 0.5), translate=(0, -5, 7))
    axes = spatial_axes(layer, 2, channel_axis=0)
    assert axes == (1, 2)
    assert placement(layer, axes, (10, 4)) == {"scale": (2.0, 0.5), "translate": (15.0, 9.0)}


def test_the_visible_region_of_a_rotated_layer_covers_the_screen(viewer):
    data = np.zeros((200, 200), np.float32)
    layer = viewer.add_image(data, name="bf", rotate=45)
    viewer.camera.center = tuple(layer.data_to_world((100, 100)))
    viewer.camera.zoom = 8.0
    region = visible_region(viewer, layer, (0, 1), data.shape)
    assert region.start[0] < 100 < region.stop[0] and region.start[1] < 100 < region.stop[1]
    assert region != Region((0, 0), (200, 200))  # zoomed in: only a part


def test_grid_mode_is_a_sentence(viewer):
    layer = viewer.add_image(np.zeros((20, 20), np.float32), name="a")
    viewer.add_image(np.zeros((20, 20), np.float32), name="b")
    viewer.grid.enabled = True
    with pytest.raises(InputError, match="grid mode"):
        visible_region(viewer, layer, (0, 1), (20, 20))
