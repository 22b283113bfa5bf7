"""`virtual-stain deepliif` on many inputs: a folder, a glob or several files, here or on a LocalCluster,
with the same files as one run per input."""

import json

import imageio.v3 as iio
import numpy as np
import pytest

from napari_virtual_stain.cli import main
from test_deepliif_cli import model_path  # noqa: F401  (the tiny model fixture)


@pytest.fixture
def slides(tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for name, shape in (("a", (40, 56, 3)), ("b", (48, 40, 3))):
        iio.imwrite(folder / f"{name}.png", rng.integers(0, 256, shape).astype(np.uint8))
    return folder


def files_of(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".png", ".csv", ".tif")}


def scorings(folder):
    return {p.stem: {k: v for k, v in json.loads(p.read_text()).items() if k != "timing_s"}
            for p in sorted(folder.glob("*.json"))}


def single_runs(slides, model, out):
    for image in sorted(slides.glob("*.png")):
        assert main(["deepliif", str(image), "-o", str(out), "--model", str(model)]) == 0
    return out


def test_a_folder_writes_each_inputs_files_as_one_run_each_would(slides, model_path, tmp_path):  # noqa: F811
    expected = single_runs(slides, model_path, tmp_path / "one-by-one")
    out = tmp_path / "many"
    assert main(["deepliif", str(slides), "-o", str(out), "--model", str(model_path)]) == 0
    assert files_of(out) == files_of(expected) and len(files_of(out)) == 2 * 9  # 7 PNGs, labels, table
    assert scorings(out) == scorings(expected)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_several_files_on_a_local_cluster_give_the_same_files(slides, model_path, tmp_path):  # noqa: F811
    expected = single_runs(slides, model_path, tmp_path / "one-by-one")
    out = tmp_path / "cluster"
    code = main(["deepliif", str(slides / "a.png"), str(slides / "b.png"), "-o", str(out), "--model",
                 str(model_path), "--cluster", "local:2"])
    assert code == 0
    assert files_of(out) == files_of(expected)
    assert scorings(out) == scorings(expected)


def test_two_inputs_with_one_name_are_refused_before_any_work(slides, model_path, tmp_path, capsys):  # noqa: F811
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.png").write_bytes((slides / "a.png").read_bytes())
    out = tmp_path / "out"
    code = main(["deepliif", str(slides / "a.png"), str(other / "a.png"), "-o", str(out), "--model", str(model_path)])
    assert code == 2
    assert "same file" in capsys.readouterr().err
    assert not out.exists()


def test_a_glob_that_matches_nothing_is_one_sentence(model_path, tmp_path, capsys):  # noqa: F811
    code = main(["deepliif", str(tmp_path / "nothing-*.png"), "-o", str(tmp_path / "out"), "--model", str(model_path)])
    assert code == 2
    assert "No image matches" in capsys.readouterr().err
