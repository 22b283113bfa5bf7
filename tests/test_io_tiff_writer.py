"""save_tiff: what load_image reads back is what was written, and writes are atomic."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_virtual_stain.errors import InputError
from napari_virtual_stain.io import tiff_writer
from napari_virtual_stain.io.tiff_reader import load_image
from napari_virtual_stain.io.tiff_writer import save_tiff

CASES = {
    # name: (file name, shape, dtype, axes written, names, pixel size, axes read, format read)
    "imagej float 3D channels": ("out.tif", (3, 4, 20, 30), np.float32, "CZYX", ["DAPI", "GFP", "actin"],
                                 (0.5, 0.1, 0.1), "CZYX", "imagej"),
    "ome float 3D channels": ("out.ome.tif", (3, 4, 20, 30), np.float32, "CZYX", ["DAPI", "GFP", "actin"],
                              (0.5, 0.1, 0.1), "CZYX", "ome-tiff"),
    "rgb 8-bit": ("rgb.tif", (20, 30, 3), np.uint8, "YXS", None, (0.25, 0.25), "YXS", "imagej"),
    "rgb float goes to ome": ("rgbf.tif", (20, 30, 3), np.float32, "YXS", None, (0.25, 0.25), "YXS", "ome-tiff"),
    "time series uint16": ("t.tif", (2, 3, 20, 30), np.uint16, "TCYX", ["a", "b", "c"], (0.3, 0.3), "TCYX", "imagej"),
    "ome int32 labels": ("l.ome.tif", (20, 30), np.int32, "YX", None, (0.3, 0.3), "YX", "ome-tiff"),
    "channels last, no size": ("cl.tif", (20, 30, 2), np.float32, "YXC", ["x", "y"], None, "CYX", "imagej"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip(tmp_path, rng, case):
    name, shape, dtype, axes, names, size, axes_read, fmt = CASES[case]
    if np.dtype(dtype).kind == "f":
        data = rng.random(shape).astype(dtype)
    else:
        data = rng.integers(0, 250, size=shape).astype(dtype)
    path = save_tiff(tmp_path / name, data, axes, names, size)
    image = load_image(path)
    expected = np.moveaxis(data, -1, 0) if axes == "YXC" else data
    assert image.axes == axes_read and image.extra["format"] == fmt
    assert image.data.dtype == data.dtype
    np.testing.assert_array_equal(image.data, expected)
    assert image.channel_names == (list(names) if names else [])
    if size is None:
        assert image.pixel_size_um is None
    else:
        assert image.pixel_size_um == pytest.approx(size)


def test_float64_results_are_written_as_float32(tmp_path, rng):
    data = rng.random((2, 10, 12))
    image = load_image(save_tiff(tmp_path / "r.tif", data, "CYX", ["nuclei", "membrane"]))
    assert image.data.dtype == np.float32
    np.testing.assert_allclose(image.data, data.astype(np.float32))


def test_imagej_file_is_a_hyperstack_fiji_understands(tmp_path, rng):
    path = save_tiff(tmp_path / "h.tif", rng.random((2, 3, 8, 8)).astype(np.float32), "CZYX",
                     ["nuclei", "membrane"], (2.0, 0.5, 0.5))
    with tifffile.TiffFile(path) as tf:
        ij = tf.imagej_metadata
        assert tf.is_imagej and ij["channels"] == 2 and ij["slices"] == 3
        assert ij["unit"] == "um" and ij["spacing"] == pytest.approx(2.0)
        assert ij["Labels"][:2] == ["nuclei", "membrane"]


def test_missing_z_size_is_unknown_not_invented(tmp_path, rng):
    # A 2D input's (y, x) pixel size given for a 3D result: z stays unknown.
    path = save_tiff(tmp_path / "z.tif", rng.random((3, 8, 8)).astype(np.float32), "ZYX", None, (0.4, 0.4))
    z, y, x = load_image(path).pixel_size_um
    assert z is None and (y, x) == pytest.approx((0.4, 0.4))


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, rng, monkeypatch):
    target = save_tiff(tmp_path / "keep.tif", np.ones((4, 4), np.float32), "YX")
    before = target.read_bytes()

    def broken_write(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"II*\x00half")  # a partial file, then the disk fills up
        raise OSError("No space left on device")

    monkeypatch.setattr(tiff_writer.tifffile, "imwrite", broken_write)
    with pytest.raises(OSError):
        save_tiff(target, np.zeros((4, 4), np.float32), "YX")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.tif"]


@pytest.mark.parametrize(
    "shape, axes, names, message",
    [
        ((4, 4), "YXZ", None, "do not describe"),
        ((4, 4), "YY", None, "do not describe"),
        ((2, 4, 4), "CYX", ["only one"], "1 channel names were given for 2 channels"),
        ((0, 4), "YX", None, "empty"),
    ],
)
def test_bad_arguments_raise_input_error(tmp_path, shape, axes, names, message):
    with pytest.raises(InputError, match=message):
        save_tiff(tmp_path / "x.tif", np.zeros(shape, np.float32), axes, names)


def test_a_large_ome_tiff_gets_sub_resolution_levels_that_open_as_a_pyramid(tmp_path):
    from napari_virtual_stain.io.napari_reader import read_tiff
    from napari_virtual_stain.tasks.output_pyramid import block_mean

    data = np.random.default_rng(0).random((2, 600, 520)).astype(np.float32)
    path = save_tiff(tmp_path / "pred.ome.tif", data, "CYX", ["nuclei", "membrane"], (0.5, 0.5))
    back = load_image(path)
    assert back.channel_names == ["nuclei", "membrane"] and back.pixel_size_um == (0.5, 0.5)
    shapes = [tuple(level.shape) for level in back.extra["levels"]]
    assert shapes == [(2, 600, 520), (2, 300, 260), (2, 150, 130)]  # halved until the larger side fits 256
    np.testing.assert_array_equal(np.asarray(back.data), data)
    np.testing.assert_allclose(np.asarray(back.extra["levels"][1]), block_mean(data, {1: 2, 2: 2}), rtol=1e-6)
    (levels, kwargs, _), = read_tiff(str(path))
    assert kwargs["multiscale"] and len(levels) == 3
    small = save_tiff(tmp_path / "small.ome.tif", data[:, :200, :200], "CYX", ["a", "b"])
    assert len(tifffile.TiffFile(small).series[0].levels) == 1  # nothing to gain below 256 pixels
    flat = save_tiff(tmp_path / "flat.ome.tif", data, "CYX", ["a", "b"], pyramid=False)
    assert len(tifffile.TiffFile(flat).series[0].levels) == 1
