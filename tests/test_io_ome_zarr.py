"""OME-Zarr in (images, pyramids, HCS plates) and out, and pyramidal OME-TIFF as multiscale.

Stores are built with ome-zarr's own writer, so the reader is checked against the field's
library, not against our writer only.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

from napari_virtual_stain.errors import InputError, ReaderError
from napari_virtual_stain.io.napari_reader import get_reader, read_tiff
from napari_virtual_stain.io.ome_zarr_reader import is_plate, open_ome_zarr, plate_fields, read_ome_zarr
from napari_virtual_stain.io.ome_zarr_writer import check_output_store, save_ome_zarr
from napari_virtual_stain.io.tiff_reader import load_image

FORMATS = {"0.4": FormatV04(), "0.5": FormatV05()}


def _omero(names):
    return {"channels": [{"label": n, "color": "FFFFFF", "window": {"min": 0, "max": 1, "start": 0, "end": 1}}
                         for n in names]}


def _write(group_or_path, data, fmt, axes="cyx", scale=None, names=("DAPI", "GFP"), factors=(2, 4)):
    group = zarr.open_group(str(group_or_path), mode="w", zarr_format=fmt.zarr_format) \
        if not isinstance(group_or_path, zarr.Group) else group_or_path
    units = {a: "micrometer" for a in axes if a in "zyx"}
    write_image(data, group, scale_factors=list(factors), axes=axes, fmt=fmt,
                scale=scale or {a: 1.0 for a in axes}, axes_units=units, omero=_omero(names))
    return group


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_multiscale_image_opens_lazily_with_levels_names_and_pixel_size(tmp_path, rng, version):
    data = rng.random((2, 128, 96)).astype(np.float32)
    store = tmp_path / "cells.ome.zarr"
    _write(store, data, FORMATS[version], scale={"c": 1.0, "y": 0.5, "x": 0.25})

    image = load_image(store)  # the CLI's reader dispatches folders that are zarr stores

    assert image.axes == "CYX"
    assert image.channel_names == ["DAPI", "GFP"]
    assert image.pixel_size_um == (0.5, 0.25)
    assert image.is_lazy
    assert [tuple(level.shape) for level in image.extra["levels"]] == [(2, 128, 96), (2, 64, 48), (2, 32, 24)]
    assert image.extra["level_downsample"] == [(1.0, 1.0), (2.0, 2.0), (4.0, 4.0)]
    np.testing.assert_array_equal(np.asarray(image.data), data)


def test_opening_reads_no_full_resolution_pixels(tmp_path, rng):
    """Metadata and the smallest level only: a damaged full-resolution level goes unnoticed until read."""
    store = tmp_path / "slide.ome.zarr"
    _write(store, rng.random((2, 128, 128)).astype(np.float32), FormatV05())
    chunks = [p for p in (store / "s0").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert chunks
    for chunk in chunks:
        chunk.write_bytes(b"not a compressed chunk")

    (levels, kwargs, kind), = read_tiff(str(store))

    assert kind == "image" and kwargs["multiscale"] and len(levels) == 3
    assert kwargs["name"] == ["DAPI", "GFP"] and kwargs["channel_axis"] == 0
    assert len(kwargs["contrast_limits"]) == 2  # from the smallest level, which is intact
    np.asarray(levels[2])
    with pytest.raises(Exception):
        np.asarray(levels[0])  # the damage is there: it was simply never read


def test_napari_splits_a_multiscale_channel_stack(tmp_path, rng):
    from napari.layers.utils.stack_utils import split_channels

    store = tmp_path / "cells.ome.zarr"
    _write(store, rng.random((2, 64, 64)).astype(np.float32), FormatV04())
    (levels, kwargs, _), = read_tiff(str(store))
    kwargs = {k: v for k, v in kwargs.items() if k != "multiscale"}
    layers = split_channels(levels, **kwargs)
    assert [meta["name"] for _, meta, _ in layers] == ["DAPI", "GFP"]
    assert all(meta["multiscale"] and len(data) == 3 and data[0].shape == (64, 64) for data, meta, _ in layers)


def _plate(path, rng, fields_per_well=2, fmt=FormatV05(), drop=None):
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    wells = ["A/1", "B/2"]
    write_plate_metadata(root, ["A", "B"], ["1", "2"], wells, fmt=fmt)
    truth = {}
    for well in wells:
        row, col = well.split("/")
        well_group = root.require_group(row).require_group(col)
        write_well_metadata(well_group, [{"path": str(i)} for i in range(fields_per_well)], fmt=fmt)
        for i in range(fields_per_well):
            if f"{well}/{i}" == drop:
                continue
            data = rng.random((1, 3, 64, 64)).astype(np.float32)
            _write(well_group.require_group(str(i)), data, fmt, axes="czyx", names=("phase",), factors=(2,),
                   scale={"c": 1.0, "z": 2.0, "y": 0.4, "x": 0.4})
            truth[f"{well}/{i}"] = data
    return truth


def test_a_plate_opens_as_its_fields_and_a_field_alone(tmp_path, rng):
    store = tmp_path / "plate.ome.zarr"
    truth = _plate(store, rng)

    assert is_plate(store)
    fields = plate_fields(store)
    assert fields == [str(store / f) for f in ("A/1/0", "A/1/1", "B/2/0", "B/2/1")]
    images = open_ome_zarr(store)
    assert [im.pixel_size_um for im in images] == [(2.0, 0.4, 0.4)] * 4
    for field, image in zip(truth, images):
        np.testing.assert_array_equal(np.asarray(image.data), truth[field])

    one = read_ome_zarr(store / "B/2/1")  # a field's path opens alone
    assert one.axes == "CZYX" and one.channel_names == ["phase"]
    np.testing.assert_array_equal(np.asarray(one.data), truth["B/2/1"])

    layers = read_tiff(str(store))
    assert [kwargs["name"] for _, kwargs, _ in layers] == [[f"plate {f} phase"] for f in truth]

    with pytest.raises(ReaderError, match="HCS plate of 4 field"):
        load_image(store)  # one image wanted: the sentence says how to get one


def test_a_plate_with_a_missing_field_is_refused(tmp_path, rng):
    store = tmp_path / "plate.ome.zarr"
    _plate(store, rng, drop="B/2/1")
    with pytest.raises(ReaderError, match="lists the field B/2/1, but it is not in the store"):
        plate_fields(store)


def test_stores_that_are_not_ome_zarr_are_refused_in_one_sentence(tmp_path):
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w").create_array("data", shape=(4, 4), dtype="f4")
    with pytest.raises(ReaderError, match="not an OME-Zarr image"):
        load_image(plain)
    folder = tmp_path / "photos.zarr"
    folder.mkdir()
    with pytest.raises(ReaderError, match="not a zarr store"):
        read_ome_zarr(folder)
    assert get_reader(str(plain)) is not None and get_reader(str(tmp_path / "x.png")) is None


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_predictions_written_as_ome_zarr_pyramid_read_back(tmp_path, rng, version):
    data = rng.random((2, 3, 96, 80)).astype(np.float32)
    out = save_ome_zarr(tmp_path / "pred.ome.zarr", data, "CZYX", ["nuclei", "membrane"], (2.0, 0.5, 0.5),
                        n_levels=3, version=version)

    back = read_ome_zarr(out)
    assert back.channel_names == ["nuclei", "membrane"] and back.pixel_size_um == (2.0, 0.5, 0.5)
    shapes = [tuple(level.shape) for level in back.extra["levels"]]
    assert shapes == [(2, 3, 96, 80), (2, 3, 48, 40), (2, 3, 24, 20)]  # Z kept, Y and X halved
    np.testing.assert_array_equal(np.asarray(back.data), data)
    # a real downsampling of the data, not zeros: the coarse level follows the image's means
    coarse = np.asarray(back.extra["levels"][1])
    assert abs(float(coarse.mean()) - float(data.mean())) < 0.02 and coarse.std() > 0
    assert [p.name for p in tmp_path.iterdir()] == ["pred.ome.zarr"]  # no temporary folder left


def test_a_default_pyramid_reaches_a_small_level_and_rewrites_replace_the_store(tmp_path, rng):
    out = tmp_path / "big.ome.zarr"
    save_ome_zarr(out, np.zeros((1, 1100, 600), np.float32), "CYX")
    assert [tuple(level.shape) for level in read_ome_zarr(out).extra["levels"]][-1] == (1, 137, 75)  # 1100 halved until it fits 256
    save_ome_zarr(out, np.ones((1, 64, 64), np.float32), "CYX")
    assert np.asarray(read_ome_zarr(out).data).shape == (1, 64, 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.ome.zarr"]


def test_output_store_checks(tmp_path):
    with pytest.raises(InputError, match="must end in .ome.zarr"):
        check_output_store(tmp_path / "out.tif")
    someone = tmp_path / "notes.zarr"
    someone.mkdir()
    (someone / "thesis.docx").write_text("precious")
    with pytest.raises(InputError, match="is not a zarr store"):
        check_output_store(someone)


def test_pyramidal_ome_tiff_opens_as_lazy_levels(tmp_path, rng):
    image = (rng.random((256, 192)) * 255).astype(np.uint8)
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, subifds=2, metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        tw.write(image[::2, ::2], subfiletype=1)
        tw.write(image[::4, ::4], subfiletype=1)

    loaded = load_image(path)
    assert loaded.is_lazy and loaded.pixel_size_um == (0.5, 0.5)
    assert [tuple(level.shape) for level in loaded.extra["levels"]] == [(256, 192), (128, 96), (64, 48)]
    np.testing.assert_array_equal(np.asarray(loaded.extra["levels"][1]), image[::2, ::2])
    (levels, kwargs, _), = read_tiff(str(path))
    assert kwargs["multiscale"] and len(levels) == 3


def test_manifest_registers_the_zarr_reader_for_folders():
    from importlib.resources import files

    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(files("napari_virtual_stain") / "napari.yaml")
    zarr_readers = [r for r in manifest.contributions.readers if "*.zarr" in r.filename_patterns]
    assert zarr_readers and zarr_readers[0].accepts_directories
