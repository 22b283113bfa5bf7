"""Positive or negative from the IHC's own DAB: a cell rule a model card of ours may ask for.

A DeepLIIF network draws each cell pixel red (positive) or blue (negative); deepliif calls a
cell positive when it has at least as many red pixels as blue. Our compact model learnt that
colour from two annotated images, and on tissue it never saw its positive/negative call is
the weakest of its answers (bench/RESULTS.md, issue 12): colour deconvolution's DAB vote
(:mod:`.deepliif_classical`: ``rgb2hed``'s DAB optical density, smoothed, above a positive
pixel's level) is closer to the truth there. With ``positive_from = "dab"`` the network keeps
saying *where* the cells are and the IHC's DAB says *which* are positive:

- every pixel of the fused segmentation keeps its cell strength (red + blue, which the
  segmentation threshold cuts) and its green (the borders), so the cells, their outlines,
  Dice and AJI are exactly the network's;
- its red and blue are redrawn: all red where the pixel's DAB votes positive, all blue where
  it does not. deepliif's majority rule on the redrawn map is then the DAB majority vote of
  the classical baseline, and every later step (size and marker rules, counts, SegRefined,
  the dock's sliders) runs unchanged.

The rule is applied when the network's output is written (strip by strip, with the few rows
of context the smoothing needs), so the Segmentation layer and files show the classes that
are counted. deepliif's release folders and maps a user brought keep deepliif's rule: the
official tools give their answers.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import CheckpointError, InputError
from .deepliif_cells import CARD_KEY
from .deepliif_classical import ClassicalSettings, dab_votes, unmix

NETWORK, DAB = "network", "dab"
POSITIVE_FROM = (NETWORK, DAB)
ENTRY = "positive_from"  # its key in a model card's ``extra["cell_thresholds"]``


def check_positive_from(value: str) -> str:
    if value not in POSITIVE_FROM:
        raise InputError(f"Positive cells come from {' or '.join(repr(v) for v in POSITIVE_FROM)}, not {value!r}.")
    return value


def card_positive_from(card) -> str:
    """What a model's card asks for (``network``, deepliif's rule, for a card that says nothing)."""
    stored = (getattr(card, "extra", {}) or {}).get(CARD_KEY) if card is not None else None
    value = stored.get(ENTRY, NETWORK) if isinstance(stored, dict) else NETWORK
    if value not in POSITIVE_FROM:
        name = getattr(card, "name", "this model")
        raise CheckpointError(f"The model card of {name!r} asks for positive cells from {value!r}; this version knows "
                              f"{' and '.join(POSITIVE_FROM)}.")
    return value


def redraw(segmentation: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """A fused segmentation (Y, X, 3) uint8 with red/blue redrawn from ``positive`` (Y, X) bool; the
    cell strength (red + blue, kept below 256) and green unchanged wherever they decide anything."""
    seg = np.asarray(segmentation)
    strength = np.minimum(seg[..., 0].astype(np.int16) + seg[..., 2], 255).astype(np.uint8)
    out = seg.copy()
    out[..., 0] = np.where(positive, strength, 0)
    out[..., 2] = np.where(positive, 0, strength)
    return out


def halo(settings: ClassicalSettings = ClassicalSettings()) -> int:
    """Rows of context a strip's DAB vote needs on each side (scipy's Gaussian reaches 4 sigma)."""
    return int(math.ceil(4 * settings.smoothing)) + 1


def dab_positive(ihc, rows: slice, settings: ClassicalSettings = ClassicalSettings()) -> np.ndarray:
    """The DAB vote (bool, rows x width) of ``rows`` of an IHC image (Y, X, 3) uint8 array-like, read
    with enough rows around them that a strip's vote equals the whole image's."""
    height = int(ihc.shape[0])
    start, stop = rows.indices(height)[:2]
    lo, hi = max(0, start - halo(settings)), min(height, stop + halo(settings))
    _, dab = unmix(np.asarray(ihc[lo:hi]))
    return dab_votes(dab, settings)[start - lo:stop - lo]


class DabRedraw:
    """For the DeepLIIF output sink: redraws each segmentation strip from the IHC rows under it."""

    def __init__(self, ihc, settings: ClassicalSettings = ClassicalSettings()):
        if len(ihc.shape) != 3 or ihc.shape[-1] < 3:
            raise InputError(f"The DAB vote needs an RGB IHC image (Y, X, 3), not shape {tuple(ihc.shape)}.")
        self.ihc, self.settings = ihc, settings

    def __call__(self, rows: slice, segmentation_strip: np.ndarray) -> np.ndarray:
        return redraw(segmentation_strip, dab_positive(self.ihc, rows, self.settings))


def redraw_whole(ihc: np.ndarray, segmentation: np.ndarray) -> np.ndarray:
    """:func:`redraw` of a whole image at once (the scoring scripts' networks)."""
    return redraw(segmentation, dab_votes(unmix(np.asarray(ihc))[1]))
