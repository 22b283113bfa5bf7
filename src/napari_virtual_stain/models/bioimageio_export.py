"""bioimage.io packages out: one of our models -> a format 0.5 package (.zip).

The description is written as plain data, then validated and zipped by bioimageio.spec
(``save_bioimageio_package``), so what leaves is what the field's tools accept. It holds:

- weights: ``pytorch_state_dict`` built by our own factory (``napari_virtual_stain.models.
  factory.build_model``: nothing to trust but this library) and, where the network traces
  to the same numbers, ``torchscript`` for tools without our library;
- preprocessing that is our normalisation in the spec's steps (percentile -> scale_range
  over the space axes per channel, fixed range -> scale_linear per channel, then the
  target interval and clip), postprocessing that maps tanh outputs to [0, 1] as we show
  them, so the package's output is what our Predictor gives;
- input sizes the network accepts (min + n * its size multiple), a test input and the
  output our Predictor computes for it (fp32, CPU, one tile), a cover image, a README
  from the model card (training data, held-out scores), citations and the licence;
- our whole card under ``config.napari_virtual_stain`` so importing it gives back the model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, InputError, plain_text
from ..io.outputs import OutputTransaction
from .bioimageio_weights import CONFIG_KEY, OUR_FACTORY
from .card import ModelCard

FORMAT_VERSION = "0.5.4"
DEFAULT_LICENSE = "BSD-3-Clause"  # the licence napari-virtual-stain and its bundled models are under
CITATIONS = {  # the paper each architecture comes from (DOIs only: nothing needs to be fetched to validate)
    "unet": {"text": "Ronneberger, Fischer and Brox. U-Net: convolutional networks for biomedical image "
                     "segmentation. MICCAI 2015.", "doi": "10.1007/978-3-319-24574-4_28"},
    "pix2pix_unet": {"text": "Isola et al. Image-to-image translation with conditional adversarial networks. "
                             "CVPR 2017.", "doi": "10.1109/CVPR.2017.632"},
    "deepliif": {"text": "Ghahremani et al. Deep learning-inferred multiplex immunofluorescence for "
                         "immunohistochemical image quantification. Nature Machine Intelligence 2022.",
                 "doi": "10.1038/s42256-022-00471-x"},
    "resnet_generator": {"text": "Johnson, Alahi and Fei-Fei. Perceptual losses for real-time style transfer and "
                                 "super-resolution. ECCV 2016.", "doi": "10.1007/978-3-319-46475-6_43"},
    "pix2pixhd": {"text": "Wang et al. High-resolution image synthesis and semantic manipulation with conditional "
                          "GANs. CVPR 2018.", "doi": "10.1109/CVPR.2018.00917"},
    "transunet": {"text": "Chen et al. TransUNet: transformers make strong encoders for medical image "
                          "segmentation. 2021.", "doi": "10.48550/arXiv.2102.04306"},
}
# Virtual staining itself, cited for every model (and the only citation of an architecture not listed above).
VIRTUAL_STAINING = {"text": "Ounkomol et al. Label-free prediction of three-dimensional fluorescence images from "
                            "transmitted-light microscopy. Nature Methods 2018.", "doi": "10.1038/s41592-018-0111-2"}


def _space_ids(dims: int) -> list[str]:
    return ["z", "y", "x"][-dims:]


def preprocessing(card: ModelCard) -> list[dict]:
    """Our card's input normalisation as bioimage.io preprocessing steps."""
    spec, dims = card.input_normalisation, _space_ids(card.spatial_dims)
    kind = spec.get("kind")
    steps: list[dict] = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]
    lo, hi = (float(v) for v in spec.get("to", (0.0, 1.0)))
    if kind == "percentile":
        steps.append({"id": "scale_range", "kwargs": {"axes": dims, "min_percentile": float(spec.get("low", 1.0)),
                                                      "max_percentile": float(spec.get("high", 99.8))}})
        if (lo, hi) != (0.0, 1.0):
            steps.append({"id": "scale_linear", "kwargs": {"gain": hi - lo, "offset": lo}})
    elif kind == "range":
        mins = np.broadcast_to(np.asarray(spec["min"], dtype=np.float64), (card.n_in,))
        maxs = np.broadcast_to(np.asarray(spec["max"], dtype=np.float64), (card.n_in,))
        span = maxs - mins
        gain = np.where(span > 0, (hi - lo) / np.where(span > 0, span, 1), 0.0)
        offset = np.where(span > 0, lo - mins * gain, 0.0)  # a flat channel becomes 0, as in engine.normalise
        steps.append({"id": "scale_linear", "kwargs": {"axis": "channel", "gain": gain.tolist(), "offset": offset.tolist()}})
    elif kind != "none":
        raise CheckpointError(f"The normalisation {kind!r} of {card.name} has no bioimage.io equivalent.")
    if kind != "none" and spec.get("clip", False):
        steps.append({"id": "clip", "kwargs": {"min": lo, "max": hi}})
    return steps


