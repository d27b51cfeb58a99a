"""Which batch size to train at, from an export's critical batch size (``samplewise batch``).

The export's frontier for a target loss (:mod:`services.results.critical`) says how many steps
S(B) = S_min + E_min / B and samples E(B) = E_min + S_min * B each batch size needs to reach it.
A goal picks one point on it:

- ``sample_budget`` N (data or compute is the limit): the fewest steps within N samples, the
  largest B with E(B) <= N, that is B = B_crit * (N / E_min - 1);
- ``step_budget`` N (wall time on enough hardware is the limit): the fewest samples within N
  steps, the smallest B with S(B) <= N, that is B = B_crit / (N / S_min - 1);
- neither: B_crit itself, where the two are balanced (2 S_min steps, 2 E_min samples).

The answer stays within the swept batch sizes, where the frontier was measured: a goal that
asks for more gets the range's end, which meets the budget too, and says so. The budgets are
to reach the frontier's target val loss (the one the export's B_crit was measured
at), and the model's budgets scale with the run's: a sweep of 3 epochs says nothing about 300.
Where the export has no conclusive B_crit, or a budget no batch size meets, the answer says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from services.errors import EXIT_FAILED, ExportError


class NoRecommendation(ExportError):
    """The export cannot answer the goal (inconclusive B_crit, or a budget no batch size meets):
    a valid question whose answer is no (exit status 1)."""

    exit_status = EXIT_FAILED


@dataclass(frozen=True)
class Recommendation:
    batch_size: int
    steps: float
    samples: float
    goal: str
    b_crit: float
    interval: tuple[float, float]
    target: float
    swept: tuple[int, int]

    note: str = ""
    """Why the batch size differs from the goal's own (held to the swept range), if it does."""


def recommend(
    const: dict[str, Any], sample_budget: Optional[float] = None, step_budget: Optional[float] = None
) -> Recommendation:
    """The batch size for a goal, from one exported constant's ``batch`` entry."""
    if sample_budget is not None and step_budget is not None:
        raise ExportError("--sample-budget/--step-budget: give one goal, not both")
    for name, value in (("--sample-budget", sample_budget), ("--step-budget", step_budget)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ExportError(f"{name}: must be a positive number, got {value!r}")
    batch = const.get("batch")
    label = f"{const['optimizer']}/{const['reduction']}"
    if not batch:
        raise NoRecommendation(f"{label}: the export has no critical batch size (exported before version 4)")
    if batch.get("b_crit") is None:
        raise NoRecommendation(f"{label}: no batch size to recommend: {batch['advice']}")
    head = next(f for f in batch["frontiers"] if f["b_crit"] == batch["b_crit"])
    s_min, e_min, b_crit = float(head["s_min"]), float(head["e_min"]), float(batch["b_crit"])
    target = float(head["target_val_loss"])
    if sample_budget is not None:
        if sample_budget <= e_min:
            raise NoRecommendation(
                f"--sample-budget: no batch size reaches val loss {target:.4g} within {sample_budget:g} samples "
                f"(the fewest, at small B, is {e_min:.4g})"
            )
        b = max(1, math.floor(b_crit * (sample_budget / e_min - 1)))
        goal = f"fewest steps within {sample_budget:g} samples"
    elif step_budget is not None:
        if step_budget <= s_min:
            raise NoRecommendation(
                f"--step-budget: no batch size reaches val loss {target:.4g} within {step_budget:g} steps "
                f"(the fewest, at large B, is {s_min:.4g})"
            )
        b = max(1, math.ceil(b_crit / (step_budget / s_min - 1)))
        goal = f"fewest samples within {step_budget:g} steps"
    else:
        b = max(1, round(b_crit))
        goal = "B_crit: steps and samples balanced (each twice its minimum)"
    sizes = batch.get("batch_sizes") or [b]
    low, high = min(sizes), max(sizes)
    note = ""
    if not low <= b <= high:  # the frontier was measured over the swept batch sizes only
        held = min(max(b, low), high)
        edge = "largest" if b > high else "smallest"
        note = (
            f"the goal alone gives B = {b}, outside the swept {low}..{high}; this is the {edge} measured batch size "
            f"(it meets the budget too; sweep {'larger' if b > high else 'smaller'} batch sizes to go further)"
        )
        b = held
    lo, hi = batch["b_crit_interval"]
    return Recommendation(
        batch_size=b,
        steps=s_min + e_min / b,
        samples=e_min + s_min * b,
        goal=goal,
        b_crit=b_crit,
        interval=(float(lo), float(hi)),
        target=target,
        swept=(low, high),
        note=note,
    )
