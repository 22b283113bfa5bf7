"""DeepLIIF's 6-panel training images: IHC | hematoxylin | DAPI | Lap2 | marker | segmentation.

A DeepLIIF training PNG is an RGB image six times as wide as it is tall; the panels sit
side by side, left to right, each ``H x H``. Users who have DeepLIIF training data have
exactly these files, so we open them as six aligned layers (for inspection, or as pairs
for fine-tuning) instead of one very wide picture.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ReaderError

PANEL_NAMES = ("IHC", "Hematoxylin", "DAPI", "Lap2", "Marker", "Segmentation")
PANEL_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


@dataclass
class DeepLIIFPanels:
    """The six panels of one training image, each (H, H, 3) uint8."""

    ihc: np.ndarray
    hematoxylin: np.ndarray
    dapi: np.ndarray
    lap2: np.ndarray
    marker: np.ndarray
    segmentation: np.ndarray
    source: str = ""

    @property
    def panels(self) -> list[np.ndarray]:
        return [self.ihc, self.hematoxylin, self.dapi, self.lap2, self.marker, self.segmentation]

    @property
    def targets(self) -> list[np.ndarray]:
        """The four modality panels, in the network's output order."""
        return [self.hematoxylin, self.dapi, self.lap2, self.marker]


def check_rgb8(data: np.ndarray, what: str) -> np.ndarray:
    """Return ``data`` as (Y, X, 3) uint8, or raise a sentence saying why it cannot be used.

    Fully opaque RGBA loses its alpha; real transparency, grey images and 16-bit colour
    are refused (DeepLIIF networks were trained on 8-bit brightfield RGB).
    """
    data = np.asarray(data)
    if data.ndim == 2 or (data.ndim == 3 and data.shape[-1] == 1):
        raise ReaderError(f"{what} is a grey image, but DeepLIIF needs a colour (RGB) brightfield IHC image.")
    if data.ndim != 3 or data.shape[-1] not in (3, 4):
        raise ReaderError(f"{what} has shape {data.shape}, which is not an RGB image (Y, X, 3).")
    if data.dtype != np.uint8:
        if data.dtype.kind in "ui" and data.dtype.itemsize > 1:
            raise ReaderError(f"{what} is a {data.dtype.itemsize * 8}-bit colour image; DeepLIIF needs 8-bit RGB "
                              "(convert it to 8 bits per channel first).")
        raise ReaderError(f"{what} holds {data.dtype} values; DeepLIIF needs 8-bit RGB.")
    if data.shape[-1] == 4:
        if not np.all(data[..., 3] == 255):
            raise ReaderError(f"{what} has a transparency (alpha) channel with see-through pixels; "
                              "save it as plain RGB without transparency.")
        data = data[..., :3]
    return data


def split_panels(data: np.ndarray, source: str = "the image") -> DeepLIIFPanels:
    """Cut a (H, 6H, 3) array into its six panels."""
    data = check_rgb8(data, source)
    height, width = data.shape[:2]
    if width != 6 * height:
        raise ReaderError(
            f"{source} is {width} x {height} pixels; a DeepLIIF 6-panel image must be exactly six times "
            f"as wide as it is tall (IHC, hematoxylin, DAPI, Lap2, marker, segmentation side by side).")
    panels = [np.ascontiguousarray(data[:, i * height:(i + 1) * height]) for i in range(6)]
    return DeepLIIFPanels(*panels, source=source)


def read_panels(path: str | os.PathLike) -> DeepLIIFPanels:
    """Read a DeepLIIF 6-panel training image from disk."""
    path = Path(path)
    if not path.is_file():
        raise ReaderError(f"There is no file at {path}.")
    import imageio.v3 as iio

    try:
        data = np.asarray(iio.imread(str(path)))
    except Exception as err:
        raise ReaderError(f"{path.name} could not be read as an image (damaged or not a picture).") from err
    return split_panels(data, path.name)


def panel_layers(panels: DeepLIIFPanels, name: str = "deepliif") -> list[tuple]:
    """Six RGB image LayerDataTuples named ``"<name> · <panel>"``; only the IHC is visible at first."""
    tuples = []
    for i, (panel_name, data) in enumerate(zip(PANEL_NAMES, panels.panels)):
        kwargs = {"name": f"{name} · {panel_name}", "rgb": True, "visible": i == 0,
                  "metadata": {"deepliif_panel": panel_name, "source": panels.source}}
        tuples.append((data, kwargs, "image"))
    return tuples


def looks_like_panels(path: str | os.PathLike) -> bool:
    """Cheap check (header only where possible) that a file is a 6-panel image."""
    path = Path(path)
    if path.suffix.lower() not in PANEL_SUFFIXES or not path.is_file():
        return False
    try:
        import imageio.v3 as iio

        props = iio.improps(str(path))
    except Exception:
        return False
    shape = tuple(props.shape)
    return len(shape) == 3 and shape[-1] in (3, 4) and shape[1] == 6 * shape[0]


def read_deepliif_panels(path: str | os.PathLike | list) -> list[tuple]:
    """napari reader function: the six panels of a DeepLIIF training image as layers."""
    paths = path if isinstance(path, list) else [path]
    tuples = []
    for p in paths:
        tuples += panel_layers(read_panels(p), Path(p).stem)
    return tuples


def get_panels_reader(path: str | os.PathLike | list):
    """napari reader contribution: claims only files shaped like 6-panel images."""
    paths = path if isinstance(path, list) else [path]
    if paths and all(looks_like_panels(p) for p in paths):
        return read_deepliif_panels
    return None
