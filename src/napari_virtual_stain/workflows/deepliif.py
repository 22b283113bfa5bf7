"""The DeepLIIF workflow: settings -> problems() -> run() -> DeepLIIFResult -> layers.

The DeepLIIF dock and ``virtual-stain deepliif`` both describe a run as
:class:`DeepLIIFSettings` (model, device, precision, tiles, deepliif's cell thresholds and
magnification, every default deepliif 1.2.7's) and call :func:`run` through the shared
predictor cache, so the modalities and the counts are the same whichever door was used.
"""

from __future__ import annotations

import atexit
import math
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable

from psygnal import evented

from ..engine.device import resolve_device, resolve_precision
from ..engine.predictor_cache import SHARED, PredictorCache, device_turn
from ..errors import InputError, VirtualStainError
from ..tasks import deepliif as task  # through the module: tests replace its network parts
from ..tasks.deepliif import DEFAULT_MODEL, MODALITIES, DeepLIIFResult
from ..tasks.deepliif_cells import (AUTO, MODEL, RESOLUTIONS, Thresholds, check_thresholds, fill_model_values,
                                    model_thresholds, resolution_for_tile, resolve_model_values)
from ..tasks.deepliif_dab_vote import DAB, POSITIVE_FROM, card_positive_from, redraw_whole
from ..tasks.layers import output_layer_name
from ..tasks.region import Region
from .settings_files import Remembered

DEEPLIIF_TILE = 512  # deepliif's tile for 40x scans (its get_wsi_resolution: magnification / 40 * 512)


