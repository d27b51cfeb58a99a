"""The laws lr*(B) may follow, and the choice between them by how well each predicts a batch
size it was not fitted on.

- rule: lr*(B) = c * B**k with the scaling rule's k (linear 1, sqrt 0.5, none 0);
- power: lr*(B) = c * B**k with k fitted;
- saturating (McCandlish et al. 2018): lr*(B) = lr_max / (1 + B_noise / B), linear below
  B_noise and flat above;
- surge, for Adam (Li et al. 2024): lr*(B) = lr_max / (0.5 (sqrt(B_noise/B) + sqrt(B/B_noise))),
  square-root below B_noise, peaking there and falling above.

:func:`fit_laws` fits them, in the mean-equivalent LR, with bootstrap intervals over the optima
of :mod:`services.results.surface`. :func:`leave_one_out` refits each law with one batch size
left out and predicts it there; :func:`choose_law` takes the law with the smallest such error
over the whole swept range (the simpler law unless a later one is clearly better), so the
answer is the law that interpolates, and extrapolates one step, best, never a fit over a
sub-range stretched past its data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from services.results.fit import CI, N_BOOT, Optimum, by_batch, fit_weights, replicates, weighted_line


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
    draws: tuple = field(default=(), repr=False, compare=False)
    """Bootstrap draws of the two parameters, (log c, k) or (log lr_max, log b_noise): the
    interval of lr at any batch size (:meth:`lr_interval`)."""

    @property
    def n_params(self) -> int:
        return 1 if self.name == "rule" else 2

    def with_shift(self, shift: float) -> "LawFit":
        """The same law in an optimizer LR that carries ``B**shift`` on top of the mean-equivalent
        one (SGD under sum reduction: -1)."""
        return LawFit(self.name, self.params, self.intervals, shift, self.batch_sizes, self.chi2, self.draws)

    def _lr_of(self, a: np.ndarray, b: np.ndarray, batch_size: float) -> np.ndarray:
        logb = math.log(float(batch_size))
        if self.name in ("power", "rule"):
            return np.exp(a + b * logb + self.shift * logb)
        return np.exp(a + SHAPES[self.name](np.full_like(b, logb), b) + self.shift * logb)

    def lr_interval(self, batch_size: float) -> Optional[tuple[float, float]]:
        """The CI interval of lr at ``batch_size`` over the bootstrap draws (None without them)."""
        if not self.draws:
            return None
        a, b = np.asarray(self.draws, dtype=float).T
        lo, hi = np.quantile(self._lr_of(a, b, batch_size), [(1 - CI) / 2, 1 - (1 - CI) / 2])
        center = self.lr(batch_size)
        return float(min(lo, center)), float(max(hi, center))

    @property
    def aicc(self) -> float:
        n, p = len(self.batch_sizes), self.n_params
        return self.chi2 + 2 * p + (2 * p * (p + 1) / (n - p - 1) if n > p + 1 else math.inf)

    def lr(self, batch_size: float) -> float:
        if self.name in ("power", "rule"):
            return float(self.params["c"] * batch_size ** (self.params["k"] + self.shift))
        shape = SHAPES[self.name](np.log(float(batch_size)), np.log(self.params["b_noise"]))
        return float(self.params["lr_max"] * math.exp(shape) * batch_size**self.shift)

    @property
    def formula(self) -> str:
        p = self.params
        if self.name in ("power", "rule"):
            return f"lr = {p['c']:.6g} * batch_size**{p['k'] + self.shift:.3g}"
        tail = f" / batch_size**{-self.shift:g}" if self.shift else ""
        if self.name == "saturating":
            return f"lr = {p['lr_max']:.6g} / (1 + {p['b_noise']:.6g} / batch_size){tail}"
        return (
            f"lr = {p['lr_max']:.6g} / (0.5 * (sqrt({p['b_noise']:.6g} / batch_size)"
            f" + sqrt(batch_size / {p['b_noise']:.6g}))){tail}"
        )


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


LOBO_NAMES = ("rule", "power", "saturating", "surge")
"""The laws in order of preference: a later one is chosen only when it predicts left-out batch
sizes clearly better (:data:`LOBO_MARGIN`)."""
MIN_FIT = {"rule": 1, "power": 2, "saturating": 3, "surge": 3}
"""Optima a law needs to be fitted (the bending laws: one more than their two parameters)."""
LOBO_MARGIN = 1.1
"""A later law of :data:`LOBO_NAMES` replaces an earlier one only when its leave-one-out error
is below the earlier's divided by this (and by :data:`LOBO_FLOOR` in absolute terms)."""
LOBO_FLOOR = math.log(1.05)
"""Leave-one-out errors (in log lr) closer than 5% do not tell laws apart."""
DRAWS = 200
"""Bootstrap draws a law keeps (and an export writes) for the interval of lr at any batch size."""


