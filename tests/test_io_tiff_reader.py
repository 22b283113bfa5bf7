"""The image reader: real files, lazy opening of big files, bad files, napari layer tuples."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_virtual_stain.errors import ReaderError
from napari_virtual_stain.io.napari_reader import get_reader, layer_data_from_image, read_tiff
from napari_virtual_stain.io.tiff_reader import load_image
from napari_virtual_stain.io.tiff_writer import save_tiff

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GRANULOMA = DATA / "mibi-granuloma" / "Point14_CYX.tif"
BREAST = DATA / "mibi-breast" / "fov8_CYX.tif"
BRIGHTFIELD = DATA / "sephace-brightfield-dapi" / "set1_brightfield_ZYX.tif"
LUNG_PNG = DATA / "deepliif-sample" / "train" / "Lung1.png"


def needs(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is not on this machine")


# --------------------------------------------------------------------------- real files


@needs(GRANULOMA)
def test_mibi_granuloma_has_47_named_channels_and_no_pixel_size():
    image = load_image(GRANULOMA)
    assert image.axes == "CYX"
    assert image.data.shape == (47, 1024, 1024) and image.data.dtype == np.uint16
    assert len(image.channel_names) == 47
    assert image.channel_names[:3] == ["Arginase1", "Au", "Background"]
    assert image.channel_names.index("CD45") == 17 and image.channel_names[-1] == "iNOS"
    assert image.pixel_size_um is None  # the file carries resolution 1/1 without a unit
    assert not image.is_lazy


@needs(GRANULOMA)
def test_mibi_layers_are_one_per_channel_named_by_marker():
    (data, kwargs, kind), = read_tiff(str(GRANULOMA))
    assert kind == "image" and kwargs["channel_axis"] == 0 and data.shape[0] == 47
    assert kwargs["name"][13] == "CD3" and kwargs["name"][17] == "CD45"
    assert kwargs["scale"] == (1.0, 1.0)
    assert kwargs["metadata"][17]["channel_name"] == "CD45"
    assert kwargs["metadata"][0]["source_path"] == str(GRANULOMA)
    assert kwargs["metadata"][0]["axes"] == "CYX"
    # sparse counts: the display range ignores the few brightest pixels
    lo, hi = kwargs["contrast_limits"][17]
    assert lo == 0 and 0 < hi <= data[17].max()


@needs(GRANULOMA)
def test_mibi_granuloma_opens_lazily_with_the_same_counts():
    eager = load_image(GRANULOMA)
    lazy = load_image(GRANULOMA, lazy_threshold_bytes=10_000_000)  # the file holds 98 MB of pixels
    assert lazy.is_lazy and lazy.extra["lazy"] and lazy.channel_names == eager.channel_names
    assert not isinstance(lazy.data, np.ndarray)  # compressed: dask over tifffile's zarr store
    np.testing.assert_array_equal(np.asarray(lazy.data[17]), eager.data[17])


@needs(BREAST)
def test_mibi_breast_channel_names():
    image = load_image(BREAST)
    assert image.axes == "CYX" and image.data.shape == (22, 1024, 1024)
    assert image.channel_names[12] == "HER2" and image.channel_names[-1] == "Vimentin"
    # the README gives 0.39 um/px, but the file itself has no unit: the reader must not invent one
    assert image.pixel_size_um is None


@needs(BRIGHTFIELD)
def test_brightfield_focal_series_pixel_size_and_z_positions():
    image = load_image(BRIGHTFIELD)
    assert image.axes == "ZYX" and image.data.shape == (6, 1024, 1344)
    assert image.channel_names == []
    z, y, x = image.pixel_size_um
    assert y == pytest.approx(0.2004) and x == pytest.approx(0.2004)
    positions = image.extra["z_positions_um"]
    assert positions[0] == pytest.approx(1327.6) and positions[-1] == pytest.approx(1376.8)
    assert z == pytest.approx((1376.8 - 1327.6) / 5)  # mean step of the irregular series
    (data, kwargs, kind), = layer_data_from_image(image)
    assert kwargs["scale"] == pytest.approx((z, 0.2004, 0.2004))
    assert kwargs["units"] == ("um", "um", "um")
    assert kwargs["name"] == "set1_brightfield_ZYX"
    assert "channel_axis" not in kwargs


@needs(LUNG_PNG)
def test_png_is_read_for_the_cli_as_rgb():
    image = load_image(LUNG_PNG)
    assert image.axes == "YXS" and image.data.shape == (512, 3072, 3) and image.data.dtype == np.uint8
    assert image.pixel_size_um is None
    (data, kwargs, kind), = layer_data_from_image(image)
    assert kwargs["rgb"] is True and data.shape[-1] == 3


def test_opaque_rgba_png_loses_its_alpha(tmp_path):
    rgba = np.full((8, 9, 4), 255, np.uint8)
    rgba[..., 0] = np.arange(9, dtype=np.uint8)
    iio.imwrite(tmp_path / "a.png", rgba)
    image = load_image(tmp_path / "a.png")
    assert image.axes == "YXS" and image.data.shape == (8, 9, 3)
    np.testing.assert_array_equal(image.data[..., 0], rgba[..., 0])


# --------------------------------------------------------------------------- lazy opening


def _stack(rng):
    return rng.integers(0, 60000, size=(3, 5, 40, 48), dtype=np.uint16)


@pytest.mark.parametrize("compression, lazy_type", [("zlib", "dask"), (None, "memmap")])
def test_big_files_open_lazily_with_the_same_values(tmp_path, rng, compression, lazy_type):
    data = _stack(rng)
    path = save_tiff(tmp_path / "big.tif", data, "CZYX", ["a", "b", "c"], (1.0, 0.5, 0.5),
                     compression=compression)
    eager = load_image(path)
    lazy = load_image(path, lazy_threshold_bytes=data.nbytes - 1)
    assert not eager.is_lazy and lazy.is_lazy
    if lazy_type == "dask":
        import dask.array as da

        assert isinstance(lazy.data, da.Array)
    else:
        assert isinstance(lazy.data, np.memmap)
    assert lazy.axes == eager.axes == "CZYX" and lazy.channel_names == ["a", "b", "c"]
    np.testing.assert_array_equal(np.asarray(lazy.data), eager.data)
    np.testing.assert_array_equal(np.asarray(lazy.data[1, 2, 10:20]), data[1, 2, 10:20])
    # napari gets the lazy array itself (no contrast computed from it)
    (layer_data, kwargs, _), = layer_data_from_image(lazy)
    assert layer_data is lazy.data and "contrast_limits" not in kwargs


def test_a_file_just_under_the_threshold_is_read_whole(tmp_path, rng):
    data = _stack(rng)
    path = save_tiff(tmp_path / "small.tif", data, "CZYX")
    assert not load_image(path, lazy_threshold_bytes=data.nbytes).is_lazy


# --------------------------------------------------------------------------- plain TIFFs


def test_plain_multipage_tiff_with_page_names_is_a_channel_stack(tmp_path, rng):
    data = rng.integers(0, 255, size=(3, 16, 20), dtype=np.uint8)
    with tifffile.TiffWriter(tmp_path / "markers.tif") as tw:
        for plane, name in zip(data, ["CD3", "CD45", "DAPI"]):
            tw.write(plane, photometric="minisblack", metadata=None,
                     extratags=[(285, "s", 0, name, True)])  # 285 = PageName
    image = load_image(tmp_path / "markers.tif")
    assert image.axes == "CYX" and image.channel_names == ["CD3", "CD45", "DAPI"]
    np.testing.assert_array_equal(image.data, data)


def test_plain_multipage_tiff_without_names_is_a_z_stack(tmp_path, rng):
    data = rng.integers(0, 255, size=(4, 16, 20), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", data, photometric="minisblack", metadata=None)
    image = load_image(tmp_path / "stack.tif")
    assert image.axes == "ZYX" and image.channel_names == []
    np.testing.assert_array_equal(image.data, data)


def test_plain_tiff_72_dpi_is_not_a_pixel_size_but_centimetres_are(tmp_path):
    plane = np.zeros((8, 8), np.uint8)
    tifffile.imwrite(tmp_path / "dpi.tif", plane, resolution=(72, 72), resolutionunit="INCH")
    tifffile.imwrite(tmp_path / "cm.tif", plane, resolution=(20000, 20000), resolutionunit="CENTIMETER")
    assert load_image(tmp_path / "dpi.tif").pixel_size_um is None
    assert load_image(tmp_path / "cm.tif").pixel_size_um == pytest.approx((0.5, 0.5))


# --------------------------------------------------------------------------- bad files


def _truncated(tmp_path, compression):
    data = np.arange(4 * 64 * 64, dtype=np.uint16).reshape(4, 64, 64)
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, data, photometric="minisblack", compression=compression)
    blob = whole.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(blob[: len(blob) // 2])
    return cut


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


BAD_FILES = {
    "text renamed .tif": (lambda d: _write(d / "notes.tif", b"sample 3, stained 2 May\n"), "not a TIFF file"),
    "empty file": (lambda d: _write(d / "nothing.tif", b""), "not a TIFF file"),
    "truncated, compressed": (lambda d: _truncated(d, "zlib"), "truncated"),
    "truncated, raw": (lambda d: _truncated(d, None), "truncated"),
    "cut inside the header": (lambda d: _write(d / "head.tif", b"II*\x00\x08\x00"), "damaged"),
    "zero-pixel image": (lambda d: (tifffile.imwrite(d / "zero.tif", np.zeros((0, 10), np.uint8)), d / "zero.tif")[1],
                         "empty image"),
    "text renamed .png": (lambda d: _write(d / "notes.png", b"not a picture"), "not a PNG image"),
}


@pytest.mark.filterwarnings("ignore:.*zero-size array")
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_raise_reader_error_with_a_sentence(tmp_path, case):
    make, words = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(ReaderError) as info:
        load_image(path)
    message = str(info.value)
    assert words in message and path.name in message
    assert message.endswith(".") and "\n" not in message and len(message) < 200


@pytest.mark.parametrize("case", ["text renamed .tif", "truncated, raw"])
def test_napari_reader_raises_reader_error_not_a_crash(tmp_path, case):
    path = BAD_FILES[case][0](tmp_path)
    reader = get_reader(str(path))  # chooses by name only: it must not fail here
    assert callable(reader)
    with pytest.raises(ReaderError):
        reader(str(path))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ReaderError, match="There is no file"):
        load_image(tmp_path / "gone.tif")
    with pytest.raises(ReaderError, match="is a folder"):
        load_image(tmp_path)
    with pytest.raises(ReaderError, match="not a TIFF, PNG or JPEG"):
        load_image(_write(tmp_path / "x.czi", b"\x00"))


@pytest.mark.parametrize(
    "path, wanted",
    [
        ("a.tif", True), ("A.TIFF", True), ("b.ome.tif", True), ("c.ome.tiff", True),
        (["a.tif", "b.tiff"], True), ("a.zarr", True), ("plate.ome.zarr/", True),  # OME-Zarr stores are folders
        ("a.png", False), ("a.jpg", False), ("a.zarr.txt", False), ("a.tif.txt", False),
        (["a.tif", "b.png"], False), ([], False),
    ],
)
def test_get_reader_accepts_tiff_and_zarr_names_only(path, wanted):
    reader = get_reader(path)
    assert (reader is read_tiff) if wanted else (reader is None)


def test_read_tiff_reads_each_file_of_a_list(tmp_path, rng):
    a = save_tiff(tmp_path / "a.tif", rng.random((2, 8, 8)), "CYX", ["DAPI", "GFP"])
    b = save_tiff(tmp_path / "b.tif", rng.random((8, 8)), "YX")
    layers = read_tiff([str(a), str(b)])
    assert [kw["name"] for _, kw, _ in layers] == [["DAPI", "GFP"], "b"]


def test_nan_pixels_do_not_break_the_display_range(tmp_path):
    data = np.full((2, 8, 8), np.nan, np.float32)
    data[1, :4] = np.linspace(0, 5, 32).reshape(4, 8)
    (_, kwargs, _), = read_tiff(str(save_tiff(tmp_path / "nan.tif", data, "CYX", ["empty", "half"])))
    (lo0, hi0), (lo1, hi1) = kwargs["contrast_limits"]
    assert (lo0, hi0) == (0.0, 1.0)
    assert lo1 == 0.0 and 4.9 < hi1 <= 5.0


def test_ome_tiff_from_elsewhere_is_put_in_canonical_order_with_units(tmp_path, rng):
    data = rng.integers(0, 4000, size=(4, 2, 10, 12), dtype=np.uint16)  # Z, C, Y, X
    tifffile.imwrite(tmp_path / "scope.ome.tif", data, photometric="minisblack", metadata={
        "axes": "ZCYX", "Channel": {"Name": ["Hoechst", "mCherry"]},
        "PhysicalSizeX": 325.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 325.0, "PhysicalSizeYUnit": "nm",
        "PhysicalSizeZ": 1.5, "PhysicalSizeZUnit": "µm"})
    image = load_image(tmp_path / "scope.ome.tif")
    assert image.axes == "CZYX" and image.channel_names == ["Hoechst", "mCherry"]
    np.testing.assert_array_equal(image.data, data.transpose(1, 0, 2, 3))
    assert image.pixel_size_um == pytest.approx((1.5, 0.325, 0.325))


def test_imagej_hyperstack_from_elsewhere(tmp_path, rng):
    data = rng.random((3, 2, 10, 12)).astype(np.float32)  # Z, C, Y, X as ImageJ stores them
    tifffile.imwrite(tmp_path / "fiji.tif", data, imagej=True, resolution=(1 / 0.1, 1 / 0.1),
                     metadata={"axes": "ZCYX", "unit": "micron", "spacing": 0.5,
                               "Labels": ["GFP", "RFP"] * 3})
    image = load_image(tmp_path / "fiji.tif")
    assert image.axes == "CZYX" and image.channel_names == ["GFP", "RFP"]
    assert image.pixel_size_um == pytest.approx((0.5, 0.1, 0.1))
    np.testing.assert_array_equal(image.data[1, 2], data[2, 1])
