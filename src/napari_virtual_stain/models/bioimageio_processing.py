"""A bioimage.io package's pre- and postprocessing, run by bioimageio.core's own operators.

The Predictor normalises every strip of tiles with statistics of the WHOLE image, computed
once (engine.normalise). A package's preprocessing fits that shape exactly as
bioimageio.core's own blocked prediction does it: the measures its steps need (means,
standard deviations, percentiles) are computed over the whole sample first, then every
block is processed with them. So a card whose ``input_normalisation`` is

    {"kind": "bioimageio", "tensor": <the package's input tensor description, as JSON>,
     "order": [channel axis id or None, space axis ids in our (Z, Y, X) order]}

makes :func:`compute_stats` compute those measures (JSON-able, so they travel like our
percentiles) and :func:`normalise` apply the package's steps to a strip with them.
Postprocessing runs inside the network wrapper on each tile's output
(:func:`postprocess`); steps there that need statistics are refused when the package is
loaded, because a tile cannot know the statistics of the whole output.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import CheckpointError, InputError

KIND = "bioimageio"


@functools.lru_cache(maxsize=16)
def _tensor_descr(text: str, output: bool = False):
    """The package's tensor description, rebuilt from its JSON (cached: every strip asks)."""
    from bioimageio.spec import ValidationContext
    from bioimageio.spec.model import v0_5

    cls = v0_5.OutputTensorDescr if output else v0_5.InputTensorDescr
    with ValidationContext(perform_io_checks=False):  # no file is read: the steps are all we need
        return cls.model_validate(json.loads(text))


def tensor_json(descr) -> dict:
    """A tensor description as JSON-able data without its file references (test/sample tensors)."""
    data = descr.model_dump(mode="json", exclude={"test_tensor", "sample_tensor"})
    json.dumps(data)
    return data


def _procs(descr, output: bool):
    from bioimageio.core.proc_ops import get_proc

    steps = descr.postprocessing if output else descr.preprocessing
    return [get_proc(step, descr) for step in steps]


@functools.lru_cache(maxsize=16)
def _steps(text: str, output: bool = False):
    descr = _tensor_descr(text, output)
    return descr, _procs(descr, output)


def required_measures(descr, output: bool) -> set:
    return {m for proc in _procs(descr, output) for m in proc.required_measures}


def _key(spec: Mapping[str, Any]) -> str:
    return json.dumps(spec["tensor"], sort_keys=True)


def _as_tensor(block: np.ndarray, descr, order: Sequence[str | None]):
    """Our channels-first block as a bioimageio.core Tensor with the package's axis ids."""
    from bioimageio.core import Tensor

    dims = list(order)
    data = np.asarray(block)
    if dims[0] is None:  # the package has no channel axis: ours has one channel
        data, dims = data[0], dims[1:]
    batch = [a.id for a in descr.axes if a.type == "batch"]
    if batch:
        data, dims = data[None], [batch[0]] + dims
    return Tensor(data, dims=tuple(dims))


def _from_tensor(tensor, order: Sequence[str | None], descr) -> np.ndarray:
    batch = [a.id for a in descr.axes if a.type == "batch"]
    wanted = tuple(batch) + tuple(d for d in order if d is not None)
    data = np.asarray(tensor.transpose(wanted).data)
    if batch:
        data = data[0]
    return data[None] if order[0] is None else data


def compute_stats(image, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The measures the package's preprocessing needs, over the whole (strided) image."""
    from bioimageio.core import Sample
    from bioimageio.core.stat_calculators import compute_measures

    from ..engine.normalise import strided_sample

    descr, procs = _steps(_key(spec))
    measures = {m for proc in procs for m in proc.required_measures}
    if not measures:
        return {"kind": KIND, "measures": []}
    sample = strided_sample(image).astype(np.float32, copy=False)
    tensor = _as_tensor(sample, descr, spec["order"])
    values = compute_measures(measures, [Sample(members={descr.id: tensor}, stat={}, id=None)])
    from bioimageio.core.stat_measures import tensor_custom_serializer

    # Values are floats or per-channel Tensors; core's own serializer writes the latter as {data, dims}.
    return {"kind": KIND, "measures": [[m.model_dump(mode="json"),
                                        v if isinstance(v, (int, float)) else tensor_custom_serializer(v)]
                                       for m, v in values.items()]}


@functools.lru_cache(maxsize=8)
def _measures(text: str) -> dict:
    from bioimageio.core.stat_measures import Measure, tensor_custom_before_validator
    from pydantic import TypeAdapter

    measure = TypeAdapter(Measure)
    return {measure.validate_python(m): float(v) if isinstance(v, (int, float)) else tensor_custom_before_validator(v)
            for m, v in json.loads(text)}


def normalise(block: np.ndarray, spec: Mapping[str, Any], stats: Mapping[str, Any]) -> np.ndarray:
    """Apply the package's preprocessing to a channels-first block with whole-image ``stats``."""
    from bioimageio.core import Sample

    if stats.get("kind") != KIND:
        raise InputError("These normalisation statistics are not for a bioimage.io package's preprocessing.")
    descr, procs = _steps(_key(spec))
    sample = Sample(members={descr.id: _as_tensor(block.astype(np.float32, copy=False), descr, spec["order"])},
                    stat=dict(_measures(json.dumps(stats["measures"]))), id=None)
    for proc in procs:
        proc(sample)
    return np.ascontiguousarray(_from_tensor(sample.members[descr.id], spec["order"], descr), dtype=np.float32)


def check_postprocessing(descr) -> None:
    """Refuse output steps that need statistics: a tile alone cannot give them."""
    needs = required_measures(descr, output=True)
    if needs:
        names = sorted({type(m).__name__ for m in needs})
        raise CheckpointError(f"The package's postprocessing needs statistics of its whole output ({', '.join(names)}), "
                              "which tiled prediction cannot give; this package is not supported.")


class Postprocessing:
    """The package's output steps for one (N, C, *spatial) numpy batch in our axis order."""

    def __init__(self, descr, order: Sequence[str | None]):
        check_postprocessing(descr)
        self.text = json.dumps(tensor_json(descr), sort_keys=True)
        self.order = list(order)
        self.empty = not descr.postprocessing

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.empty:
            return batch
        from bioimageio.core import Sample

        descr, procs = _steps(self.text, output=True)
        out = []
        for item in batch:  # one sample at a time, as the spec describes them
            sample = Sample(members={descr.id: _as_tensor(item, descr, self.order)}, stat={}, id=None)
            for proc in procs:
                proc(sample)
            out.append(_from_tensor(sample.members[descr.id], self.order, descr))
        return np.stack(out).astype(np.float32, copy=False)
