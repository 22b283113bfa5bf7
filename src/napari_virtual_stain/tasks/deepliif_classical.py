"""The classical baseline every DeepLIIF score is shown next to: colour deconvolution,
threshold, watershed, and DeepLIIF's positive/negative rule on the DAB channel.

1. ``skimage.color.rgb2hed`` unmixes the IHC image into hematoxylin and DAB optical
   densities (Ruifrok & Johnston's stain vectors);
2. nuclei are where the smoothed hematoxylin lies above Li's threshold (computed on the
   image itself, so pale and dark counterstains both get one; the hematoxylin is clipped
   at its 99th percentile first, so a few very dark pixels cannot pull it up), or where
   DAB lies above ``dab_threshold`` (positive nuclei hide part of their hematoxylin);
   holes are filled and specks smaller than ``min_area`` removed;
3. touching nuclei are split by a watershed on the distance transform, seeded by its
   local maxima at least ``min_distance`` apart;
4. a pixel votes positive where DAB is above ``dab_threshold`` and a cell is positive when
   half or more of its pixels vote positive (DeepLIIF's majority rule, red >= blue).

The parameters were chosen on the *training* rows of the two DeepLIIF sample pairs (the
rows the bundled network trains on), from a handful of variants (Otsu, Li or triangle
threshold on H + DAB or on H with a separate DAB rule; seed distance 6 or 8; smoothing 1 or
1.5 px): the best mean Dice + AJI there. Thresholding H + DAB together fails on slides
with a few very dark DAB nuclei (Otsu then separates DAB from everything else).

The result is drawn the way the DeepLIIF networks draw their fused segmentation (red
positive, blue negative, green borders between cells) plus a marker image (the DAB
amount), so the *same* cell rules, thresholds, counts and scorer apply to the baseline as
to a network: the comparison differs only in where the segmentation came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import color, feature, filters, morphology, segmentation

# DAB optical density of a strongly positive nucleus: maps the DAB amount to 0-255 for the marker image.
DAB_FULL_SCALE = 0.25
HEMATOXYLIN_CLIP_PERCENTILE = 99.0


@dataclass(frozen=True)
class ClassicalSettings:
    """Parameters of the baseline, for 40x (nuclei about 20-30 px across)."""

    smoothing: float = 1.5  # Gaussian sigma (px) before thresholding
    dab_threshold: float = 0.05  # DAB optical density (skimage's rgb2hed units) of a positive pixel
    min_area: int = 30  # px: smaller foreground specks are not nuclei
    min_distance: int = 8  # px between watershed seeds


def unmix(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hematoxylin, DAB) optical densities of an (Y, X, 3) uint8 IHC image, float32."""
    hed = color.rgb2hed(np.asarray(rgb)[..., :3])
    return hed[..., 0].astype(np.float32), hed[..., 2].astype(np.float32)


def nuclei_labels(hematoxylin: np.ndarray, dab: np.ndarray, settings: ClassicalSettings = ClassicalSettings()
                  ) -> np.ndarray:
    """Instance labels (int32) of the nuclei: Li's threshold on H, a DAB rule, then a distance watershed."""
    h = ndimage.gaussian_filter(hematoxylin, settings.smoothing)
    d = ndimage.gaussian_filter(dab, settings.smoothing)
    clipped = np.minimum(h, np.percentile(h, HEMATOXYLIN_CLIP_PERCENTILE))
    if float(clipped.max()) <= float(clipped.min()):
        return np.zeros(h.shape, np.int32)
    foreground = (h > filters.threshold_li(clipped)) | (d > settings.dab_threshold)
    foreground = ndimage.binary_fill_holes(foreground)
    foreground = morphology.remove_small_objects(foreground, max_size=settings.min_area - 1)
    if not foreground.any():
        return np.zeros(h.shape, np.int32)
    distance = ndimage.distance_transform_edt(foreground)
    blobs, _ = ndimage.label(foreground)
    peaks = feature.peak_local_max(distance, min_distance=settings.min_distance, labels=blobs, exclude_border=False)
    markers = np.zeros(distance.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return segmentation.watershed(-distance, markers, mask=foreground).astype(np.int32)


def dab_votes(dab: np.ndarray, settings: ClassicalSettings = ClassicalSettings()) -> np.ndarray:
    """Bool per pixel: the smoothed DAB optical density is that of a positive pixel."""
    return ndimage.gaussian_filter(dab, settings.smoothing) > settings.dab_threshold


def positive_cells(labels: np.ndarray, dab: np.ndarray, settings: ClassicalSettings = ClassicalSettings()
                   ) -> np.ndarray:
    """Bool per label (index 0 = background): half or more of the cell's pixels are DAB-positive."""
    n = int(labels.max(initial=0))
    votes = np.bincount(labels.ravel(), weights=dab_votes(dab, settings).ravel(), minlength=n + 1)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    positive = votes * 2 >= np.maximum(areas, 1)
    positive[0] = False
    return positive


def classical_cells(rgb: np.ndarray, settings: ClassicalSettings = ClassicalSettings()
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(instance labels, positive per label, DAB optical density) of an (Y, X, 3) uint8 IHC image."""
    hematoxylin, dab = unmix(rgb)
    labels = nuclei_labels(hematoxylin, dab, settings)
    return labels, positive_cells(labels, dab, settings), dab


def classical_maps(rgb: np.ndarray, settings: ClassicalSettings = ClassicalSettings()
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(segmentation RGB, marker RGB), both (Y, X, 3) uint8, drawn as a DeepLIIF network draws them."""
    return draw_maps(*classical_cells(rgb, settings))


def draw_maps(labels: np.ndarray, positive: np.ndarray, dab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The baseline's cells drawn as DeepLIIF's fused segmentation and marker images (see :func:`classical_maps`)."""
    seg = np.zeros(labels.shape + (3,), np.uint8)
    inside = labels > 0
    seg[inside & positive[labels], 0] = 255
    seg[inside & ~positive[labels], 2] = 255
    borders = segmentation.find_boundaries(labels, mode="inner") & inside
    seg[borders] = (0, 255, 0)  # a green border splits touching cells, as in DeepLIIF's maps
    marker = np.clip(dab / DAB_FULL_SCALE * 255.0, 0, 255).astype(np.uint8)
    return seg, np.repeat(marker[..., None], 3, axis=-1)
