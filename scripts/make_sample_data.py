#!/usr/bin/env python
"""Write the small example files in ``sample_data/`` from the seeded synthetic generators.

    python scripts/make_sample_data.py [--out sample_data]

The files are for the README and the command-line examples (``virtual-stain predict
sample_data/label_free_2d.tif ...``); napari's File > Open Sample generates the same data
in memory instead. The output is deterministic: running the script again rewrites
identical pixels. Intensities are stored as integers, the way a camera or a detector
writes them (and so the files stay small):

* label_free_2d.tif    (3, 256, 256) uint16, CYX: brightfield, nuclei, membrane; 0.65 um/px
* label_free_2d_cells.tif (256, 256) uint16 cell labels
* label_free_3d.tif    (2, 32, 128, 128) uint8, CZYX: brightfield, nuclei; 1 x 0.65 x 0.65 um
* ihc.tif              (512, 512, 3) uint8 RGB Ki67 IHC
* ihc_modalities.tif   (4, 512, 512) uint8, CYX: hematoxylin, dapi, lap2, marker
* ihc_classes.tif      (512, 512) uint8: 0 background, 1 negative, 2 positive nucleus
* multiplex.ome.tif    (9, 512, 512) uint8 ion counts, CYX, OME-TIFF with marker names
* multiplex_cells.tif  (512, 512) uint16 cell labels
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from napari_virtual_stain.io.synthetic import make_cells_2d, make_cells_3d, make_ihc, make_multiplex
from napari_virtual_stain.io.tiff_writer import save_tiff

SEED = 0
MAX_TOTAL_BYTES = 5_000_000


def to_uint(image: np.ndarray, dtype) -> np.ndarray:
    """[0, 1] floats to the full range of an unsigned integer type."""
    top = np.iinfo(dtype).max
    return np.clip(np.rint(np.asarray(image) * top), 0, top).astype(dtype)


def write_all(out: Path) -> list[Path]:
    written = []
    cells = make_cells_2d((256, 256), seed=SEED)
    px = cells["pixel_size_um"]
    stack = np.stack([to_uint(cells[k], np.uint16) for k in ("brightfield", "nuclei", "membrane")])
    written.append(save_tiff(out / "label_free_2d.tif", stack, "CYX", ["brightfield", "nuclei", "membrane"], (px, px)))
    written.append(save_tiff(out / "label_free_2d_cells.tif", cells["labels"].astype(np.uint16), "YX", None, (px, px)))

    volume = make_cells_3d((32, 128, 128), seed=SEED)
    stack = np.stack([to_uint(volume[k], np.uint8) for k in ("brightfield", "nuclei")])
    written.append(save_tiff(out / "label_free_3d.tif", stack, "CZYX", ["brightfield", "nuclei"],
                             volume["pixel_size_um"]))

    ihc = make_ihc((512, 512), seed=SEED)
    written.append(save_tiff(out / "ihc.tif", ihc["rgb"], "YXS"))
    names = ["hematoxylin", "dapi", "lap2", "marker"]
    written.append(save_tiff(out / "ihc_modalities.tif", np.stack([to_uint(ihc[k], np.uint8) for k in names]),
                             "CYX", names))
    written.append(save_tiff(out / "ihc_classes.tif", ihc["classes"], "YX"))

    mp = make_multiplex((512, 512), seed=SEED)
    counts = np.clip(mp["image"], 0, 255).astype(np.uint8)
    written.append(save_tiff(out / "multiplex.ome.tif", counts, "CYX", mp["channel_names"]))
    written.append(save_tiff(out / "multiplex_cells.tif", mp["labels"].astype(np.uint16), "YX"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "sample_data")
    args = parser.parse_args(argv)
    written = write_all(args.out)
    total = 0
    for path in written:
        size = path.stat().st_size
        total += size
        print(f"{path}  {size / 1e3:,.0f} kB")
    print(f"total {total / 1e6:.2f} MB")
    if total > MAX_TOTAL_BYTES:
        print(f"error: the sample files take more than {MAX_TOTAL_BYTES / 1e6:.0f} MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
