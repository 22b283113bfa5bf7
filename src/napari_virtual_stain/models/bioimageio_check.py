"""Does a bioimage.io package reproduce its own test tensor through OUR Predictor?

The package's test input goes through the same path as any image (card normalisation =
the package's preprocessing, tiles, the network, postprocessing, blending) and is compared
with its test output under the tolerance the package states (bioimage.io's
``reproducibility_tolerance``, else the spec's default: relative and absolute 1e-3, at most
100 mismatched elements per million), the way ``bioimageio test`` compares them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Reproduction:
    package: str
    weights: str
    max_abs_error: float
    mismatched_ppm: float
    rtol: float
    atol: float
    allowed_ppm: float

    @property
    def passed(self) -> bool:
        return self.mismatched_ppm <= self.allowed_ppm

    def line(self) -> str:
        return (f"{self.package} ({self.weights}): max |error| {self.max_abs_error:.2e}, {self.mismatched_ppm:.0f} ppm "
                f"outside rtol {self.rtol:g} / atol {self.atol:g} (allowed {self.allowed_ppm:g} ppm): "
                f"{'passed' if self.passed else 'FAILED'}")


def tolerance(descr, weight_format: str) -> tuple[float, float, float]:
    """(rtol, atol, mismatched elements per million) the package states for these weights and its output."""
    from bioimageio.spec.model import v0_5

    applicable = v0_5.ReproducibilityTolerance()
    output = descr.outputs[0].id
    for entry in descr.config.bioimageio.reproducibility_tolerance:
        if (not entry.weights_formats or weight_format in entry.weights_formats) and (
                not entry.output_ids or output in entry.output_ids):
            applicable = entry
            break
    return (float(applicable.relative_tolerance), float(applicable.absolute_tolerance),
            float(applicable.mismatched_elements_per_million))


def to_channels_first(array: np.ndarray, tensor) -> np.ndarray:
    """A tensor in the package's axis order (batch of one) as our (C, *space) array."""
    types = [a.type for a in tensor.axes]
    data = np.asarray(array)
    if "batch" in types:
        data = np.take(data, 0, axis=types.index("batch"))
        types.remove("batch")
    if "channel" not in types:
        data, types = data[None], ["channel"] + types
    order = [types.index("channel")] + [i for i, t in enumerate(types) if t == "space"]
    return np.transpose(data, order)


def reproduce(path: str | os.PathLike, weight_format: str | None = None, device: str = "cpu") -> Reproduction:
    """Run the package's test input through our Predictor (fp32) and compare with its test output."""
    from ..engine.predictor import Predictor
    from .bioimageio_package import load_description, test_tensors
    from .registry import load_model

    descr = load_description(path)
    model, card = load_model(path, weight_format)
    # Our own exports load from their state dict by our factory unless other weights are asked for.
    used = card.extra.get("bioimageio", {}).get("weights", weight_format or "pytorch_state_dict")
    x, expected = test_tensors(descr)
    x = to_channels_first(x, descr.inputs[0])
    expected = to_channels_first(expected, descr.outputs[0]).astype(np.float32)
    predictor = Predictor(model, card, device=device, precision="fp32")
    actual = predictor.predict(x.astype(np.float32))
    rtol, atol, allowed = tolerance(descr, used)
    diff = np.abs(actual - expected)
    mismatched = diff > atol + rtol * np.abs(expected)
    return Reproduction(Path(path).name, used, float(diff.max()), float(mismatched.mean() * 1e6), rtol, atol, allowed)
