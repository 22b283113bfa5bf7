"""Which of a package's weights to use, offline, and how to load them.

Offline only: weights whose source is a URL are passed over for a local format, and if
none is local the sentence names the file that is missing. The file that is used is
checked against the sha256 in the description (bioimageio.spec's own check) and refused
when they differ. Loading uses bioimageio.core where it has a loader (architectures from
source files, ONNX sessions); TorchScript is ``torch.jit.load``, exactly what core does,
but kept as a module so the Predictor can move it to the chosen device.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from ..errors import CheckpointError, plain_text
from .card import ModelCard

OURS = "napari-virtual-stain"  # a pytorch_state_dict built by our own factory: no code from the package
OUR_FACTORY = "napari_virtual_stain.models.factory"
CONFIG_KEY = "napari_virtual_stain"
FORMATS = ("torchscript", "pytorch_state_dict", "onnx")  # the order tried when none is asked for
PROGRAM_FORMATS = ("torchscript", "pytorch_state_dict")


def _config(descr) -> dict:
    extra = getattr(descr.config, "model_extra", None) or {}
    value = extra.get(CONFIG_KEY)
    return value if isinstance(value, dict) else {}


def _is_ours(descr) -> bool:
    weights = descr.weights.pytorch_state_dict
    arch = getattr(weights, "architecture", None)
    return (weights is not None and "card" in _config(descr)
            and getattr(arch, "import_from", None) == OUR_FACTORY)


def our_card(descr) -> ModelCard:
    return ModelCard.from_dict(_config(descr)["card"])


def our_card_or_none(descr) -> ModelCard | None:
    """The card we stored in a package we exported, if it has one that reads."""
    try:
        return our_card(descr) if "card" in _config(descr) else None
    except CheckpointError:
        return None


def _is_url(source) -> bool:
    return str(source).startswith(("http://", "https://"))


def _missing(file_descr, what: str, name: str) -> str | None:
    """Why the file cannot be used offline, or None when it is here."""
    source = file_descr.source
    if _is_url(source):
        return (f"{what} are only online ({source}); nothing is downloaded: save that file beside the "
                f"description and name it in its source")
    try:
        exists = source.absolute().exists() if hasattr(source, "absolute") else False
    except Exception:
        exists = False
    if not exists:
        return f"{what}, {source}, named in the description, is not in {name}"
    return None


def verify_file(file_descr, what: str, name: str) -> None:
    """Refuse a file that is missing, online only, or whose sha256 is not the description's."""
    problem = _missing(file_descr, what, name)
    if problem:
        raise CheckpointError(problem[0].upper() + problem[1:] + ".")
    try:
        file_descr.validate_sha256(force_recompute=True)
    except ValueError as err:
        if "sha256" in str(err).lower():
            raise CheckpointError(f"{file_descr.source} in {name} is not the file its description names: its "
                                  "sha256 differs (changed or corrupt); it is refused.") from None
        raise CheckpointError(f"{file_descr.source} in {name} could not be read: {plain_text(err, 200)}") from err


def _onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def choose_weights(descr, name: str, requested: str | None = None):
    """(format, weights description) of the weights to use; OURS for our own exports."""
    if requested is None and _is_ours(descr):
        weights = descr.weights.pytorch_state_dict
        if _missing(weights, "its weights", name) is None:
            verify_file(weights, "its weights", name)
            return OURS, weights
    order = [requested] if requested else list(FORMATS)
    if requested and requested not in FORMATS:
        raise CheckpointError(f"Weights in the {requested} format cannot be run here; use one of {', '.join(FORMATS)}.")
    notes = []
    for fmt in order:
        weights = getattr(descr.weights, fmt, None)
        if weights is None:
            notes.append(f"it has no {fmt} weights")
            continue
        if fmt == "onnx" and not _onnx_available():
            notes.append("its onnx weights need onnxruntime, which is not installed")
            continue
        problem = _missing(weights, f"its {fmt} weights", name)
        arch = getattr(weights, "architecture", None)
        if problem is None and fmt == "pytorch_state_dict" and hasattr(arch, "source"):
            problem = _missing(arch, "the architecture source file", name)
        if problem:
            notes.append(problem)
            continue
        verify_file(weights, f"its {fmt} weights", name)
        if fmt == "pytorch_state_dict" and hasattr(arch, "source"):
            verify_file(arch, "the architecture source file", name)
        return fmt, weights
    present = [f for f in ("tensorflow_saved_model_bundle", "keras_hdf5", "tensorflow_js")
               if getattr(descr.weights, f, None) is not None]
    if present and not requested:
        notes.append(f"{', '.join(present)} weights cannot be run here")
    useful = [n for n in notes if not n.startswith("it has no")] or notes
    raise CheckpointError(f"{name} has no weights that can be used here: " + "; ".join(useful) + ".")


def _read(file_descr) -> bytes:
    return file_descr.get_reader().read()


class _OnnxRunner:
    """ONNX weights through bioimageio.core's adapter: numpy in and out, in the package's axis order."""

    def __init__(self, descr):
        from bioimageio.core.backends.onnx_backend import ONNXModelAdapter

        self.adapter = ONNXModelAdapter(model_description=descr, devices=None)
        self.adapter.load()
        self.inp, self.out = descr.inputs[0], descr.outputs[0]

    def __call__(self, array: np.ndarray) -> np.ndarray:
        from bioimageio.core import Tensor

        result = self.adapter.forward({self.inp.id: Tensor(array, dims=tuple(a.id for a in self.inp.axes))})
        return np.asarray(result[self.out.id].transpose([a.id for a in self.out.axes]).data)


def load_network(descr, fmt: str, weights, name: str, card: ModelCard | None = None):
    """An nn.Module (or, for ONNX, a numpy callable) for the chosen weights, on the CPU."""
    try:
        if fmt == OURS:
            from .checkpoint import _check_state_fits
            from .factory import build_model, plan_model

            state = torch.load(io.BytesIO(_read(weights)), map_location="cpu", weights_only=True)
            _check_state_fits(name, plan_model(card.architecture, card.arch_args), state)
            model = build_model(card.architecture, card.arch_args)
            model.load_state_dict(state, strict=True)
            return model
        if fmt == "torchscript":
            return torch.jit.load(io.BytesIO(_read(weights)), map_location="cpu")
        if fmt == "pytorch_state_dict":
            from bioimageio.core.backends.pytorch_backend import load_torch_model

            return load_torch_model(weights, load_state=True, devices=["cpu"])
        return _OnnxRunner(descr)
    except CheckpointError:
        raise
    except Exception as err:  # foreign code and foreign files fail in many ways
        raise CheckpointError(f"The {fmt} weights of {name} could not be loaded: {plain_text(err, 200)}") from err
