"""Many inputs through `virtual-stain predict`: here, on a LocalCluster, and on a real dask scheduler.

Every distributed run is compared with the one-file path of `predict` (the single-process
result), file by file. Tiny model, 64 x 64 images; the tests that start worker processes are
marked slow: nearly all their time is each new process importing torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_virtual_stain.cli import main
from napari_virtual_stain.engine.distributed import connect, parse_cluster, run_jobs
from napari_virtual_stain.errors import Cancelled, InputError, VirtualStainError
from napari_virtual_stain.io.ome_zarr_reader import read_ome_zarr
from napari_virtual_stain.io.ome_zarr_writer import save_ome_zarr
from napari_virtual_stain.io.tiff_writer import save_tiff
from napari_virtual_stain.workflows.stain_files import expand_inputs

from conftest import save_tiny_model

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def inputs(tmp_path, rng):
    folder = tmp_path / "fields"
    folder.mkdir()
    for i in range(4):
        save_tiff(folder / f"field{i}.tif", rng.random((64, 64)).astype(np.float32), "YX", pixel_size_um=(0.5, 0.5))
    return folder


@pytest.fixture
def model(tmp_path):
    path, _ = save_tiny_model(tmp_path)
    return str(path)


def _single_process(files, model, out):
    """The reference: each file through predict's one-file path, in this process."""
    out.mkdir()
    for f in files:
        assert main(["predict", str(f), "-o", str(out / f"{f.stem}.tif"), "--model", model, "--device", "cpu"]) == 0
    return {p.name: tifffile.imread(p) for p in sorted(out.iterdir())}


def _outputs(folder):
    return {p.name: tifffile.imread(p) for p in sorted(folder.iterdir())}


def test_inputs_expand_from_folders_globs_and_plates(inputs, tmp_path, rng):
    assert [s.name for s, _ in expand_inputs([inputs])] == [f"field{i}.tif" for i in range(4)]
    assert [stem for _, stem in expand_inputs([str(inputs / "field[12].tif")])] == ["field1", "field2"]
    with pytest.raises(InputError, match="No image matches"):
        expand_inputs([str(inputs / "*.png")])
    with pytest.raises(InputError, match="holds no TIFF"):
        expand_inputs([_empty(tmp_path)])


