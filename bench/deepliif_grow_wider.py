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

from deepliif_grow import grid_variants
from _deepliif_variants import main

from napari_virtual_stain.tasks.deepliif_calibration import GROW_GRID

WIDER_GRID = (None, 1, 2, 3, 4, 5, 6)  # written with the rule

if __name__ == "__main__":
    main(__doc__, "deepliif_grow_wider.py", grid_variants({"shipped grid": GROW_GRID, "grid to 6 px": WIDER_GRID}),
         "DeepLIIF: cells grown up to 6 px (experiment, issue 12)")
