"""Markers that stay lazy until an action reads its region: a view of a big multiplex image reads only the view.

:class:`~napari_virtual_stain.workflows.maxim.MarkerInput` assembles the whole (C, Y, X)
stack in memory when an action starts. Imputation, attribution and the QC read only
their region (and the model's margin) of that stack, so for them :class:`LazyMarkers`
hands over a dask stack instead: a current view at a slide's full resolution reads the
view, not the slide. Kept apart from ``workflows.maxim`` so that module stays the one
description of the actions.
"""

from __future__ import annotations

import numpy as np

from ..tasks import maxim as task
from .maxim import MarkerInput


def _lazy(array):
    import dask.array as da

    if isinstance(array, da.Array):
        return array
    # one chunk for arrays in memory (no copy); zarr and other lazy arrays keep their own chunks
    chunks = array.shape if isinstance(array, np.ndarray) else getattr(array, "chunks", "auto")
    return da.from_array(array, chunks=chunks)


class LazyMarkers(MarkerInput):
    def read(self):
        """The (C, Y, X) stack as a dask array and its names (checked from shapes and dtypes alone)."""
        import dask.array as da

        if self.separate:
            names = task.check_channels(self.data, self.names)
            return da.stack([_lazy(plane) for plane in self.data]), names
        names = self.check()
        return _lazy(self.data), names
