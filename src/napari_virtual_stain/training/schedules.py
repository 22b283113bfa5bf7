"""Learning-rate schedules and early stopping.

- ``constant``: the learning rate never changes (paper 002: a constant 5e-5 with RMSprop).
- ``constant_then_linear``: constant for the first part of the run, then linear decay
  to zero at the end (papers 001 and 004: 100/150 epochs constant, the same again
  decaying). The run's "progress" is a fraction in [0, 1]: steps done over the planned
  steps, or time spent over the time allowed, whichever is further along, so the
  schedule also works for runs limited by minutes.
- ``EarlyStopping``: stop when the validation loss has not improved for ``patience``
  validations in a row (paper 003 used 25 epochs).
"""

from __future__ import annotations

from dataclasses import dataclass

LR_SCHEDULES = ("constant", "constant_then_linear")


def lr_factor(schedule: str, progress: float, decay_start: float = 0.5) -> float:
    """Multiplier of the base learning rate at ``progress`` (0 = start, 1 = end)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if schedule == "constant":
        return 1.0
    if not 0.0 <= decay_start < 1.0:
        raise ValueError("decay_start must be in [0, 1)")
    progress = min(max(progress, 0.0), 1.0)
    if progress <= decay_start:
        return 1.0
    return max(0.0, 1.0 - (progress - decay_start) / (1.0 - decay_start))


@dataclass
class EarlyStopping:
    """Tracks the best validation loss; ``update`` returns True when it is time to stop.

    ``patience`` counts validations (not epochs); None switches early stopping off but
    the best loss is still tracked. An improvement must beat the best by ``min_delta``.
    """

    patience: int | None = None
    min_delta: float = 0.0
    best: float = float("inf")
    best_step: int = -1
    bad_rounds: int = 0

    def update(self, loss: float, step: int) -> tuple[bool, bool]:
        """Record a validation loss; returns (improved, should_stop)."""
        improved = loss < self.best - self.min_delta
        if improved:
            self.best, self.best_step, self.bad_rounds = float(loss), int(step), 0
        else:
            self.bad_rounds += 1
        stop = self.patience is not None and self.bad_rounds >= self.patience
        return improved, stop

    def state_dict(self) -> dict:
        return {"patience": self.patience, "min_delta": self.min_delta, "best": self.best,
                "best_step": self.best_step, "bad_rounds": self.bad_rounds}

    def load_state_dict(self, state: dict) -> None:
        self.best = float(state["best"])
        self.best_step = int(state["best_step"])
        self.bad_rounds = int(state["bad_rounds"])
