import numpy as np
import pytest

from napari_virtual_stain.errors import InputError
from napari_virtual_stain.tasks.arrays import layout_for, to_channels_first
from napari_virtual_stain.tasks.layers import output_layer_name, overlay_tuples
from napari_virtual_stain.tasks.region import Region, view_region

from conftest import tiny_unet_card


def test_grey_plane_and_stack_gain_a_channel_axis():
    card = tiny_unet_card()
    plane = np.zeros((10, 12), np.uint8)
    stack = np.zeros((3, 10, 12), np.uint16)
    for data, spatial in ((plane, 2), (stack, 3)):
        layout = layout_for(data, card, rgb=False, name="bf")
        cf = to_channels_first(data, layout)
        assert cf.shape == (1,) + data.shape and layout.spatial_ndim == spatial


def test_rgb_goes_channels_first_for_colour_models():
    card = tiny_unet_card(n_in=3)
    rgb = np.arange(5 * 6 * 3).reshape(5, 6, 3)
    cf = to_channels_first(rgb, layout_for(rgb, card, rgb=True, name="ihc"))
    assert cf.shape == (3, 5, 6)
    assert np.array_equal(cf[2], rgb[..., 2])


@pytest.mark.parametrize("data,rgb,card_kw,match", [
    (np.zeros((8, 8, 3), np.uint8), True, {}, "RGB image but the model 'tiny-2d' expects one grey channel"),
    (np.zeros((0, 8)), False, {}, "empty"),
    (np.zeros((8, 8), np.complex64), False, {}, "complex"),
    (np.array([["a"]]), False, {}, "numbers"),
    (np.zeros((8, 8)), False, {"spatial_dims": 3}, "3D model and needs a z-stack"),
    (np.zeros((2, 8, 8)), False, {"n_in": 3}, "needs 3 input channels"),
    (np.zeros((2, 2, 2, 8, 8)), False, {}, "5 spatial axes"),
])
def test_unusable_layers_get_a_sentence(data, rgb, card_kw, match):
    with pytest.raises(InputError, match=match):
        layout_for(data, tiny_unet_card(**card_kw), rgb=rgb, name="x")


def test_view_region_reads_the_visible_box_of_the_current_plane():
    # a (Z, Y, X) stack of 5x100x200, view shows y 10.3..40.2, x -5..250 at z=3.4
    corners = np.array([[0, 10.3, -5], [4, 40.2, 250]])
    region = view_region(corners, (3.4, 0, 0), (5, 100, 200), displayed_axes=(1, 2))
    assert region.start == (3, 10, 0) and region.stop == (4, 41, 200)
    slab = view_region(corners, (4.0, 0, 0), (5, 100, 200), displayed_axes=(1, 2), z_extent=3)
    assert slab.start[0] == 2 and slab.stop[0] == 5  # clipped to the stack, still 3 planes


def test_view_region_off_screen_is_a_user_error():
    with pytest.raises(InputError, match="not in view"):
        view_region(np.array([[500, 500], [600, 600]]), (0, 0), (100, 100), displayed_axes=(0, 1))


def test_region_margin_and_crop_back():
    region = Region((10, 20), (30, 50))
    outer = region.grow((8, 8), (35, 100))
    assert outer == Region((2, 12), (35, 58))
    inner = region.relative_to(outer)
    big = np.arange(35 * 100).reshape(35, 100)
    assert np.array_equal(big[outer.slices][inner], big[region.slices])


def test_overlay_tuples_land_on_the_input_pixels():
    data = np.random.default_rng(0).random((2, 4, 5)).astype(np.float32)
    tuples = overlay_tuples(data, ["nuclei", "membrane"], "bf", {"scale": (0.5, 0.25), "translate": (105.0, 205.0)})
    assert [t[1]["name"] for t in tuples] == [output_layer_name("bf", "nuclei"), output_layer_name("bf", "membrane")]
    kw = tuples[0][1]
    assert kw["translate"] == (105.0, 205.0) and kw["scale"] == (0.5, 0.25)
    assert kw["blending"] == "additive" and tuples[0][2] == "image"
    assert tuples[0][1]["colormap"] != tuples[1][1]["colormap"]
    assert np.array_equal(tuples[1][0], data[1])
