"""Does the scaling rule hold, and which law describes lr*(B)? Pure estimators over trial points.

1. :func:`optimal_lr` estimates lr*(B) at one batch size: a quadratic in log LR fitted to the
   points around the minimum of the U-curve, with a bootstrap interval (seeds resampled too
   when the sweep has several), and a flag when the minimum lies on the edge of the LRs tried.
2. :func:`fit_power_law` fits log lr*(B) = log c + k log B across batch sizes;
   :func:`valid_range` grows that fit from the smallest batch sizes until lr* falls off it;
   :func:`verdict` compares the fitted k with the rule's.
3. :func:`fit_laws` fits the laws physics predicts beside the power law and :func:`choose_law`
   picks one by AICc: the power law unless another is clearly better supported.

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
"""Smallest uncertainty of log lr*(B) the law fits assume (5%): exact synthetic optima would
otherwise get infinite weight."""
MIN_POINTS_PER_PARAM = 2
"""A two-parameter law beside the power law needs at least 4 batch sizes with an optimum."""
AIC_MARGIN = 2.0
"""Another law replaces the power law only when its AICc is lower by more than this."""


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
    center = float(vertex) if interior else best
    groups = [np.flatnonzero(ss == u) for u in np.unique(ss)]
    rng = _rng(seed, int(batch_size))
    reps = np.empty(n_boot)
    for r in range(n_boot):
        if len(groups) > 1:  # a cluster bootstrap: seeds drawn with replacement, then points within
            idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in
                                  (groups[i] for i in rng.integers(0, len(groups), len(groups)))])
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


def _by_batch(optima: Sequence[Optimum]) -> list[Optimum]:
    return sorted(optima, key=lambda o: o.batch_size)


def _weights(optima: Sequence[Optimum]) -> np.ndarray:
    """One weight for every batch size, 1 / (mean variance of log lr*): the fits are ordinary
    least squares (one badly estimated interval cannot pull a line), while the chi-square that
    compares laws is measured against the typical uncertainty of an optimum."""
    var = float(np.mean([o.log_sigma**2 for o in optima]))
    return np.full(len(optima), 1.0 / var)


def _replicates(optima: Sequence[Optimum], n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) draws of log lr*, each batch size from its own bootstrap replicates."""
    rng = _rng(seed, 1)
    cols = []
    for o in optima:
        boot = np.asarray(o.boot) if o.boot else np.array([math.log(o.lr)])
        cols.append(boot[rng.integers(0, len(boot), n_boot)])
    return np.stack(cols, axis=1)


