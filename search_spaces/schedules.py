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
:func:`optimizer_settings` for what the optimizer is given under each reduction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from search_spaces.scaling import ADAPTIVE, TrialHParams

SCHEDULES: tuple[str, ...] = ("constant", "lr_decay", "batch_growth")
PLATEAU_MIN_DELTA = 1e-4
"""Relative improvement of the validation loss that resets the plateau counter."""


@dataclass(frozen=True)
class Schedule:
    kind: str = "constant"
    factor: float = 5.0
    milestones: tuple[float, ...] = (0.5, 0.75, 0.9)
    """Fractions of the sample budget at which events happen (ignored with ``patience``)."""
    patience: Optional[int] = None
    """Evaluations without improvement that trigger an event (instead of milestones)."""
    warmup_samples: int = 0
    batch_cap: Optional[int] = None
    """Largest batch size batch_growth may reach; default a tenth of the training set."""

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule: unknown {self.kind!r}, expected one of {SCHEDULES}")
        if not self.factor > 1:
            raise ValueError(f"schedule.factor: must be above 1, got {self.factor}")


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


def events_at(schedule: Schedule, samples_seen: int, total_samples: int, val_history: Sequence[float]) -> int:
    if schedule.kind == "constant":
        return 0
    if schedule.patience:
        return plateau_events(val_history, schedule.patience)
    return sum(samples_seen >= f * total_samples for f in schedule.milestones)


def batch_and_lr(
    schedule: Schedule,
    base_batch: int,
    n_train: int,
    samples_seen: int,
    total_samples: int,
    val_history: Sequence[float] = (),
) -> tuple[int, float]:
    """(batch size, LR scale) in effect after ``samples_seen`` samples."""
    cap = schedule.batch_cap or max(base_batch, n_train // 10)
    batch, scale = base_batch, 1.0
    for _ in range(events_at(schedule, samples_seen, total_samples, val_history)):
        grown = int(round(batch * schedule.factor))
        if schedule.kind == "batch_growth" and grown <= cap:
            batch = grown
        else:  # lr_decay, and batch_growth past its cap
            scale /= schedule.factor
    if schedule.warmup_samples and samples_seen < schedule.warmup_samples:
        scale *= max(samples_seen, 1) / schedule.warmup_samples
    return batch, scale


def mean_equivalent_lr(hp: TrialHParams) -> float:
    """The LR a mean-reduced loss would need for the same update (SGD under sum: lr * B)."""
    tied_sum_sgd = hp.reduction == "sum" and hp.optimizer not in ADAPTIVE
    return hp.lr * hp.batch_size if tied_sum_sgd else hp.lr


def optimizer_settings(hp: TrialHParams, batch_size: int, lr_scale: float) -> dict[str, float]:
    """lr, eps and weight decay for the optimizer at ``batch_size`` with the LR scaled.

    ``hp`` was derived at its own batch size; under sum reduction the optimizer's LR (SGD),
    eps (Adam) and coupled weight decay follow the batch size so that the update stays the
    one of the mean-reduced loss at the scaled mean-equivalent LR.
    """
    b0, b = hp.batch_size, batch_size
    lr = mean_equivalent_lr(hp) * lr_scale
    eps, wd = hp.eps, hp.weight_decay
    if hp.reduction == "sum":
        if hp.optimizer not in ADAPTIVE:
            lr = lr / b
        elif hp.rule != "none":
            eps = eps / b0 * b
        if wd and not hp.decoupled_decay and hp.rule != "none":
            wd = wd / b0 * b
    return {"lr": lr, "eps": eps, "weight_decay": wd}


def noise_scale(hp: TrialHParams, batch_size: int, lr_scale: float, n_train: int) -> float:
    """SGD noise scale g = lr * N / (B * (1 - m)) with the mean-equivalent LR."""
    return mean_equivalent_lr(hp) * lr_scale * n_train / (batch_size * (1 - hp.momentum))
