"""scripts/train_deepliif.py: which real rows it trains on and which it holds out, and its refusals.

No training runs here: the split and the checks happen before the first step.
"""

import importlib.util
from pathlib import Path

import pytest

from conftest import DATA

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_deepliif.py"
TRAIN = DATA / "deepliif-sample" / "train"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_deepliif", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(images):
    return {name: (rows.start or 0, ihc.shape[0] if rows.stop is None else rows.stop)
            for name, (ihc, _, rows) in images.items()}


def test_by_default_the_bottom_rows_of_every_image_are_held_out(script):
    sources, held_out, train_rows = script.load_real(TRAIN, 128)
    assert _rows(held_out) == {"Bladder1": (384, 512), "Lung1": (384, 512)}
    assert _rows(train_rows) == {"Bladder1": (0, 384), "Lung1": (0, 384)}
    assert sorted(s.name for s in sources) == ["Bladder1", "Lung1"]
    assert all(s.rows == slice(0, 384) for s in sources)  # crops never reach the held-out rows


def test_a_held_out_image_is_never_trained_on_and_scored_whole(script):
    sources, held_out, train_rows = script.load_real(TRAIN, 128, "Lung1")
    assert _rows(held_out) == {"Lung1": (0, 512)}
    assert _rows(train_rows) == {"Bladder1": (0, 512)}
    assert [s.name for s in sources] == ["Bladder1"]


@pytest.mark.parametrize("args, words", [
    (["--hold-out-image", "Kidney9"], "there is no Kidney9.png"),
    (["--pseudo-labels", str(TRAIN / "Lung1.png")], "scored in the report"),
    (["--pseudo-labels", "/nonexistent/ROI.png"], "There is no file"),
])
def test_bad_arguments_get_one_sentence_and_status_2_before_anything_is_written(script, tmp_path, capsys, args,
                                                                                words):
    out = tmp_path / "model.pt"
    assert script.main(["--out", str(out), "--steps", "1", "--synthetic", "1", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert not out.exists()
