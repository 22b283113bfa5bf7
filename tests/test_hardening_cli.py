"""A careless user at the command line: every mistake is one sentence and exit status 2, inputs
stay byte-identical, and nothing is left behind (no output, no temporary file, no empty folder).

Each case runs in a folder of its own whose every file is fingerprinted before and after.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_virtual_stain.cli import main
from napari_virtual_stain.io.tiff_reader import load_image
from napari_virtual_stain.io.tiff_writer import save_tiff
from napari_virtual_stain.models.checkpoint import save_checkpoint

from conftest import save_tiny_model
from test_maxim_core import MARKERS, OracleMean, good_stack, oracle_card
from napari_virtual_stain.tasks.maxim import stack_marker_stats

# A place no one can write, root included: procfs refuses new files. Elsewhere, a folder
# without write permission (effective for everyone but root).
READ_ONLY = Path("/proc/virtual-stain-nowhere") if Path("/proc/self").exists() else None


@pytest.fixture
def work(tmp_path, user_models, monkeypatch):
    """A folder with inputs of every kind, a tiny model and a model folder of imputers."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    tifffile.imwrite("grey.tif", rng.random((96, 96), dtype=np.float32))
    tifffile.imwrite("target.tif", rng.random((96, 96), dtype=np.float32))
    tifffile.imwrite("bool.tif", rng.random((96, 96)) > 0.5)
    tifffile.imwrite("pages9.tif", (rng.random((9, 64, 64)) * 255).astype(np.uint8))
    tifffile.imwrite("nan.tif", np.full((64, 64), np.nan, np.float32))
    tifffile.imwrite("huge.tif", np.zeros((64, 64), np.uint8))
    with tifffile.TiffFile("huge.tif", mode="r+b") as tf:  # a header that declares 100000 x 100000
        for tag in ("ImageWidth", "ImageLength", "RowsPerStrip"):
            tf.pages[0].tags[tag].overwrite(100000)
    save_tiff("stack.tif", good_stack(seed=0), "CYX", MARKERS)
    tifffile.imwrite("complex.tif", (rng.random((64, 64)) + 1j * rng.random((64, 64))).astype(np.complex64))
    Path("notes.txt").write_text("not a folder")
    Path("existing-folder").mkdir()
    Path("done.tif").write_bytes(b"an earlier result")  # earlier work a repeated command must not replace
    stats = stack_marker_stats(good_stack(seed=1), MARKERS)
    for m in MARKERS:
        save_checkpoint(Path("imputers") / f"imputer-{m}.pt", OracleMean(), oracle_card(m, stats=stats))
    save_tiny_model(user_models, name="tiny-2d")
    return tmp_path


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*")) if "user-models" not in p.parts}


def refused(folder: Path, capsys, argv: list[str], message: str, *, started: bool = False) -> str:
    """Run ``argv``; assert exit 2, one error line containing ``message``, and no change in ``folder``.

    ``started``: a run of many inputs that fails at a later one has said what it runs and drawn
    its bar first; the error is still a line of its own, the last.
    """
    before = _fingerprint(folder)
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own refusals exit from inside main
        code = exit_info.code
    err = capsys.readouterr().err
    after = _fingerprint(folder)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert started or len(lines) == 1, err  # the sentence alone: no usage block, no progress or info line before it
    assert lines[-1].startswith(f"virtual-stain {argv[0]}: error:"), lines[-1]
    assert message.lower() in lines[-1].lower(), lines[-1]
    assert "\x1b" not in err
    assert after == before, f"files changed: {set(after.items()) ^ set(before.items())}"
    return lines[-1]


