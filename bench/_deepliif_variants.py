"""The frame the DeepLIIF cell experiments share (issue 12): each ``--model PATH[:IMAGE]`` scored, with
its variants and the classical baseline, on its held-out data, the agreement images and its
training rows, the tables written to bench/RESULTS.md.

``IMAGE`` names the whole image a fold model of the 2-fold swap never saw
(``scripts/train_deepliif.py --hold-out-image IMAGE``); without it the held-out data are the
bottom 128 rows of both training images (the bundled model's split). The agreement images are
the released model's outputs on 22_2 and 34_3 (not ground truth).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from _common import DATA, REPO, machine, update_results

sys.path.insert(0, str(REPO / "scripts"))
from train_deepliif import load_real, reference_images  # noqa: E402

from napari_virtual_stain.models.checkpoint import load_checkpoint  # noqa: E402
from napari_virtual_stain.tasks.deepliif_evaluation import format_table, score_table  # noqa: E402

TRAIN = DATA / "deepliif-sample" / "train"
# (net, card, training rows) -> (methods by label, their own thresholds by label, lines to add after the tables)
Variants = Callable[..., tuple[dict, dict, Callable[[], list[str]]]]


def score_models(script: str, models: list[str], variants: Variants, section: str) -> None:
    """Score every model's ``variants`` and write the tables into ``section`` of bench/RESULTS.md."""
    references = reference_images()
    parts = [machine(), "", f"Command: `python bench/{script} {' '.join('--model ' + m for m in models)}`"]
    for given in models:
        path, _, hold_out = given.partition(":")
        net, card = load_checkpoint(path)
        _, held_out, train_rows = load_real(TRAIN, 128, hold_out or None)
        methods, own, after = variants(net, card, train_rows)
        where = f"the whole of {hold_out}" if hold_out else "the bottom 128 rows of each training image"
        for title, images in ((f"held out ({where})", held_out), ("agreement with the released model", references),
                              ("training rows (a check; any own thresholds were chosen there)", train_rows)):
            text = format_table(score_table(methods, images, own))
            parts += ["", f"### {Path(path).stem}: {title}", "", text]
            print(parts[-3], text, sep="\n", flush=True)
        lines = after()
        parts += lines
        print(*lines, sep="\n", flush=True)
    update_results(section, "\n".join(parts))


def main(doc: str, script: str, variants: Variants, section: str) -> None:
    """An experiment's command line: ``--model PATH[:HELD_OUT_IMAGE]``, one or more."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="PATH[:HELD_OUT_IMAGE]")
    score_models(script, parser.parse_args().model, variants, section)
