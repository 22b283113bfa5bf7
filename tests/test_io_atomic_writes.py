"""One atomic writer for every export: a failure midway leaves no half-written file and keeps
the file that was there (CSV and GeoJSON cell tables, TIFFs, checkpoints)."""

import resource
import signal
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_virtual_stain.io import tiff_writer
from napari_virtual_stain.io.outputs import atomic_file
from napari_virtual_stain.io.tiff_reader import load_image
from napari_virtual_stain.io.tiff_writer import save_tiff
from napari_virtual_stain.models.checkpoint import atomic_torch_save
from napari_virtual_stain.tasks.deepliif import write_csv, write_geojson
from napari_virtual_stain.tasks.region import Region
from napari_virtual_stain.workflows import deepliif_results


def only(folder):
    """The files in ``folder``: no hidden temporary file may be left beside the outputs."""
    return sorted(p.name for p in folder.iterdir())


@contextmanager
def disk_full_after(n_bytes: int):
    """Writes past ``n_bytes`` in one file fail with OSError, as on a full disk (RLIMIT_FSIZE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not the signal that kills
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_the_temporary_file_is_hidden_beside_the_target_and_never_looks_like_a_result(tmp_path):
    target = tmp_path / "model.pt"
    with atomic_file(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.pt.") and tmp.name.endswith(".tmp")
        tmp.write_text("new")
    assert target.read_text() == "new" and only(tmp_path) == ["model.pt"]


def test_a_cell_table_that_fails_midway_keeps_the_older_table(tmp_path):
    path = write_csv(tmp_path / "cells.csv", [{"id": 1, "class": "positive"}])
    before = path.read_text()
    rows = [{"id": 1, "class": "negative"}, {"id": 2, "class": "negative", "stray": 3}]  # the 2nd row cannot be written
    with pytest.raises(ValueError, match="stray"):
        write_csv(path, rows)
    assert path.read_text() == before and only(tmp_path) == ["cells.csv"]


def test_polygons_that_fail_midway_keep_the_older_geojson(tmp_path):
    path = write_geojson(tmp_path / "cells.geojson", {"type": "FeatureCollection", "features": []})
    before = path.read_text()
    many = {"type": "FeatureCollection", "features": [{"id": i, "coordinates": [[i, i]] * 20} for i in range(200)]}
    with disk_full_after(4096), pytest.raises(OSError):
        write_geojson(path, many)
    assert path.read_text() == before and only(tmp_path) == ["cells.geojson"]


@pytest.mark.parametrize("kind, name", [("csv", "cells.csv"), ("geojson", "cells.geojson")])
def test_the_deepliif_docks_cell_export_is_atomic(tmp_path, monkeypatch, kind, name):
    """The dock's Export cells (``workflows.deepliif_results.export_cells``) on a disk that fills up."""
    path = tmp_path / name
    path.write_text("the export of an earlier run")
    result = SimpleNamespace(region=Region((0, 0), (8, 8)), cells=None)
    rows = [{"id": i, "class": "positive", "area_px": 100 + i} for i in range(2000)]
    monkeypatch.setattr(deepliif_results, "cell_rows", lambda *a, **k: rows)
    monkeypatch.setattr(deepliif_results, "cell_polygons", lambda *a, **k: {"features": rows})
    with disk_full_after(4096), pytest.raises(OSError):
        deepliif_results.export_cells(result, None, path, kind)
    assert path.read_text() == "the export of an earlier run" and only(tmp_path) == [name]


def test_a_tiff_that_fails_midway_keeps_the_older_tiff(tmp_path, monkeypatch):
    path = save_tiff(tmp_path / "out.tif", np.ones((8, 8), np.float32), "YX")
    real = tiff_writer.tifffile.imwrite

    def half_then_fail(tmp, data, **kwargs):
        real(tmp, data[:4], **kwargs)  # part of the image is on disk...
        raise OSError("disk full")  # ...when the disk fills up

    monkeypatch.setattr(tiff_writer.tifffile, "imwrite", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_tiff(path, np.zeros((8, 8), np.float32), "YX")
    assert load_image(path).data.shape == (8, 8) and load_image(path).data.max() == 1.0
    assert only(tmp_path) == ["out.tif"]


def test_a_checkpoint_that_fails_midway_keeps_the_older_checkpoint(tmp_path):
    path = atomic_torch_save({"weights": torch.ones(3)}, tmp_path / "m.pt")
    with pytest.raises(Exception):
        atomic_torch_save({"weights": torch.zeros(3), "code": lambda: None}, path)  # a lambda cannot be pickled
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.ones(3))
    assert only(tmp_path) == ["m.pt"]