TINY = ["--model", "tiny-2d", "--device", "cpu"]
TRAIN = ["train", "grey.tif", "target.tif", "--arch", "unet", "--patch", "32", "--steps", "2", "--device", "cpu"]
CASES = {
    # 2. an output that is an input
    "predict onto its input": (["predict", "grey.tif", "-o", "grey.tif", *TINY], "also an input"),
    "predict onto its input by another path": (["predict", "grey.tif", "-o", "./existing-folder/../grey.tif", *TINY],
                                               "also an input"),
    "normalise onto its input": (["normalise", "grey.tif", "-o", "grey.tif"], "also an input"),
    "tile-shadow onto its input": (["tile-shadow", "grey.tif", "-o", "grey.tif", "--tile", "32"], "also an input"),
    "flatfield onto its input": (["flatfield", "grey.tif", "-o", "grey.tif", "--sigma", "10"], "also an input"),
    "impute onto its input": (["impute", "stack.tif", "--models", "imputers", "--marker", "CD3", "-o", "stack.tif"],
                              "also an input"),
    # 9. an output named for another format, or of the wrong kind
    "predict to a png name": (["predict", "grey.tif", "-o", "out.png", *TINY], "must end in .tif"),
    "predict to a folder": (["predict", "grey.tif", "-o", "existing-folder", *TINY], "must end in .tif"),
    "predict under a file": (["predict", "grey.tif", "-o", "notes.txt/out.tif", *TINY], "is a file, not a folder"),
    "qc report not json": (["qc", "stack.tif", "--models", "imputers", "-o", "report.txt"], "must end in .json"),
    "stats not json": (["normalise", "grey.tif", "-o", "n.tif", "--stats-out", "n.tif"], "must end in .json"),
    "deepliif into a file": (["deepliif", "grey.tif", "-o", "notes.txt"], "is a file, not a folder"),
    "train-imputers into a file": (["train-imputers", "stack.tif", "-o", "notes.txt", "--steps", "1"], "is a file"),
    # 5. secondary outputs that cannot be written: the main output is not written either
    "artifact same as output": (["tile-shadow", "grey.tif", "-o", "a.tif", "--tile", "32", "--artifact-out", "a.tif"],
                                "same file"),
    "qc maps same as report name": (["qc", "stack.tif", "--models", "imputers", "-o", "r.json", "--maps", "r.json"],
                                    "must end in .tif"),
    # 3. tiles the model cannot use
    "tile 8": (["predict", "grey.tif", "-o", "out.tif", *TINY, "--tile", "8", "--overlap", "0"], "smallest it can use is 16"),
    "tile 1": (["predict", "grey.tif", "-o", "out.tif", *TINY, "--tile", "1", "--overlap", "0"], "smallest it can use"),
    "tile 0": (["predict", "grey.tif", "-o", "out.tif", *TINY, "--tile", "0"], "argument --tile"),
    "batch 0": (["predict", "grey.tif", "-o", "out.tif", *TINY, "--batch-size", "0"], "argument --batch-size"),
    # 5. a forged header
    "header declares 100000 x 100000": (["predict", "huge.tif", "-o", "out.tif", *TINY], "header declares 100000 x 100000"),
    "deepliif on a forged header": (["deepliif", "huge.tif", "-o", "new-folder"], "header declares"),
    # 5. invalid arguments
    "arch args depth 0": ([*TRAIN, "-o", "m.pt", "--arch-args", '{"depth": 0}'], "depth must be at least 1"),
    "arch args a list": ([*TRAIN, "-o", "m.pt", "--arch-args", "[1, 2]"], "not a json object"),
    "arch args not json": ([*TRAIN, "-o", "m.pt", "--arch-args", "{depth: 2}"], "is not json"),
    "negative learning rate": ([*TRAIN, "-o", "m.pt", "--lr", "-1"], "argument --lr"),
    "train to a png": ([*TRAIN, "-o", "m.png"], "must end in .pt"),
    "train from a model onto itself": (["train", "grey.tif", "target.tif", "--from", "m0.pt", "-o", "m0.pt"],
                                       "same file"),
    "imputer depth 0": (["train-imputers", "stack.tif", "-o", "imp", "--depth", "0"], "argument --depth"),
    "imputer base 0": (["train-imputers", "stack.tif", "-o", "imp", "--base", "0"], "argument --base"),
    "flatfield sigma 1e9": (["flatfield", "grey.tif", "-o", "f.tif", "--sigma", "1e9"], "larger than the image"),
    "normalise percentiles reversed": (["normalise", "grey.tif", "-o", "n.tif", "--low", "90", "--high", "10"],
                                       "low < high"),
    "bad axes": (["normalise", "pages9.tif", "-o", "n.tif", "--axes", "CX"], "do not describe pages9.tif"),
    "deepliif negative size": (["deepliif", "grey.tif", "-o", "d", "--size-thresh", "-5"], "size"),
    "deepliif upper below lower": (["deepliif", "grey.tif", "-o", "d", "--size-thresh", "50",
                                    "--size-thresh-upper", "10"], "upper"),
    "band rows 0": (["predict", "grey.tif", "-o", "o.tif", *TINY, "--band-rows", "0"], "argument --band-rows"),
    "cluster local:0": (["predict", "grey.tif", "-o", "o.tif", *TINY, "--cluster", "local:0"], "argument --cluster"),
    "cluster bogus": (["qc", "stack.tif", "-o", "r.json", "--cluster", "bogus"], "neither local:n"),
    "deepliif overlap -1": (["deepliif", "grey.tif", "-o", "d", "--overlap", "-1"], "argument --overlap"),
    "train 0 minutes": ([*TRAIN, "-o", "m.pt", "--minutes", "0"], "argument --minutes"),
    "train validation fraction 1.5": ([*TRAIN, "-o", "m.pt", "--val-fraction", "1.5"], "argument --val-fraction"),
    "a channel of a one-channel image": (["predict", "grey.tif", "-o", "o.tif", *TINY, "--channel", "3"],
                                         "has a single channel"),
    "ome-zarr format to a tiff name": (["predict", "grey.tif", "-o", "o.tif", *TINY, "--output-format", "ome-zarr"],
                                       "names a tiff"),
    "a complex image": (["predict", "complex.tif", "-o", "o.tif", *TINY], "complex"),
    "a missing input onto itself": (["predict", "missing.tif", "-o", "missing.tif", *TINY], "there is no file"),
    "evaluate a missing prediction": (["evaluate", "nope.png", "grey.tif"], "no prediction file or folder at nope.png"),
    "impute the marker it is told is missing": (["impute", "stack.tif", "--models", "imputers", "--marker", "CD3",
                                                 "--missing", "CD3", "-o", "i.tif"], "also given as missing"),
    # earlier work
    "predict over an earlier result": (["predict", "grey.tif", "-o", "done.tif", *TINY], "add --overwrite"),
    "impute over an earlier result": (["impute", "stack.tif", "--models", "imputers", "--marker", "CD3",
                                       "-o", "done.tif", "--device", "cpu"], "add --overwrite"),
    # 6. silent skips
    "impute a typo in --missing": (["impute", "stack.tif", "--models", "imputers", "--marker", "CD3",
                                    "--missing", "NOSUCH", "-o", "i.tif", "--device", "cpu"], "no marker 'NOSUCH'"),
}
if READ_ONLY is not None:
    CASES.update({
        "predict read-only": (["predict", "grey.tif", "-o", f"{READ_ONLY}/o.tif", *TINY], "not writable"),
        "train read-only": ([*TRAIN, "-o", f"{READ_ONLY}/m.pt"], "not writable"),
        "qc read-only": (["qc", "stack.tif", "--models", "imputers", "-o", f"{READ_ONLY}/r.json"], "not writable"),
        "deepliif read-only": (["deepliif", "grey.tif", "-o", f"{READ_ONLY}/d"], "not writable"),
        "train-imputers read-only": (["train-imputers", "stack.tif", "-o", f"{READ_ONLY}/i", "--steps", "1"],
                                     "not writable"),
        "evaluate --json read-only": (["evaluate", "grey.tif", "grey.tif", "--json", f"{READ_ONLY}/e.json"],
                                      "not writable"),
        "stats-out read-only": (["normalise", "grey.tif", "-o", "n.tif", "--stats-out", f"{READ_ONLY}/s.json"],
                                "not writable"),
        "background-out read-only": (["flatfield", "grey.tif", "-o", "f.tif", "--sigma", "10",
                                      "--background-out", f"{READ_ONLY}/b.tif"], "not writable"),
        "artifact-out read-only": (["tile-shadow", "grey.tif", "-o", "t.tif", "--tile", "32",
                                    "--artifact-out", f"{READ_ONLY}/a.tif"], "not writable"),
    })