def _central(name: str, logb: np.ndarray, y: np.ndarray, w: np.ndarray, rule_k: float, grid: np.ndarray):
    """Parameters and chi-square of law ``name`` for y (shape (..., n)) in the mean-equivalent LR.
    Returns (log c or log lr_max, k or log B_noise, chi2, at the grid's low end, at its high end)."""
    if name == "rule":
        logc = ((y - rule_k * logb) * w).sum(axis=-1) / w.sum()
        chi2 = (((y - logc[..., None] - rule_k * logb) ** 2) * w).sum(axis=-1)
        return logc, np.full_like(logc, rule_k), chi2, None, None
    if name == "power":
        k, logc = weighted_line(logb, y, w)
        chi2 = (((y - logc[..., None] - k[..., None] * logb) ** 2) * w).sum(axis=-1)
        return logc, k, chi2, None, None
    log_bn, amp, chi2, g = _fit_shape(SHAPES[name], logb, y, w, grid)
    return amp, log_bn, chi2, g == 0, g == len(grid) - 1


def _grid(logb: np.ndarray) -> np.ndarray:
    # B_noise from a thousandth of the smallest to a thousand times the largest batch size:
    # at either end the law is a plain power law over the swept range (unbounded there)
    return np.linspace(logb.min() - math.log(1000), logb.max() + math.log(1000), 601)


def fit_law(
    name: str, optima: Sequence[Optimum], rule_k: float = 0.0, n_boot: int = N_BOOT, seed: int = 0
) -> Optional[LawFit]:
    """Law ``name`` (one of :data:`LOBO_NAMES`) fitted to ``optima`` (mean-equivalent lr*), with
    bootstrap intervals from the optima's replicates (none when ``n_boot`` is 0); None when
    there are too few optima for it."""
    optima = by_batch(optima)
    if len(optima) < MIN_FIT[name]:
        return None
    logb = np.log([o.batch_size for o in optima])
    y = np.log([o.lr for o in optima])
    w = fit_weights(optima)
    grid = _grid(logb)
    if name == "power" and len(np.unique(logb)) < 2:
        return None
    a, b, chi2, at_low, at_high = _central(name, logb, y[None, :], w, rule_k, grid)
    a, b, chi2 = float(a[0]), float(b[0]), float(chi2[0])
    sizes = tuple(o.batch_size for o in optima)
    intervals: dict = {}
    draws: tuple = ()
    if n_boot:
        q = (1 - CI) / 2
        ra, rb, _, r_low, r_high = _central(name, logb, replicates(optima, n_boot, seed), w, rule_k, grid)
        a_lo, a_hi = np.quantile(ra, [q, 1 - q])
        b_lo, b_hi = np.quantile(rb, [q, 1 - q])
        a_iv = (math.exp(min(a_lo, a)), math.exp(max(a_hi, a)))
        if name in ("rule", "power"):
            intervals = {"c": a_iv, "k": (float(min(b_lo, b)), float(max(b_hi, b)))}
        else:
            low = bool(np.mean(r_low) > q or at_low[0])
            high = bool(np.mean(r_high) > q or at_high[0])
            intervals = {
                "lr_max": a_iv,
                "b_noise": (None if low else math.exp(min(b_lo, b)), None if high else math.exp(max(b_hi, b))),
            }
        draws = tuple((float(x), float(z)) for x, z in zip(ra[:DRAWS], rb[:DRAWS]))
    params = (
        {"c": math.exp(a), "k": b} if name in ("rule", "power") else {"lr_max": math.exp(a), "b_noise": math.exp(b)}
    )
    return LawFit(name, params, intervals, 0.0, sizes, chi2, draws)


