"""napari sample data (File > Open Sample > napari-virtual-stain): layer data tuples.

Each sample is generated in memory by the seeded generators of :mod:`.synthetic`
(deterministic, nothing downloaded), except :func:`sample_skimage_ihc`, the real IHC
image that ships with scikit-image. Ground-truth layers are added hidden, so what the
user sees first is what a model gets as input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .synthetic import Microscope, make_cells_2d, make_cells_3d, make_ihc, make_multiplex

SEED = 0

LayerDataTuple = tuple  # (data, kwargs, layer_type)


def _meta(generator: str, axes: str, **more: Any) -> dict:
    return {"synthetic": True, "generator": generator, "seed": SEED, "axes": axes, **more}


def _truth(data: np.ndarray, name: str, colormap: str, scale, metadata: dict) -> LayerDataTuple:
    return (data, {"name": name, "colormap": colormap, "blending": "additive", "visible": False,
                   "contrast_limits": (0.0, 1.0), "scale": scale, "metadata": metadata}, "image")


def _label_free(cells: dict, generator: str, axes: str, scale: tuple) -> list[LayerDataTuple]:
    meta = _meta(generator, axes, pixel_size_um=scale)
    return [
        (cells["brightfield"], {"name": "brightfield", "colormap": "gray", "scale": scale,
                                "metadata": {**meta, "channel_name": "brightfield"}}, "image"),
        _truth(cells["nuclei"], "nuclei (truth)", "cyan", scale, {**meta, "channel_name": "nuclei"}),
        _truth(cells["membrane"], "membrane (truth)", "magenta", scale, {**meta, "channel_name": "membrane"}),
        (cells["labels"], {"name": "cells (truth)", "visible": False, "scale": scale, "metadata": meta}, "labels"),
    ]


def sample_label_free_2d() -> list[LayerDataTuple]:
    """256 x 256 brightfield of cultured cells, with hidden nuclei/membrane stains and cell labels."""
    mic = Microscope()
    cells = make_cells_2d((256, 256), seed=SEED, microscope=mic)
    return _label_free(cells, "make_cells_2d", "YX", (mic.pixel_size_um,) * 2)


def sample_label_free_3d() -> list[LayerDataTuple]:
    """32 x 256 x 256 brightfield focal series, with hidden nuclei/membrane volumes and cell labels."""
    cells = make_cells_3d((32, 256, 256), seed=SEED)
    return _label_free(cells, "make_cells_3d", "ZYX", tuple(cells["pixel_size_um"]))


def sample_ihc() -> list[LayerDataTuple]:
    """512 x 512 Ki67 IHC (RGB) with its hidden DeepLIIF modalities, nucleus labels and classes."""
    ihc = make_ihc((512, 512), seed=SEED)
    meta = _meta("make_ihc", "YX")
    layers: list[LayerDataTuple] = [
        (ihc["rgb"], {"name": "IHC (Ki67)", "rgb": True, "metadata": {**meta, "axes": "YXS"}}, "image"),
    ]
    for key, colormap in (("hematoxylin", "blue"), ("dapi", "gray"), ("lap2", "green"), ("marker", "red")):
        layers.append(_truth(ihc[key], f"{key} (truth)", colormap, (1.0, 1.0), {**meta, "channel_name": key}))
    layers.append((ihc["labels"], {"name": "nuclei (truth)", "visible": False, "metadata": meta}, "labels"))
    layers.append((ihc["classes"], {"name": "classes (truth)", "visible": False,
                                    "metadata": {**meta, "classes": {"1": "negative", "2": "positive"}}},
                   "labels"))
    return layers


def sample_multiplex() -> list[LayerDataTuple]:
    """512 x 512 MIBI-like ion counts, one layer per marker, with hidden cell labels."""
    mp = make_multiplex((512, 512), seed=SEED)
    names = mp["channel_names"]
    meta = _meta("make_multiplex", "CYX", channel_names=names)
    # sparse counts: show up to the 99.9th percentile, not up to the single brightest pixel
    limits = [(0.0, float(max(2.0, np.percentile(channel, 99.9)))) for channel in mp["image"]]
    image = (mp["image"], {"name": names, "channel_axis": 0, "contrast_limits": limits,
                           "metadata": [{**meta, "channel_name": n} for n in names]}, "image")
    cells = (mp["labels"], {"name": "cells (truth)", "visible": False,
                            "metadata": {**meta, "cell_types": mp["cell_types"].tolist(),
                                         "cell_type_names": mp["cell_type_names"]}}, "labels")
    return [image, cells]


def sample_skimage_ihc() -> list[LayerDataTuple]:
    """The real IHC image shipped with scikit-image (hematoxylin + DAB, 512 x 512 RGB)."""
    from skimage import data

    rgb = data.immunohistochemistry()
    return [(rgb, {"name": "IHC (scikit-image)", "rgb": True,
                   "metadata": {"synthetic": False, "source": "skimage.data.immunohistochemistry",
                                "axes": "YXS"}}, "image")]
