"""Bad input to the many-input commands (predict, deepliif, impute, qc): a store that is not OME-Zarr,
a plate with a missing field, a scheduler that does not answer or has no workers, workers without
the model's dependencies. Each is one sentence, exit status 2, and nothing written."""

from __future__ import annotations

import json
import os
import time

import imageio.v3 as iio
import numpy as np
import pytest

from napari_virtual_stain.cli import main
from napari_virtual_stain.io.ome_zarr_writer import save_ome_zarr
from napari_virtual_stain.io.tiff_writer import save_tiff
from test_deepliif_cli import model_path  # noqa: F401  (the tiny DeepLIIF model fixture)
from test_maxim_cli import _write, model_dir  # noqa: F401  (the oracle imputers fixture)
from test_maxim_core import good_stack
from test_scale_out import SRC, _start, _stop

from conftest import save_tiny_model

COMMANDS = ["predict", "deepliif", "impute", "qc"]


@pytest.fixture
def runs(tmp_path, model_path, model_dir):  # noqa: F811
    """For each command: (a good input, the arguments after -o OUT)."""
    grey = tmp_path / "grey.tif"
    save_tiff(grey, np.random.default_rng(0).random((64, 64)).astype(np.float32), "YX")
    ihc = tmp_path / "ihc.png"
    iio.imwrite(ihc, np.random.default_rng(1).integers(0, 256, (40, 56, 3)).astype(np.uint8))
    stack = _write(tmp_path / "stack.tif", good_stack())
    tiny, _ = save_tiny_model(tmp_path)
    return {"predict": (grey, ["--model", str(tiny), "--device", "cpu"]),
            "deepliif": (ihc, ["--model", str(model_path)]),
            "impute": (stack, ["--models", str(model_dir), "--marker", "CD3", "--device", "cpu"]),
            "qc": (stack, ["--models", str(model_dir), "--device", "cpu"])}


def _fails_with(command, inputs, extra, out, sentence, capsys):
    code = main([command, *map(str, inputs), "-o", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert sentence in err[-1] and err[-1].startswith(f"virtual-stain {command}: error:")
    assert not out.exists()  # nothing half-written, not even an empty folder
    return err[-1]


def _one_output(command):
    """What -o names for one input: qc's report of one stack is a .json file, the others' a folder."""
    return "report.json" if command == "qc" else "out"


def _not_ome(path):
    import zarr

    zarr.open_group(str(path), mode="w").create_array("pixels", shape=(4, 4), dtype="f4")
    return path


def _plate_missing_a_field(path):
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_plate_metadata, write_well_metadata

    fmt = FormatV05()
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    write_plate_metadata(root, ["A"], ["1"], ["A/1"], fmt=fmt)
    write_well_metadata(root.require_group("A").require_group("1"), [{"path": "0"}, {"path": "1"}], fmt=fmt)
    save_ome_zarr(path / "A" / "1" / "0", good_stack(), "CYX", None, n_levels=1)  # field 1 never written
    return path


@pytest.mark.parametrize("command", COMMANDS)
def test_a_zarr_store_that_is_not_ome_zarr_stops_the_run_before_any_output(command, runs, tmp_path, capsys):
    good, extra = runs[command]
    _fails_with(command, [good, _not_ome(tmp_path / "plain.zarr")], extra, tmp_path / "out",
                "plain.zarr is a zarr store but not an OME-Zarr image", capsys)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_plate_with_a_missing_field_is_named_before_any_work(command, runs, tmp_path, capsys):
    good, extra = runs[command]
    _fails_with(command, [good, _plate_missing_a_field(tmp_path / "plate.ome.zarr")], extra, tmp_path / "out",
                "lists the field A/1/1, but it is not in the store", capsys)


@pytest.mark.parametrize("command", ["deepliif", "impute", "qc"])  # predict: test_scale_out
def test_an_unreachable_scheduler_is_one_sentence(command, runs, tmp_path, capsys):
    good, extra = runs[command]
    _fails_with(command, [good], [*extra, "--cluster", "tcp://127.0.0.1:9"], tmp_path / _one_output(command),
                "Cannot reach the dask scheduler at tcp://127.0.0.1:9", capsys)


def test_a_scheduler_without_workers_is_one_sentence(runs, tmp_path, capsys):
    from distributed import LocalCluster

    good, extra = runs["impute"]
    with LocalCluster(n_workers=0, processes=False, protocol="tcp://", dashboard_address=None) as cluster:
        _fails_with("impute", [good], [*extra, "--cluster", cluster.scheduler_address], tmp_path / "out",
                    "has no workers", capsys)


@pytest.mark.slow
def test_workers_without_the_models_dependencies_are_said_before_any_task(runs, tmp_path, capsys):
    """A real scheduler and a worker whose Python has no torch: without the check first, the worker
    died unpickling the first task and the command waited for ever."""
    shadow = tmp_path / "no-torch" / "torch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    path = SRC + os.pathsep + os.environ.get("PYTHONPATH", "")
    log = open(tmp_path / "dask.log", "w")
    processes = []
    try:
        scheduler_file = tmp_path / "scheduler.json"
        processes.append(_start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                                 "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                                dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1"), log))
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        processes.append(_start(["distributed.cli.dask_worker", address, "--nthreads", "1", "--no-dashboard",
                                 "--local-directory", str(tmp_path / "worker")],
                                dict(os.environ, PYTHONPATH=str(shadow.parent) + os.pathsep + path), log))
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(1, timeout=90)
        for command in COMMANDS:
            good, extra = runs[command]
            said = _fails_with(command, [good], [*extra, "--cluster", address], tmp_path / _one_output(command),
                               "A dask worker at", capsys)
            assert "No module named 'torch'" in said and "install napari-virtual-stain and the model's dependencies" \
                in said
    finally:
        _stop(processes, log)


def _misfit(command, tmp_path):
    """An input that opens but does not fit the command, and the sentence that says so."""
    if command == "predict":
        path = tmp_path / "three.tif"
        save_tiff(path, np.random.default_rng(2).random((3, 64, 64)).astype(np.float32), "CYX")
        return path, "three.tif has 3 channels"
    if command == "deepliif":
        path = tmp_path / "grey.png"
        iio.imwrite(path, np.random.default_rng(2).integers(0, 256, (40, 56)).astype(np.uint8))
        return path, "is a grey image"
    path = tmp_path / "one.tif"
    save_tiff(path, np.random.default_rng(2).random((64, 64)).astype(np.float32), "YX")
    return path, "has a single channel"


JOBS = {"predict": ("stain_files", "stain_file"), "deepliif": ("deepliif_files", "deepliif_file"),
        "impute": ("maxim_files", "impute_file"), "qc": ("maxim_files", "qc_file")}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_last_input_that_does_not_fit_is_said_before_the_first_one_runs(command, runs, tmp_path, capsys,
                                                                          monkeypatch):
    import importlib

    module, job = JOBS[command]
    module = importlib.import_module(f"napari_virtual_stain.workflows.{module}")
    ran = []
    real = getattr(module, job)
    monkeypatch.setattr(module, job, lambda *a, **k: ran.append(a[0]) or real(*a, **k))
    good, extra = runs[command]
    bad, sentence = _misfit(command, tmp_path)
    before = bad.read_bytes()
    _fails_with(command, [good, bad], extra, tmp_path / "out", sentence, capsys)
    assert ran == []  # the good first input was not computed either
    assert bad.read_bytes() == before
