"""The preprocessing workflows: tile shadow, flat field, focus and normalisation.

The Preprocess dock and the ``tile-shadow``, ``flatfield``, ``focus`` and ``normalise``
commands build the same settings (one evented dataclass per operation) and call the same
:func:`run` on an image and its axes letters (``YX``, ``ZYX``, ``CZYX``, ``YXS`` for colour
samples, ...). Colour samples and channels are moved first here, once, and the results come
back in the input's layout, so an RGB or multi-channel image is corrected, scored and
normalised alike whichever door it came through. Corrections come back in the input's dtype
unless ``float32`` is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from psygnal import evented

from ..engine.normalise import compute_stats, flat_channels_warning, normalise
from ..errors import InputError
from ..preprocess import cast_like, correct_flatfield, correct_tile_shadow, select_in_focus
from ..preprocess.focus import DEFAULT_BAND
from ..tasks.layers import output_layer_name
from .settings_files import Remembered

CORRECTED, ARTIFACT = "shadow-corrected", "artifact estimate"
FLAT, BACKGROUND = "flat-field corrected", "background estimate"
IN_FOCUS, NORMALISED = "in-focus planes", "normalised"


@evented
@dataclass
class TileShadowSettings(Remembered):
    """Average the emptiest camera tiles into an artifact and subtract it on the grid (paper 000)."""

    tile: tuple[int, ...] = (304,)  # one side or (height, width)
    n_empty: int | None = None  # None: the emptiest ``fraction`` of the complete tiles
    fraction: float = 0.1
    criterion: str = "flat"
    statistic: str = "mean"
    tiles: tuple | None = None  # explicit (row, column) grid indices of empty tiles
    remove_background: bool = False
    strict: bool = False
    float32: bool = False
    action = "Tile-shadow correction"

    def problems(self) -> list[str]:
        found = []
        if len(self.tile) not in (1, 2) or any(int(t) < 2 for t in self.tile):
            found.append(f"The tile size must be one or two sizes of at least 2 pixels, not {tuple(self.tile)}.")
        if self.n_empty is not None and self.n_empty < 1:
            found.append(f"Average at least 1 tile, not {self.n_empty}.")
        if not 0 < self.fraction <= 1:
            found.append(f"The fraction of tiles to average must be above 0 and at most 1, not {self.fraction}.")
        for name, value, choices in (("empty means", self.criterion, ("flat", "dark", "bright")),
                                     ("statistic", self.statistic, ("mean", "median"))):
            if value not in choices:
                found.append(f"'{name}' must be one of {', '.join(choices)}, not {value!r}.")
        return found


@evented
@dataclass
class FlatFieldSettings(Remembered):
    """A smooth background per plane, divided out or subtracted (each plane keeps its mean)."""

    sigma: float = 50.0
    mode: str = "divide"
    method: str = "gaussian"
    float32: bool = False
    action = "Flat-field correction"

    def problems(self) -> list[str]:
        found = [] if self.sigma > 0 else [f"The background smoothing must be positive, not {self.sigma} pixels."]
        for name, value, choices in (("mode", self.mode, ("divide", "subtract")),
                                     ("background", self.method, ("gaussian", "opening"))):
            if value not in choices:
                found.append(f"The {name} must be one of {', '.join(choices)}, not {value!r}.")
        return found


@evented
@dataclass
class FocusSettings(Remembered):
    """Score every z-plane (PLLS, paper 002) and keep the ``keep`` sharpest, or those at least ``min_score``."""

    keep: int | None = 1
    min_score: float | None = None
    sharper: str = "higher"
    band: tuple[float, float] | None = None  # None: the first ring to 0.125 cycles/pixel
    channel: int | None = None  # None: the mean over channels
    action = "Focus selection"

    def problems(self) -> list[str]:
        found = []
        if self.keep is not None and self.min_score is not None:
            found.append("Choose either the number of planes to keep or a minimum score, not both.")
        if self.keep is not None and self.keep < 1:
            found.append(f"Keep at least 1 plane, not {self.keep}.")
        if self.sharper not in ("higher", "lower"):
            found.append(f"'sharper' must be 'higher' or 'lower', not {self.sharper!r}.")
        return found


@evented
@dataclass
class NormaliseSettings(Remembered):
    """Each channel's low and high percentiles to 0 and 1, as the models' inputs are normalised."""

    low: float = 1.0
    high: float = 99.8
    clip: bool = False
    action = "Normalisation"

    def problems(self) -> list[str]:
        if not 0 <= self.low < self.high <= 100:
            return [f"The percentiles must satisfy 0 <= low < high <= 100, not {self.low} and {self.high}."]
        return []


@dataclass
class PreprocessResult:
    outputs: dict[str, np.ndarray]  # what -> array in the input's layout (axes)
    axes: str
    info: dict = field(default_factory=dict)  # tiles used, kept planes and scores, statistics...
    warnings: list[str] = field(default_factory=list)

    def origin(self) -> tuple[int, ...]:
        """Where the outputs start in the input layer's pixels (napari axes, no colour axis):
        the origin, or the first kept plane for focus selection."""
        axes = self.axes.replace("S", "")
        start = [0] * len(axes)
        if "kept_planes" in self.info and self.info["kept_planes"]:
            start[axes.index("Z")] = int(self.info["kept_planes"][0])
        return tuple(start)

    def layer_tuples(self, source: str, scale=None, translate=None, place=None) -> list[tuple]:
        """New image layers "<source> · <what>" on the source's grid (kept planes at their z).

        ``place(start)`` gives the layer arguments (scale, translate, affine) that put an
        array starting at ``start`` (input pixels) over the input, with all of its transform
        (the docks pass ``widgets.geometry.placement``); without it ``scale`` and
        ``translate`` are the input's.
        """
        start = self.origin()
        if place is not None:
            where = dict(place(start))
        else:
            scale = [float(s) for s in scale]
            where = {"scale": scale, "translate": [float(t) + i * s for t, i, s in zip(translate, start, scale)]}
        rgb = self.axes.endswith("S")
        metadata = dict(self.info, preprocessed_from=source)
        tuples = []
        for what, data in self.outputs.items():
            if rgb and data.dtype.kind == "f" and what in (ARTIFACT, BACKGROUND):  # colour floats show in [0, 1] only
                data = cast_like(data, self.info.get("dtype", "float32"))
            tuples.append((data, {"name": output_layer_name(source, what), **where,
                                  "metadata": metadata, "rgb": rgb}, "image"))
        return tuples


def layer_axes(ndim: int, rgb: bool) -> str:
    """The axes letters of a napari layer's data (a grey 4D layer is channels of a stack)."""
    if rgb:
        return "ZYX"[-(ndim - 1):] + "S" if ndim <= 4 else "TZYX"[-(ndim - 1):] + "S"
    return "TCZYX"[-ndim:] if ndim <= 5 else "?" * (ndim - 5) + "TCZYX"


