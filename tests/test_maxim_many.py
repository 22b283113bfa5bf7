"""`virtual-stain impute` and `qc` on many stacks (a folder, a glob, several files, an HCS plate), here
and on dask.distributed clusters, file for file equal to one run per stack.

The in-process clusters (``processes=False``, over TCP so the command reaches them by address as
it would a lab's scheduler) share this process's imports, so the oracle imputers of
test_maxim_core work there; the slow test starts real worker processes (local:2), with
imputers of a real architecture.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import numpy as np
import pytest
import tifffile
import torch

from napari_virtual_stain.cli import main
from napari_virtual_stain.io.ome_zarr_writer import save_ome_zarr
from napari_virtual_stain.models.card import ModelCard
from napari_virtual_stain.models.checkpoint import save_checkpoint
from napari_virtual_stain.models.factory import build_model
from napari_virtual_stain.tasks.maxim import stack_marker_stats
from napari_virtual_stain.workflows import maxim_files
from test_maxim_cli import _write, model_dir  # noqa: F401  (the oracle imputers fixture)
from test_maxim_core import MARKERS, good_stack


@pytest.fixture
def stacks(tmp_path):
    """Three stacks, the last with CD3 blanked in a square (the QC flags it)."""
    folder = tmp_path / "stacks"
    folder.mkdir()
    for i in range(3):
        stack = good_stack(seed=i)
        if i == 2:
            stack[2, 16:40, 20:44] = 0
        _write(folder / f"s{i}.tif", stack)
    return folder


@pytest.fixture
def tcp_cluster():
    """A two-worker cluster in this process, reached by its tcp:// address."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
                      dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def impute_one_by_one(files, models, out):
    out.mkdir()
    for f in files:
        assert main(["impute", str(f), "--models", str(models), "--marker", "CD3", "-o", str(out / f"{f.stem}_CD3.tif"),
                     "--device", "cpu"]) == 0
    return tiffs(out)


def tiffs(folder):
    return {p.name: tifffile.imread(p) for p in sorted(folder.iterdir())}


def qc_one_by_one(files, models, out):
    out.mkdir()
    reports = {}
    for f in files:
        assert main(["qc", str(f), "--models", str(models), "-o", str(out / f"{f.stem}.json"), "--device", "cpu"]) == 0
        reports[str(f)] = json.loads((out / f"{f.stem}.json").read_text())
    return reports


