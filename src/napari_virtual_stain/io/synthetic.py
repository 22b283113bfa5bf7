"""The project's own seeded, physically plausible synthetic paired data.

Four generators, each deterministic for a given ``seed`` and returning float32 images
in documented ranges plus the ground truth that made them:

* :func:`make_cells_2d` — cultured cells: label-free brightfield (wave optics of a
  refractive-index map, defocused) + nuclear and membrane fluorescence + instance labels.
* :func:`make_cells_3d` — the same as a z-stack: a brightfield focal series (contrast
  changes sign through focus) + fluorescence volumes.
* :func:`make_ihc` — Ki67 IHC by Beer-Lambert with the Ruifrok & Johnston hematoxylin and
  DAB stain vectors + the DeepLIIF modalities (hematoxylin, DAPI, Lap2, marker) + classes.
* :func:`make_multiplex` — MIBI-like ion-count tissue with a realistic marker panel and
  known cell types (CD3 within CD45, CD20 apart from CD3, PanCK apart from CD45...).

:class:`Microscope` describes how the label-free images are taken; ``Microscope.different()``
is a visibly different one (other focus, contrast, noise, illumination, camera) for
domain-shift and fine-tuning experiments.
"""

from __future__ import annotations

from .synthetic_cells import make_cells_2d, make_cells_3d
from .synthetic_ihc import STAIN_DAB, STAIN_HEMATOXYLIN, make_ihc, unmix_od
from .synthetic_multiplex import CELL_TYPES, CHANNELS as MULTIPLEX_CHANNELS, make_multiplex
from .synthetic_optics import Microscope

__all__ = [
    "Microscope",
    "make_cells_2d",
    "make_cells_3d",
    "make_ihc",
    "make_multiplex",
    "unmix_od",
    "STAIN_HEMATOXYLIN",
    "STAIN_DAB",
    "MULTIPLEX_CHANNELS",
    "CELL_TYPES",
]