@evented
@dataclass
class DeepLIIFSettings(Remembered):
    """What a DeepLIIF run needs besides the image.

    ``precision`` fp32 by default: bf16 moved segmentation pixels across the threshold and
    cell counts by a few percent (bench/RESULTS.md). ``size`` "auto" is deepliif's automatic
    rule; ``marker`` None is no marker rule (deepliif's default), "auto" its automatic value.
    ``resolution`` "auto": the magnification deepliif infers from the tile size.

    A cell threshold left as "model" (the default) is the model card's (the bundled
    ``deepliif-small`` carries values chosen on its training rows), or deepliif 1.2.7's for a
    model without any (official release folders) and for maps a user brought; a number,
    "auto" or None overrides it. :meth:`thresholds` resolves them for a card. ``split`` (not a
    deepliif setting) is the same: a card of ours may ask for touching nuclei to be split
    (``tasks.deepliif_split``), None splits nothing, and without a card nothing is split;
    ``grow`` likewise (px every cell grows after the split, ``tasks.deepliif_grow``).
    """

    model: str = DEFAULT_MODEL  # a name, a .pt file, a DeepLIIF release folder or a bioimage.io package
    device: str = "auto"
    precision: str = "fp32"
    tile: tuple[int, ...] | None = None  # None: the model's
    overlap: tuple[int, ...] | None = None
    seg_threshold: int | str = MODEL
    size: int | str | None = MODEL
    size_upper: int | str | None = MODEL
    marker: int | str | None = MODEL
    resolution: str = AUTO
    split: int | str | None = MODEL  # split depth of touching nuclei (px) or None; only our models' cards set one
    grow: int | str | None = MODEL  # px every cell grows after the split, or None; only our models' cards set one
    # which pixels are positive: "network" (deepliif's red >= blue), "dab" (the IHC's DAB vote,
    # tasks.deepliif_dab_vote) or "model" (the card's; deepliif's rule for release folders)
    positive_from: str = MODEL

    def thresholds_asked(self) -> Thresholds:
        """The cell thresholds as given, "model" values unresolved."""
        return Thresholds(self.seg_threshold, self.size, self.size_upper, self.marker, self.split, self.grow)

    def thresholds(self, card=None) -> Thresholds:
        """The cell thresholds for a model with this ``card`` (None: no model, deepliif's defaults
        stand in for every "model" value)."""
        return resolve_model_values(self.thresholds_asked(), card)

    def resolution_for(self, tile: int | None, downsample: float = 1.0) -> str:
        """The magnification of the automatic size rule: as chosen, or deepliif's from the tile size,
        for a pyramid level ``downsample`` times coarser than the full resolution divided by that
        factor (the nearest of 40x, 20x, 10x: a level 2x down a 40x scan is a 20x image)."""
        if self.resolution != AUTO:
            return self.resolution
        tile = int(tile or DEEPLIIF_TILE)
        if tile <= 0:
            raise InputError(f"The tile size must be positive, not {tile}.")
        full = resolution_for_tile(tile)
        if downsample <= 1:
            return full
        level = float(full[:-1]) / float(downsample)
        return min(RESOLUTIONS, key=lambda r: abs(math.log(float(r[:-1]) / level)))

    def cell_problems(self, card=None) -> list[str]:
        """What would stop counting cells: the thresholds (for the model with ``card``; none:
        deepliif's defaults for "model" values) and the magnification; no network is read, so
        this is all that counting existing maps checks."""
        found = []
        try:
            check_thresholds(self.thresholds(card))
        except VirtualStainError as err:
            found.append(str(err))
        if self.positive_from not in (MODEL, *POSITIVE_FROM):
            found.append(f"Positive cells come from the model, {' or '.join(POSITIVE_FROM)}, not {self.positive_from!r}.")
        if self.resolution not in (AUTO, *RESOLUTIONS):
            found.append(f"The magnification must be {', '.join(RESOLUTIONS)} or automatic, not {self.resolution!r}.")
        elif self.tile and int(self.tile[0]) <= 0:
            found.append(f"The tile size must be positive, not {self.tile[0]}.")
        return found

    def validate_cells(self) -> None:
        problems = self.cell_problems()
        if problems:
            raise InputError(problems[0])

    def problems(self) -> list[str]:
        """Sentences for what would stop a run, cheapest checks only (no network is read)."""
        from ..models.registry import model_card

        found = []
        try:
            resolve_precision(resolve_device(self.device), self.precision)
        except VirtualStainError as err:
            found.append(str(err))
        card, card_problem = None, None
        if self.model:
            try:
                card = model_card(self.model)
            except VirtualStainError as err:
                card_problem = str(err)
        found += self.cell_problems(card)
        for what, values in (("tile size", self.tile), ("overlap", self.overlap)):
            if values is not None and len(values) not in (1, 2):
                found.append(f"The {what} needs 1 or 2 numbers, not {len(values)}.")
        if self.tile and self.overlap and any(o >= t for o, t in zip(_pair(self.overlap), _pair(self.tile))):
            found.append("The overlap must be smaller than the tile.")
        if not self.model:
            return found + ["Choose a DeepLIIF model or a DeepLIIF release folder."]
        if card_problem is not None:
            return found + [card_problem]
        if card.task != "deepliif":
            found.append(f"The model '{card.name}' is a {card.task} model; choose a DeepLIIF model.")
        return found

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise InputError(problems[0])


def _pair(values):
    values = tuple(int(v) for v in values)
    return values * 2 if len(values) == 1 else values


def predictor_for(settings: DeepLIIFSettings, cache: PredictorCache = SHARED, load: Callable | None = None):
    """The (cached) Predictor these settings describe; tiles are checked against the network."""
    settings.validate()
    tile = _pair(settings.tile) if settings.tile else None
    overlap = _pair(settings.overlap) if settings.overlap else None
    predictor = cache.get(settings.model, settings.device, settings.precision, load=load or task.load_deepliif_model,
                          tile=tile, overlap=overlap)
    multiple = int(getattr(predictor.model, "size_multiple", 1) or 1)
    if tile and any(t <= 0 or t % multiple for t in tile):
        raise InputError(f"The model '{predictor.card.name}' needs tiles that are a multiple of {multiple} pixels, "
                         f"not {list(tile)}.")
    return predictor


