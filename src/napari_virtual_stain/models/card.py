"""The model card: plain JSON-able facts about a model, stored inside its checkpoint.

A card says what the network is (architecture and arguments), what it expects (channels,
normalisation, tile size) and where it came from (training data, settings, scores). The
Predictor and the widgets read only the card; nothing needs the Python class of a model
to know how to use it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointError

TASKS = ("stain", "deepliif", "impute")
# The channels of a colour (RGB/RGBA) input, in every card: DeepLIIF's, and any model trained on
# an RGB layer from the dock or the command line (``training.defaults.rgb_channel_names``).
RGB_CHANNELS = ("R", "G", "B", "A")
OUTPUT_ACTIVATIONS = ("sigmoid", "tanh", "none")


@dataclass
class ModelCard:
    name: str
    task: str  # one of TASKS
    architecture: str  # a key of models.factory.ARCHITECTURES
    arch_args: dict[str, Any]
    spatial_dims: int  # 2 or 3
    input_channels: list[str]
    output_channels: list[str]
    # How raw input intensities become network input; see engine.normalise for the kinds.
    input_normalisation: dict[str, Any] = field(
        default_factory=lambda: {"kind": "percentile", "low": 1.0, "high": 99.8}
    )
    # The last layer's range: "tanh" outputs are mapped from [-1, 1] to [0, 1] for display.
    output_activation: str = "sigmoid"
    tile: list[int] = field(default_factory=lambda: [1024, 1024])
    overlap: list[int] = field(default_factory=lambda: [64, 64])
    pixel_size_um: float | None = None
    # False for networks that normalise with each tile's own batch statistics
    # (DeepLIIF's released models): the Predictor then runs one tile per forward pass.
    batch_independent: bool = True
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific (fusion weights...)

    def __post_init__(self) -> None:
        problems = []
        if self.task not in TASKS:
            problems.append(f"task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.spatial_dims not in (2, 3):
            problems.append(f"spatial_dims must be 2 or 3, not {self.spatial_dims!r}")
        if not self.input_channels or not self.output_channels:
            problems.append("it names no input or no output channels")
        if self.output_activation not in OUTPUT_ACTIVATIONS:
            problems.append(f"output_activation {self.output_activation!r} is unknown")
        if len(self.tile) != self.spatial_dims or len(self.overlap) != self.spatial_dims:
            problems.append("its tile and overlap must have one entry per spatial axis")
        if problems:
            raise CheckpointError(f"The model card of {self.name!r} is invalid: " + "; ".join(problems) + ".")

    @property
    def n_in(self) -> int:
        return len(self.input_channels)

    @property
    def n_out(self) -> int:
        return len(self.output_channels)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        json.dumps(data)  # fail here, not at load time, if something is not JSON-able
        return data

    @classmethod
    def from_dict(cls, data: Any) -> "ModelCard":
        if not isinstance(data, dict):
            raise CheckpointError("The model card is not a dictionary: this is not a napari-virtual-stain model.")
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in data]
        if missing:
            raise CheckpointError(f"The model card lacks {', '.join(missing)}: the file is incomplete or from another tool.")
        kwargs = {k: v for k, v in data.items() if k in known}
        try:
            return cls(**kwargs)
        except TypeError as err:  # wrong value types
            raise CheckpointError(f"The model card could not be read: {err}.") from err

    def summary(self) -> str:
        """One line for lists: name, task, 2D/3D, channels."""
        return (f"{self.name}: {self.task}, {self.spatial_dims}D, "
                f"{'+'.join(self.input_channels)} -> {'+'.join(self.output_channels)}")