@pytest.mark.parametrize("argv,message", list(CASES.values()), ids=list(CASES))
def test_mistakes_are_one_sentence_exit_2_and_change_nothing(work, capsys, argv, message):
    if "m0.pt" in argv:  # a model to fine-tune, aimed at itself
        save_tiny_model(work, name="m0")
    refused(work, capsys, argv, message)


def test_a_new_run_never_replaces_a_model_without_overwrite(work, capsys):
    assert main([*TRAIN, "-o", "m.pt", "--arch-args", '{"depth": 2, "base": 4}', "--val-every", "1"]) == 0
    capsys.readouterr()
    refused(work, capsys, [*TRAIN, "-o", "m.pt", "--arch-args", '{"depth": 2, "base": 4}'], "already exists")


def test_resume_refuses_a_state_from_another_run(work, capsys):
    small = ["--arch-args", '{"depth": 2, "base": 4}', "--val-every", "1"]
    assert main([*TRAIN, "-o", "a.pt", *small]) == 0
    assert main([*TRAIN, "-o", "b.pt", *small]) == 0
    capsys.readouterr()
    Path("a.state.pt").write_bytes(Path("b.state.pt").read_bytes())  # b's state next to a's model
    refused(work, capsys, ["train", "grey.tif", "target.tif", "--resume", "-o", "a.pt", "--patch", "32",
                           "--steps", "4", "--device", "cpu"], "belongs to another training run")
    # its own state still resumes, and the run continues from step 2
    assert main(["train", "grey.tif", "target.tif", "--resume", "-o", "b.pt", "--patch", "32", "--steps", "4",
                 "--device", "cpu"]) == 0
    assert "from step 2" in capsys.readouterr().err


