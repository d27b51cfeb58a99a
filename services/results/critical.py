"""The critical batch size, from the sweep's own learning curves.

To reach a fixed validation loss, the steps S and samples E = B * S a batch size needs (each at
its best LR) trade off as (S / S_min - 1)(E / E_min - 1) = 1 (McCandlish et al. 2018), that is

    E(B) = E_min + S_min * B,    S(B) = S_min + E_min / B,    B_crit = E_min / S_min.

Below B_crit doubling B nearly halves the steps for few more samples; past it, doubling B
saves under 25% of the steps and costs over 50% more samples. B_crit is predicted to be close
to the gradient noise scale B_simple (measured by the trials), and can be well above it under
Adam (Merrill et al. 2025): both are reported.

Per target loss (fractions of the way from the initial loss to the worst best loss any batch
size reached, so every batch size reaches every target), each batch size's fewest steps
over its LRs come from its trials' curves (interpolated between evaluations); E(B) is fitted by
least squares in relative error with E_min, S_min >= 0. The evidence:

- a bootstrap interval for B_crit: each draw resamples the trials of every batch size (which
  LRs and seeds were tried) and the batch sizes themselves, and puts each crossing anywhere
  between the two evaluations that bracket it (curves evaluated once an epoch locate a
  target only to within an epoch, and the interval widens to say so);
- leave one batch size out: the frontier fitted to the others predicts the left-out batch
  size's steps; a frontier that misses them by more than :data:`LOO_TOLERANCE` is not an
  answer (the check can fail, and then the verdict is "inconclusive").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
from scipy.optimize import nnls

from services.results.analysis import GroupSummary, TrialRecord, analysis_key
from services.results.fit import CI

TARGET_FRACTIONS = (0.5, 0.7, 0.85, 0.95)
"""Targets: the initial loss minus these fractions of its drop to the worst best loss any batch
size reached (1.0 would be reached by the worst batch size only at its last evaluation)."""
DRAWS = 400
"""Bootstrap draws for B_crit's interval."""
LOO_TOLERANCE = 0.30
"""Mean error of the steps predicted for left-out batch sizes above which the frontier is no answer."""
MAX_SPAN = 16.0
"""A B_crit interval wider than this factor (4 octaves) says the sweep cannot tell."""
MIN_BATCH_SIZES = 3


@dataclass(frozen=True)
class Reach:
    """The fewest steps to the target at one batch size, over its trials."""

    batch_size: int
    steps: float
    samples: float
    lr: float
    run_id: str
    bracket: tuple[float, float] = (0.0, 0.0)
    """The evaluations (samples) before and at the crossing: the curve reached the target
    somewhere between them, and the interval says so."""


@dataclass(frozen=True)
class Frontier:
    """Steps against samples to one target loss, and the fitted trade-off."""

    target: float
    fraction: float
    points: list[Reach]
    missing: list[int]
    s_min: Optional[float] = None
    e_min: Optional[float] = None
    b_crit: Optional[float] = None
    interval: tuple[float, float] = (math.nan, math.nan)
    loo_error: Optional[float] = None
    verdict: str = "inconclusive"
    b_simple: Optional[float] = None
    """B_simple as these points' trials measured it when they reached the target (median over
    batch sizes): the noise scale at this loss, which B_crit is predicted to match."""

    @property
    def conclusive(self) -> bool:
        return not self.verdict.startswith("inconclusive")

    def steps(self, batch_size: float) -> float:
        assert self.s_min is not None and self.e_min is not None
        return self.s_min + self.e_min / batch_size

    def samples(self, batch_size: float) -> float:
        assert self.s_min is not None and self.e_min is not None
        return self.e_min + self.s_min * batch_size


@dataclass(frozen=True)
class CriticalBatch:
    """A group's frontiers, the one an answer quotes (the hardest conclusive target), and B_simple."""

    group: str
    frontiers: list[Frontier]
    b_simple: Optional[float]
    note: str = ""
    swept: list[int] = field(default_factory=list)

    @property
    def b_simple_at_target(self) -> Optional[float]:
        """B_simple at the quoted target (``b_simple`` is the best trial's last, at a lower loss)."""
        return self.headline.b_simple if self.headline else None

    @property
    def headline(self) -> Optional[Frontier]:
        measured = [f for f in self.frontiers if f.verdict.startswith("B_crit =")]
        return measured[-1] if measured else None

    @property
    def advice(self) -> str:
        """The line a user acts on, or why there is none."""
        f = self.headline
        if f is None:  # a bound from the hardest target that gave one, else why not
            bounds = [fr for fr in self.frontiers if fr.conclusive]
            last = bounds[-1] if bounds else (self.frontiers[-1] if self.frontiers else None)
            return f"{last.verdict} (to reach val loss {last.target:.4g})" if last else self.note
        b = f.b_crit
        assert b is not None
        saving = 1 - f.steps(2 * b) / f.steps(b)
        cost = f.samples(2 * b) / f.samples(b) - 1
        return (
            f"past B ~ {b:.3g}, doubling B saves < {saving:.0%} of the steps and costs > {cost:.0%} more samples "
            f"(to reach val loss {f.target:.4g}" + (f"; B_simple there ~ {f.b_simple:.3g})" if f.b_simple else ")")
        )


