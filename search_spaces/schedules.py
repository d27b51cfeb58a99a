"""Batch-size and LR schedules as pure functions: samples seen and validation history in,
batch size and LR scale out.

Smith, Kindermans, Ying & Le (2018), "Don't Decay the Learning Rate, Increase the Batch Size":
the SGD noise scale g = lr * N / (B * (1 - m)) falls alike when lr is divided by a factor or B
is multiplied by it, and growing B needs fewer parameter updates.

- ``constant``: B0 and the base LR throughout.
- ``lr_decay``: at each event divide the LR by ``factor``.
- ``batch_growth``: at each event multiply B by ``factor`` and hold the (mean-equivalent) LR,
  so the LR per sample falls; once B would pass ``batch_cap``, divide the LR instead (the
  paper's hybrid).
Events come at fractions of the sample budget (``milestones``) or when the validation loss
has not improved for ``patience`` evaluations. An optional linear warmup (in samples) scales
the LR of every schedule.

The LR scale multiplies the *mean-equivalent* LR (the LR of a mean-reduced loss); see
:meth:`search_spaces.scaling.TrialHParams.settings` for what the optimizer is given under each
reduction.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

ScheduleKind = Literal["constant", "lr_decay", "batch_growth"]
SCHEDULES: tuple[str, ...] = ("constant", "lr_decay", "batch_growth")
PLATEAU_MIN_DELTA = 1e-4
"""Relative improvement of the validation loss that resets the plateau counter."""


class Schedule(BaseModel):
    """The ``schedule`` section of a sweep spec: settings shared by every schedule kind of the
    sweep (each trial's kind is its ``schedule`` hyperparameter)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    factor: float = Field(default=5.0, gt=1, allow_inf_nan=False, le=1e6)
    """Each event divides the LR (lr_decay) or multiplies the batch size (batch_growth) by this."""
    milestones: tuple[float, ...] = Field(default=(0.5, 0.75, 0.9), min_length=1, max_length=100)
    """Fractions of the sample budget at which events happen (ignored with ``patience``)."""
    patience: Optional[int] = Field(default=None, ge=1, le=1_000_000)
    """Instead of milestones: an event after this many evaluations without improvement."""
    warmup_samples: int = Field(default=0, ge=0, le=10**15)
    """Linear LR warmup, in samples, for every schedule."""
    batch_cap: Optional[int] = Field(default=None, ge=1, le=2**31)
    """Largest batch size batch_growth reaches before it decays the LR; default a tenth of the
    training set."""

    @model_validator(mode="after")
    def _fractions(self) -> "Schedule":
        for i, f in enumerate(self.milestones):
            if not 0 < f < 1:
                raise ValueError(f"milestones.{i}: must lie strictly between 0 and 1, got {f}")
        return self


def plateau_events(val_history: Sequence[float], patience: int) -> int:
    """How many times the loss went ``patience`` evaluations without improving (counter resets)."""
    best, since, events = math.inf, 0, 0
    for value in val_history:
        if value < best * (1 - PLATEAU_MIN_DELTA):
            best, since = value, 0
        else:
            since += 1
            if since >= patience:
                events, since = events + 1, 0
    return events


def events_at(
    schedule: Schedule, kind: str, samples_seen: int, total_samples: int, val_history: Sequence[float]
) -> int:
    if kind == "constant":
        return 0
    if schedule.patience:
        return plateau_events(val_history, schedule.patience)
    return sum(samples_seen >= f * total_samples for f in schedule.milestones)


def batch_and_lr(
    schedule: Schedule,
    kind: str,
    base_batch: int,
    n_train: int,
    samples_seen: int,
    total_samples: int,
    val_history: Sequence[float] = (),
) -> tuple[int, float]:
    """(batch size, LR scale) of schedule ``kind`` in effect after ``samples_seen`` samples."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule: unknown {kind!r}, expected one of {SCHEDULES}")
    cap = schedule.batch_cap or max(base_batch, n_train // 10)
    batch, scale = base_batch, 1.0
    for _ in range(events_at(schedule, kind, samples_seen, total_samples, val_history)):
        grown = int(round(batch * schedule.factor))
        if kind == "batch_growth" and grown <= cap:
            batch = grown
        else:  # lr_decay, and batch_growth past its cap
            scale /= schedule.factor
    if schedule.warmup_samples and samples_seen < schedule.warmup_samples:
        scale *= max(samples_seen, 1) / schedule.warmup_samples
    return batch, scale
