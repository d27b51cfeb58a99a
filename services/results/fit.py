"""Does the scaling rule hold, and which law describes lr*(B)? Pure estimators over trial points.

1. :func:`optimal_lr` estimates lr*(B) at one batch size: a quadratic in log LR fitted to the
   points around the minimum of the U-curve, with a bootstrap interval (seeds resampled too
   when the sweep has several), and a flag when the minimum lies on the edge of the LRs tried.
2. :func:`fit_power_law` fits log lr*(B) = log c + k log B across batch sizes;
   :func:`valid_range` grows that fit from the smallest batch sizes until lr* falls off it;
   :func:`verdict` compares the fitted k with the rule's.
The laws that bend (saturating, surge) are fitted beside the power law in :mod:`services.results.laws`.

Every function sorts its input first and seeds its own generator: the same points in any
order give the same figures.
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
Z = 1.6449
"""Half-width of a 90% normal interval in standard deviations (turns an interval into a sigma)."""
K_TOL = 1e-6
"""Exponents closer than this are equal: a bootstrap bound of 0.9999999999999998 includes 1."""
OFF_FIT_FACTOR = 1.5
"""A batch size whose lr* lies more than this factor below the line fitted to the smaller
batch sizes (its interval entirely below) is past the range where the rule holds."""
RULE_SPACING = 0.5
"""Neighbouring rules differ by 0.5 in k (none 0, sqrt 0.5, linear 1; under sum, SGD's shift
by -1): a verdict must tell the rule from its neighbours."""
SIGMA_FLOOR = 0.05
"""Smallest uncertainty of log lr*(B) the fits assume (5%): exact synthetic optima would
otherwise get infinite weight."""


def _rng(seed: int, *salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, *salt])


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
    seeds: int = 1
    """Training seeds behind the estimate (the interval resamples them when above 1)."""
    boot: tuple = field(default=(), repr=False, compare=False)
    """Bootstrap replicates of log lr*, for the intervals of the laws."""

    @property
    def log_sigma(self) -> float:
        """Standard deviation of log lr* implied by the interval, floored at SIGMA_FLOOR."""
        return max((math.log(self.hi) - math.log(self.lo)) / (2 * Z), SIGMA_FLOOR)


def _vertex(x: np.ndarray, y: np.ndarray) -> Optional[float]:
    """Vertex of the least-squares parabola through (x, y), if it opens upward."""
    if len(np.unique(x)) < 3:
        return None
    a, b, _ = np.polyfit(x, y, 2)
    if not a > 0:
        return None
    return float(-b / (2 * a))


def _best_x(x: np.ndarray, y: np.ndarray) -> float:
    """The x with the lowest mean y (seeds at one LR averaged); ties go to the smaller x."""
    ux, inv = np.unique(x, return_inverse=True)
    mean = np.bincount(inv, weights=y) / np.bincount(inv)
    return float(ux[int(np.argmin(mean))])


def optimal_lr(
    batch_size: int,
    lrs: Sequence[float],
    losses: Sequence[float],
    tried_lrs: Sequence[float] = (),
    seeds: Sequence[int] = (),
    n_fit: int = 5,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Optimum:
    """lr*(B) from the U-curve at one batch size.

    ``lrs``/``losses`` (and ``seeds``, one per point): the trials that trained properly.
    ``tried_lrs``: every LR tried at this batch size, diverged trials and trials that did not
    learn included: such an LR above the best brackets the optimum (the right wall of the U is
    a cliff), so the best is not on the range's edge, but its loss never drags the vertex.
    The parabola is fitted to the ``n_fit`` distinct LRs nearest the best (every seed's point
    at each). The interval resamples seeds (when there are several) and points within a seed.
    When the optimum cannot be placed between tried LRs, its interval spans the neighbours.
    """
    x = np.log(np.asarray(lrs, dtype=float))
    y = np.asarray(losses, dtype=float)
    s = np.asarray(seeds, dtype=float) if len(seeds) else np.zeros(len(x))
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, s = x[ok], y[ok], s[ok]
    if len(x) == 0:
        raise ValueError(f"batch size {batch_size}: no finite (lr, loss) points")
    order = np.lexsort((y, s, x))  # canonical order: the result never depends on row order
    x, y, s = x[order], y[order], s[order]
    tried = np.unique(np.concatenate([x, np.log(np.asarray(tried_lrs, dtype=float))]))
    best = _best_x(x, y)
    on_edge = bool(len(tried) > 1 and (best <= tried.min() or best >= tried.max()))
    ux = np.unique(x)
    near = ux[np.argsort(np.abs(ux - best), kind="stable")[: max(n_fit, 3)]]
    keep = np.isin(x, near)
    xs, ys, ss = x[keep], y[keep], s[keep]
    lo_x, hi_x = xs.min(), xs.max()

    def estimate(xb: np.ndarray, yb: np.ndarray) -> float:
        v = _vertex(xb, yb)
        return float(np.clip(v, lo_x, hi_x)) if v is not None else _best_x(xb, yb)

    vertex = _vertex(xs, ys)
    interior = vertex is not None and lo_x < vertex < hi_x
    center = float(vertex) if interior and vertex is not None else best
    groups = [np.flatnonzero(ss == u) for u in np.unique(ss)]
    rng = _rng(seed, int(batch_size))
    reps = np.empty(n_boot)
    for r in range(n_boot):
        if len(groups) > 1:  # a cluster bootstrap: seeds drawn with replacement, then points within
            idx = np.concatenate(
                [
                    g[rng.integers(0, len(g), len(g))]
                    for g in (groups[i] for i in rng.integers(0, len(groups), len(groups)))
                ]
            )
        else:
            idx = rng.integers(0, len(xs), len(xs))
        reps[r] = estimate(xs[idx], ys[idx])
    q = (1 - CI) / 2
    lo, hi = np.quantile(reps, [q, 1 - q]) if len(np.unique(xs)) > 1 else (center, center)
    lo, hi = min(lo, center), max(hi, center)
    if not interior:  # the optimum lies somewhere between the best's tried neighbours
        below, above = tried[tried < center], tried[tried > center]
        lo = min(lo, below.max()) if len(below) else lo
        hi = max(hi, above.min()) if len(above) else hi
    at_best = x == best
    return Optimum(
        batch_size=int(batch_size),
        lr=math.exp(center),
        lo=math.exp(lo),
        hi=math.exp(hi),
        best_tried_lr=math.exp(best),
        best_loss=float(y[at_best].mean()),
        n_points=int(len(x)),
        on_edge=on_edge,
        method="quadratic" if interior else "best tried",
        seeds=len(groups),
        boot=tuple(reps.tolist()),
    )


# --- the power law and the rule's verdict -------------------------------------------------


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


def by_batch(optima: Sequence[Optimum]) -> list[Optimum]:
    return sorted(optima, key=lambda o: o.batch_size)


def fit_weights(optima: Sequence[Optimum]) -> np.ndarray:
    """One weight for every batch size, 1 / (mean variance of log lr*): the fits are ordinary
    least squares (one badly estimated interval cannot pull a line), while the chi-square that
    compares laws is measured against the typical uncertainty of an optimum."""
    var = float(np.mean([o.log_sigma**2 for o in optima]))
    return np.full(len(optima), 1.0 / var)


def replicates(optima: Sequence[Optimum], n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) draws of log lr*. When every optimum carries replicates of one joint bootstrap
    (the same number, from :func:`services.results.surface.surface_optima`), draw r takes
    replicate i_r of every batch size, so the batch sizes move together as they did in the
    joint refit; otherwise each batch size draws from its own replicates."""
    rng = _rng(seed, 1)
    boots = [np.asarray(o.boot) if o.boot else np.array([math.log(o.lr)]) for o in optima]
    lengths = {len(b) for b in boots}
    if len(lengths) == 1 and lengths != {1}:
        idx = rng.integers(0, lengths.pop(), n_boot)
        return np.stack([b[idx] for b in boots], axis=1)
    return np.stack([b[rng.integers(0, len(b), n_boot)] for b in boots], axis=1)