def run(settings: DeepLIIFSettings, data, *, name: str = "image", region: Region | None = None, store=None,
        analyse: bool = True, cache: PredictorCache = SHARED, load: Callable | None = None,
        progress=None, cancel=None, downsample: float = 1.0) -> DeepLIIFResult:
    """Run DeepLIIF on ``region`` (default: all) of an RGB image (Y, X, 3) uint8 and, with
    ``analyse``, find its cells at the settings' segmentation threshold and magnification.
    ``store``: a folder for on-disk (zarr) modalities of a very large region. ``downsample``:
    the in-plane factor of the pyramid level ``data`` is (the automatic magnification follows it)."""
    predictor = predictor_for(settings, cache, load)
    resolution = settings.resolution_for(settings.tile[0] if settings.tile else predictor.card.tile[0], downsample)
    thresholds = settings.thresholds(predictor.card)
    with device_turn(predictor):
        result = task.run_deepliif(predictor, data, name=name, region=region, store=store, analyse=analyse,
                                   segmentation_threshold=thresholds.segmentation, split=thresholds.split,
                                   grow=thresholds.grow,
                                   positive_from=None if settings.positive_from == MODEL else settings.positive_from,
                                   resolution=resolution, progress=progress, cancel=cancel)
    result.downsample = float(downsample)
    return result


def run_in_temporary_store(settings: DeepLIIFSettings, data, name: str = "image", region: Region | None = None,
                           progress=None, cancel=None, downsample: float = 1.0) -> DeepLIIFResult:
    """:func:`run` for the dock: a very large region (say 10000 x 10000) keeps its modalities
    in a temporary zarr store on disk, shown lazily, so memory stays bounded. The dock removes
    the store when a new result replaces it; whatever is left goes when Python exits, and a
    cancelled or failed run leaves nothing on disk."""
    shape = region.shape if region is not None else tuple(data.shape[:2])
    store = tempfile.mkdtemp(prefix="deepliif-", suffix=".zarr") if task.needs_store(shape) else None
    if store is not None:
        atexit.register(shutil.rmtree, store, True)
    try:
        result = run(settings, data, name=name, region=region, store=store, progress=progress, cancel=cancel,
                     downsample=downsample)
    except BaseException:
        if store is not None:
            shutil.rmtree(store, ignore_errors=True)
        raise
    if store is not None and result.store is None:  # a view inside the image: the result came back in memory
        shutil.rmtree(store, ignore_errors=True)
    return result


def count_maps(ihc, seg, marker, names, settings: DeepLIIFSettings, cancel=None) -> DeepLIIFResult:
    """Cells from maps a user brought (deepliif's Seg and Marker images): no network runs.

    The dock's "Count existing maps" and ``virtual-stain deepliif-cells`` both come here:
    the settings' thresholds, and the magnification chosen or inferred from the tile size
    deepliif ran with (``tile``; none: deepliif's 512, 40x). ``result.cells.classify(
    settings.thresholds())`` classifies them (a "model" threshold: deepliif's default here)."""
    from ..tasks.deepliif_files import check_maps

    settings.validate_cells()
    ihc, seg, marker = check_maps(ihc, seg, marker, names)
    if settings.positive_from == DAB:  # "model" here is deepliif's rule: maps carry no card
        if ihc is None:
            raise InputError("Positive cells from the DAB vote need the IHC image the maps came from.")
        seg = redraw_whole(ihc, seg)
    result = DeepLIIFResult({task.SEGMENTATION: seg, "Marker": marker}, Region.whole(tuple(seg.shape[:2])), None)
    reanalyse(result, settings)
    return result


def reanalyse(result: DeepLIIFResult, settings: DeepLIIFSettings):
    """Cells again from the stored maps at the settings' segmentation threshold and
    magnification (no network runs): the tile the run used (the settings', else the
    model's; maps a user brought: deepliif's 512) sets the automatic magnification, as in :func:`run`."""
    tile = settings.tile[0] if settings.tile else (result.card.tile[0] if result.card is not None else DEEPLIIF_TILE)
    thresholds = settings.thresholds(result.card)
    return result.analyse(thresholds.segmentation, settings.resolution_for(tile, result.downsample), thresholds.split,
                          thresholds.grow)


def classify(result: DeepLIIFResult, settings: DeepLIIFSettings):
    """The cells' classes under the settings' thresholds (an InputError sentence if one cannot be used)."""
    return result.cells.classify(check_thresholds(settings.thresholds(result.card)))


