"""DeepLIIF release translators: the recording (TorchScript) vs our eager rebuild, speed and answers.

    python bench/bench_traced_rebuild.py

On the full-size release folder made by deepliif 1.2.7's own code (the one bench_deepliif.py
--official uses: 4 x ResNet-9blocks ngf 64 + 5 x U-Net-512, random weights, seed 0) and the
real IHC region ``ihc-regions/ROI_1.png`` (1381 x 949), in one run:

- each translator on one 512 x 512 tile (ROI_1's top left, channels_last as the Predictor
  gives it): best of 3 interleaved runs, recording vs rebuild, and their largest difference;
- the whole image through the Predictor (fp32, 6 tiles of 512 with 64 px overlap), loaded with
  ``rebuild=False`` and with the default: the networks' time, the largest difference of each
  modality and of the Seg map in 8-bit levels, and the cells counted at deepliif's defaults
  (random weights: the cells are no quality measure, only a check that the answers agree).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from _common import DATA, interleaved_times, machine, table, update_results
import _deepliif_peer as peer

from napari_virtual_stain.engine import fast_conv
from napari_virtual_stain.engine.predictor import Predictor
from napari_virtual_stain.io.tiff_reader import load_image
from napari_virtual_stain.models.deepliif_official import load_release_folder
from napari_virtual_stain.tasks.deepliif import run_deepliif
from napari_virtual_stain.tasks.deepliif_cells import Thresholds

IMAGE = DATA / "deepliif-sample" / "ihc-regions" / "ROI_1.png"
MODALITIES = ("Hematoxylin", "DAPI", "Lap2", "Marker", "Segmentation")


def per_translator(recorded, rebuilt, tile: torch.Tensor) -> list[list[object]]:
    rows = []
    with torch.no_grad():
        for i, (script, eager) in enumerate(zip(recorded.translators, rebuilt.translators)):
            times = interleaved_times({"recording": lambda: script(tile), "rebuild": lambda: eager(tile)})
            diff = float((script(tile) - eager(tile)).abs().max()) * 127.5
            rows.append([f"G{i + 1}", f"{times['recording'][0]:.2f}", f"{times['rebuild'][0]:.2f}",
                         f"{times['recording'][0] / times['rebuild'][0]:.2f}x", f"{diff:.4f}"])
    return rows


def whole_image(model, card, image):
    predictor = Predictor(model, card, device="cpu", precision="fp32")
    started = time.perf_counter()
    result = run_deepliif(predictor, image, analyse=False)
    seconds = time.perf_counter() - started
    classes = result.analyse().classify(Thresholds())
    return result, classes, seconds


def main() -> None:
    python = peer.peer_python()
    if python is None:
        print("The official DeepLIIF tool is not set up here (run ../shared/peer-deepliif/setup.sh): it builds "
              "the full-size release folder this bench reads. Nothing measured.")
        return
    folder = peer.full_size_release(python)
    image = load_image(IMAGE).data[..., :3]
    recorded, card = load_release_folder(folder, rebuild=False)
    rebuilt, _ = load_release_folder(folder)
    n_rebuilt = sum(not isinstance(g, torch.jit.ScriptModule) for g in rebuilt.translators)
    tile = torch.from_numpy(image[:512, :512].astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    tile = tile.contiguous(memory_format=torch.channels_last)
    header = machine()
    rows = per_translator(recorded, rebuilt, tile)
    before, before_cells, before_s = whole_image(recorded, card, image)
    after, after_cells, after_s = whole_image(rebuilt, card, image)
    diffs = {name: int(np.abs(before.images[name].astype(int) - after.images[name].astype(int)).max())
             for name in MODALITIES}
    whole = [["recording (TorchScript, `rebuild=False`)", f"{before_s:.1f}", "1.00x", before_cells.total,
              before_cells.positive, "-"],
             ["rebuild (the default)", f"{after_s:.1f}", f"{before_s / after_s:.2f}x", after_cells.total,
              after_cells.positive, ", ".join(f"{k} {v}" for k, v in diffs.items())]]
    body = (
        f"Machine: {header}.\nCommand: `python bench/bench_traced_rebuild.py`. Full-size release folder made by "
        "deepliif 1.2.7's own code (random weights, seed 0); ROI_1 (1381 x 949). NNPACK "
        f"{'used' if fast_conv.nnpack_ready() else 'not available: PyTorch convolutions only'}; "
        f"{n_rebuilt} of 4 translators rebuilt.\n\n"
        "One 512 x 512 tile per translator (best of 3 interleaved; difference in 8-bit levels, the outputs' [-1, 1] x 127.5):\n\n"
        + table(["translator", "recording s", "rebuild s", "recording / rebuild", "largest difference, levels"], rows)
        + "\n\nThe whole image through the Predictor, fp32, the same process (cells at deepliif's defaults; "
          "random weights, so only their agreement means something):\n\n"
        + table(["translators", "networks s (all nine)", "speed-up", "cells", "positive",
                 "largest difference of the 8-bit outputs, levels"], whole)
    )
    if before_cells.total == 0 and after_cells.total == 0:
        body += ("\n\nThese random weights find no cells, so whether the cell counts agree within 1% is not "
                 "measured here: only that every 8-bit output stays within the levels shown.")
    print(body)
    update_results("DeepLIIF release translators: recording vs rebuild (bench_traced_rebuild.py)", body, per_cpu=True)


if __name__ == "__main__":
    main()