def _empty(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


@pytest.mark.slow
def test_a_folder_here_and_on_a_local_cluster_equals_the_single_process_run(inputs, model, tmp_path):
    reference = _single_process(sorted(inputs.iterdir()), model, tmp_path / "reference")

    here = tmp_path / "here"
    assert main(["predict", str(inputs), "-o", str(here), "--model", model, "--device", "cpu"]) == 0
    local = tmp_path / "local"
    assert main(["predict", str(inputs / "*.tif"), "-o", str(local), "--model", model, "--device", "cpu",
                 "--cluster", "local:2"]) == 0

    assert list(_outputs(here)) == list(reference) == [f"field{i}.tif" for i in range(4)]
    for name, expected in reference.items():
        np.testing.assert_array_equal(_outputs(here)[name], expected)
        np.testing.assert_array_equal(_outputs(local)[name], expected)
    assert not [p for p in local.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_a_plate_becomes_one_ome_zarr_per_field(tmp_path, model, rng):
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_plate_metadata, write_well_metadata

    fmt = FormatV05()
    plate = tmp_path / "plate.ome.zarr"
    root = zarr.open_group(str(plate), mode="w", zarr_format=3)
    write_plate_metadata(root, ["A"], ["1", "2"], ["A/1", "A/2"], fmt=fmt)
    for col in ("1", "2"):
        well = root.require_group("A").require_group(col)
        write_well_metadata(well, [{"path": "0"}], fmt=fmt)
        save_ome_zarr(plate / "A" / col / "0", rng.random((1, 64, 64)).astype(np.float32), "CYX", ["phase"],
                      (0.4, 0.4), n_levels=1)
    out = tmp_path / "predicted"
    assert main(["predict", str(plate), "-o", str(out), "--model", model, "--device", "cpu",
                 "--output-format", "ome-zarr"]) == 0

    names = sorted(p.name for p in out.iterdir())
    assert names == ["plate_A_1_0.ome.zarr", "plate_A_2_0.ome.zarr"]
    field = tmp_path / "field.tif"
    save_tiff(field, np.asarray(read_ome_zarr(plate / "A/2/0").data)[0], "YX", pixel_size_um=(0.4, 0.4))
    reference = _single_process([field], model, tmp_path / "reference")["field.tif"]
    result = read_ome_zarr(out / names[1])
    assert result.channel_names == ["nuclei", "membrane"] and result.pixel_size_um == (0.4, 0.4)
    np.testing.assert_array_equal(np.asarray(result.data), reference)


def _start(args, env, log):
    return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=log, stderr=subprocess.STDOUT)


def _stop(processes, log) -> None:
    """Stop what ``_start`` started (workers before their scheduler), killing what does not stop."""
    for process in reversed(processes):
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    log.close()


@pytest.mark.slow
def test_a_real_scheduler_and_two_workers_give_the_single_process_result(inputs, model, tmp_path):
    from distributed import Client

    reference = _single_process(sorted(inputs.iterdir()), model, tmp_path / "reference")
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    scheduler_file = tmp_path / "scheduler.json"
    log = open(tmp_path / "dask.log", "w")
    processes = []
    try:
        processes.append(_start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                                 "--no-dashboard", "--scheduler-file", str(scheduler_file)], env, log))
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        for name in ("w1", "w2"):
            processes.append(_start(["distributed.cli.dask_worker", address, "--nthreads", "1", "--name", name,
                                     "--no-dashboard", "--local-directory", str(tmp_path / name)], env, log))
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=90)
        out = tmp_path / "remote"
        assert main(["predict", *map(str, sorted(inputs.iterdir())), "-o", str(out), "--model", model,
                     "--device", "cpu", "--cluster", address]) == 0
        for name, expected in reference.items():
            np.testing.assert_array_equal(_outputs(out)[name], expected)
    finally:
        _stop(processes, log)


