"""The search space's schema: batch sizes, reductions, optimizers, schedules and seeds to sweep,
and the range of the LR per sample searched for each optimizer.

One frozen pydantic model, :class:`SpaceSpec`, the ``space`` section of a sweep spec; the
define-by-run spaces of :mod:`search_spaces.tied` read it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from search_spaces.adam import ADAM_RULES
from search_spaces.scaling import ADAPTIVE, DEFAULT_RULE, Optimizer, Reduction, Rule
from search_spaces.schedules import ScheduleKind

MAX_SAMPLES = 10**15
MAX_BATCH = 2**31
MAX_SEED = 2**32 - 1
"""Bounds that keep every number a spec can hold within what Ray, Optuna, torch and numpy accept
(numpy seeds are 32-bit) and what one machine can plan for."""


class FrozenModel(BaseModel):
    """Immutable, and unknown keys are an error (a typo never passes silently)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


MAX_LR = 1e4
"""The largest LR per sample (or LR) a range may name: past it every trial diverges at once."""


class LogRange(FrozenModel):
    low: float = Field(gt=0, allow_inf_nan=False, le=MAX_LR)
    high: float = Field(gt=0, allow_inf_nan=False, le=MAX_LR)
    grid_points: int = Field(default=5, ge=1, le=10_000)
    """Log-spaced values between low and high, both included, for the grid searcher."""

    @property
    def count(self) -> int:
        """Distinct grid values: one when the range is a single point."""
        return 1 if self.grid_points == 1 or self.low == self.high else self.grid_points

    @model_validator(mode="after")
    def _ordered(self) -> "LogRange":
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        return self


def _range_kind(value: Any) -> str:
    """A single range has low/high keys; anything else is a mapping of optimizer to range."""
    keys = value.keys() if isinstance(value, dict) else dict(value).keys() if isinstance(value, BaseModel) else ()
    return "range" if not isinstance(value, dict) or {"low", "high", "grid_points"} & set(keys) else "per_optimizer"


LrRanges = Annotated[
    Union[Annotated[LogRange, Tag("range")], Annotated[dict[Optimizer, LogRange], Tag("per_optimizer")]],
    Discriminator(_range_kind),
]


class WeightDecaySpec(FrozenModel):
    value: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    """Weight decay for the mean-reduced loss; coupled decay under sum is scaled by B."""
    mode: Literal["coupled", "decoupled"] = "coupled"
    """coupled: L2 added to the gradient (torch weight_decay); decoupled: p *= 1 - lr*wd.
    AdamW always decays decoupled, whatever this says."""
    tie: Literal["fixed", "timescale"] = "fixed"
    """fixed: ``value`` at every batch size; timescale (decoupled decay only): ``value`` at the
    space's reference batch size, and elsewhere what keeps the decay's EMA timescale
    B / (lr * wd * N) epochs fixed as B and the tied LR move: value * (B / B_ref)**(1 - e)
    for an LR c * B**e (search_spaces.adam)."""


