"""Training crops for a DeepLIIF network: real 6-panel pairs and synthetic IHC, augmented.

Each sample is an IHC crop (re-stained, :mod:`.deepliif_augment`), its four modality
renderings (real pairs only: the synthetic generator's renderings do not look like a
lab's panels, so synthetic crops teach the segmentation alone) and a class map
(background, negative, positive, border) read from the classified mask. Crops are taken
at a random scale (0.5-2x: a 40x model that also reads 20x slides), turned and flipped,
and only from the rows a source allows, so held-out rows are never seen.

A source may carry a per-pixel loss weight (:func:`gap_weights`, U-Net's weight map): the
narrow background and border between two nuclei counts more, so the network learns to keep
touching nuclei apart instead of painting them as one blob.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from skimage import segmentation as sk_segmentation
from skimage.transform import resize

from ..models.deepliif_unet import BACKGROUND, BORDER, NEGATIVE, POSITIVE
from ..seg_metrics import parse_classified_mask
from .deepliif_augment import StainJitter, restain

BORDER_WIDTH = 2  # px of border drawn around synthetic nuclei (DeepLIIF's masks have 2-3)


def classes_from_mask(mask_rgb: np.ndarray) -> np.ndarray:
    """A DeepLIIF classified mask (red positive, blue negative, green border) -> class map uint8."""
    foreground, labels, classes = parse_classified_mask(mask_rgb)
    out = np.full(labels.shape, BACKGROUND, np.uint8)
    lookup = np.concatenate([[BACKGROUND], np.where(classes == 1, POSITIVE, NEGATIVE)]).astype(np.uint8)
    out[labels > 0] = lookup[labels[labels > 0]]
    out[foreground & (labels == 0)] = BORDER
    return out


def classes_from_labels(labels: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Instance labels + positive flag per label -> class map with borders around and between nuclei."""
    out = np.where(labels > 0, np.where(positive[labels], POSITIVE, NEGATIVE), BACKGROUND).astype(np.uint8)
    border = sk_segmentation.find_boundaries(labels, mode="outer")
    border = ndimage.binary_dilation(border, iterations=BORDER_WIDTH - 1) & (
        (labels == 0) | sk_segmentation.find_boundaries(labels, mode="inner"))
    out[border] = BORDER
    return out


def gap_weights(classes: np.ndarray, w0: float = 5.0, sigma: float = 4.0) -> np.ndarray:
    """U-Net's weight map (Ronneberger et al. 2015, eq. 2) from a class map: 1 + w0 exp(-(d1 + d2)^2 / 2 sigma^2)
    on non-nucleus pixels, d1 and d2 the distances (px) to the nearest and second-nearest nucleus; 1 inside nuclei.

    Nuclei are the 4-connected negative/positive regions (the border class separates touching ones).
    """
    cell = (classes == NEGATIVE) | (classes == POSITIVE)
    labels, n = ndimage.label(cell)
    weights = np.ones(classes.shape, np.float32)
    if n < 2:
        return weights
    reach = int(np.ceil(3 * sigma)) + 1  # farther than this from a nucleus the term is below exp(-4.5)
    d1 = np.full(classes.shape, np.inf, np.float32)
    d2 = np.full(classes.shape, np.inf, np.float32)
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        window = tuple(slice(max(0, b.start - reach), b.stop + reach) for b in box)
        d = ndimage.distance_transform_edt(labels[window] != k).astype(np.float32)
        a, b = d1[window], d2[window]
        d2[window] = np.where(d < a, a, np.minimum(b, d))
        d1[window] = np.minimum(a, d)
    gap = np.exp(-((d1 + d2) ** 2) / (2 * sigma ** 2))
    weights[~cell] += np.float32(w0) * np.nan_to_num(gap[~cell], nan=0.0)
    return weights


@dataclass
class Source:
    """One training image: IHC (Y, X, 3) uint8, modalities (12, Y, X) in [-1, 1] or None, class map."""

    ihc: np.ndarray
    classes: np.ndarray
    modalities: np.ndarray | None = None
    rows: slice = field(default_factory=lambda: slice(None))  # rows crops may come from (the rest is held out)
    name: str = ""
    weights: np.ndarray | None = None  # (Y, X) float32 loss weight per pixel (gap_weights); None = all 1

    @property
    def usable_rows(self) -> int:
        start, stop, _ = self.rows.indices(self.ihc.shape[0])
        return stop - start


