"""An HCS plate through `virtual-stain predict -o out.zarr`: one output plate, same layout, field by field.

Tiny synthetic plates (2 wells x 2 fields; 2D fields in NGFF 0.5, z-stacks in NGFF 0.4) go
through the plate path in this process and on a LocalCluster; each output field is compared
with predicting that field alone (`predict plate.zarr/A/1/0 -o one.ome.zarr`), and the output
plate's metadata with the input's. Refusals and failures leave no plate and no staging folder.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.writer import write_plate_metadata, write_well_metadata

from napari_virtual_stain.cli import main
from napari_virtual_stain.io.napari_reader import read_tiff
from napari_virtual_stain.io.ome_zarr_plate_writer import plate_layout
from napari_virtual_stain.io.ome_zarr_reader import plate_fields, read_ome_zarr
from napari_virtual_stain.io.ome_zarr_writer import save_ome_zarr
from napari_virtual_stain.workflows import stain_files
from napari_virtual_stain.workflows.stain import StainSettings

from conftest import save_tiny_model

FIELDS = ["A/1/0", "A/1/1", "B/2/0", "B/2/1"]
# (NGFF format, shape of each field, axes, pixel sizes)
KINDS = {"2d": (FormatV05(), (1, 48, 64), "CYX", (0.4, 0.4)),
         "stack": (FormatV04(), (1, 3, 40, 48), "CZYX", (2.0, 0.5, 0.5))}


def _plate(path, rng, kind):
    fmt, shape, axes, size = KINDS[kind]
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    write_plate_metadata(root, ["A", "B"], ["1", "2"], ["A/1", "B/2"], fmt=fmt, name="tiny plate", field_count=2,
                         acquisitions=[{"id": 0, "name": "first"}])
    for well in ("A/1", "B/2"):
        row, col = well.split("/")
        write_well_metadata(root.require_group(row).require_group(col), [{"path": "0", "acquisition": 0},
                                                                        {"path": "1", "acquisition": 0}], fmt=fmt)
    for f in FIELDS:
        save_ome_zarr(path / f, rng.random(shape).astype(np.float32), axes, ["phase"], size, n_levels=1,
                      version=fmt.version)
    return path


@pytest.fixture
def model(tmp_path):
    path, _ = save_tiny_model(tmp_path)
    return str(path)


def _predict(args):
    assert main(["predict", *map(str, args), "--device", "cpu"]) == 0


def _check_plate(plate, out, model, tmp_path):
    """The output plate has the input's layout and metadata, and each field equals that field predicted alone."""
    got, want = plate_layout(out), plate_layout(plate)
    assert (got.version, got.rows, got.columns, got.wells, got.images, got.name, got.field_count,
            got.acquisitions) == (want.version, want.rows, want.columns, want.wells, want.images, want.name,
                                  want.field_count, want.acquisitions)
    assert plate_fields(out) == [str(out / f) for f in FIELDS]
    for f in FIELDS:
        alone = tmp_path / f"alone_{f.replace('/', '_')}.ome.zarr"
        _predict([plate / f, "-o", alone, "--model", model])
        expected, result = read_ome_zarr(alone), read_ome_zarr(out / f)
        assert result.axes == expected.axes and result.channel_names == expected.channel_names == ["nuclei", "membrane"]
        assert result.pixel_size_um == expected.pixel_size_um == read_ome_zarr(plate / f).pixel_size_um
        assert len(result.extra["levels"]) == len(expected.extra["levels"])
        np.testing.assert_array_equal(np.asarray(result.data), np.asarray(expected.data))
    # napari opens it through the plugin's reader: one layer per field, named by field and output channel
    layers = read_tiff(str(out))
    assert [meta["name"] for _, meta, _ in layers] == [[f"predicted {f} nuclei", f"predicted {f} membrane"]
                                                       for f in FIELDS]
    assert not [p.name for p in out.parent.iterdir() if ".partial-" in p.name]  # no staging left


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_plate_in_gives_one_plate_out_here(kind, tmp_path, model, rng):
    plate = _plate(tmp_path / "plate.ome.zarr", rng, kind)
    out = tmp_path / "out" / "predicted.zarr"
    _predict([plate, "-o", out, "--model", model])
    assert read_ome_zarr(out / "A/1/0").axes == ("CZYX" if kind == "stack" else "CYX")
    _check_plate(plate, out, model, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_plate_on_a_local_cluster_equals_each_field_alone(kind, tmp_path, model, rng):
    plate = _plate(tmp_path / "plate.ome.zarr", rng, kind)
    out = tmp_path / "predicted.ome.zarr"
    _predict([plate, "-o", out, "--model", model, "--cluster", "local:2"])
    _check_plate(plate, out, model, tmp_path)


def _refused(args, sentence, capsys):
    code = main(["predict", *map(str, args), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert sentence in err[-1], err[-1]


def test_an_existing_plate_or_one_inside_the_input_is_refused_before_any_work(tmp_path, model, rng, capsys,
                                                                               monkeypatch):
    plate = _plate(tmp_path / "plate.ome.zarr", rng, "2d")
    monkeypatch.setattr(stain_files, "stain_file", lambda *a: pytest.fail("a field was stained"))
    existing = _plate(tmp_path / "existing.zarr", rng, "2d")
    before = sorted(p.relative_to(existing) for p in existing.rglob("*"))
    _refused([plate, "-o", existing, "--model", model], "exists: remove it or choose another name", capsys)
    assert sorted(p.relative_to(existing) for p in existing.rglob("*")) == before
    _refused([plate, "-o", plate / "inside.zarr", "--model", model], "lies inside the input", capsys)
    _refused([plate, "-o", tmp_path / "new.zarr", "--model", model, "--band-rows", "16"],
             "a plate runs one task per field", capsys)
    assert not (tmp_path / "new.zarr").exists()
    assert not [p.name for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_a_failing_field_leaves_no_half_written_plate(tmp_path, model, rng, monkeypatch):
    plate = _plate(tmp_path / "plate.ome.zarr", rng, "2d")
    real, calls = stain_files.stain_file, []

    def third_fails(*job):
        calls.append(job[1])
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(*job)

    monkeypatch.setattr(stain_files, "stain_file", third_fails)
    out = tmp_path / "predicted.zarr"
    with pytest.raises(RuntimeError, match="disk full"):
        stain_files.stain_plate(StainSettings(model=model, device="cpu"), plate, out)
    assert len(calls) == 3 and ".partial-" in calls[0]  # fields were written into the staging plate
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # the staging plate is gone


def test_a_field_task_outliving_its_removed_plate_writes_nothing(tmp_path, model, rng):
    """A task still running after the run failed or was cancelled must not bring back part of the plate."""
    from dataclasses import asdict

    from napari_virtual_stain.errors import Cancelled

    plate = _plate(tmp_path / "plate.ome.zarr", rng, "2d")
    gone = tmp_path / ".predicted.zarr.partial-x"
    with pytest.raises(Cancelled, match="was removed"):
        stain_files.stain_file(str(plate / "A/1/0"), str(gone / "A/1/0"),
                               asdict(StainSettings(model=model, device="cpu")), None, None, True)
    assert not gone.exists()


def test_a_field_task_reads_its_zarr_input_with_its_own_threads(tmp_path, model, rng):
    """On a worker dask's default scheduler is the cluster's client: a task computing its lazy zarr
    input there would ship zarr arrays to other workers (racing their imports of zarr). The
    task uses this process's threads whatever scheduler is configured around it."""
    import dask
    from dataclasses import asdict

    def cluster_scheduler(*args, **kwargs):
        raise AssertionError("the task's input went through the surrounding scheduler")

    plate = _plate(tmp_path / "plate.ome.zarr", rng, "2d")
    with dask.config.set(scheduler=cluster_scheduler):
        result = stain_files.stain_file(str(plate / "A/1/0"), str(tmp_path / "one.ome.zarr"),
                                        asdict(StainSettings(model=model, device="cpu")))
    assert result["shape"] == (2, 48, 64) and read_ome_zarr(tmp_path / "one.ome.zarr").channel_names == ["nuclei",
                                                                                                          "membrane"]
