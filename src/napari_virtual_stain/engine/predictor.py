"""The one Predictor every task uses: tiles -> batches -> model on device -> blended output.

Data path for ``Predictor.predict(image)`` (channels first, numpy, dask or zarr):

1. validate the shape against the model card (channels, 2D/3D);
2. normalisation statistics once over the whole input (``engine.normalise``);
   a 2.5D model (``models.zwindow``) reads, for each output plane, the window of planes
   around it as channels (planes past the stack's ends repeated);
3. for each image (the whole input, or each Z plane for a 2D model on a stack), read one
   strip of tile rows at a time, normalise it, and cut it into tiles (padded only where the
   image is smaller than a tile);
4. batches of tiles go through the model under ``torch.inference_mode`` and autocast
   (``engine.batch_runner``: out-of-memory halving, fp32 redo of a batch whose reduced-precision
   output is not finite, batch size from free memory on CUDA; ``engine.transfer``: pinned
   memory and a copy stream on CUDA, so the next batch's copy overlaps this batch's compute);
5. outputs are mapped to display values and blended strip by strip into ``out``
   (``engine.tiling.StripBlender``), so memory stays bounded by a few strips even for a
   10000 x 10000 input written into a zarr array.

With test-time augmentation (``tta``, ``engine.tta``) every batch goes through the network
once per symmetry of the Y-X plane (8, or 4 for tiles a network cannot take turned); the
outputs are turned back and averaged before step 5.

Progress is ``(tile passes done, tile passes in all)`` over the whole run (a tile counts once
per transform, so a TTA run's bar moves as evenly as a plain one); the cancel event is checked
before every forward pass and, during a forward pass, before every submodule's forward (forward
pre-hooks that live only as long as the run: one big tile through a deep network then
stops within a layer or two, not at the end of the pass). A cancelled run raises
:class:`Cancelled` and leaves ``out`` partly written: callers discard it (widgets only
publish finished results); the model is left as it was.

The tile and batch decisions (smallest tile, fitted tiles, batch size, seams, which TTA
transforms fit) are ``engine.tile_rules``; the cancel hooks are ``engine.forward_cancel``. On a
GPU a run waits for its turn (``engine.gpu_turn``: one GPU job at a time in the process).
"""

from __future__ import annotations

import itertools
import threading
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import CheckpointError, InputError, check_cancel
from ..models.card import ModelCard
from ..models.zwindow import z_window
from .batch_runner import BatchRunner, CudaPeakProbe, sizes_from_memory
from .device import AUTO_PRECISION, preferred_memory_format, resolve_device, resolve_precision
from .normalise import compute_stats, normalise, output_to_display
from .forward_cancel import cancel_inside_forward
from .gpu_turn import device_turn
from .tile_rules import (CPU_PIXELS_PER_BATCH, GPU_PIXELS_PER_BATCH, MIN_TILE_XY, MIN_TILE_Z, SEAM_FREE_OVERLAP_XY,
                         SEAM_FREE_OVERLAP_Z, TileRules)
from .tiling import StripBlender, n_tiles, pad_to, tile_starts
from .transfer import ahead, transfer_for
from .tta import IDENTITY, PlaneTransform

# Importable from here as they always were.
__all__ = ["CPU_PIXELS_PER_BATCH", "GPU_PIXELS_PER_BATCH", "MIN_TILE_XY", "MIN_TILE_Z", "Predictor", "Progress",
           "SEAM_FREE_OVERLAP_XY", "SEAM_FREE_OVERLAP_Z"]

Progress = Callable[[int, int], None]