def input_problem(settings, shape, axes: str, name: str) -> str | None:
    """Why this image cannot go through this operation (one sentence), or None."""
    if "T" in axes:
        return f"'{name}' is a time series: process one time point at a time."
    if not isinstance(settings, FocusSettings):
        return None
    spatial = [n for n, a in zip(shape, axes) if a in "ZYX"]
    kind = "RGB " if axes.endswith("S") else ""
    if "Z" not in axes:
        return (f"Focus selection needs a z-stack, but '{name}' is a single {kind}plane "
                f"({'x'.join(map(str, spatial))}): choose a (Z, Y, X) stack.")
    if shape[axes.index("Z")] < 2:
        return f"Focus selection needs at least 2 planes, but '{name}' has {shape[axes.index('Z')]}."
    return None


def _channels_first(data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    if axes.endswith("S"):
        return np.moveaxis(data, -1, 0), "C" + axes[:-1]
    return data, axes


def _restore(values, axes: str) -> np.ndarray:
    return np.moveaxis(np.asarray(values), 0, -1) if axes.endswith("S") else np.asarray(values)


def run(settings, data, axes: str, *, name: str = "image", channel_names=None, progress=None,
        cancel=None) -> PreprocessResult:
    """Run one preprocessing operation on ``data`` with these ``axes`` letters; the input is not modified."""
    problems = settings.problems()
    data = np.asarray(data)
    if len(axes) != data.ndim:
        raise InputError(f"'{name}' has {data.ndim} axes but {len(axes)} axis letters ({axes}) were given.")
    problem = input_problem(settings, data.shape, axes, name)
    if problems or problem:
        raise InputError((problems + [problem])[0])
    core, core_axes = _channels_first(data, axes)
    info: dict = {"dtype": str(data.dtype)}
    outputs, warnings = {}, []

    def typed(values):
        return values if settings.float32 else cast_like(values, data.dtype)

    if isinstance(settings, TileShadowSettings):
        tile = tuple(settings.tile) * 2 if len(settings.tile) == 1 else tuple(settings.tile)
        result = correct_tile_shadow(
            core, tile, tiles=settings.tiles, n_empty=settings.n_empty, fraction=settings.fraction,
            criterion=settings.criterion, statistic=settings.statistic, remove_background=settings.remove_background,
            strict=settings.strict, progress=progress, cancel=cancel)
        outputs = {CORRECTED: typed(_restore(result.corrected, axes)), ARTIFACT: _restore(result.artifact, axes)}
        info["tiles"] = result.tiles
    elif isinstance(settings, FlatFieldSettings):
        result = correct_flatfield(core, sigma=settings.sigma, mode=settings.mode, method=settings.method,
                                   progress=progress, cancel=cancel)
        outputs = {FLAT: typed(_restore(result.corrected, axes)), BACKGROUND: _restore(result.background, axes)}
        info.update(sigma=settings.sigma, mode=settings.mode, method=settings.method)
    elif isinstance(settings, FocusSettings):
        if core.ndim not in (3, 4):
            raise InputError(f"'{name}' has axes {axes}: a (Z, Y, X) or (C, Z, Y, X) stack is needed.")
        result = select_in_focus(core, keep=settings.keep, min_score=settings.min_score, sharper=settings.sharper,
                                 band=tuple(settings.band) if settings.band else DEFAULT_BAND,
                                 channel=settings.channel, progress=progress, cancel=cancel)
        outputs = {IN_FOCUS: _restore(result.planes, axes)}
        info.update(kept_planes=result.indices.tolist(), plls=result.scores.tolist(), sharper=result.sharper)
    elif isinstance(settings, NormaliseSettings):
        grey = "C" not in core_axes  # one channel: give it a channel axis for the statistics
        values = core[None] if grey else core
        spec = {"kind": "percentile", "low": settings.low, "high": settings.high, "clip": bool(settings.clip)}
        stats = compute_stats(values, spec)
        normalised = normalise(values, spec, stats)
        outputs = {NORMALISED: normalised[0] if grey else _restore(normalised, axes)}
        names = list(channel_names or []) or [f"C{i}" for i in range(values.shape[0])]
        info["normalisation"] = {"spec": spec, "stats": stats, "channels": names}
        warning = flat_channels_warning(stats, names)
        if warning:
            warnings.append(warning)
    else:
        raise TypeError(f"not a preprocessing settings object: {type(settings).__name__}")
    return PreprocessResult(outputs, axes, info, warnings)