def samples_to(curve: Sequence[tuple[float, float]], target: float) -> Optional[tuple[float, float, float]]:
    """(samples, bracket start, bracket end) at which a curve (samples, loss) first reaches
    ``target``, linear between the evaluations that bracket it; None if it never does."""
    prev: Optional[tuple[float, float]] = None
    for x, y in curve:
        if math.isfinite(y) and y <= target:
            if prev is None or prev[1] == y:
                return float(x), float(x), float(x)
            x0, frac = prev[0], (prev[1] - target) / (prev[1] - y)
            return float(x0 + frac * (x - x0)), float(x0), float(x)
        if math.isfinite(y):
            prev = (x, y)
    return None


def fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(S_min, E_min) of E = E_min + S_min * B over (batch size, samples) points, least squares
    in relative error, both >= 0."""
    b = np.array([p[0] for p in points], dtype=float)
    e = np.array([p[1] for p in points], dtype=float)
    a = np.stack([1 / e, b / e], axis=1)
    (e_min, s_min), _ = nnls(a, np.ones_like(e))
    return float(s_min), float(e_min)


def _b_crit(s_min: float, e_min: float) -> float:
    return math.inf if s_min <= 0 else e_min / s_min


def _best(reaches: list[Reach]) -> Reach:
    return min(reaches, key=lambda r: (r.steps, r.run_id))


def frontier(
    per_batch: Mapping[int, list[Reach]], target: float, fraction: float, missing: list[int], seed: int = 0
) -> Frontier:
    """Fit one target's frontier from every trial's reach, per batch size; score and bound it."""
    points = [_best(rs) for b, rs in sorted(per_batch.items()) if rs]
    if len(points) < MIN_BATCH_SIZES:
        reached = ", ".join(str(p.batch_size) for p in points) or "none"
        return Frontier(
            target,
            fraction,
            points,
            missing,
            verdict=f"inconclusive: only B = {reached} reached val loss {target:.4g} "
            f"(need {MIN_BATCH_SIZES} batch sizes)",
        )
    s_min, e_min = fit([(p.batch_size, p.samples) for p in points])
    errors = []
    for i, p in enumerate(points):
        s, e = fit([(q.batch_size, q.samples) for j, q in enumerate(points) if j != i])
        predicted = s + e / p.batch_size
        errors.append(abs(math.log(max(predicted, 1e-300) / p.steps)))
    loo = math.expm1(float(np.mean(errors))) if len(points) > MIN_BATCH_SIZES else None
    rng = np.random.default_rng(seed)
    sizes = [p.batch_size for p in points]
    # per batch size: each trial's crossing as its bracket (a point where it has none)
    brackets = []
    for b in sizes:
        rs = per_batch[b]
        start = np.array([r.bracket[0] if r.bracket[1] > r.bracket[0] else r.samples for r in rs])
        end = np.array([r.bracket[1] if r.bracket[1] > r.bracket[0] else r.samples for r in rs])
        brackets.append((start, end - start))
    draws = []
    for _ in range(DRAWS):
        picked = rng.choice(len(sizes), len(sizes))
        if len(set(picked.tolist())) < 2:
            continue
        pts = []
        for k in picked:
            start, width = brackets[k]
            trials = rng.integers(0, len(start), len(start))  # which trials, then where each crossed
            crossing = start[trials] + rng.random(len(start)) * width[trials]
            pts.append((sizes[k], max(float(crossing.min()), float(sizes[k]))))  # at least one step
        draws.append(_b_crit(*fit(pts)))
    q = (1 - CI) / 2
    # no interpolation between draws: some are infinite (S_min = 0, a frontier without a knee)
    lo, hi = (
        (float(np.quantile(draws, q, method="inverted_cdf")), float(np.quantile(draws, 1 - q, method="inverted_cdf")))
        if draws
        else (math.nan, math.nan)
    )
    b_crit = _b_crit(s_min, e_min)
    lo_b, hi_b = min(sizes), max(sizes)
    if loo is not None and loo > LOO_TOLERANCE:
        verdict = (
            f"inconclusive: the frontier fitted without a batch size misses its steps by {loo:.0%} on average "
            f"(more than {LOO_TOLERANCE:.0%})"
        )
    elif lo > lo_b and (not math.isfinite(hi) or lo > hi_b):
        verdict = f"above: B_crit > {lo:.3g}; up to B = {hi_b} every doubling still buys nearly half the steps"
    elif math.isfinite(hi) and hi <= hi_b / 2 and lo < lo_b:
        verdict = f"below: B_crit < {hi:.3g}; past it larger batches mostly cost samples"
    elif not (math.isfinite(hi) and hi / max(lo, 1e-300) <= MAX_SPAN):
        verdict = f"inconclusive: B_crit {b_crit:.3g} with an interval [{lo:.3g}, {hi:.3g}] wider than {MAX_SPAN:g}x"
        coarse = float(np.median([(p.bracket[1] - p.bracket[0]) / p.samples for p in points]))
        if coarse > 0.25:
            verdict += (
                f"; the evaluations around each crossing lie {coarse:.0%} of its samples apart: "
                "evaluate more often (budget.report_every_samples)"
            )
    else:
        verdict = f"B_crit = {b_crit:.3g} [{lo:.3g}, {hi:.3g}]"
    return Frontier(
        target,
        fraction,
        points,
        missing,
        s_min=s_min,
        e_min=e_min,
        b_crit=b_crit,
        interval=(lo, hi),
        loo_error=loo,
        verdict=verdict,
    )


def critical_batch(
    g: GroupSummary,
    records: Iterable[TrialRecord],
    curves: Mapping[str, Sequence[tuple[float, float]]],
    fractions: Sequence[float] = TARGET_FRACTIONS,
) -> CriticalBatch:
    """B_crit of group ``g`` at each target, from ``curves`` (run id -> (samples, val loss))."""
    members = [r for r in records if r.usable and analysis_key(r) == g.key and r.run_id in curves]
    swept = sorted({r.batch_size for r in members})
    if g.schedule == "batch_growth":
        return CriticalBatch(g.name, [], g.b_simple, "inconclusive: batch_growth changes B within a run", swept)
    if len(swept) < MIN_BATCH_SIZES:
        return CriticalBatch(
            g.name,
            [],
            g.b_simple,
            f"inconclusive: {len(swept)} batch sizes with curves (need {MIN_BATCH_SIZES})",
            swept,
        )
    best = {b: min(min(v for _, v in curves[r.run_id]) for r in members if r.batch_size == b) for b in swept}
    starts = [r.initial_loss if r.initial_loss is not None else curves[r.run_id][0][1] for r in members]
    start, floor = float(np.median(starts)), max(best.values())
    if not start > floor:
        return CriticalBatch(g.name, [], g.b_simple, "inconclusive: no batch size improved on the initial loss", swept)
    frontiers = []
    for fraction in fractions:
        target = start - fraction * (start - floor)
        per_batch: dict[int, list[Reach]] = {}
        for r in members:
            hit = samples_to(curves[r.run_id], target)
            if hit is not None:
                e, x0, x1 = hit
                reach = Reach(r.batch_size, e / r.batch_size, e, r.lr, r.run_id, (x0, x1))
                per_batch.setdefault(r.batch_size, []).append(reach)
        missing = [b for b in swept if b not in per_batch]
        frontiers.append(frontier(per_batch, target, fraction, missing))
    return CriticalBatch(g.name, frontiers, g.b_simple, swept=swept)


def value_at(history: Sequence[tuple[float, float]], samples: float) -> Optional[float]:
    """A metric's value at ``samples``, linear between the reports that bracket it (the first or
    last report outside them); None for no finite report."""
    points = sorted((x, y) for x, y in history if math.isfinite(y))
    if not points:
        return None
    xs, ys = zip(*points)
    return float(np.interp(samples, xs, ys))


def with_b_simple(c: CriticalBatch, histories: Mapping[str, Sequence[tuple[float, float]]]) -> CriticalBatch:
    """``c`` with each frontier's B_simple at its target, from its points' ``noise/b_simple``."""
    frontiers = []
    for f in c.frontiers:
        values = [value_at(histories.get(p.run_id, ()), p.samples) for p in f.points]
        measured = [v for v in values if v is not None and v > 0]
        frontiers.append(replace(f, b_simple=float(np.median(measured)) if measured else None))
    return replace(c, frontiers=frontiers)


def critical_doc(c: CriticalBatch) -> dict:
    """The ``batch`` entry of an export's constant."""
    head = c.headline
    return {
        "b_crit": head.b_crit if head else None,
        "b_crit_interval": list(head.interval) if head else None,
        "target_val_loss": head.target if head else None,
        "b_simple": c.b_simple,
        "b_simple_at_target": c.b_simple_at_target,
        "advice": c.advice,
        "model": "E = E_min + S_min * B, S = S_min + E_min / B, B_crit = E_min / S_min (McCandlish et al. 2018)",
        "batch_sizes": c.swept,
        "frontiers": [
            {
                "target_val_loss": f.target,
                "fraction_of_drop": f.fraction,
                "s_min": f.s_min,
                "e_min": f.e_min,
                "b_crit": f.b_crit if f.b_crit is None or math.isfinite(f.b_crit) else None,
                "b_crit_interval": [v if math.isfinite(v) else None for v in f.interval],
                "loo_error": f.loo_error,
                "b_simple_at_target": f.b_simple,
                "verdict": f.verdict,
                "not_reached_by": f.missing,
                "per_batch_size": [
                    {"batch_size": p.batch_size, "steps": p.steps, "samples": p.samples, "lr": p.lr, "run_id": p.run_id}
                    for p in f.points
                ],
            }
            for f in c.frontiers
        ],
    }