class Predictor(TileRules):
    """Run a model over images of any size, tiled and blended, on the chosen device.

    ``tile``/``overlap`` default to the model card's; ``batch_size`` defaults to about one
    megapixel (voxels for 3D) per batch on the CPU and four on a GPU (always 1 when the card
    says the network is not batch-independent); on CUDA that default is a cap and the first
    run measures one tile's peak memory to size the batches to the free memory. The model is
    moved to the device, put in eval mode and (except on MPS, or where the model names its own
    ``memory_format``) into channels_last layout, in place. ``tta`` is the default for
    :meth:`predict`'s test-time augmentation (off: one pass per tile). ``streams=False`` turns
    off the CUDA copy stream and pinned memory (for benchmarks: the plain synchronous path every
    other device takes).
    """

    def __init__(self, model: torch.nn.Module, card: ModelCard, device: str = "auto",
                 tile: Sequence[int] | None = None, overlap: Sequence[int] | None = None,
                 batch_size: int | None = None, precision: str = "auto", tta: bool = False,
                 streams: bool = True):
        self.card = card
        self.tta = bool(tta)
        self.device = resolve_device(device)
        if precision == "auto" and card.extra.get(AUTO_PRECISION) == "fp32":
            precision = "fp32"  # a model from outside gives its authors' answers unless bf16 is asked for
        precision = resolve_precision(self.device, precision)
        dims = card.spatial_dims
        self.tile = tuple(int(t) for t in (tile if tile is not None else card.tile))
        self.tile_from_card = tile is None  # the card's tile may grow to one tile per current view (tile_rules)
        self.overlap = tuple(int(o) for o in (overlap if overlap is not None else card.overlap))
        if len(self.tile) != dims or len(self.overlap) != dims:
            raise InputError(f"This is a {dims}D model: tile and overlap need {dims} values each, "
                             f"not {len(self.tile)} and {len(self.overlap)}.")
        self.size_multiple = int(getattr(model, "size_multiple", 0) or 0)
        self.z_window = z_window(card)  # None unless a 2.5D model
        self.model = model
        self._check_tile(self.tile, self.overlap)
        self.warnings: list[str] = []  # sentences about the last run (e.g. seams), for the user
        chosen_batch = self._choose_batch_size(batch_size)
        # A model that arranges its own layers' layouts (a DeepLIIF release: NNPACK wants NCHW) says
        # so with a ``memory_format`` attribute; converting it would only cost time.
        self.memory_format = getattr(model, "memory_format", None) or preferred_memory_format(self.device, dims)
        self.model = model.to(self.device).eval()
        if self.memory_format is not torch.contiguous_format:
            try:
                self.model = self.model.to(memory_format=self.memory_format)
            except RuntimeError:  # e.g. 4D and 5D weights mixed in one network: keep the default layout
                self.memory_format = torch.contiguous_format
        # On CUDA an unrequested batch size is measured (engine.batch_runner): the default is its cap.
        measure = sizes_from_memory(self.device, batch_size, self.card.batch_independent, chosen_batch)
        self.runner = BatchRunner(self.model, transfer_for(self.device, streams), precision, self.memory_format,
                                  self._check_output, chosen_batch, CudaPeakProbe(self.device) if measure else None)

    @property
    def batch_size(self) -> int:
        """Tiles per forward pass now (it shrinks when the device runs out of memory)."""
        return self.runner.batch_size

    @property
    def precision(self) -> str:
        """The precision passes run in now: "fp32" after a reduced precision gave non-finite values."""
        return self.runner.precision

    # ---- shapes -------------------------------------------------------------------------

    def _check_input(self, image) -> tuple[list[tuple], tuple[int, ...]]:
        """Validate ``image``; return the index prefix of each image to tile, and its spatial shape."""
        shape = tuple(int(s) for s in image.shape)
        dims = self.card.spatial_dims
        if len(shape) < 3:
            raise InputError(f"The array has shape {shape} ({len(shape)} axes), which is not an image here: "
                             "give channels first, (C, Y, X), or (C, Z, Y, X) for a stack.")
        if len(shape) > 4:
            raise InputError(f"The image has {len(shape)} axes; expected channels first, (C, Y, X) or (C, Z, Y, X).")
        if dims == 3 and len(shape) == 3:
            raise InputError(f"{self.card.name} is a 3D model and needs a Z stack (C, Z, Y, X), but the image is a single 2D plane.")
        if shape[0] != self.card.n_in:
            raise InputError(
                f"{self.card.name} expects {self.card.n_in} input channel(s) "
                f"({', '.join(self.card.input_channels)}) but the image has {shape[0]}.")
        if min(shape[1:]) < 1:
            raise InputError("The image is empty; there is nothing to predict.")
        if self.z_window is not None:
            self.z_window.check_stack(shape[1] if len(shape) == 4 else None)
        if np.issubdtype(np.dtype(image.dtype), np.complexfloating):
            raise InputError("The image holds complex numbers; virtual staining needs real intensities.")
        if dims == 2 and len(shape) == 4:
            return [(slice(None), z) for z in range(shape[1])], shape[2:]
        return [(slice(None),)], shape[1:]

    # ---- the run ------------------------------------------------------------------------

    def predict(self, image, *, out=None, progress: Progress | None = None,
                cancel: threading.Event | None = None, stats: dict | None = None, tta: bool | None = None,
                planes: slice | None = None, rows: slice | None = None):
        """Predict the whole ``image`` (channels first); returns ``out`` or a new float32 array.

        A 2D model runs a (C, Z, Y, X) stack plane by plane; a 3D model runs it in 3D tiles.
        ``out`` may be anything with ``shape`` and ``out[:, rows] = values`` (numpy, zarr, a
        converting sink); it receives whole strips of finished rows, in order. ``stats`` are
        normalisation statistics (``engine.normalise.compute_stats``) of the whole image that
        ``image`` is a region of; by default they are computed over ``image``. ``tta``
        (default: the Predictor's) averages every tile over the symmetries of the Y-X plane.
        ``planes``: for a 2D or 2.5D model on a stack, predict only these planes (the output
        then holds just them); the others are read only as a 2.5D model's context.
        ``rows``: predict only these indices of the first tiled axis (Y in 2D, Z in 3D) and write
        only them into ``out`` (the whole output's shape): exactly the values a whole run gives
        there, computed from the tiles that reach them. One band of a big image is then one task.
        """
        prefixes, spatial = self._check_input(image)
        out_shape = (self.card.n_out,) + tuple(int(s) for s in image.shape[1:])
        targets = prefixes  # where each image's result goes in ``out``
        if planes is not None:
            if self.card.spatial_dims != 2 or len(image.shape) != 4:
                raise InputError("Choosing planes works for a 2D or 2.5D model on a stack; a 3D model predicts the whole stack.")
            chosen = range(*planes.indices(len(prefixes)))
            if not len(chosen):
                raise InputError("Choose at least one plane of the stack to predict.")
            prefixes = [prefixes[z] for z in chosen]
            targets = [(slice(None), k) for k in range(len(chosen))]
            out_shape = (out_shape[0], len(chosen)) + out_shape[2:]
        if out is None:
            out = np.empty(out_shape, dtype=np.float32)
        elif tuple(out.shape) != out_shape:
            raise InputError(f"The output array has shape {tuple(out.shape)} but this prediction needs {out_shape}.")
        check_cancel(cancel)
        spec = self.card.input_normalisation
        # ``stats`` from the whole image when ``image`` is only a part of it (the current
        # view): the part is then normalised exactly as in a whole-image run.
        stats = stats if stats is not None else compute_stats(image, spec)
        tile, overlap = self._tile_for(spatial)
        self.warnings = self._seam_warning(spatial, tile, overlap)
        fell_back_before = self.runner.fallen_from is not None
        if fell_back_before:  # an earlier run of this Predictor switched to fp32 for good
            self.warnings.append(self.runner.fallback_note(earlier=True))
        transforms = self.transforms_for(tile, self.tta if tta is None else bool(tta))
        if len(transforms) == 4:
            self.warnings.append("Test-time augmentation used 4 of the 8 transforms (the mirrors and the half turn): "
                                 "this model takes only its own non-square tile, so quarter turns were left out.")
        strips = self.strips_for(rows, spatial, tile, overlap)
        total = n_tiles(spatial, tile, overlap) // len(tile_starts(spatial[0], tile[0], overlap[0])) * len(strips) \
            * len(prefixes) * len(transforms)

        blenders = [self._blender(out, target, spatial, tile, overlap, strips, rows) for target in targets]
        jobs = self._tiles(image, prefixes, spatial, tile, overlap, spec, stats, cancel, strips)
        done = 0

        def advance(passes: int) -> None:
            nonlocal done
            done += passes
            if progress is not None:
                progress(done, total)

        current = None
        with device_turn(self, cancel), cancel_inside_forward(self.model, cancel):
            check_cancel(cancel)  # cancelled while waiting for the GPU
            for (which, where), values in self._run_batches(jobs, cancel, transforms, advance):
                if current is not None and which != current:
                    blenders[current].close()  # finish a plane before starting the next
                current = which
                blenders[which].add(where, values)
            if current is not None:
                blenders[current].close()
        if self.runner.fallen_from is not None and not fell_back_before:  # this run switched to fp32
            self.warnings.append(self.runner.fallback_note())
        return out

    @staticmethod
    def strips_for(rows: slice | None, spatial, tile, overlap) -> range:
        """The strips (tile rows of the whole grid) that reach ``rows`` of the first tiled axis."""
        starts = tile_starts(spatial[0], tile[0], overlap[0])
        if rows is None:
            return range(len(starts))
        lo, hi, step = rows.indices(spatial[0])
        if step != 1 or hi <= lo:
            raise InputError(f"Rows {rows.start}..{rows.stop} are not a band of the image's {spatial[0]} rows.")
        used = [i for i, s in enumerate(starts) if s < hi and s + tile[0] > lo]
        return range(used[0], used[-1] + 1)

    def _blender(self, out, prefix: tuple, spatial, tile, overlap, strips: range | None = None,
                 rows: slice | None = None) -> StripBlender:
        lo, hi = (0, spatial[0]) if rows is None else rows.indices(spatial[0])[:2]

        def write(written: slice, values: np.ndarray) -> None:
            # Only the band's rows are complete (every tile reaching them was added).
            a, b = max(written.start, lo), min(written.stop, hi)
            if a < b:
                out[prefix + (slice(a, b),)] = values[:, a - written.start:b - written.start]
        return StripBlender(write, self.card.n_out, spatial, tile, overlap, strips)

    def _tiles(self, image, prefixes, spatial, tile, overlap, spec, stats, cancel, strips: range | None = None) -> Iterator:
        """Yield ``((image index, tile slices), normalised padded tile)`` in grid order.

        Reads one strip of tile rows at a time, so a lazy input is read once, in big pieces.
        """
        # Tiles are clipped to the image: along an axis shorter than the tile, one tile is the whole axis.
        rest = [[slice(s, min(s + t, n)) for s in tile_starts(n, t, o)]
                for n, t, o in zip(spatial[1:], tile[1:], overlap[1:])]
        starts0 = tile_starts(spatial[0], tile[0], overlap[0])
        for which, prefix in enumerate(prefixes):
            for start0 in (starts0[i] for i in (strips if strips is not None else range(len(starts0)))):
                check_cancel(cancel)
                rows = slice(start0, min(start0 + tile[0], spatial[0]))
                strip = self._read_strip(image, prefix, rows, spec, stats)
                for local in itertools.product(*rest):
                    block = pad_to(strip[(slice(None), slice(None)) + local], tile)
                    yield (which, (rows,) + local), block

    def _read_strip(self, image, prefix: tuple, rows: slice, spec, stats) -> np.ndarray:
        """The normalised rows ``rows`` of one image: a plane, or for a 2.5D model its window of planes as channels."""
        if self.z_window is None:
            return normalise(np.asarray(image[prefix + (rows,)]), spec, stats)
        planes = self.z_window.indices(prefix[1], image.shape[1])
        lo, hi = int(planes.min()), int(planes.max()) + 1
        block = normalise(np.asarray(image[:, lo:hi, rows]), spec, stats)  # read once; repeated planes are copies
        return self.z_window.as_channels(block[:, planes - lo])

    def _run_batches(self, jobs: Iterator, cancel, transforms: Sequence[PlaneTransform] = (IDENTITY,),
                     advance: Callable[[int], None] | None = None) -> Iterator:
        """Group tiles into batches, run them, and yield ``(key, display values)`` in order.

        Each transform of a batch is one forward pass (so a batch never holds more than
        ``batch_size`` tiles on the device, with or without TTA). Passes are queued
        ``transfer.lookahead`` ahead of the one whose output is read (``engine.transfer``): on
        CUDA the next pass is on its way while the host blends this one; elsewhere none is.
        """
        runner = self.runner

        def batches():
            while True:
                batch = list(itertools.islice(jobs, runner.next_batch_size()))
                if not batch:
                    return
                first = batch[0][1]
                host = runner.host_batch((len(batch),) + first.shape, first.dtype)  # pinned on CUDA
                for i, (_, block) in enumerate(batch):
                    host[i] = block
                yield [key for key, _ in batch], host

        def passes():
            for keys, host in batches():
                for k, transform in enumerate(transforms):
                    yield keys, host, k, transform

        def submit(item):
            check_cancel(cancel)
            _, host, _, transform = item
            return runner.submit(transform.apply(host))

        total = None
        for (keys, host, k, transform), pending in ahead(passes(), submit, runner.transfer.lookahead):
            y = transform.invert(pending())
            if advance is not None:
                advance(len(keys))
            if k == 0:
                total = y if len(transforms) == 1 else y.astype(np.float32, copy=True)
            else:
                total += y
            if k < len(transforms) - 1:
                continue  # the mean over the transforms needs the batch's other passes
            outputs = total if len(transforms) == 1 else total / np.float32(len(transforms))
            for (which, tile), out in zip(keys, outputs):
                extent = tuple(sl.stop - sl.start for sl in tile)
                crop = (slice(None),) + tuple(slice(0, e) for e in extent)
                yield (which, tile), output_to_display(out[crop], self.card.output_activation)

    def _check_output(self, x: torch.Tensor, y) -> None:
        if not isinstance(y, torch.Tensor):
            raise CheckpointError(f"{self.card.name} returned {type(y).__name__}, not one image tensor.")
        if y.shape[0] != x.shape[0] or y.shape[1] != self.card.n_out or tuple(y.shape[2:]) != tuple(x.shape[2:]):
            raise CheckpointError(
                f"{self.card.name} turned a tile of shape {tuple(x.shape[1:])} into {tuple(y.shape[1:])}, "
                f"but its card promises {self.card.n_out} channel(s) of the same size.")