def fit_laws(
    optima: Sequence[Optimum], rule_k: float = 0.0, adaptive: bool = False, n_boot: int = N_BOOT, seed: int = 0
) -> list[LawFit]:
    """Every law that ``optima`` suffice for, in :data:`LOBO_NAMES` order: the rule's power law
    (k fixed), the power law, the saturating law and, for Adam-like ``adaptive`` optimizers, the
    surge law. Fitted in the mean-equivalent LR (``LawFit.with_shift`` gives a reduction's)."""
    names = [n for n in LOBO_NAMES if adaptive or n != "surge"]
    return [law for law in (fit_law(n, optima, rule_k, n_boot, seed) for n in names) if law is not None]


@dataclass(frozen=True)
class Holdout:
    """Leave one batch size out: lr* there predicted by a law fitted to the others."""

    batch_size: int
    measured: float
    measured_interval: tuple[float, float]
    predicted: dict
    """law name -> predicted lr*."""

    def error(self, law: str) -> float:
        """|log(predicted / measured)| for ``law``."""
        return abs(math.log(self.predicted[law] / self.measured))


def leave_one_out(optima: Sequence[Optimum], names: Sequence[str], rule_k: float = 0.0) -> list[Holdout]:
    """For every optimum, each law in ``names`` refitted without it and evaluated at its batch
    size (laws the remaining optima do not suffice for are left out of ``predicted``)."""
    optima = by_batch(optima)
    out = []
    for j, o in enumerate(optima):
        rest = optima[:j] + optima[j + 1 :]
        predicted = {}
        for name in names:
            law = fit_law(name, rest, rule_k, n_boot=0)
            if law is not None:
                predicted[name] = law.lr(o.batch_size)
        out.append(Holdout(o.batch_size, o.lr, (o.lo, o.hi), predicted))
    return out


def loo_score(holdouts: Sequence[Holdout], name: str) -> Optional[float]:
    """Root mean square leave-one-out error of ``name`` in log lr (None unless every left-out
    batch size could be predicted)."""
    errors = [h.error(name) for h in holdouts if name in h.predicted]
    if len(holdouts) < 2 or len(errors) < len(holdouts):
        return None
    return math.sqrt(sum(e * e for e in errors) / len(errors))


def choose_law(laws: Sequence[LawFit], holdouts: Sequence[Holdout]) -> Optional[LawFit]:
    """The law that predicts left-out batch sizes best, preferring the earlier of
    :data:`LOBO_NAMES` unless a later one's error is clearly lower (:data:`LOBO_MARGIN`,
    :data:`LOBO_FLOOR`). With no leave-one-out score at all: the rule's law (or the first)."""
    if not laws:
        return None
    scored: list[tuple[LawFit, float]] = []
    for law in laws:
        score = loo_score(holdouts, law.name)
        if score is not None:
            scored.append((law, score))
    if not scored:
        return laws[0]
    chosen, best = scored[0]
    for law, score in scored[1:]:
        if score < best / LOBO_MARGIN and best - score > LOBO_FLOOR:
            chosen, best = law, score
    return chosen


def intervals_overlap(a: tuple, b: tuple) -> bool:
    """Do [a0, a1] and [b0, b1] overlap? ``None`` stands for an unbounded end."""
    a_lo, a_hi = (a[0] if a[0] is not None else -math.inf), (a[1] if a[1] is not None else math.inf)
    b_lo, b_hi = (b[0] if b[0] is not None else -math.inf), (b[1] if b[1] is not None else math.inf)
    return a_lo <= b_hi and b_lo <= a_hi
