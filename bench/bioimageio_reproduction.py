"""Each bioimage.io package's reproduction error through OUR Predictor (not a speed benchmark).

- the shared third-party package (shared/data/bioimageio-unet2d-nuclei-broad), every weight
  format that can run offline: its test input through our Predictor vs its test output;
- each bundled model exported with `virtual-stain export`: its test output (our Predictor)
  reproduced by the package's own weights and steps, read back through our loader (our own
  state dict; TorchScript and the state dict through the package's bioimage.io steps).

Writes the "bioimage.io reproduction" section of bench/RESULTS.md.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import DATA, machine, table, update_results

from napari_virtual_stain.errors import CheckpointError
from napari_virtual_stain.models.bioimageio_check import reproduce
from napari_virtual_stain.models.bioimageio_export import export_package
from napari_virtual_stain.models.registry import list_models


def main() -> None:
    rows = []
    shared = DATA / "bioimageio-unet2d-nuclei-broad"
    for weights in ("torchscript", "onnx", "pytorch_state_dict"):
        try:
            r = reproduce(shared, weights, device="cpu")
            rows.append([shared.name, weights, f"{r.max_abs_error:.1e}", f"{r.mismatched_ppm:.0f}",
                         f"{r.rtol:g} / {r.atol:g} / {r.allowed_ppm:g}", "passed" if r.passed else "FAILED"])
        except CheckpointError as err:
            rows.append([shared.name, weights, "-", "-", "-", f"not run: {err}"])
    with tempfile.TemporaryDirectory() as tmp:
        for entry in list_models():
            package = export_package(entry.name, Path(tmp) / f"{entry.name}.zip")
            for weights in (None, "torchscript", "pytorch_state_dict"):
                try:
                    r = reproduce(package, weights, device="cpu")
                except CheckpointError as err:
                    rows.append([f"{entry.name} (exported)", weights or "ours", "-", "-", "-", f"not run: {err}"])
                    continue
                label = "our state dict" if weights is None else f"{weights} via bioimage.io steps"
                rows.append([f"{entry.name} (exported)", label, f"{r.max_abs_error:.1e}", f"{r.mismatched_ppm:.0f}",
                             f"{r.rtol:g} / {r.atol:g} / {r.allowed_ppm:g}", "passed" if r.passed else "FAILED"])
    body = (f"Machine: {machine()}\n\nTest input through our Predictor (CPU, fp32) vs the package's test output, "
            "compared as `bioimageio test` does (elements outside atol + rtol * |expected|, per million).\n\n"
            + table(["package", "weights", "max abs error", "ppm outside tolerance", "rtol / atol / allowed ppm",
                     "result"], rows))
    print(body)
    update_results("bioimage.io reproduction (bioimageio_reproduction.py)", body)


if __name__ == "__main__":
    main()