def postprocessing(card: ModelCard) -> list[dict]:
    steps = []
    if card.output_activation == "tanh":  # [-1, 1] -> [0, 1], what engine.normalise.output_to_display shows
        steps.append({"id": "scale_linear", "kwargs": {"gain": 0.5, "offset": 0.5}})
    return steps + [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]


def _sizes(model, card: ModelCard):
    """(per-axis (min, step) or None for fixed, test tensor spatial shape)."""
    from ..engine.predictor import Predictor

    predictor = Predictor(model, card, device="cpu", precision="fp32")
    step = predictor.size_multiple
    if not step:  # nothing is known about other sizes: the card's tile, exactly
        return None, tuple(card.tile)
    mins = predictor.min_tile()
    mins = tuple(-(-m // step) * step for m in mins)
    return [(m, step) for m in mins], mins


def _test_input(card: ModelCard, shape) -> np.ndarray:
    """A smooth, textured, deterministic input in the range the card expects (8-bit for 0..255 models)."""
    rng = np.random.default_rng(0)
    grids = np.meshgrid(*[np.linspace(0, 3 * np.pi, n) for n in shape], indexing="ij")
    base = sum(np.sin(g * (1 + i)) for i, g in enumerate(grids)) / len(grids)
    image = np.stack([base * (0.5 + 0.5 * c / max(1, card.n_in)) + 0.2 * rng.standard_normal(shape)
                      for c in range(card.n_in)])
    spec = card.input_normalisation
    if spec.get("kind") == "range":
        lo, hi = float(np.min(spec["min"])), float(np.max(spec["max"]))
        image = lo + (image - image.min()) / (np.ptp(image) or 1) * (hi - lo)
        image = np.round(image) if hi - lo >= 255 else image
    else:
        image = 100 + 50 * image
    return image.astype(np.float32)


def _torchscript(model, example: torch.Tensor, other: torch.Tensor | None):
    """A traced copy that gives the network's numbers on the example and on another valid size, or None."""
    import warnings

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings: whether the trace generalises is checked below
            traced = torch.jit.trace(model, example, check_trace=False)
            for x in [example] + ([other] if other is not None else []):
                if not torch.allclose(traced(x), model(x), rtol=1e-4, atol=1e-5):
                    return None
        return traced
    except Exception:  # networks with data-dependent Python control flow do not trace
        return None


def _cover(x: np.ndarray, y: np.ndarray, path: Path) -> None:
    import imageio.v3 as iio

    def grey(a):
        a = a[a.shape[0] // 2] if a.ndim == 3 else a  # the middle plane of a stack
        lo, hi = np.percentile(a, [1, 99.8])
        return np.clip((a - lo) / ((hi - lo) or 1) * 255, 0, 255).astype(np.uint8)

    iio.imwrite(path, np.concatenate([grey(x[0]), grey(y[0])], axis=1))  # input | first output: 2:1


def _flat(prefix: str, value, lines: list[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, lines)
    elif isinstance(value, (int, float, str)) and value != "":
        lines.append(f"- {prefix}: {value:.4g}" if isinstance(value, float) else f"- {prefix}: {value}")


def readme(card: ModelCard) -> str:
    lines = [f"# {card.name}", "", card.description or f"A {card.task} model exported by napari-virtual-stain.", "",
             f"- task: {card.task}; {card.spatial_dims}D; architecture {card.architecture}",
             f"- input channels: {', '.join(card.input_channels)}",
             f"- output channels: {', '.join(card.output_channels)}",
             f"- input normalisation: {json.dumps(card.input_normalisation)}",
             f"- pixel size: {card.pixel_size_um} um" if card.pixel_size_um else "- pixel size: not recorded", "",
             "## Training data", ""]
    data = card.training.get("data") if isinstance(card.training, dict) else None
    lines.append(str(data) if data else "Not recorded in the model card.")
    lines += ["", "## Held-out scores", ""]
    scores: list[str] = []
    _flat("", card.scores, scores)
    lines += scores or ["None recorded in the model card."]
    lines += ["", "## Validation", "", "The test output is what napari-virtual-stain's Predictor computes for the test "
              "input (fp32, CPU, one tile); `bioimageio test` checks that every weight format reproduces it.",
              "", "## Use", "", "In napari-virtual-stain: `virtual-stain predict IN.tif -o OUT.tif --model THIS.zip`; "
              "anywhere else through bioimageio.core (pytorch_state_dict needs napari-virtual-stain installed, "
              "torchscript needs only PyTorch).", ""]
    return "\n".join(lines)


def build_description(model, card: ModelCard, folder: Path, license: str | None = None,
                      authors: list[str] | None = None) -> dict:
    """Write the package's files into ``folder`` and return its description (plain data)."""
    from ..engine.normalise import compute_stats, normalise
    from ..engine.predictor import Predictor

    sizes, shape = _sizes(model, card)
    x = _test_input(card, shape)
    y = Predictor(model, card, device="cpu", precision="fp32", tile=shape,
                  overlap=[0] * card.spatial_dims).predict(x)  # one tile: exactly what one pass of the package computes
    np.save(folder / "test_input.npy", x[None])
    np.save(folder / "test_output.npy", y[None].astype(np.float32))
    _cover(x, y, folder / "cover.png")
    (folder / "README.md").write_text(readme(card), encoding="utf-8")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, folder / "weights.pt")
    space = _space_ids(card.spatial_dims)
    in_axes = [{"type": "batch"}, {"type": "channel", "channel_names": list(card.input_channels)}]
    in_axes += [{"type": "space", "id": a, "size": n if sizes is None else {"min": sizes[i][0], "step": sizes[i][1]}}
                for i, (a, n) in enumerate(zip(space, shape))]
    out_axes = [{"type": "batch"}, {"type": "channel", "channel_names": list(card.output_channels)}]
    out_axes += [{"type": "space", "id": a, "size": {"tensor_id": "input", "axis_id": a}} for a in space]
    weights = {"pytorch_state_dict": {
        "source": "weights.pt", "pytorch_version": torch.__version__.split("+")[0],
        "architecture": {"callable": "build_model", "import_from": OUR_FACTORY,
                         "kwargs": {"architecture": card.architecture, "arch_args": card.arch_args}}}}
    example = torch.from_numpy(normalise(x, card.input_normalisation, compute_stats(x, card.input_normalisation))[None])
    other = None
    if sizes is not None:
        bigger = [n + s for n, (_, s) in zip(shape, sizes)]
        other = torch.rand((1, card.n_in, *bigger))
    traced = _torchscript(model.eval(), example, other)
    if traced is not None:
        traced.save(str(folder / "weights_torchscript.pt"))
        weights["torchscript"] = {"source": "weights_torchscript.pt", "parent": "pytorch_state_dict",
                                  "pytorch_version": torch.__version__.split("+")[0]}
    cite = ([CITATIONS[card.architecture]] if card.architecture in CITATIONS else []) + [VIRTUAL_STAINING]
    return {
        "format_version": FORMAT_VERSION, "type": "model", "name": _package_name(card.name),
        "description": (card.description or f"A {card.task} model from napari-virtual-stain.")[:1024],
        "authors": [{"name": a} for a in (authors or ["napari-virtual-stain user"])],
        "cite": cite, "license": license or card.extra.get("license") or DEFAULT_LICENSE,
        "documentation": "README.md", "covers": ["cover.png"],
        "tags": ["napari-virtual-stain", card.task, f"{card.spatial_dims}d", "virtual-staining", "pytorch"],
        "inputs": [{"id": "input", "axes": in_axes, "test_tensor": {"source": "test_input.npy"},
                    "data": {"type": "float32"}, "preprocessing": preprocessing(card)}],
        "outputs": [{"id": "output", "axes": out_axes, "test_tensor": {"source": "test_output.npy"},
                     "data": {"type": "float32"}, "postprocessing": postprocessing(card)}],
        "weights": weights,
        "config": {CONFIG_KEY: {"card": card.to_dict()}},
    }


def _check_license(license: str) -> None:
    """Refuse a licence that is not an SPDX identifier before any work (the spec accepts only those)."""
    from typing import get_args

    from bioimageio.spec._internal._generated_spdx_license_literals import LicenseId  # the spec's own list

    if license not in get_args(LicenseId):
        close = [k for k in get_args(LicenseId) if k.lower() == license.lower()]
        hint = f" (did you mean {close[0]}?)" if close else " such as CC-BY-4.0, MIT or BSD-3-Clause"
        raise InputError(f"{license!r} is not an SPDX licence identifier; bioimage.io needs one{hint}.")


def _package_name(name: str) -> str:
    # bioimage.io names: letters, digits, spaces, _ - ( ), at least 5 characters
    clean = "".join(c if c.isalnum() or c in " _-()" else "-" for c in name).strip() or "model"
    return (clean + " model" if len(clean) < 5 else clean)[:128]


def export_package(model_name_or_path: str | os.PathLike, output: str | os.PathLike, *,
                   license: str | None = None, authors: list[str] | None = None) -> Path:
    """Write ``output`` (.zip), a bioimage.io package of one of our models; returns its path."""
    from .registry import load_model

    model, card = load_model(model_name_or_path)
    return export_model(model, card, output, license=license, authors=authors)


def export_model(model, card: ModelCard, output: str | os.PathLike, *, license: str | None = None,
                 authors: list[str] | None = None) -> Path:
    """Write a network and its card (e.g. one just fine-tuned) as a bioimage.io package."""
    from bioimageio.spec import ValidationContext, build_description as spec_build, save_bioimageio_package
    from bioimageio.spec.model import v0_5

    from .zwindow import z_window

    window = z_window(card)
    if window is not None:  # its network takes C x planes channels; the description would name only C
        raise CheckpointError(f"{card.name} is a 2.5D model (a window of {window.planes} z planes in, one plane "
                              "out), which bioimage.io export cannot describe yet: share its .pt file instead.")
    license = license or card.extra.get("license") or DEFAULT_LICENSE
    _check_license(license)
    if card.architecture == "bioimageio":
        raise CheckpointError(f"{card.name} is already a bioimage.io package; share the package itself.")
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="bioimageio-export-") as tmp:
        folder = Path(tmp)
        data = build_description(model.eval(), card, folder, license, authors)
        with ValidationContext(root=folder, perform_io_checks=True):
            descr = spec_build(data)
        if not isinstance(descr, v0_5.ModelDescr):
            errors = descr.validation_summary.errors
            first = f"{'.'.join(map(str, errors[0].loc))}: {plain_text(errors[0].msg, 200)}" if errors else "unknown"
            raise CheckpointError(f"The bioimage.io description of {card.name} does not validate ({first}).")
        staged = folder / "package.zip"
        save_bioimageio_package(descr, output_path=staged)
        with OutputTransaction() as tx:  # the one atomic writer of exports: no half-written package
            shutil.move(str(staged), tx.stage(output))
    return output
