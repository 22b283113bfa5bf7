"""How close our DeepLIIF is to deepliif 1.2.7 itself, on fixtures its own code made.

usage: python bench/fidelity_deepliif.py [--fixtures ../shared/fixtures/deepliif-official] [--no-write]

Prints, and writes to bench/RESULTS.md:
1. a release folder (ngf 4, deepliif's serialised TorchScript) under three generations of
   train_opt.txt: max / mean grey-level difference of each modality and of Seg against what
   ``deepliif test --tile-size 512`` wrote, on a one-tile image (512 x 512);
2. the same on a four-tile image (700 x 600): deepliif pastes tile centres (each tile
   normalised alone), we blend overlapping tiles, so they differ near deepliif's seams;
3. deepliif's cell post-processing of the released model's real Seg/Marker maps at four
   threshold settings: counts, the automatic size threshold and pixel agreement of SegRefined
   and SegOverlaid.
This measures fidelity, not speed: it runs in about 20 s on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import REPO, machine, table, update_results

import torch  # noqa: E402  (after _common put src/ on the path)

FIXTURES = REPO.parent / "shared" / "fixtures" / "deepliif-official"
VARIANTS = ("current", "legacy", "oldest")
NAMES = {"Hematoxylin": "mod1-Hema", "DAPI": "mod2-DAPI", "Lap2": "mod3-Lap2", "Marker": "mod4-Marker",
         "Segmentation": "Seg"}
SETTINGS = {"default": {}, "seg100": {"segmentation": 100}, "seg150_size40": {"segmentation": 150, "size": 40},
            "marker60_upper400": {"size_upper": 400, "marker": 60}}


def read(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    return iio.imread(path)[..., :3]


def deepliif_tile_starts(size: int, tile: int = 512, overlap: int = 32) -> list[int]:
    """Where deepliif's InferenceTiler starts its tiles along one axis (the last one flush with the end)."""
    if size <= tile:
        return [0]
    starts, x = [], 0
    while x < size:
        starts.append(min(x, size - tile))
        x += tile - 2 * overlap
    return sorted(set(starts))


def shared_pixels(shape: tuple[int, int], tile: int = 512) -> np.ndarray:
    """True where more than one of deepliif's tiles covers a pixel (there it pastes the later centre, we blend)."""
    counts = []
    for size in shape:
        count = np.zeros(size, dtype=int)
        for start in deepliif_tile_starts(size, tile):
            count[start:start + tile] += 1
        counts.append(count)
    return (counts[0][:, None] > 1) | (counts[1][None, :] > 1)


def networks(fixtures: Path) -> tuple[list[list[object]], list[list[object]]]:
    from napari_virtual_stain.engine.predictor import Predictor
    from napari_virtual_stain.tasks.deepliif import load_deepliif_model, run_deepliif

    one_tile, four_tiles = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            folder = Path(shutil.copytree(fixtures / "models-ngf4", Path(tmp) / variant))
            shutil.copy(fixtures / "train_opt-variants" / f"{variant}.txt", folder / "train_opt.txt")
            model, card = load_deepliif_model(folder)
            predictor = Predictor(model, card, device="cpu", precision="fp32")
            for image, rows in (("ihc_512", one_tile), ("ihc_700x600", four_tiles)):
                result = run_deepliif(predictor, read(fixtures / "inputs" / f"{image}.png"), analyse=False)
                shared = shared_pixels(result.images["Segmentation"].shape[:2])
                for name, suffix in NAMES.items():
                    if name != "Segmentation" and variant != "current":
                        continue  # the modalities do not depend on train_opt.txt: reported once
                    expected = read(fixtures / "expected" / (variant if name == "Segmentation" else "current")
                                    / f"{image}_{suffix}.png")
                    diff = np.abs(result.images[name].astype(int) - expected.astype(int))
                    row = [variant, name, int(diff.max()), f"{diff.mean():.4f}", f"{100 * np.mean(diff <= 1):.2f}"]
                    if shared.any():
                        row += [int(diff[~shared].max()), f"{diff[~shared].mean():.4f}", int(diff[shared].max()),
                                f"{diff[shared].mean():.2f}", f"{100 * np.mean(diff[shared] <= 1):.1f}"]
                    rows.append(row)
                    print(image, *row, flush=True)
    return one_tile, four_tiles


