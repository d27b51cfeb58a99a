"""Does the scaling rule hold? Pure estimators over (batch size, LR, val loss) points.

1. :func:`optimal_lr` estimates lr*(B) at one batch size: a quadratic in log LR fitted to the
   best points around the minimum of the U-curve, with a bootstrap interval, and a flag
   when the minimum lies on the edge of the LRs tried (the searched range was too narrow).
2. :func:`fit_power_law` fits log lr*(B) = log c + k log B across batch sizes, with a
   bootstrap interval for k that carries each batch size's own uncertainty.
3. :func:`valid_range` grows the fit from the smallest batch sizes and stops at the first
   one whose lr* falls off the line (lr* flattening above the critical batch size).
4. :func:`verdict` compares the fitted k with the k the search space assumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

N_BOOT = 400
"""Bootstrap replicates: enough for stable 90% percentile intervals, milliseconds to run."""
CI = 0.90
"""Coverage of every interval reported."""
OFF_FIT_FACTOR = 1.5
"""A batch size whose lr* lies more than this factor below the line fitted to the smaller
batch sizes (its interval entirely below) is past the range where the rule holds."""


@dataclass(frozen=True)
class Optimum:
    batch_size: int
    lr: float
    """Estimated optimal LR (the vertex of the quadratic, or the best tried LR)."""
    lo: float
    hi: float
    """Bootstrap interval of the optimal LR."""
    best_tried_lr: float
    best_loss: float
    n_points: int
    on_edge: bool
    """The best tried LR is the smallest or largest tried: the true optimum may lie outside."""
    method: str
    """'quadratic' (vertex between tried LRs) or 'best tried' (no interior vertex to fit)."""
    boot: tuple = field(default=(), repr=False, compare=False)
    """Bootstrap replicates of log lr*, for the power-law interval."""


def _vertex(x: np.ndarray, y: np.ndarray) -> Optional[float]:
    """Vertex of the least-squares parabola through (x, y), if it opens upward."""
    if len(np.unique(x)) < 3:
        return None
    a, b, _ = np.polyfit(x, y, 2)
    if not a > 0:
        return None
    return float(-b / (2 * a))


def optimal_lr(
    batch_size: int,
    lrs: Sequence[float],
    losses: Sequence[float],
    tried_lrs: Sequence[float] = (),
    n_fit: int = 5,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Optimum:
    """lr*(B) from the U-curve at one batch size.

    ``lrs``/``losses``: the trials with a usable final loss. ``tried_lrs``: every LR tried at
    this batch size, diverged ones included: a diverged LR above the best brackets the
    optimum (the right wall of the U is a cliff), so the best is not on the range's edge.
    When the optimum cannot be placed between tried LRs by the quadratic, its interval spans
    the neighbouring tried LRs.
    """
    x = np.log(np.asarray(lrs, dtype=float))
    y = np.asarray(losses, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) == 0:
        raise ValueError(f"batch size {batch_size}: no finite (lr, loss) points")
    tried = np.unique(np.concatenate([x, np.log(np.asarray(tried_lrs, dtype=float))]))
    best = int(np.argmin(y))
    on_edge = bool(len(tried) > 1 and (x[best] <= tried.min() or x[best] >= tried.max()))
    # the n_fit points nearest the best in log LR: the bottom of the U, not its far walls
    near = np.argsort(np.abs(x - x[best]), kind="stable")[: max(n_fit, 3)]
    xs, ys = x[near], y[near]
    lo_x, hi_x = xs.min(), xs.max()

    def estimate(xb: np.ndarray, yb: np.ndarray) -> float:
        v = _vertex(xb, yb)
        return float(np.clip(v, lo_x, hi_x)) if v is not None else float(xb[np.argmin(yb)])

    vertex = _vertex(xs, ys)
    interior = vertex is not None and lo_x < vertex < hi_x
    center = estimate(xs, ys) if interior else float(x[best])
    rng = np.random.default_rng(seed)
    reps = np.asarray([estimate(xs[p], ys[p]) for p in (rng.integers(0, len(xs), len(xs)) for _ in range(n_boot))])
    q = (1 - CI) / 2
    lo, hi = np.quantile(reps, [q, 1 - q]) if len(xs) > 1 else (center, center)
    lo, hi = min(lo, center), max(hi, center)
    if not interior:  # the optimum lies somewhere between the best's tried neighbours
        below, above = tried[tried < center], tried[tried > center]
        lo = min(lo, below.max()) if len(below) else lo
        hi = max(hi, above.min()) if len(above) else hi
    return Optimum(
        batch_size=int(batch_size),
        lr=math.exp(center),
        lo=math.exp(lo),
        hi=math.exp(hi),
        best_tried_lr=math.exp(x[best]),
        best_loss=float(y[best]),
        n_points=int(len(x)),
        on_edge=on_edge,
        method="quadratic" if interior else "best tried",
        boot=tuple(reps.tolist()),
    )


@dataclass(frozen=True)
class PowerLaw:
    k: float
    k_lo: float
    k_hi: float
    c: float
    """lr = c * B**k."""
    c_lo: float
    c_hi: float
    batch_sizes: tuple[int, ...]
    """The batch sizes the fit used."""

    def lr(self, batch_size: float) -> float:
        return self.c * batch_size**self.k


def _ols(logb: np.ndarray, loglr: np.ndarray) -> tuple[float, float]:
    k, logc = np.polyfit(logb, loglr, 1)
    return float(k), float(logc)


def fit_power_law(optima: Sequence[Optimum], n_boot: int = N_BOOT, seed: int = 0) -> Optional[PowerLaw]:
    """Fit lr*(B) = c * B**k; None with fewer than two batch sizes.

    The interval comes from refitting with each batch size's lr* drawn from its own bootstrap
    replicates, so noisy optima widen it.
    """
    if len(optima) < 2:
        return None
    logb = np.log([o.batch_size for o in optima])
    k, logc = _ols(logb, np.log([o.lr for o in optima]))
    rng = np.random.default_rng(seed)
    boots = [np.asarray(o.boot) if o.boot else np.array([math.log(o.lr)]) for o in optima]
    ks, cs = [], []
    for _ in range(n_boot):
        draw = np.array([b[rng.integers(0, len(b))] for b in boots])
        kb, cb = _ols(logb, draw)
        ks.append(kb)
        cs.append(cb)
    q = (1 - CI) / 2
    k_lo, k_hi = np.quantile(ks, [q, 1 - q])
    c_lo, c_hi = np.quantile(cs, [q, 1 - q])
    return PowerLaw(
        k=k, k_lo=float(min(k_lo, k)), k_hi=float(max(k_hi, k)),
        c=math.exp(logc), c_lo=math.exp(min(c_lo, logc)), c_hi=math.exp(max(c_hi, logc)),
        batch_sizes=tuple(o.batch_size for o in optima),
    )


def _flattened(o: Optimum, law: PowerLaw) -> bool:
    """lr* fell below the line by more than OFF_FIT_FACTOR, its interval under the line.

    One-sided on purpose: past the critical batch size lr* grows slower than the rule, so it
    falls below the extrapolated line; a point above the line is scatter, not the breakdown.
    """
    predicted = law.lr(o.batch_size)
    return o.hi < predicted and o.lr * OFF_FIT_FACTOR < predicted


def valid_range(optima: Sequence[Optimum], n_boot: int = N_BOOT, seed: int = 0) -> tuple[Optional[PowerLaw], list[Optimum]]:
    """Fit on the batch sizes where the rule holds, growing from the smallest batch size.

    Starting from the three smallest, each next batch size joins while its lr* agrees with
    the line fitted to the ones below it; the first that falls off (lr* flattening above the
    critical batch size) ends the range. Returns the fit over the kept batch sizes and the
    optima above the range.
    """
    ordered = sorted(optima, key=lambda o: o.batch_size)
    kept = ordered[:3]
    for i, o in enumerate(ordered[3:], start=3):
        law = fit_power_law(kept, n_boot, seed)
        if _flattened(o, law):
            return fit_power_law(kept, n_boot, seed), ordered[i:]
        kept.append(o)
    return fit_power_law(kept, n_boot, seed), []


RULE_SPACING = 0.5
"""Neighbouring rules differ by 0.5 in k (none 0, sqrt 0.5, linear 1; under sum, SGD's shift
by -1): a verdict must tell the rule from its neighbours."""


def verdict(law: Optional[PowerLaw], rule_k: float) -> str:
    """'holds', 'does not hold' or 'inconclusive' for the assumed exponent ``rule_k``.

    It holds when the interval for k includes ``rule_k`` and excludes the neighbouring rules
    ``rule_k +- 0.5``; an interval that includes a neighbour too cannot tell them apart.
    """
    if law is None or len(law.batch_sizes) < 3:
        return "inconclusive: fewer than three batch sizes with an optimum"
    span = f"k = {law.k:.2f} [{law.k_lo:.2f}, {law.k_hi:.2f}]"
    also = [c for c in (rule_k - RULE_SPACING, rule_k + RULE_SPACING) if law.k_lo <= c <= law.k_hi]
    if law.k_lo <= rule_k <= law.k_hi:
        if also:
            return f"inconclusive: {span} includes the rule's {rule_k:g} but also {' and '.join(f'{c:g}' for c in also)}"
        return f"holds: {span} includes the rule's {rule_k:g}"
    return f"does not hold: {span} excludes the rule's {rule_k:g}"