def real_source(panels, train_rows: slice, name: str = "") -> Source:
    """A Source from a DeepLIIF 6-panel image (``io.deepliif_panels.read_panels``)."""
    modalities = np.concatenate([p.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0 for p in panels.targets])
    return Source(panels.ihc, classes_from_mask(panels.segmentation), modalities, train_rows, name)


def synthetic_sources(count: int, shape: tuple[int, int], seed: int) -> list[Source]:
    """Synthetic IHC fields (segmentation supervision only) with varied density and positive fraction."""
    from ..io.synthetic_ihc import make_ihc

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        field = make_ihc(shape, seed=int(rng.integers(1 << 31)), positive_fraction=float(rng.uniform(0.05, 0.6)))
        out.append(Source(field["rgb"], classes_from_labels(field["labels"], field["positive"]), None,
                          slice(None), f"synthetic-{i}"))
    return out


def pseudo_labelled_source(ihc: np.ndarray, labels: np.ndarray, positive: np.ndarray, name: str = "") -> Source:
    """A real IHC image without ground truth, its cells labelled by another method (e.g. the
    classical baseline): segmentation supervision only, like a synthetic field, but with real
    tissue, stains and scanner."""
    return Source(np.asarray(ihc)[..., :3], classes_from_labels(labels, positive), None, slice(None), name)


@dataclass
class SampleSettings:
    crop: int = 128
    scale: tuple[float, float] = (0.5, 2.0)  # output pixels per source pixel, drawn log-uniformly
    synthetic_fraction: float = 0.25
    jitter: StainJitter = field(default_factory=StainJitter)
    pseudo_fraction: float = 0.0  # share of samples from pseudo-labelled real images, when there are any


def _crop(source: Source, size: int, rng: np.random.Generator):
    start, stop, _ = source.rows.indices(source.ihc.shape[0])
    y = int(rng.integers(start, stop - size + 1))
    x = int(rng.integers(0, source.ihc.shape[1] - size + 1))
    box = (slice(y, y + size), slice(x, x + size))
    mods = None if source.modalities is None else source.modalities[(slice(None),) + box]
    weights = None if source.weights is None else source.weights[box]
    return source.ihc[box], mods, source.classes[box], weights


def draw_sample(real: list[Source], synthetic: list[Source], rng: np.random.Generator,
                settings: SampleSettings = SampleSettings(), pseudo: list[Source] = ()) -> dict:
    """One augmented training sample (float32 arrays, channels first).

    ``pseudo`` (pseudo-labelled real images) is drawn from ``settings.pseudo_fraction`` of the
    time; without it the random draws are the same as before it existed, so earlier recipes
    (the bundled model's) still give the same samples.
    """
    if pseudo and rng.uniform() < settings.pseudo_fraction:
        pool = list(pseudo)
    else:
        pool = synthetic if synthetic and (not real or rng.uniform() < settings.synthetic_fraction) else real
    source = pool[int(rng.integers(len(pool)))]
    c = settings.crop
    scale = float(np.exp(rng.uniform(*np.log(settings.scale))))
    size = int(np.clip(round(c / scale), 16, min(source.usable_rows, source.ihc.shape[1])))
    ihc, mods, classes, weights = _crop(source, size, rng)
    if size != c:
        ihc = np.clip(resize(ihc.astype(np.float32), (c, c, 3), order=1, preserve_range=True, anti_aliasing=size > c),
                      0, 255).astype(np.uint8)
        classes = resize(classes, (c, c), order=0, preserve_range=True, anti_aliasing=False).astype(np.uint8)
        if weights is not None:
            weights = resize(weights, (c, c), order=1, preserve_range=True, anti_aliasing=False).astype(np.float32)
        if mods is not None:
            mods = resize(mods, (mods.shape[0], c, c), order=1, preserve_range=True,
                          anti_aliasing=size > c).astype(np.float32)
    ihc = restain(ihc, rng, settings.jitter)
    turns, flip = int(rng.integers(4)), bool(rng.integers(2))

    def orient(a: np.ndarray, axes: tuple[int, int]) -> np.ndarray:
        a = np.rot90(a, turns, axes=axes)
        return np.ascontiguousarray(np.flip(a, axis=axes[1]) if flip else a)

    return {
        "ihc": orient(ihc.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0, (1, 2)),
        "modalities": None if mods is None else orient(mods, (1, 2)),
        "classes": orient(classes, (0, 1)).astype(np.int64),
        "weights": None if weights is None else orient(weights, (0, 1)),
    }