def cells(fixtures: Path) -> list[list[object]]:
    from napari_virtual_stain.tasks.deepliif_cells import Thresholds, analyse_cells
    from napari_virtual_stain.tasks.deepliif_render import render_overlay, render_refined

    rows = []
    maps = fixtures / "postprocess" / "maps"
    for setting, kwargs in SETTINGS.items():
        thresholds = Thresholds(**kwargs)
        for image in ("22_2", "34_3"):
            expected = fixtures / "postprocess" / "expected" / setting
            theirs = json.loads((expected / f"{image}.json").read_text())
            analysis = analyse_cells(read(maps / f"{image}_fake_B_5.png"), read(maps / f"{image}_fake_B_4.png"),
                                     segmentation_threshold=thresholds.segmentation)
            classes = analysis.classify(thresholds)
            ours = classes.summary()
            refined = np.mean(np.all(render_refined(analysis, classes) == read(expected / f"{image}_SegRefined.png"), -1))
            overlaid = np.mean(np.all(render_overlay(read(maps / f"{image}_real_A.png"), analysis, classes)
                                      == read(expected / f"{image}_SegOverlaid.png"), -1))
            row = [setting, image, f"{ours['num_total']} / {theirs['num_total']}", f"{ours['num_pos']} / {theirs['num_pos']}",
                   f"{ours['percent_pos']} / {theirs['percent_pos']}", f"{ours['size_thresh']} / {theirs['size_thresh']}",
                   f"{100 * refined:.3f}", f"{100 * overlaid:.3f}"]
            rows.append(row)
            print(*row, flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", type=Path, default=FIXTURES)
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = ap.parse_args()
    if not args.fixtures.exists():
        print(f"no fixtures at {args.fixtures}", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    started = time.perf_counter()
    one_tile, four_tiles = networks(args.fixtures)
    cell_rows = cells(args.fixtures)
    head = ["train_opt.txt", "image", "max abs diff", "mean abs diff", "% within 1 grey level"]
    body = f"""Machine: {machine()}.
Command: `python bench/fidelity_deepliif.py` ({time.perf_counter() - started:.0f} s in all).
Reference: what deepliif 1.2.7's own code wrote (`../shared/fixtures/deepliif-official`, see its
README): `deepliif test --tile-size 512` with a release folder (random weights, generator width 4,
serialised by `deepliif serialize`) under three generations of `train_opt.txt` (current = lists,
modalities_names and seg_weights; legacy = no modalities_names, so deepliif fuses with
[0.5, 0, 0, 0, 0.5]; oldest = single strings, no net_gs, no seg_weights), and
`deepliif.models.postprocess` on the released DeepLIIF model's real Seg/Marker maps. Differences are
8-bit grey levels (0-255) over all pixels and channels; our runs are fp32 on the CPU.

### One tile (512 x 512): networks and fusion
The modalities do not depend on `train_opt.txt` (one row each); Seg is shown for every generation.
{table(head, one_tile)}

### Four tiles (700 x 600): our blended tiles vs deepliif's pasted centre crops
Both tools cut the same four 512 tiles here (starting at x = 0, 188 and y = 0, 88). Where one
tile alone covers a pixel (the four corners, {100 * (1 - shared_pixels((600, 700)).mean()):.0f} % of the image) we equal deepliif to rounding.
Everywhere else tiles overlap: deepliif pastes the centre crop (overlap 32) of the later tile
and so changes abruptly at x = 220 and y = 120, we blend the overlapping tiles with smooth
weights. Because these networks normalise each tile with its own statistics, two tiles give
different values for the same pixel, and the blend differs from either pasted tile there.
{table(head + ["one tile: max", "one tile: mean", "overlapping: max", "overlapping: mean",
               "overlapping: % within 1"], four_tiles)}

### Cells: deepliif's post-processing of the released model's maps (ours / deepliif's)
Settings: default = seg 120, size 'default' (automatic), no marker rule, 40x; seg100; seg150_size40;
marker60_upper400 = marker threshold 60 and upper size 400.
{table(["setting", "image", "num_total", "num_pos", "percent_pos", "size_thresh", "SegRefined % equal",
        "SegOverlaid % equal"], cell_rows)}
"""
    print(body)
    if not args.no_write:
        update_results("DeepLIIF fidelity to deepliif 1.2.7 (fidelity_deepliif.py)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