def weighted_line(logb: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares slope and intercept of y (shape (..., n)) on logb."""
    sw = w.sum()
    mb = (w * logb).sum() / sw
    my = (y * w).sum(axis=-1) / sw
    slope = ((y - my[..., None]) * w * (logb - mb)).sum(axis=-1) / (w * (logb - mb) ** 2).sum()
    return slope, my - slope * mb


def fit_power_law(optima: Sequence[Optimum], n_boot: int = N_BOOT, seed: int = 0) -> Optional[PowerLaw]:
    """Fit lr*(B) = c * B**k by least squares in log-log; None with fewer than two batch sizes.

    The interval comes from refitting with each batch size's lr* drawn from its own bootstrap
    replicates, so noisy optima widen it.
    """
    optima = by_batch(optima)
    if len(optima) < 2:
        return None
    logb = np.log([o.batch_size for o in optima])
    w = fit_weights(optima)
    k_fit, logc_fit = weighted_line(logb, np.log([o.lr for o in optima]), w)
    ks, cs = weighted_line(logb, replicates(optima, n_boot, seed), w)
    q = (1 - CI) / 2
    k_lo, k_hi = np.quantile(ks, [q, 1 - q])
    c_lo, c_hi = np.quantile(cs, [q, 1 - q])
    k, logc = float(k_fit), float(logc_fit)
    return PowerLaw(
        k=k,
        k_lo=float(min(k_lo, k)),
        k_hi=float(max(k_hi, k)),
        c=math.exp(logc),
        c_lo=math.exp(min(c_lo, logc)),
        c_hi=math.exp(max(c_hi, logc)),
        batch_sizes=tuple(o.batch_size for o in optima),
    )


def rule_constant(
    optima: Sequence[Optimum], rule_k: float, n_boot: int = N_BOOT, seed: int = 0
) -> Optional[tuple[float, float, float]]:
    """c of lr = c * B**rule_k fitted to ``optima``, with its interval: (c, lo, hi)."""
    optima = by_batch(optima)
    if not optima:
        return None
    logb = np.log([o.batch_size for o in optima])
    w = fit_weights(optima)
    center = float((w * (np.log([o.lr for o in optima]) - rule_k * logb)).sum() / w.sum())
    reps = ((replicates(optima, n_boot, seed) - rule_k * logb) * w).sum(axis=1) / w.sum()
    lo, hi = np.quantile(reps, [(1 - CI) / 2, 1 - (1 - CI) / 2])
    return math.exp(center), math.exp(min(lo, center)), math.exp(max(hi, center))


def _flattened(o: Optimum, law: PowerLaw) -> bool:
    """lr* fell below the line by more than OFF_FIT_FACTOR, its interval under the line.

    One-sided on purpose: past the critical batch size lr* grows slower than the rule, so it
    falls below the extrapolated line; a point above the line is scatter, not the breakdown.
    """
    predicted = law.lr(o.batch_size)
    return o.hi < predicted and o.lr * OFF_FIT_FACTOR < predicted


def valid_range(
    optima: Sequence[Optimum], n_boot: int = N_BOOT, seed: int = 0
) -> tuple[Optional[PowerLaw], list[Optimum]]:
    """Fit on the batch sizes where one power law holds, growing from the smallest batch size.

    Starting from the three smallest, each next batch size joins while its lr* agrees with
    the line fitted to the ones below it; the first that falls off (lr* flattening above the
    critical batch size) ends the range. Returns the fit over the kept batch sizes and the
    optima above the range.
    """
    ordered = by_batch(optima)
    kept = ordered[:3]
    for i, o in enumerate(ordered[3:], start=3):
        fit = fit_power_law(kept, n_boot, seed)
        if fit is not None and _flattened(o, fit):
            return fit, ordered[i:]
        kept.append(o)
    return fit_power_law(kept, n_boot, seed), []


def _rules_inside(lo: float, hi: float, rule_k: float) -> list[float]:
    """The rule exponents (rule_k + j * RULE_SPACING) inside [lo, hi], within K_TOL."""
    first = math.ceil((lo - K_TOL - rule_k) / RULE_SPACING)
    last = math.floor((hi + K_TOL - rule_k) / RULE_SPACING)
    return [round(rule_k + j * RULE_SPACING, 6) + 0.0 for j in range(first, last + 1)]


SETTLE = "more LRs near each batch size's optimum, more seeds or more batch sizes would narrow it"


def verdict(law: Optional[PowerLaw], rule_k: float) -> str:
    """'holds', 'does not hold' or 'inconclusive' for the assumed exponent ``rule_k``.

    It holds when the interval for k includes ``rule_k`` and no neighbouring rule
    (``rule_k +- 0.5``, ...); it does not hold when the interval excludes ``rule_k`` and
    points at most at one other rule. An interval that covers two rules cannot tell them
    apart: inconclusive, with what would settle it.
    """
    if law is None or len(law.batch_sizes) < 3:
        return (
            "inconclusive: fewer than three batch sizes with an interior optimum; "
            "sweep more batch sizes, or widen the LR range where the best LR sits on its edge"
        )
    span = f"k = {law.k:.2f} [{law.k_lo:.2f}, {law.k_hi:.2f}]"
    inside = _rules_inside(law.k_lo, law.k_hi, rule_k)
    others = [k for k in inside if abs(k - rule_k) > K_TOL]
    names = " and ".join(f"{k:g}" for k in others)
    if len(others) != len(inside):  # the rule's k is inside
        if others:
            return f"inconclusive: {span} includes the rule's {rule_k:g} but also {names}; {SETTLE}"
        return f"holds: {span} includes the rule's {rule_k:g} and excludes its neighbours"
    if len(others) > 1:
        return f"inconclusive: {span} excludes the rule's {rule_k:g} but cannot tell {names} apart; {SETTLE}"
    return f"does not hold: {span} excludes the rule's {rule_k:g}" + (f" (it points at {names})" if others else "")