def test_impute_a_folder_here_and_on_a_cluster_writes_what_one_run_per_stack_writes(stacks, model_dir, tmp_path,
                                                                                      tcp_cluster):  # noqa: F811
    expected = impute_one_by_one(sorted(stacks.iterdir()), model_dir, tmp_path / "one-by-one")
    here = tmp_path / "here"
    assert main(["impute", str(stacks), "--models", str(model_dir), "--marker", "CD3", "-o", str(here),
                 "--device", "cpu"]) == 0
    cluster = tmp_path / "cluster"
    assert main(["impute", str(stacks / "s*.tif"), "--models", str(model_dir), "--marker", "CD3", "-o", str(cluster),
                 "--device", "cpu", "--cluster", tcp_cluster]) == 0
    assert list(expected) == ["s0_CD3.tif", "s1_CD3.tif", "s2_CD3.tif"]
    for folder in (here, cluster):
        assert list(tiffs(folder)) == list(expected)
        for name, image in expected.items():
            np.testing.assert_array_equal(tiffs(folder)[name], image)
    assert not [p for p in cluster.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_qc_of_many_stacks_keeps_one_report_or_writes_one_per_stack_equal_to_single_runs(
        stacks, model_dir, tmp_path, tcp_cluster, capsys):  # noqa: F811
    files = sorted(stacks.iterdir())
    expected = qc_one_by_one(files, model_dir, tmp_path / "one-by-one")
    assert [r["flagged"] for r in expected.values()] == [[], [], ["CD3"]]

    report = tmp_path / "all.json"
    assert main(["qc", str(stacks), "--models", str(model_dir), "-o", str(report), "--device", "cpu",
                 "--fail-on-flag"]) == 1  # a flag in any stack, as for stacks named one by one
    assert json.loads(report.read_text())["stacks"] == expected

    folder = tmp_path / "per-stack"
    assert main(["qc", *map(str, files), "--models", str(model_dir), "-o", str(folder), "--device", "cpu",
                 "--cluster", tcp_cluster]) == 0
    per_stack = {str(f): json.loads((folder / f"{f.stem}.json").read_text()) for f in files}
    assert per_stack == expected
    (box,) = per_stack[str(files[2])]["markers"]["CD3"]["regions"]
    assert box["class"] == "imputation" and 12 <= box["start"][0] <= 20
    assert "CD3 FLAGGED" in capsys.readouterr().err


def _plate(path, fields):
    """An HCS plate of one row, one well per (name, (C, Y, X) stack), field 0 each; the second field
    is written as (T, C, Z, Y, X), as iohub and VisCy write 2D fields."""
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_plate_metadata, write_well_metadata

    fmt = FormatV05()
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    columns = [str(i + 1) for i in range(len(fields))]
    write_plate_metadata(root, ["A"], columns, [f"A/{c}" for c in columns], fmt=fmt)
    for i, (col, stack) in enumerate(zip(columns, fields)):
        write_well_metadata(root.require_group("A").require_group(col), [{"path": "0"}], fmt=fmt)
        data, axes = (stack, "CYX") if i == 0 else (stack[None, :, None], "TCZYX")
        save_ome_zarr(path / "A" / col / "0", data, axes, MARKERS, (0.5, 0.5) if i == 0 else (1.0, 0.5, 0.5),
                      n_levels=1)
    return path


def test_every_field_of_a_plate_is_imputed_and_checked(tmp_path, model_dir):  # noqa: F811
    plate = _plate(tmp_path / "plate.ome.zarr", [good_stack(seed=0), good_stack(seed=1)])
    out = tmp_path / "imputed"
    assert main(["impute", str(plate), "--models", str(model_dir), "--marker", "Ki67", "-o", str(out),
                 "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["plate_A_1_0_Ki67.tif", "plate_A_2_0_Ki67.tif"]
    for col, seed in (("1", 0), ("2", 1)):
        single = tmp_path / f"field{col}.tif"
        _write(single, good_stack(seed=seed))
        reference = tmp_path / f"reference{col}.tif"
        assert main(["impute", str(single), "--models", str(model_dir), "--marker", "Ki67", "-o", str(reference),
                     "--device", "cpu"]) == 0
        np.testing.assert_array_equal(tifffile.imread(out / f"plate_A_{col}_0_Ki67.tif"), tifffile.imread(reference))

    report = tmp_path / "plate.json"
    assert main(["qc", str(plate), "--models", str(model_dir), "-o", str(report), "--device", "cpu"]) == 0
    entries = json.loads(report.read_text())["stacks"]
    assert list(entries) == [str(plate / "A" / "1" / "0"), str(plate / "A" / "2" / "0")]
    assert all(e["flagged"] == [] for e in entries.values())


def test_two_stacks_that_would_write_one_file_are_refused_before_any_work(stacks, model_dir, tmp_path,
                                                                          capsys):  # noqa: F811
    other = tmp_path / "other"
    other.mkdir()
    (other / "s0.tif").write_bytes((stacks / "s0.tif").read_bytes())
    out = tmp_path / "out"
    assert main(["impute", str(stacks / "s0.tif"), str(other / "s0.tif"), "--models", str(model_dir), "--marker", "CD3",
                 "-o", str(out)]) == 2
    assert "same file" in capsys.readouterr().err and not out.exists()
    assert main(["qc", str(stacks / "s0.tif"), str(other / "s0.tif"), "--models", str(model_dir), "-o", str(out)]) == 2
    assert "same file" in capsys.readouterr().err and not out.exists()
    report = tmp_path / "r.json"
    assert main(["qc", str(stacks / "s0.tif"), str(stacks / "s0.tif"), "-o", str(report)]) == 2
    assert "given twice" in capsys.readouterr().err and not report.exists()
    assert main(["qc", str(stacks), "--models", str(model_dir), "-o", str(report), "--maps",
                 str(tmp_path / "maps.tif")]) == 2
    assert "single stack" in capsys.readouterr().err and not report.exists()


def test_imputers_are_loaded_once_per_process_and_again_when_the_folder_changes(stacks, model_dir,
                                                                                monkeypatch):  # noqa: F811
    from napari_virtual_stain.workflows import maxim as workflow

    calls = []
    real = workflow.load_qc_imputers
    monkeypatch.setattr(workflow, "load_qc_imputers", lambda s: calls.append(s.folder) or real(s))
    maxim_files._loaded.cache_clear()
    settings = asdict(workflow.MaximSettings(folder=str(model_dir), device="cpu"))
    for name in ("s0.tif", "s1.tif"):
        maxim_files.qc_file(str(stacks / name), name, settings)
    assert len(calls) == 1
    saved = model_dir / "imputer-CD3.pt"
    later = saved.stat().st_mtime_ns + 10**9
    os.utime(saved, ns=(later, later))  # the file saved again
    maxim_files.qc_file(str(stacks / "s0.tif"), "s0.tif", settings)
    assert len(calls) == 2


def _unet_imputers(folder, stack):
    """Per-marker imputers of a real architecture (random tiny U-Nets): what worker processes can load."""
    stats = stack_marker_stats(stack, MARKERS)
    torch.manual_seed(0)
    for marker in MARKERS:
        card = ModelCard(name=f"unet-{marker}", task="impute", architecture="unet",
                         arch_args=dict(in_channels=len(MARKERS) - 1, out_channels=1, spatial_dims=2, depth=2, base=4,
                                        norm="none", activation="sigmoid"),
                         spatial_dims=2, input_channels=[m for m in MARKERS if m != marker], output_channels=[marker],
                         output_activation="sigmoid", tile=[32, 32], overlap=[8, 8],
                         scores={"val": {"pcc": 0.9, "mae": 0.05}}, extra={"marker_stats": stats, "dtype": "uint16"})
        save_checkpoint(folder / f"imputer-{marker}.pt", build_model(card.architecture, card.arch_args), card)
    return folder


@pytest.mark.slow
def test_impute_and_qc_on_a_local_cluster_of_worker_processes_equal_single_runs(stacks, tmp_path):
    models = _unet_imputers(tmp_path / "unets", good_stack(seed=1))
    files = sorted(stacks.iterdir())
    expected = impute_one_by_one(files, models, tmp_path / "one-by-one")
    reports = qc_one_by_one(files, models, tmp_path / "qc-one-by-one")
    out = tmp_path / "local"
    assert main(["impute", str(stacks), "--models", str(models), "--marker", "CD3", "-o", str(out), "--device", "cpu",
                 "--cluster", "local:2"]) == 0
    for name, image in expected.items():
        # other processes, other thread counts: the same values up to float rounding of the convolutions
        np.testing.assert_allclose(tiffs(out)[name], image, rtol=0, atol=1e-6)
    report = tmp_path / "local.json"
    assert main(["qc", str(stacks), "--models", str(models), "-o", str(report), "--device", "cpu",
                 "--cluster", "local:2"]) == 0
    got = json.loads(report.read_text())["stacks"]
    assert list(got) == list(reports)
    for key, entry in reports.items():
        assert got[key]["flagged"] == entry["flagged"]
        assert {m: v["regions"] for m, v in got[key]["markers"].items()} == \
            {m: v["regions"] for m, v in entry["markers"].items()}