def test_an_unreachable_scheduler_is_one_sentence_and_exit_2(inputs, model, tmp_path, capsys):
    code = main(["predict", str(inputs), "-o", str(tmp_path / "out"), "--model", model,
                 "--cluster", "tcp://127.0.0.1:9"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "Cannot reach the dask scheduler at tcp://127.0.0.1:9" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    with pytest.raises(InputError, match="local:N"):
        parse_cluster("lokal:2")


def _sleep_and_mark(folder: str, i: int) -> int:
    time.sleep(0.3)
    Path(folder, f"{i}.done").write_text("")
    return i


def test_cancel_stops_the_tasks_not_yet_run(tmp_path):
    from distributed import Client, LocalCluster

    cancel = threading.Event()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        with pytest.raises(Cancelled):
            run_jobs(_sleep_and_mark, [(str(tmp_path), i) for i in range(8)], client=client,
                     progress=lambda done, total: cancel.set(), cancel=cancel)
        time.sleep(1.0)  # anything still queued would have finished by now
    assert 1 <= len(list(tmp_path.glob("*.done"))) <= 3


def _die_once(marker: str) -> str:
    if not os.path.exists(marker):
        Path(marker).write_text("")
        os._exit(1)  # the worker process is lost mid-task
    return "done"


@pytest.mark.slow
def test_a_lost_worker_s_task_is_run_again(tmp_path):
    with connect("local:1") as client:
        assert run_jobs(_die_once, [(str(tmp_path / "died"),)], client=client) == ["done"]


def _needs_a_missing_module():
    import a_module_no_worker_has  # noqa: F401


def test_a_worker_without_the_dependencies_says_what_to_install():
    with pytest.raises(VirtualStainError, match="install napari-virtual-stain and the model's dependencies"):
        run_jobs(_needs_a_missing_module, [()])


def test_tta_over_several_files_equals_tta_on_each_file_alone(inputs, model, tmp_path):
    files = sorted(inputs.iterdir())[:3]
    reference = tmp_path / "reference"
    reference.mkdir()
    for f in files:
        assert main(["predict", str(f), "-o", str(reference / f"{f.stem}.tif"), "--model", model, "--device", "cpu",
                     "--tta"]) == 0
    many = tmp_path / "many"
    assert main(["predict", *map(str, files), "-o", str(many), "--model", model, "--device", "cpu", "--tta"]) == 0
    plain = tmp_path / "plain"
    assert main(["predict", *map(str, files), "-o", str(plain), "--model", model, "--device", "cpu"]) == 0
    assert list(_outputs(many)) == list(_outputs(reference)) == [f"{f.stem}.tif" for f in files]
    for name, expected in _outputs(reference).items():
        np.testing.assert_array_equal(_outputs(many)[name], expected)
        assert np.abs(_outputs(plain)[name] - expected).max() > 1e-4  # TTA reached the workers' settings


def test_a_2_5d_model_on_stacks_one_window_deep_gives_their_centre_plane_in_both_paths(tmp_path, rng):
    import torch

    from napari_virtual_stain.models.checkpoint import save_checkpoint
    from napari_virtual_stain.training.starting import model_for_training

    torch.manual_seed(0)
    net, card = model_for_training(arch="unet-2.5d", n_in=1, n_out=1, spatial_dims=2, input_names=["bf"],
                                   output_names=["dapi"],
                                   arch_args={"planes": 3, "centre": 1, "depth": 2, "base": 4, "norm": "none"})
    card.tile, card.overlap = [32, 32], [8, 8]
    save_checkpoint(tmp_path / "m25.pt", net, card)
    folder = tmp_path / "stacks"
    folder.mkdir()
    for i in range(2):
        save_tiff(folder / f"s{i}.tif", rng.random((3, 40, 40)).astype(np.float32), "ZYX")
    one = tmp_path / "one.tif"
    assert main(["predict", str(folder / "s0.tif"), "-o", str(one), "--model", str(tmp_path / "m25.pt"),
                 "--device", "cpu"]) == 0
    many = tmp_path / "many"
    assert main(["predict", str(folder), "-o", str(many), "--model", str(tmp_path / "m25.pt"), "--device", "cpu"]) == 0
    assert tifffile.imread(one).shape == (40, 40)
    np.testing.assert_array_equal(_outputs(many)["s0.tif"], tifffile.imread(one))


@pytest.mark.slow
def test_one_big_image_in_bands_here_and_on_a_local_cluster_equals_the_one_process_run(tmp_path, model, rng):
    source = tmp_path / "slide.tif"
    save_tiff(source, rng.random((300, 90)).astype(np.float32), "YX", pixel_size_um=(0.5, 0.5))
    reference = tmp_path / "reference.tif"
    assert main(["predict", str(source), "-o", str(reference), "--model", model, "--device", "cpu"]) == 0
    here = tmp_path / "here.tif"
    assert main(["predict", str(source), "-o", str(here), "--model", model, "--device", "cpu",
                 "--band-rows", "70"]) == 0
    np.testing.assert_array_equal(tifffile.imread(here), tifffile.imread(reference))
    local = tmp_path / "local.ome.zarr"
    assert main(["predict", str(source), "-o", str(local), "--model", model, "--device", "cpu",
                 "--band-rows", "64", "--cluster", "local:2"]) == 0
    # other processes, other thread counts: the same values up to float rounding of the convolutions
    np.testing.assert_allclose(read_ome_zarr(local).data, tifffile.imread(reference), rtol=0, atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the scratch array is gone


def test_bands_refuse_many_inputs_and_a_bad_height(inputs, model, tmp_path, capsys):
    code = main(["predict", str(inputs), "-o", str(tmp_path / "out"), "--model", model, "--band-rows", "32"])
    assert code == 2 and "one image into bands" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # argparse's own refusal of the number
        main(["predict", str(inputs / "field0.tif"), "-o", str(tmp_path / "o.tif"), "--model", model,
              "--band-rows", "0"])
    assert refused.value.code == 2 and "argument --band-rows: 0 must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()