def test_overwrite_keeps_the_old_model_until_the_new_run_has_trained_weights(work, capsys):
    from napari_virtual_stain.models.checkpoint import read_checkpoint

    assert main([*TRAIN, "-o", "m.pt", "--arch-args", '{"depth": 2, "base": 4}', "--val-every", "1"]) == 0
    old = Path("m.pt").read_bytes()
    # A replacement stopped before its first step (--minutes tiny) writes nothing.
    assert main(["train", "grey.tif", "target.tif", "--arch", "resnet_generator", "--patch", "32", "--device", "cpu",
                 "-o", "m.pt", "--overwrite", "--minutes", "1e-9"]) == 0
    assert "nothing was written" in capsys.readouterr().err
    assert Path("m.pt").read_bytes() == old
    # A replacement that trains does replace it.
    assert main([*TRAIN, "-o", "m.pt", "--overwrite", "--arch-args", '{"depth": 2, "base": 8}']) == 0
    assert read_checkpoint("m.pt")[0].arch_args["base"] == 8


def test_a_bool_image_is_predicted_and_normalised_as_0_and_1(work):
    assert main(["predict", "bool.tif", "-o", "p.tif", *TINY]) == 0
    assert np.isfinite(load_image("p.tif").data).all()
    assert main(["normalise", "bool.tif", "-o", "n.tif", "--low", "0", "--high", "100"]) == 0
    assert set(np.unique(load_image("n.tif").data)) == {0.0, 1.0}