def recommended_thresholds(model: str | None) -> Thresholds:
    """The thresholds a model's card recommends (deepliif's for a release folder, for no model
    and for one that cannot be read: the dock shows those, and says the model's problem itself)."""
    from ..models.registry import model_card

    if not model:
        return Thresholds()
    try:
        return model_thresholds(model_card(model))
    except VirtualStainError:
        return Thresholds()


def shown_thresholds(settings: DeepLIIFSettings) -> Thresholds:
    """The settings' thresholds with their "model" values filled in from the chosen model's card:
    numbers and rules the dock's sliders can show."""
    return fill_model_values(settings.thresholds_asked(), recommended_thresholds(settings.model))


def modality_tuples(result: DeepLIIFResult, source: str, place: dict) -> list[tuple]:
    """The inferred modalities as hidden, additive RGB image layers "<source> · <modality>"."""
    return [(result.images[m], {"name": output_layer_name(source, m), "rgb": True, **place, "blending": "additive",
                                "visible": False, "metadata": {"source_layer": source, "channel": m}}, "image")
            for m in MODALITIES]


def model_summary(model: str | None) -> tuple[str, str]:
    """(a line, a tooltip) saying which model is active and what it learnt from, or why it
    cannot be used (a wrong folder: its sentence, not a traceback)."""
    from ..models.registry import model_card

    if not model:
        return "No DeepLIIF model chosen.", ""
    try:
        card = model_card(model)
    except Exception as err:
        return f"This model cannot be used: {err}", ""
    return describe_model(card), card.description


def describe_model(card) -> str:
    """Which model is active and what it learnt from, in a line or two (for the dock)."""
    if card.architecture == "deepliif_official":
        opts = card.training.get("train_opt", {})
        net = opts.get("net_gs") or opts.get("netG") or opts.get("net_g")
        return (f"Official DeepLIIF release '{card.name}' ({card.extra.get('deepliif_model', 'DeepLIIF')}"
                f"{', ' + str(net) if net else ''}): the authors' networks, trained on their IHC/mpIF data.")
    data = card.training.get("data")
    if isinstance(data, (list, tuple)):
        data = ", ".join(str(d) for d in data)
    elif isinstance(data, dict):  # a run of our Trainer: its data description
        data = ", ".join(data.get("target_names", [])) or None
    trained = f"trained on {data}" if data else "training data not recorded"
    if card.training.get("synthetic_fields"):
        trained += f" and {card.training['synthetic_fields']} synthetic IHC fields"
    steps = card.training.get("steps")
    line = f"{card.name}: {trained}" + (f" ({steps} steps)" if steps else "") + "."
    dab = card_positive_from(card) == DAB
    if dab:
        line += " Positive cells: the IHC's DAB vote in the network's cells."
    return line + _held_out_line(card.scores.get("held_out") if isinstance(card.scores, dict) else None, dab)


def _held_out_line(held_out, dab: bool = False) -> str:
    """' Held-out real rows: Dice .., AJI .., % positive off by .. (classical ..)' from a card written by
    scripts/train_deepliif.py; ``dab``: the model's positives come from the DAB vote (its row is read)."""
    if not isinstance(held_out, dict):
        return ""
    rows = {k: v for k, v in held_out.items() if isinstance(v, dict) and "dice" in v and "aji" in v}
    # the row the dock's answers are: the model's own thresholds and its positive rule, else the one row of it
    own_rows = [(k, v) for k, v in rows.items() if "this model" in k and "own thresholds" in k]
    own = next((v for k, v in own_rows if ("DAB vote" in k) == dab), next((v for _, v in own_rows), None))
    own = own or next((v for k, v in rows.items() if "this model" in k), None)
    classical = next((v for k, v in rows.items() if k.startswith("classical")), None)
    if own is None:
        return ""
    def pos(v):
        return f", % positive off by {v['percent_positive_diff']:.1f}" if "percent_positive_diff" in v else ""

    text = f" Held-out real rows: Dice {own['dice']:.2f}, AJI {own['aji']:.2f}{pos(own)}"
    if classical is not None:
        text += f" (classical colour deconvolution: {classical['dice']:.2f}, {classical['aji']:.2f}{pos(classical)})"
    return text + "."
