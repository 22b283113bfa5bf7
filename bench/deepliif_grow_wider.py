"""Experiment (issue 12): let our DeepLIIF models' cells grow further than 3 px after the cut.

    python bench/deepliif_grow_wider.py --model fold-Bladder1.pt:Bladder1 --model fold-Lung1.pt:Lung1 \
        --model src/napari_virtual_stain/models/bundled/deepliif-small.pt

The shipped calibration grid grows cells by none, 1, 2 or 3 px (``bench/deepliif_grow.py``), and
every model chose 3 px, the top of that grid: larger growths were never tried. Here each model is
calibrated twice on its training rows (``tasks/deepliif_calibration``: same objective, same tie
rule, jointly with the segmentation threshold, split and size), with the shipped grid and with one
reaching 6 px, and both are scored on its held-out data (``IMAGE`` for a fold model of the 2-fold
swap: that whole image; else the bottom 128 rows of both training images), on the agreement images
and on its training rows, next to the classical baseline; the cells are classed by the DAB vote,
as the bundled card asks.

The adoption rule, written before any score with the wider grid was read (the rule of
``bench/deepliif_grow.py``): ship the wider grid (and recalibrate the bundled card with
``scripts/train_deepliif.py --score-only``) only if the 2-fold fold means improve Dice and AJI by
>= 0.01 each with % positive not worse by > 1 point, and the bundled model's held-out rows are
not worse by > 0.01 Dice or AJI.
"""

from __future__ import annotations

import sys

from _common import REPO
from _deepliif_variants import main

sys.path.insert(0, str(REPO / "scripts"))
from train_deepliif import remember_maps as remember, with_dab_vote  # noqa: E402

from napari_virtual_stain.engine.predictor import Predictor  # noqa: E402
from napari_virtual_stain.tasks.deepliif_calibration import GROW_GRID, calibrate  # noqa: E402
from napari_virtual_stain.tasks.deepliif_classical import classical_maps  # noqa: E402
from napari_virtual_stain.tasks.deepliif_dab_vote import NETWORK  # noqa: E402
from napari_virtual_stain.tasks.deepliif_evaluation import CLASSICAL, network_method  # noqa: E402

WIDER_GRID = (None, 1, 2, 3, 4, 5, 6)  # written with the rule


def describe(t) -> str:
    return f"seg {t.segmentation}, split {t.split or 'none'}, size {t.size}, grow {t.grow or 'none'}"


def variants(net, card, train_rows):
    # thresholds are chosen on the network's own classes, as scripts/train_deepliif.py does
    own_classes = remember(network_method(Predictor(net, card, device="cpu", precision="fp32"), positive_from=NETWORK))
    shipped, _ = calibrate(own_classes, train_rows, grow_grid=GROW_GRID)
    wider, _ = calibrate(own_classes, train_rows, grow_grid=WIDER_GRID)
    voted = with_dab_vote(own_classes)
    shipped_label, wider_label = f"network, shipped grid ({describe(shipped)})", f"network, grid to 6 px ({describe(wider)})"
    methods = {CLASSICAL: classical_maps, shipped_label: voted, wider_label: voted}
    return methods, {shipped_label: shipped, wider_label: wider}, list


if __name__ == "__main__":
    main(__doc__, "deepliif_grow_wider.py", variants,
         "DeepLIIF: cells grown up to 6 px (experiment, issue 12)")
