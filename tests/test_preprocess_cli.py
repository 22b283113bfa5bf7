"""`virtual-stain tile-shadow | flatfield | focus | normalise` end to end on small TIFFs."""

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_virtual_stain.cli import main
from napari_virtual_stain.io.tiff_reader import load_image
from napari_virtual_stain.io.tiff_writer import save_tiff

TILE = 16


def shadowed_mosaic(dtype=np.uint16):
    """(2, 64, 72) two-channel mosaic of 16x16 tiles (72 = 4.5 tiles) with a known shadow."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:TILE, 0:TILE]
    shadow = -40.0 * np.exp(-((y - 2) ** 2) / 6.0)
    shadow -= shadow.mean()
    clean = 1000.0 + rng.normal(0, 1.0, (2, 64, 72))
    clean[:, 32:, :32] += 500.0 * rng.random((2, 32, 32))  # tissue in the lower-left tiles
    grid = np.tile(shadow, (4, 5))[:64, :72]
    return clean, (clean + grid).astype(dtype), shadow


def focal_stack():
    rng = np.random.default_rng(1)
    sharp = np.zeros((64, 64))
    sharp.flat[rng.integers(0, 64 * 64, 60)] = 1.0
    sharp = ndi.gaussian_filter(sharp, 1.0)
    planes = [ndi.gaussian_filter(sharp, 0.01 + 1.5 * abs(z - 3)) for z in range(6)]
    return (np.stack(planes) * 1000).astype(np.float32)


def test_tile_shadow_writes_corrected_image_and_artifact(tmp_path, capsys):
    clean, image, shadow = shadowed_mosaic()
    src = save_tiff(tmp_path / "in.tif", image, "CYX", ["DAPI", "CD3"], (0.5, 0.5))
    code = main(["tile-shadow", str(src), "-o", str(tmp_path / "out.tif"), "--tile", "16",
                 "--n-empty", "4", "--artifact-out", str(tmp_path / "artifact.tif")])
    assert code == 0
    out = load_image(tmp_path / "out.tif")
    assert out.axes == "CYX" and out.channel_names == ["DAPI", "CD3"] and out.data.dtype == np.uint16
    assert out.pixel_size_um == pytest.approx((0.5, 0.5))
    residual = out.data.astype(float) - clean
    assert np.std(image.astype(float) - clean) > 10 and np.std(residual) < 1.5
    artifact = load_image(tmp_path / "artifact.tif")
    assert artifact.data.shape == (2, TILE, TILE)
    assert np.abs(artifact.data[0] - artifact.data[0].mean() - shadow).max() < 2.0
    assert "averaged 4 tile(s)" in capsys.readouterr().err


def test_tile_shadow_strict_and_bad_tile_are_one_line_errors(tmp_path, capsys):
    _, image, _ = shadowed_mosaic()
    src = save_tiff(tmp_path / "in.tif", image, "CYX")
    code = main(["tile-shadow", str(src), "-o", str(tmp_path / "out.tif"), "--tile", "16", "--strict"])
    err = capsys.readouterr().err
    assert code == 2 and "virtual-stain tile-shadow: error: The tile size 16x16 does not divide" in err
    assert not (tmp_path / "out.tif").exists()
    with pytest.raises(SystemExit):  # argparse refuses a malformed size
        main(["tile-shadow", str(src), "-o", str(tmp_path / "out.tif"), "--tile", "big"])


def test_tile_shadow_on_rgb_keeps_rgb(tmp_path):
    _, image, _ = shadowed_mosaic(dtype=np.float32)
    rgb = np.clip(np.moveaxis(np.stack([image[0], image[0], image[1]]), 0, -1) / 8, 0, 255).astype(np.uint8)
    src = save_tiff(tmp_path / "rgb.tif", rgb, "YXS")
    assert main(["tile-shadow", str(src), "-o", str(tmp_path / "out.tif"), "--tile", "16,16",
                 "--tiles", "0,2;0,3;1,3"]) == 0
    out = load_image(tmp_path / "out.tif")
    assert out.axes == "YXS" and out.data.shape == rgb.shape and out.data.dtype == np.uint8
    top_rows = out.data[:3, 40:, 0].astype(float)  # the shadow's dark band, in empty tiles
    assert abs(top_rows.mean() - out.data[6:14, 40:, 0].mean()) < 1.5 < abs(
        rgb[:3, 40:, 0].astype(float).mean() - rgb[6:14, 40:, 0].mean())


def test_flatfield_divides_out_shading(tmp_path):
    y, x = np.mgrid[0:64, 0:80]
    shading = 1.0 - 0.4 * x / 80
    rng = np.random.default_rng(2)
    clean = 1000 + 200 * ndi.gaussian_filter(rng.random((64, 80)), 1.0)
    src = save_tiff(tmp_path / "in.tif", (clean * shading).astype(np.uint16), "YX")
    assert main(["flatfield", str(src), "-o", str(tmp_path / "out.tif"), "--sigma", "8",
                 "--background-out", str(tmp_path / "bg.tif")]) == 0
    out = load_image(tmp_path / "out.tif").data.astype(float)
    left, right = out[:, :20].mean(), out[:, -20:].mean()
    assert abs(left - right) / left < 0.05  # was 0.4 before
    background = load_image(tmp_path / "bg.tif").data
    assert background.dtype == np.float32 and background[:, 0].mean() > background[:, -1].mean()


def test_focus_prints_scores_and_writes_kept_planes(tmp_path, capsys):
    stack = focal_stack()
    src = save_tiff(tmp_path / "z.tif", stack, "ZYX", pixel_size_um=(2.0, 0.5, 0.5))
    assert main(["focus", str(src), "--keep", "3", "-o", str(tmp_path / "kept.tif")]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [line.split() for line in lines[1:7]]
    scores = np.array([float(row[1]) for row in table])
    assert int(np.argmax(scores)) == 3 and [row[0] for row in table] == ["0", "1", "2", "3", "4", "5"]
    assert [row[-1] for row in table if row[-1] == "yes"] == ["yes"] * 3
    assert lines[-1].endswith("kept planes: 2, 3, 4")
    kept = load_image(tmp_path / "kept.tif")
    np.testing.assert_array_equal(kept.data, stack[2:5])


def test_focus_errors(tmp_path, capsys):
    flat = save_tiff(tmp_path / "plane.tif", focal_stack()[0], "YX")
    assert main(["focus", str(flat)]) == 2
    assert "needs a z-stack, but 'plane.tif' is a single plane" in capsys.readouterr().err  # the dock's sentence
    src = save_tiff(tmp_path / "z.tif", focal_stack(), "ZYX")
    assert main(["focus", str(src), "--min-score", "3"]) == 2
    assert "No plane reaches the focus score 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --keep and --min-score exclude each other
        main(["focus", str(src), "--keep", "2", "--min-score", "-1"])


def test_normalise_writes_unit_range_and_records_statistics(tmp_path, capsys):
    rng = np.random.default_rng(3)
    image = np.stack([rng.integers(0, 1000, (32, 32)), rng.integers(100, 200, (32, 32))]).astype(np.uint16)
    src = save_tiff(tmp_path / "in.tif", image, "CYX", ["a", "b"])
    assert main(["normalise", str(src), "-o", str(tmp_path / "n.tif"), "--low", "0", "--high", "100",
                 "--stats-out", str(tmp_path / "stats.json")]) == 0
    out = load_image(tmp_path / "n.tif").data
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.min(axis=(1, 2)), 0.0, atol=1e-6)
    np.testing.assert_allclose(out.max(axis=(1, 2)), 1.0, atol=1e-6)
    record = json.loads((tmp_path / "stats.json").read_text())
    assert record["channels"] == ["a", "b"]
    assert record["stats"]["low"] == [float(image[0].min()), float(image[1].min())]
    assert record["stats"]["high"] == [float(image[0].max()), float(image[1].max())]
    assert "a" in capsys.readouterr().out