def test_a_constant_image_normalises_with_a_warning(work, capsys):
    assert main(["normalise", "nan.tif", "-o", "n.tif"]) == 0
    assert "warning: C0 is constant or has no finite value" in capsys.readouterr().err


def test_thin_overlaps_are_warned_about(work, capsys):
    assert main(["predict", "grey.tif", "-o", "p.tif", *TINY, "--tile", "32", "--overlap", "0"]) == 0
    assert "leaves visible seams" in capsys.readouterr().err


def test_a_multi_page_tiff_can_be_read_as_channels(work):
    assert load_image("pages9.tif").axes == "ZYX"
    assert main(["normalise", "pages9.tif", "-o", "n.tif", "--axes", "CYX"]) == 0
    assert load_image("n.tif").axes == "CYX" and load_image("n.tif").data.shape == (9, 64, 64)


def test_qc_names_an_imputer_file_it_could_not_load(work, capsys):
    Path("imputers/imputer-broken.pt").write_bytes(b"not a model")
    assert main(["qc", "stack.tif", "--models", "imputers", "-o", "r.json", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "warning: skipped imputer-broken.pt is not a readable" in err
    assert any("imputer-broken.pt" in p for p in json.loads(Path("r.json").read_text())["skipped_models"])


def test_model_files_that_would_run_code_are_named_without_terminal_codes(work, capsys):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    Path("evil.pt").write_bytes(pickle.dumps(Evil()))  # a pickle that would run code when loaded
    line = refused(work, capsys, ["predict", "grey.tif", "-o", "o.tif", "--model", str(work / "evil.pt")],
                   "not a readable napari-virtual-stain model")
    assert "this must never run" not in line


def test_a_bug_is_one_line_exit_1_and_the_traceback_is_there_on_request(work, capsys, monkeypatch):
    from napari_virtual_stain.cli import predict

    def broken(args):
        raise RuntimeError("something internal\nsecond line")

    monkeypatch.setattr(predict, "run", broken)
    monkeypatch.delenv("VIRTUAL_STAIN_DEBUG", raising=False)
    assert main(["predict", "grey.tif", "-o", "o.tif"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error (RuntimeError: something internal)" in err[0] and "bug" in err[0]
    monkeypatch.setenv("VIRTUAL_STAIN_DEBUG", "1")
    assert main(["predict", "grey.tif", "-o", "o.tif"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_running_out_of_memory_is_a_sentence(work, capsys, monkeypatch):
    from napari_virtual_stain.engine import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)  # 1 KB free: the result cannot fit
    refused(work, capsys, ["predict", "grey.tif", "-o", "o.tif", *TINY], "of memory but only")

    from napari_virtual_stain.cli import predict

    def exhausted(args):
        raise MemoryError()

    monkeypatch.setattr(predict, "run", exhausted)
    assert main(["predict", "grey.tif", "-o", "o.tif"]) == 2
    assert "not enough memory" in capsys.readouterr().err


def test_a_missing_argument_is_status_2(work, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's own exit
        main(["predict", "grey.tif"])  # -o missing
    assert exit_info.value.code == 2
    assert "the following arguments are required: -o/--output" in capsys.readouterr().err


def test_a_bad_last_input_of_many_leaves_no_output_of_the_earlier_ones(work, capsys):
    # complex.tif is listed and readable, so it fails only when its turn comes: after grey.tif's output was made
    Path("outputs").mkdir()
    Path("outputs/kept.txt").write_text("there before the run")
    refused(work, capsys, ["predict", "grey.tif", "target.tif", "complex.tif", "-o", "outputs", *TINY], "complex",
            started=True)
    refused(work, capsys, ["predict", "grey.tif", "complex.tif", "-o", "new-outputs", *TINY], "complex", started=True)
    # and when every input is good, each output is there, under its own name
    assert main(["predict", "grey.tif", "target.tif", "-o", "outputs", *TINY]) == 0
    assert sorted(p.name for p in Path("outputs").iterdir()) == ["grey.tif", "kept.txt", "target.tif"]
    capsys.readouterr()
    refused(work, capsys, ["predict", "grey.tif", "target.tif", "-o", "outputs", *TINY], "add --overwrite")
    assert main(["predict", "grey.tif", "target.tif", "-o", "outputs", *TINY, "--overwrite"]) == 0


def test_a_bad_last_stack_of_many_imputes_nothing(work, capsys):
    save_tiff("other.tif", good_stack(seed=2), "CYX", MARKERS)
    impute = ["impute", "stack.tif", "other.tif", "grey.tif", "--models", "imputers", "--marker", "CD3",
              "--device", "cpu", "-o", "imputed"]
    refused(work, capsys, impute, "grey.tif", started=True)
    assert main([*impute[:3], *impute[4:]]) == 0
    assert sorted(p.name for p in Path("imputed").iterdir()) == ["other_CD3.tif", "stack_CD3.tif"]


def test_a_bad_last_image_of_many_leaves_no_deepliif_files(work, capsys):
    import imageio.v3 as iio

    iio.imwrite("ihc.png", (np.random.default_rng(3).random((64, 64, 3)) * 255).astype(np.uint8))
    refused(work, capsys, ["deepliif", "ihc.png", "huge.tif", "-o", "cells", "--device", "cpu"], "header declares",
            started=True)
    assert main(["deepliif", "ihc.png", "-o", "cells", "--device", "cpu"]) == 0
    capsys.readouterr()
    refused(work, capsys, ["deepliif", "ihc.png", "-o", "cells", "--device", "cpu"], "add --overwrite")
    assert main(["deepliif", "ihc.png", "-o", "cells", "--device", "cpu", "--overwrite"]) == 0


def test_an_error_after_a_half_drawn_bar_starts_on_its_own_line():
    import io

    from napari_virtual_stain.cli.progress import TextProgress, end_open_lines

    stream = io.StringIO()
    bar = TextProgress("predict", stream=stream)
    bar(1, 4)
    end_open_lines()
    assert stream.getvalue().endswith("\n") and stream.getvalue().count("\n") == 1
    end_open_lines()  # nothing left open: nothing more written
    assert stream.getvalue().count("\n") == 1


def test_evaluate_on_a_truth_without_cells_says_the_scores_are_undefined(work, capsys):
    import imageio.v3 as iio

    iio.imwrite("empty.png", np.zeros((16, 16, 3), np.uint8))
    assert main(["evaluate", "empty.png", "empty.png", "--json", "e.json", "--no-baseline"]) == 0
    err = capsys.readouterr().err
    assert "holds no cells" in err and "RuntimeWarning" not in err
    scores = json.loads(Path("e.json").read_text())  # strict JSON: json.loads takes NaN, so look for null
    assert scores["mean"]["dice"] is None and "NaN" not in Path("e.json").read_text()


def test_nan_pixels_are_warned_about_in_training_and_imputation(work, capsys):
    data = good_stack(seed=0).astype(np.float32)
    data[:, :8] = np.nan
    save_tiff("nan-stack.tif", data, "CYX", MARKERS)
    assert main(["impute", "nan-stack.tif", "--models", "imputers", "--marker", "CD3", "-o", "i.tif",
                 "--device", "cpu"]) == 0
    assert "are NaN or infinite" in capsys.readouterr().err
    grey = np.random.default_rng(1).random((96, 96)).astype(np.float32)
    grey[:4] = np.nan
    tifffile.imwrite("nan-grey.tif", grey)
    assert main(["train", "nan-grey.tif", "target.tif", "--arch", "unet", "--patch", "32", "--steps", "1",
                 "--device", "cpu", "-o", "n.pt", "--arch-args", '{"depth": 2, "base": 4}']) == 0
    assert "4.2% of the pixels of nan-grey.tif are NaN" in capsys.readouterr().err