def _wls_line(logb: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    optima = _by_batch(optima)
    if len(optima) < 2:
        return None
    logb = np.log([o.batch_size for o in optima])
    w = _weights(optima)
    k, logc = _wls_line(logb, np.log([o.lr for o in optima]), w)
    ks, cs = _wls_line(logb, _replicates(optima, n_boot, seed), w)
    q = (1 - CI) / 2
    k_lo, k_hi = np.quantile(ks, [q, 1 - q])
    c_lo, c_hi = np.quantile(cs, [q, 1 - q])
    k, logc = float(k), float(logc)
    return PowerLaw(
        k=k, k_lo=float(min(k_lo, k)), k_hi=float(max(k_hi, k)),
        c=math.exp(logc), c_lo=math.exp(min(c_lo, logc)), c_hi=math.exp(max(c_hi, logc)),
        batch_sizes=tuple(o.batch_size for o in optima),
    )


def rule_constant(optima: Sequence[Optimum], rule_k: float, n_boot: int = N_BOOT,
                  seed: int = 0) -> Optional[tuple[float, float, float]]:
    """c of lr = c * B**rule_k fitted to ``optima``, with its interval: (c, lo, hi)."""
    optima = _by_batch(optima)
    if not optima:
        return None
    logb = np.log([o.batch_size for o in optima])
    w = _weights(optima)
    center = float((w * (np.log([o.lr for o in optima]) - rule_k * logb)).sum() / w.sum())
    reps = ((_replicates(optima, n_boot, seed) - rule_k * logb) * w).sum(axis=1) / w.sum()
    lo, hi = np.quantile(reps, [(1 - CI) / 2, 1 - (1 - CI) / 2])
    return math.exp(center), math.exp(min(lo, center)), math.exp(max(hi, center))


def _flattened(o: Optimum, law: PowerLaw) -> bool:
    """lr* fell below the line by more than OFF_FIT_FACTOR, its interval under the line.

    One-sided on purpose: past the critical batch size lr* grows slower than the rule, so it
    falls below the extrapolated line; a point above the line is scatter, not the breakdown.
    """
    predicted = law.lr(o.batch_size)
    return o.hi < predicted and o.lr * OFF_FIT_FACTOR < predicted


def valid_range(optima: Sequence[Optimum], n_boot: int = N_BOOT, seed: int = 0) -> tuple[Optional[PowerLaw], list[Optimum]]:
    """Fit on the batch sizes where one power law holds, growing from the smallest batch size.

    Starting from the three smallest, each next batch size joins while its lr* agrees with
    the line fitted to the ones below it; the first that falls off (lr* flattening above the
    critical batch size) ends the range. Returns the fit over the kept batch sizes and the
    optima above the range.
    """
    ordered = _by_batch(optima)
    kept = ordered[:3]
    for i, o in enumerate(ordered[3:], start=3):
        if _flattened(o, fit_power_law(kept, n_boot, seed)):
            return fit_power_law(kept, n_boot, seed), ordered[i:]
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
        return ("inconclusive: fewer than three batch sizes with an interior optimum; "
                "sweep more batch sizes, or widen the LR range where the best LR sits on its edge")
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


# --- the laws physics predicts ---------------------------------------------------------------

LAW_NAMES = ("power", "saturating", "surge")


def _saturating(logb: np.ndarray, log_bn: np.ndarray) -> np.ndarray:
    """log of 1 / (1 + B_noise / B) (McCandlish et al. 2018): linear below B_noise, flat above."""
    return -np.logaddexp(0.0, log_bn - logb)


def _surge(logb: np.ndarray, log_bn: np.ndarray) -> np.ndarray:
    """log of 1 / (0.5 (sqrt(B_noise/B) + sqrt(B/B_noise))) (Li et al. 2024): sqrt below B_noise,
    peak at B_noise, falling as 1/sqrt(B) above."""
    h = 0.5 * (log_bn - logb)
    return -(np.logaddexp(h, -h) - math.log(2.0))


SHAPES = {"saturating": _saturating, "surge": _surge}


@dataclass(frozen=True)
class LawFit:
    """lr*(B) by one law, fitted in the mean-equivalent LR and given back in the optimizer's.

    ``shift`` is the exponent the optimizer LR carries on top of the mean-equivalent one
    (-1 for SGD under sum reduction, where the optimizer LR is the mean one divided by B).
    """

    name: str
    params: dict
    """power: c, k; saturating and surge: lr_max, b_noise (in the mean-equivalent LR)."""
    intervals: dict
    """Per parameter (lo, hi); ``None`` for an end the swept batch sizes cannot bound."""
    shift: float
    batch_sizes: tuple[int, ...]
    chi2: float
    """Sum of squared residuals of log lr* over the typical variance of an optimum."""

    @property
    def n_params(self) -> int:
        return 2

    @property
    def aicc(self) -> float:
        n, p = len(self.batch_sizes), self.n_params
        return self.chi2 + 2 * p + (2 * p * (p + 1) / (n - p - 1) if n > p + 1 else math.inf)

    def lr(self, batch_size: float) -> float:
        if self.name == "power":
            return self.params["c"] * batch_size ** self.params["k"]
        shape = SHAPES[self.name](np.log(float(batch_size)), math.log(self.params["b_noise"]))
        return float(self.params["lr_max"] * math.exp(shape) * batch_size**self.shift)

    @property
    def formula(self) -> str:
        p = self.params
        if self.name == "power":
            return f"lr = {p['c']:.6g} * batch_size**{p['k']:.3g}"
        tail = f" / batch_size**{-self.shift:g}" if self.shift else ""
        if self.name == "saturating":
            return f"lr = {p['lr_max']:.6g} / (1 + {p['b_noise']:.6g} / batch_size){tail}"
        return (f"lr = {p['lr_max']:.6g} / (0.5 * (sqrt({p['b_noise']:.6g} / batch_size)"
                f" + sqrt(batch_size / {p['b_noise']:.6g}))){tail}")


def _fit_shape(shape, logb: np.ndarray, y: np.ndarray, w: np.ndarray, grid: np.ndarray):
    """Best log B_noise on ``grid`` and log lr_max for y (shape (..., n)): the amplitude is a
    weighted mean for each B_noise, so only B_noise needs a search."""
    f = shape(logb[None, :], grid[:, None])  # (G, n)
    resid = y[..., None, :] - f  # (..., G, n)
    amp = (resid * w).sum(axis=-1) / w.sum()
    chi2 = (((resid - amp[..., None]) ** 2) * w).sum(axis=-1)
    g = np.argmin(chi2, axis=-1)
    take = lambda a: np.take_along_axis(a, g[..., None], axis=-1)[..., 0]  # noqa: E731
    return grid[g], take(amp), take(chi2), g


def fit_laws(optima: Sequence[Optimum], shift: float = 0.0, adaptive: bool = False,
             n_boot: int = N_BOOT, seed: int = 0) -> list[LawFit]:
    """The power law, the saturating law and (for Adam-like ``adaptive`` optimizers) the surge
    law, fitted to ``optima`` with bootstrap intervals. ``shift``: see :class:`LawFit`.

    The two-parameter laws beside the power law are fitted only with at least
    ``2 * MIN_POINTS_PER_PARAM`` batch sizes.
    """
    optima = _by_batch(optima)
    n = len(optima)
    if n < 2:
        return []
    logb = np.log([o.batch_size for o in optima])
    w = _weights(optima)
    y = np.log([o.lr for o in optima])
    reps = _replicates(optima, n_boot, seed)
    q = (1 - CI) / 2
    sizes = tuple(o.batch_size for o in optima)

    power = fit_power_law(optima, n_boot, seed)
    k, logc = _wls_line(logb, y, w)
    chi2 = float((((y - logc - k * logb) ** 2) * w).sum())
    laws = [LawFit("power", {"c": power.c, "k": power.k}, {"c": (power.c_lo, power.c_hi), "k": (power.k_lo, power.k_hi)},
                   0.0, sizes, chi2)]
    if n < 2 * MIN_POINTS_PER_PARAM:
        return laws
    # B_noise from a thousandth of the smallest to a thousand times the largest batch size:
    # at either end the law is a plain power law over the swept range (unbounded there)
    grid = np.linspace(logb.min() - math.log(1000), logb.max() + math.log(1000), 601)
    y_meq, reps_meq = y + shift * logb, reps + shift * logb  # fitted in the mean-equivalent LR
    for name in ("saturating", "surge") if adaptive else ("saturating",):
        log_bn, amp, chi2, g = _fit_shape(SHAPES[name], logb, y_meq, w, grid)
        r_bn, r_amp, _, r_g = _fit_shape(SHAPES[name], logb, reps_meq, w, grid)
        bn_lo, bn_hi = np.quantile(r_bn, [q, 1 - q])
        amp_lo, amp_hi = np.quantile(r_amp, [q, 1 - q])
        at_low, at_high = np.mean(r_g == 0) > q or g == 0, np.mean(r_g == len(grid) - 1) > q or g == len(grid) - 1
        laws.append(LawFit(
            name,
            {"lr_max": math.exp(amp), "b_noise": math.exp(log_bn)},
            {"lr_max": (math.exp(min(amp_lo, amp)), math.exp(max(amp_hi, amp))),
             "b_noise": (None if at_low else math.exp(min(bn_lo, log_bn)), None if at_high else math.exp(max(bn_hi, log_bn)))},
            -shift, sizes, float(chi2),
        ))
    return laws


def choose_law(laws: Sequence[LawFit]) -> Optional[LawFit]:
    """The power law, unless another law's AICc is lower by more than AIC_MARGIN (then the
    lowest). Every law here has two parameters, so this asks for a chi-square lower by 2."""
    if not laws:
        return None
    power = next(law for law in laws if law.name == "power")
    better = [law for law in laws if law.aicc < power.aicc - AIC_MARGIN]
    return min(better, key=lambda law: law.aicc) if better else power


def intervals_overlap(a: tuple, b: tuple) -> bool:
    """Do [a0, a1] and [b0, b1] overlap? ``None`` stands for an unbounded end."""
    a_lo, a_hi = (a[0] if a[0] is not None else -math.inf), (a[1] if a[1] is not None else math.inf)
    b_lo, b_hi = (b[0] if b[0] is not None else -math.inf), (b[1] if b[1] is not None else math.inf)
    return a_lo <= b_hi and b_lo <= a_hi
