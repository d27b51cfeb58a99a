"""The LR-per-sample scaling rules, as pure functions.

A rule ties the optimizer learning rate to the batch size B through one constant c,
the *LR per sample*:

    mean-reduced loss:  lr = c * B**k      (k = 1 linear, 0.5 sqrt, 0 none)

Under a sum-reduced loss the gradient is B times larger, so the equivalent settings are
(Adam's update divides by its own running gradient scale, so only its eps must move):

    SGD / momentum:  lr = c * B**(k - 1)          (identical updates to the mean case)
    Adam / AdamW:    lr = c * B**k, eps = eps * B (identical updates to the mean case)
    coupled L2:      weight_decay = weight_decay * B (same regularization as the mean case)

The rule ``none`` is the untied baseline: c is the raw optimizer LR and nothing is
rescaled, as a user who ignores the batch size would do.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping

Optimizer = Literal["sgd", "momentum", "adam", "adamw"]
Reduction = Literal["mean", "sum"]
Rule = Literal["linear", "sqrt", "none"]

OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam", "adamw")
REDUCTIONS: tuple[str, ...] = ("mean", "sum")
RULE_EXPONENT: Mapping[str, float] = {"linear": 1.0, "sqrt": 0.5, "none": 0.0}
DEFAULT_RULE: Mapping[str, str] = {
    "sgd": "linear",
    "momentum": "linear",
    "adam": "sqrt",
    "adamw": "sqrt",
}
ADAPTIVE: frozenset[str] = frozenset({"adam", "adamw"})


@dataclass(frozen=True)
class TrialHParams:
    """Everything one trial needs to build its optimizer; the trial config in Tune."""

    batch_size: int
    reduction: str
    optimizer: str
    rule: str
    lr_per_sample: float
    lr: float
    k: float
    """Exponent of B in the optimizer LR for this reduction: lr = lr_per_sample * B**k."""
    weight_decay: float
    decoupled_decay: bool
    momentum: float
    eps: float
    seed: int
    schedule: str = "constant"
    """Batch-size / LR schedule (search_spaces.schedules); lr is its starting LR."""

    def as_config(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "TrialHParams":
        return cls(**{name: config[name] for name in cls.__dataclass_fields__ if name in config})

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> "TrialHParams":
        """Parse the string params of a trial's MLflow run back into their types."""
        types = {
            "batch_size": int,
            "seed": int,
            "lr_per_sample": float,
            "lr": float,
            "k": float,
            "weight_decay": float,
            "momentum": float,
            "eps": float,
            "decoupled_decay": lambda v: str(v).lower() == "true",
        }
        return cls(**{name: types.get(name, str)(params[name]) for name in cls.__dataclass_fields__ if name in params})


def lr_exponent(optimizer: str, reduction: str, rule: str) -> float:
    """Exponent k of B in the optimizer LR: lr = c * B**k."""
    k = RULE_EXPONENT[rule]
    if rule != "none" and reduction == "sum" and optimizer not in ADAPTIVE:
        k -= 1.0
    return k


def derive(
    *,
    batch_size: int,
    reduction: str,
    optimizer: str,
    lr_per_sample: float,
    rule: str | None = None,
    weight_decay: float = 0.0,
    decoupled_decay: bool = False,
    momentum: float = 0.9,
    eps: float = 1e-8,
    seed: int = 0,
    schedule: str = "constant",
) -> TrialHParams:
    """Derive the optimizer settings of one trial from the suggested values.

    ``weight_decay``, ``eps`` are the values for the mean-reduced loss; the sum case
    gets their equivalents. ``decoupled_decay`` is always true for AdamW.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: unknown {optimizer!r}, expected one of {OPTIMIZERS}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: unknown {reduction!r}, expected one of {REDUCTIONS}")
    rule = rule or DEFAULT_RULE[optimizer]
    if rule not in RULE_EXPONENT:
        raise ValueError(f"rule: unknown {rule!r}, expected one of {tuple(RULE_EXPONENT)}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    if not (lr_per_sample > 0 and math.isfinite(lr_per_sample)):
        raise ValueError(f"lr_per_sample: must be a positive number, got {lr_per_sample}")

    k = lr_exponent(optimizer, reduction, rule)
    lr = lr_per_sample * batch_size**k
    decoupled = decoupled_decay or optimizer == "adamw"
    tied_sum = reduction == "sum" and rule != "none"
    if tied_sum and optimizer in ADAPTIVE:
        eps = eps * batch_size
    if tied_sum and weight_decay and not decoupled:
        weight_decay = weight_decay * batch_size
    return TrialHParams(
        batch_size=int(batch_size),
        reduction=reduction,
        optimizer=optimizer,
        rule=rule,
        lr_per_sample=float(lr_per_sample),
        lr=float(lr),
        k=float(k),
        weight_decay=float(weight_decay),
        decoupled_decay=bool(decoupled),
        momentum=float(momentum) if optimizer == "momentum" else 0.0,
        eps=float(eps),
        seed=int(seed),
        schedule=schedule,
    )


def lr_for(lr_per_sample: float, k: float, batch_size: int) -> float:
    """The optimizer LR at ``batch_size`` for an exported constant (c, k)."""
    return lr_per_sample * batch_size**k
