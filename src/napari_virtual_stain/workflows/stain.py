"""The virtual-staining workflow: settings -> problems() -> run() -> StainResult."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

from psygnal import evented

from ..engine.device import resolve_device, resolve_precision
from ..engine.predictor_cache import SHARED, PredictorCache, device_turn
from ..errors import InputError, VirtualStainError
from ..io.outputs import write_json_atomic
from ..tasks.pyramid import pyramid_stats
from ..tasks.region import Region
from ..tasks.stain import StainResult, run_stain, run_stain_reusing
from ..tasks.view_cache import ViewCache

DEFAULT_MODEL = "demo-2d-nuclei-membrane"


@evented
@dataclass
class StainSettings:
    """What a staining run needs besides the image: the same for the dock and ``virtual-stain predict``."""

    model: str = DEFAULT_MODEL  # a name, a .pt file, or a bioimage.io package
    device: str = "auto"
    precision: str = "auto"
    tile: tuple[int, ...] | None = None  # None: the model's
    overlap: tuple[int, ...] | None = None
    batch_size: int | None = None
    # Test-time augmentation: every tile predicted under the 8 flips/quarter turns of the
    # plane and averaged (8x the work; engine.tta).
    tta: bool = False

    def problems(self) -> list[str]:
        """Sentences for what would stop a run, cheapest checks only (no network is built)."""
        from ..models.registry import model_card

        found = []
        try:
            device = resolve_device(self.device)
            resolve_precision(device, self.precision)
        except VirtualStainError as err:
            found.append(str(err))
        if not self.model:
            found.append("Choose a model.")
            return found
        try:
            card = model_card(self.model)
        except VirtualStainError as err:
            return found + [str(err)]
        if card.task != "stain":
            found.append(f"The model '{card.name}' is a {card.task} model; choose a virtual staining model.")
        for what, values in (("tile size", self.tile), ("overlap", self.overlap)):
            if values is not None and len(values) not in (1, card.spatial_dims):
                found.append(f"The {what} needs {card.spatial_dims} numbers for this {card.spatial_dims}D model, "
                             f"not {len(values)}.")
        if self.batch_size is not None and self.batch_size < 1:
            found.append(f"The batch size must be at least 1, not {self.batch_size}.")
        return found

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise InputError(problems[0])

    # -- remembered between launches of napari ----------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, asdict(self), indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StainSettings":
        """The settings saved at ``path``; defaults for anything missing, unknown or unreadable."""
        try:
            saved = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return cls()
        known = {f.name for f in fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items() if k in known}
        try:
            return cls(**values)
        except TypeError:
            return cls()


def _per_axis(values, dims: int):
    if values is None:
        return None
    values = tuple(int(v) for v in values)
    return values * dims if len(values) == 1 else values


def predictor_for(settings: StainSettings, cache: PredictorCache = SHARED, load: Callable | None = None):
    """The (cached) Predictor these settings describe."""
    from ..models.registry import model_card

    dims = model_card(settings.model).spatial_dims
    return cache.get(settings.model, settings.device, settings.precision, load=load,
                     tile=_per_axis(settings.tile, dims), overlap=_per_axis(settings.overlap, dims),
                     batch_size=settings.batch_size)


def run(settings: StainSettings, data, *, rgb: bool = False, name: str = "image", region: Region | None = None,
        stats: dict | None = None, view_cache: ViewCache | None = None, cache: PredictorCache = SHARED,
        load: Callable | None = None, progress=None, cancel=None, block: int | None = None,
        on_part: Callable | None = None) -> StainResult:
    """Stain ``region`` of ``data`` (all of it by default). With a ``view_cache`` (one image,
    model and settings, ``tta`` included) a region predicts only the pixels earlier runs did
    not, and a whole-image run fills it for later views; there ``block`` and ``on_part`` fill
    the region progressively, nearest its centre first (``tasks.stain.run_stain_reusing``)."""
    settings.validate()
    predictor = predictor_for(settings, cache, load)
    with device_turn(predictor):
        if region is not None and view_cache is not None:
            return run_stain_reusing(predictor, data, view_cache, region, rgb=rgb, name=name, stats=stats,
                                     progress=progress, cancel=cancel, tta=settings.tta, block=block,
                                     on_part=on_part)
        result = run_stain(predictor, data, rgb=rgb, name=name, region=region, stats=stats,
                           progress=progress, cancel=cancel, tta=settings.tta)
        if view_cache is not None:
            view_cache.store(result.region, result.data)
        return result


def run_level(settings: StainSettings, levels, level: int, *, rgb: bool = False, name: str = "image",
              region: Region | None = None, stats: dict | None = None, view_cache: ViewCache | None = None,
              cache: PredictorCache = SHARED, load: Callable | None = None, progress=None,
              cancel=None, block: int | None = None, on_part: Callable | None = None) -> StainResult:
    """:func:`run` on one level of a pyramid (``levels``: full resolution first; one array for
    a plain image), ``region`` in that level's pixels, ``view_cache`` that level's.

    Statistics (when not given) are the whole image's, from a low-resolution level
    (``tasks.pyramid.pyramid_stats``): no level but ``levels[level]`` (the region and its
    margin only) and the small statistics level is read, so a zoomed-out view of a slide never
    touches its full resolution.
    """
    from ..models.registry import model_card

    settings.validate()
    if not 0 <= level < len(levels):
        raise InputError(f"The image has {len(levels)} pyramid level(s); level {level} does not exist.")
    if stats is None:
        stats = pyramid_stats(levels, model_card(settings.model), rgb=rgb, name=name)
    return run(settings, levels[level], rgb=rgb, name=name, region=region, stats=stats, view_cache=view_cache,
               cache=cache, load=load, progress=progress, cancel=cancel, block=block, on_part=on_part)
