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
rescaled, as a user who ignores the batch size would do. The rules ``sqrt_halflife`` and
``sde`` (Adam and AdamW) take the sqrt LR and also move beta2 (and beta1, eps) with B; a
decoupled weight decay can keep its timescale fixed instead of its value
(:mod:`search_spaces.adam`).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Literal, Mapping

from search_spaces.adam import ADAM_RULES, adam_settings, decay_at

Optimizer = Literal["sgd", "momentum", "adam", "adamw"]
Reduction = Literal["mean", "sum"]
Rule = Literal["linear", "sqrt", "none", "sqrt_halflife", "sde"]

OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam", "adamw")
REDUCTIONS: tuple[str, ...] = ("mean", "sum")
RULE_EXPONENT: Mapping[str, float] = {"linear": 1.0, "sqrt": 0.5, "none": 0.0, "sqrt_halflife": 0.5, "sde": 0.5}
DEFAULT_RULE: Mapping[str, str] = {
    "sgd": "linear",
    "momentum": "linear",
    "adam": "sqrt",
    "adamw": "sqrt",
}
ADAPTIVE: frozenset[str] = frozenset({"adam", "adamw"})


@dataclass(frozen=True)
class TrialHParams:
    """The hyperparameters of one trial: the one schema they have.

    The Tune config is :meth:`as_config`, a trial's MLflow params are :meth:`as_params`, and
    :meth:`from_params` (the one parser) reads them back; the field names are the param names.
    """

    batch_size: int
    reduction: str
    optimizer: str
    rule: str
    lr_per_sample: float
    lr: float
    """The optimizer LR at ``batch_size`` (the schedule's starting LR)."""
    k: float
    """Exponent of B in the optimizer LR for this reduction: lr = lr_per_sample * B**k."""
    weight_decay: float
    decoupled_decay: bool
    momentum: float
    eps: float
    seed: int
    schedule: str = "constant"
    """Batch-size / LR schedule (search_spaces.schedules); lr is its starting LR."""
    beta1: float = 0.9
    beta2: float = 0.999
    """Adam's betas at ``batch_size`` (moved with B by the rules sqrt_halflife and sde)."""

    def as_config(self) -> dict[str, Any]:
        return asdict(self)

    def as_params(self) -> dict[str, str]:
        """The MLflow params of the trial's run (strings, as MLflow keeps them)."""
        return {name: str(value) for name, value in asdict(self).items()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "TrialHParams":
        return cls(**{name: config[name] for name in PARAM_NAMES if name in config})

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> "TrialHParams":
        """Parse the string params of a trial's MLflow run back into their types; a missing or
        malformed param raises ValueError naming it."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in params:
                if f.default is MISSING:
                    raise ValueError(f"{f.name}: missing from the run's params")
                continue
            text = params[f.name]
            try:
                values[f.name] = (text == "True") if f.type in ("bool", bool) else _PARSE[f.type](text)
            except (KeyError, ValueError):
                raise ValueError(f"{f.name}: cannot read {text[:60]!r} as {f.type}") from None
        return cls(**values)

    @property
    def mean_lr(self) -> float:
        """The trial's base LR before the reduction is accounted for: c * B**e with the rule's
        exponent e (the LR a mean-reduced loss takes; for rule ``none`` the raw LR). Schedules
        scale this."""
        return self.lr_per_sample * self.batch_size ** RULE_EXPONENT[self.rule]

    def settings(self, batch_size: int | None = None, lr_scale: float = 1.0) -> dict[str, float]:
        """lr, eps and weight decay for the optimizer at ``batch_size`` (default the trial's own)
        with the base LR scaled by ``lr_scale`` (a schedule): :func:`optimizer_settings`."""
        b0 = self.batch_size
        e = batch_exponents(self.optimizer, self.reduction, self.rule, self.decoupled_decay)
        return optimizer_settings(
            self.optimizer,
            self.reduction,
            self.rule,
            self.decoupled_decay,
            batch_size=b0 if batch_size is None else batch_size,
            mean_lr=self.mean_lr * lr_scale,
            eps=self.eps / b0 ** e["eps"],
            weight_decay=self.weight_decay / b0 ** e["weight_decay"],
        )


_PARSE = {"int": int, "float": float, "str": str}
PARAM_NAMES: tuple[str, ...] = tuple(f.name for f in fields(TrialHParams))
"""The hyperparameter names: Tune config keys and MLflow param names of every trial."""

GROUP_FIELDS: tuple[str, ...] = ("optimizer", "reduction", "schedule")
"""A group: the trials one LR-per-sample constant is exported for."""
CELL_FIELDS: tuple[str, ...] = GROUP_FIELDS + ("batch_size",)
"""A cell: a group at one batch size, where LRs compete (ASHA, the stratified searcher)."""


def _values(trial: Any, names: tuple[str, ...]) -> tuple:
    get = trial.get if isinstance(trial, Mapping) else lambda name: getattr(trial, name)
    return tuple(get(name) for name in names)


def group_key(trial: Any) -> tuple:
    """(optimizer, reduction, schedule) of a Tune config, a TrialHParams or a trial record."""
    return _values(trial, GROUP_FIELDS)


def cell_key(trial: Any) -> tuple:
    """The group key and the batch size."""
    return _values(trial, CELL_FIELDS)


def config_key(values: Mapping[str, Any]) -> tuple[str, ...]:
    """The identity of a configuration, alike from a Tune config and from a run's MLflow params
    (every hyperparameter, as text)."""
    return tuple(str(values.get(name, "")) for name in PARAM_NAMES)


def batch_exponents(optimizer: str, reduction: str, rule: str, decoupled_decay: bool) -> dict[str, int]:
    """Power of the batch size that multiplies each optimizer setting, relative to the base LR
    and to the mean-reduced eps and weight decay.

    Under a sum-reduced loss (a tied rule) SGD's LR divides by B, Adam's eps and a coupled
    weight decay multiply by B, so that every update is the mean-reduced one; so does SGD's
    decoupled decay (``p *= 1 - lr * wd`` with SGD's LR over B). Rule ``none`` rescales
    nothing. AdamW always decays decoupled.
    """
    tied_sum = reduction == "sum" and rule != "none"
    adaptive = optimizer in ADAPTIVE
    decoupled = decoupled_decay or optimizer == "adamw"
    return {
        "lr": -1 if tied_sum and not adaptive else 0,
        "eps": 1 if tied_sum and adaptive else 0,
        "weight_decay": 1 if tied_sum and not (decoupled and adaptive) else 0,
    }


def optimizer_settings(
    optimizer: str,
    reduction: str,
    rule: str,
    decoupled_decay: bool,
    *,
    batch_size: int,
    mean_lr: float,
    eps: float,
    weight_decay: float,
) -> dict[str, float]:
    """What the optimizer is given at ``batch_size``: the one place the reduction and the rule
    turn the base LR and the mean-reduced eps and weight decay into optimizer settings. The
    search space (:func:`derive`), the schedules (:meth:`TrialHParams.settings`) and the
    exported formulas (:func:`batch_exponents`) all follow it."""
    e = batch_exponents(optimizer, reduction, rule, decoupled_decay)
    return {
        "lr": mean_lr * batch_size ** e["lr"],
        "eps": eps * batch_size ** e["eps"],
        "weight_decay": weight_decay * batch_size ** e["weight_decay"],
    }


def lr_exponent(optimizer: str, reduction: str, rule: str) -> float:
    """Exponent k of B in the optimizer LR: lr = c * B**k."""
    return RULE_EXPONENT[rule] + batch_exponents(optimizer, reduction, rule, False)["lr"]


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
    betas: tuple[float, float] = (0.9, 0.999),
    reference_batch_size: int | None = None,
    decay_tie: str = "fixed",
) -> TrialHParams:
    """Derive the optimizer settings of one trial from the suggested values.

    ``weight_decay``, ``eps`` and ``betas`` are the values for the mean-reduced loss at
    ``reference_batch_size`` (default ``batch_size``): the rule moves betas and eps, and
    ``decay_tie`` the decoupled decay, from there (:mod:`search_spaces.adam`); the sum case gets
    their equivalents. ``decoupled_decay`` is always true for AdamW.
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
    if rule in ADAM_RULES and optimizer not in ADAPTIVE:
        raise ValueError(f"rule: {rule!r} moves Adam's betas and eps; optimizer {optimizer!r} has none")

    decoupled = decoupled_decay or optimizer == "adamw"
    if decay_tie != "fixed" and not decoupled:
        raise ValueError(f"decay_tie: {decay_tie!r} ties a decoupled decay's timescale; this decay is coupled")
    ref = batch_size if reference_batch_size is None else reference_batch_size
    beta1, beta2, eps = adam_settings(rule, batch_size, ref, betas, eps)
    weight_decay = decay_at(decay_tie, weight_decay, batch_size, ref, RULE_EXPONENT[rule])
    settings = optimizer_settings(
        optimizer,
        reduction,
        rule,
        decoupled,
        batch_size=batch_size,
        mean_lr=lr_per_sample * batch_size ** RULE_EXPONENT[rule],
        eps=eps,
        weight_decay=weight_decay,
    )
    return TrialHParams(
        batch_size=int(batch_size),
        reduction=reduction,
        optimizer=optimizer,
        rule=rule,
        lr_per_sample=float(lr_per_sample),
        lr=float(settings["lr"]),
        k=float(lr_exponent(optimizer, reduction, rule)),
        weight_decay=float(settings["weight_decay"]),
        decoupled_decay=bool(decoupled),
        momentum=float(momentum) if optimizer == "momentum" else 0.0,
        eps=float(settings["eps"]),
        seed=int(seed),
        schedule=schedule,
        beta1=float(beta1) if optimizer in ADAPTIVE else 0.0,
        beta2=float(beta2) if optimizer in ADAPTIVE else 0.0,
    )


def lr_for(lr_per_sample: float, k: float, batch_size: int) -> float:
    """The optimizer LR at ``batch_size`` for an exported constant (c, k)."""
    return lr_per_sample * batch_size**k


def noise_scale(hp: TrialHParams, lr: float, batch_size: int, n_train: int) -> float:
    """SGD noise scale g = lr * N / (B * (1 - m)) (Smith et al. 2018), with the LR a
    mean-reduced loss would need for the optimizer's update: under sum SGD that is lr * B."""
    mean_equivalent = lr * batch_size if hp.reduction == "sum" and hp.optimizer not in ADAPTIVE else lr
    return mean_equivalent * n_train / (batch_size * (1 - hp.momentum))