class SpaceSpec(FrozenModel):
    batch_sizes: list[int] = Field(min_length=1, max_length=1000)
    """Batch sizes to sweep; powers of two make the log-log fits evenly spaced."""
    lr_per_sample: LrRanges
    """Range of the rule constant c (lr = c * B**k under mean reduction), searched in log: one
    range for every optimizer, or one per optimizer (``{sgd: {low, high}, adam: {...}}``):
    SGD's and Adam's constants differ by well over an order of magnitude."""
    reductions: list[Reduction] = Field(default=["mean"], min_length=1)
    optimizers: list[Optimizer] = Field(default=["sgd"], min_length=1)
    rules: dict[Optimizer, Rule] = {}
    """Scaling rule per optimizer; default linear for SGD/momentum, sqrt for Adam/AdamW."""
    momentum: float = Field(default=0.9, ge=0, lt=1, allow_inf_nan=False)
    """Momentum of the ``momentum`` optimizer (plain ``sgd`` uses none)."""
    eps: float = Field(default=1e-8, gt=0, allow_inf_nan=False)
    """Adam eps for the mean-reduced loss (scaled by B under sum to stay equivalent); under the
    rule sde, at the reference batch size."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam's (beta1, beta2); under the rules sqrt_halflife and sde, at the reference batch
    size (search_spaces.adam moves them with B)."""
    reference_batch_size: Optional[int] = Field(default=None, ge=1, le=MAX_BATCH)
    """The batch size at which betas, eps and a timescale-tied weight decay take the values
    written here; default the smallest swept. Exports turn them into per-sample constants
    (half-lives in samples, the decay timescale in epochs), which do not depend on it."""
    weight_decay: WeightDecaySpec = WeightDecaySpec()
    schedules: list[ScheduleKind] = Field(default=["constant"], min_length=1)
    """Batch-size / LR schedules to compare (settings in the ``schedule`` section); the batch
    sizes above are the starting ones."""
    seeds: Optional[list[int]] = Field(default=None, min_length=1, max_length=10_000)
    """Training seeds to sweep over (init and data order); default the searcher's seed."""
    interleave: bool = False
    """Grid search: the reductions of an optimizer whose rule is tied (their updates are
    identical, so the analysis pools them) take interleaved LRs: together they cover
    ``grid_points`` x reductions log-spaced LRs from low to high, each reduction every other
    one, so the pooled U-curve at every batch size has twice the LRs for the same trials."""

    @model_validator(mode="after")
    def _check(self) -> "SpaceSpec":
        for field in ("batch_sizes", "reductions", "optimizers", "schedules", "seeds"):
            values = getattr(self, field) or []
            if len(set(values)) != len(values):
                raise ValueError(f"{field}: duplicate values in {values}")
        for i, b in enumerate(self.batch_sizes):
            if not 1 <= b <= MAX_BATCH:
                raise ValueError(f"batch_sizes.{i}: must be between 1 and {MAX_BATCH}, got {b}")
        for i, seed in enumerate(self.seeds or []):
            if not 0 <= seed <= MAX_SEED:
                raise ValueError(f"seeds.{i}: must be between 0 and {MAX_SEED}, got {seed}")
        for i, beta in enumerate(self.betas):
            if not 0 <= beta < 1:
                raise ValueError(f"betas.{i}: must lie in [0, 1), got {beta}")
        for name, rule in self.rules.items():
            if rule in ADAM_RULES and name not in ADAPTIVE:
                raise ValueError(f"rules.{name}: {rule!r} moves Adam's betas and eps; {name} has none")
        moves_with_b = [r for o in self.optimizers if (r := self.rule_for(o)) in ADAM_RULES]
        if self.weight_decay.tie != "fixed":
            moves_with_b.append("weight_decay.tie: timescale")
            coupled = [o for o in self.optimizers if o != "adamw" and self.weight_decay.mode == "coupled"]
            if coupled:
                raise ValueError(
                    f"weight_decay.tie: 'timescale' ties a decoupled decay; {coupled[0]} decays coupled here "
                    "(set weight_decay.mode: decoupled)"
                )
        if moves_with_b and "batch_growth" in self.schedules:
            raise ValueError(
                f"schedules: batch_growth changes B within a run, which {moves_with_b[0]} would have to follow; "
                "not supported together"
            )
        if isinstance(self.lr_per_sample, dict):
            missing = [o for o in self.optimizers if o not in self.lr_per_sample]
            if missing:
                raise ValueError(
                    f"lr_per_sample: no range for optimizer {missing[0]} (ranges given for "
                    f"{sorted(self.lr_per_sample)})"
                )
        return self

    def cells(self) -> int:
        """Batch size x reduction x optimizer x schedule x seed combinations."""
        return (
            len(self.batch_sizes)
            * len(self.reductions)
            * len(self.optimizers)
            * len(self.schedules)
            * len(self.seeds or [0])
        )

    def grid_size(self) -> int:
        """Points of the grid search: every cell at every grid LR."""
        return self.cells() * max(self.lr_range(o).count for o in self.optimizers)

    @property
    def ref_batch_size(self) -> int:
        """The batch size betas, eps and a tied weight decay are quoted at."""
        return self.reference_batch_size or min(self.batch_sizes)

    def rule_for(self, optimizer: str) -> str:
        return next((rule for name, rule in self.rules.items() if name == optimizer), DEFAULT_RULE[optimizer])

    def lr_ranges(self) -> dict[str, tuple[float, float]]:
        """(low, high) of the LR per sample searched for each optimizer of the sweep."""
        return {o: (self.lr_range(o).low, self.lr_range(o).high) for o in self.optimizers}

    def lr_range(self, optimizer: str) -> LogRange:
        """The LR-per-sample range searched for ``optimizer``."""
        ranges = self.lr_per_sample
        if isinstance(ranges, dict):  # the spec's validator saw one for every optimizer swept
            return next(rng for name, rng in ranges.items() if name == optimizer)
        return ranges
