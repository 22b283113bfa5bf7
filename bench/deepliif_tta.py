"""Experiment (issue 12): does test-time augmentation help our DeepLIIF model on unseen tissue?

    python bench/deepliif_tta.py --model fold-Bladder1.pt:Bladder1 --model fold-Lung1.pt:Lung1 \
        [--model src/napari_virtual_stain/models/bundled/deepliif-small.pt]

TTA (``engine.tta``, the Predictor's ``tta``): every tile is predicted under the eight flips and
quarter turns of the plane and the outputs averaged before blending. For our model that averages
the class probabilities (its segmentation map is linear in them) and the modalities; the cells
then go through the model's own cell rules at its own calibrated thresholds (chosen without TTA:
nothing is re-tuned for it), positives from the DAB vote as the bundled card asks.

Each ``--model PATH[:IMAGE]`` is scored on its held-out data: ``IMAGE`` for a fold model of the
2-fold swap (``scripts/train_deepliif.py --hold-out-image IMAGE``: that whole image), else the
bottom 128 rows of both training images (the bundled model's split); also on the agreement images
(the released model's outputs on 22_2 and 34_3) and, as a check, the training rows. The classical
baseline is in every table.

The adoption rule, written before any score with TTA was read: offer TTA for DeepLIIF (an option,
never the default: it costs 8x) only if the 2-fold fold means improve Dice and AJI by >= 0.01
each with % positive not worse by > 1 point, and the bundled model's held-out rows are not worse
by > 0.01 Dice or AJI.
"""

from __future__ import annotations

import sys
import time

from _common import REPO
from _deepliif_variants import main

sys.path.insert(0, str(REPO / "scripts"))
from train_deepliif import remember_maps as remember  # noqa: E402

from napari_virtual_stain.engine.predictor import Predictor  # noqa: E402
from napari_virtual_stain.tasks.deepliif_cells import model_thresholds  # noqa: E402
from napari_virtual_stain.tasks.deepliif_classical import classical_maps  # noqa: E402
from napari_virtual_stain.tasks.deepliif_evaluation import CLASSICAL, network_method  # noqa: E402

PLAIN, TTA = "network (positives from the DAB vote)", "network with TTA (8 transforms averaged)"


def timed(method):
    """The method, adding its seconds per call to ``run.seconds`` (the cost of TTA, measured alongside)."""
    def run(rgb):
        start = time.perf_counter()
        result = method(rgb)
        run.seconds.append(time.perf_counter() - start)
        return result

    run.seconds = []
    return run


def variants(net, card, train_rows):
    thresholds = model_thresholds(card)
    predictor = Predictor(net, card, device="cpu", precision="fp32")
    plain = timed(network_method(predictor, positive_from="dab"))
    augmented = timed(lambda rgb: predictor_tta(predictor, rgb))

    def cost() -> list[str]:
        ratio = sum(augmented.seconds) / max(sum(plain.seconds), 1e-9)
        return ["", f"Seconds for the model's maps of these images: plain {sum(plain.seconds):.1f}, "
                    f"TTA {sum(augmented.seconds):.1f} ({ratio:.1f}x)."]

    methods = {CLASSICAL: classical_maps, PLAIN: remember(plain), TTA: remember(augmented)}
    return methods, {PLAIN: thresholds, TTA: thresholds}, cost


def predictor_tta(predictor, rgb):
    predictor.tta = True
    try:
        return network_method(predictor, positive_from="dab")(rgb)
    finally:
        predictor.tta = False


if __name__ == "__main__":
    main(__doc__, "deepliif_tta.py", variants,
         "DeepLIIF: test-time augmentation on unseen tissue (experiment, issue 12)")
