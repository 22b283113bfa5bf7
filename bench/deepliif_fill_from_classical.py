"""Experiment (issue 12, not shipped): our DeepLIIF model's cells plus the classical cells it missed.

    python bench/deepliif_fill_from_classical.py --model fold-Bladder1.pt:Bladder1 --model fold-Lung1.pt:Lung1 \
        [--model src/napari_virtual_stain/models/bundled/deepliif-small.pt]

On a whole unseen organ our models find fewer nuclei than the classical baseline (Bladder1: 138 of
188 against 158), so this asks whether the baseline can fill in what the network misses: a
classical cell (``deepliif_classical.classical_cells``) is pasted into the network's segmentation
map, in the baseline's colours, when fewer than 10% of its pixels are the network's foreground
(red + blue above the model's segmentation threshold). The cells then go through the model's own
cell rules, positives from the DAB vote as the bundled card asks.

Each ``--model PATH[:IMAGE]`` is scored on its held-out data: ``IMAGE`` for a fold model of the
2-fold swap (``scripts/train_deepliif.py --hold-out-image IMAGE``: that whole image), else the
bottom 128 rows of both training images (the bundled model's split); also on the agreement images
(the released model's outputs on 22_2 and 34_3) and, as a check, the training rows.

The adoption rule, written before any score of the variant was read: adopt only if the 2-fold
fold means improve Dice and AJI by >= 0.01 each with % positive not worse by > 1 point, and the
bundled model's held-out rows and agreement are not worse by > 0.01 Dice or AJI. The 10% was
fixed beforehand and no other value was tried.
"""

from __future__ import annotations

import sys

import numpy as np

from _common import REPO
from _deepliif_variants import main

sys.path.insert(0, str(REPO / "scripts"))
from train_deepliif import remember_maps as remember  # noqa: E402

from napari_virtual_stain.engine.predictor import Predictor  # noqa: E402
from napari_virtual_stain.tasks.deepliif_cells import model_thresholds  # noqa: E402
from napari_virtual_stain.tasks.deepliif_classical import classical_cells, classical_maps, draw_maps  # noqa: E402
from napari_virtual_stain.tasks.deepliif_evaluation import CLASSICAL, network_method  # noqa: E402

MIN_FREE = 0.9  # share of a classical cell's pixels outside the network's cells for it to be added
NETWORK, FILLED = "network (positives from the DAB vote)", "network + classical cells it missed"


def filled(method, seg_threshold: int):
    def run(rgb):
        seg, marker = method(rgb)
        labels, positive, dab = classical_cells(rgb)  # once: the labels and the drawing come from it
        classical_seg, _ = draw_maps(labels, positive, dab)
        network_cells = (seg[..., 0].astype(np.int32) + seg[..., 2]) > seg_threshold
        n = int(labels.max(initial=0))
        area = np.bincount(labels.ravel(), minlength=n + 1)
        covered = np.bincount(labels.ravel(), weights=network_cells.ravel(), minlength=n + 1)
        missed = area - covered >= MIN_FREE * np.maximum(area, 1)
        missed[0] = False
        out = seg.copy()
        paste = missed[labels]
        out[paste] = classical_seg[paste]
        return out, marker

    return run


def variants(net, card, train_rows):
    thresholds = model_thresholds(card)
    network = remember(network_method(Predictor(net, card, device="cpu", precision="fp32"), positive_from="dab"))
    methods = {CLASSICAL: classical_maps, NETWORK: network, FILLED: filled(network, thresholds.segmentation)}
    return methods, {NETWORK: thresholds, FILLED: thresholds}, list


if __name__ == "__main__":
    main(__doc__, "deepliif_fill_from_classical.py", variants,
         "DeepLIIF: network cells + the classical cells it missed (experiment, not shipped)")
