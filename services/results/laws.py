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
left out and predicts it there; :func:`choose_law` takes the law whose predictions cost least
on the left-out U-curves (mean regret; the simpler law unless a later one is clearly better),
so the answer is the law that interpolates, and extrapolates one step, best, never a fit over
a sub-range stretched past its data. A regret, not an error in log lr: on a flat U-curve an LR
off by 2x costs nothing, next to a stability cliff 30% too high costs everything.

When lr*(B) bends more sharply than any law (a knee between two swept sizes), the chosen law
corrected to the swept optima (:func:`corrected`) replaces it, if leaving a batch size out
shows the correction predicts clearly better.
"""

from __future__ import annotations

import dataclasses
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
    residuals: tuple = ()
    """(log B, log(lr* measured / the law)) at each swept batch size when the answer follows
    the measured optima between them (:func:`corrected`); empty for the law alone."""

    @property
    def n_params(self) -> int:
        return 1 if self.name == "rule" else 2

    @property
    def key(self) -> str:
        """The law's name in leave-one-out scores: ``saturating`` or, corrected, ``saturating+``."""
        return self.name + ("+" if self.residuals else "")

    def with_shift(self, shift: float) -> "LawFit":
        """The same law in an optimizer LR that carries ``B**shift`` on top of the mean-equivalent
        one (SGD under sum reduction: -1)."""
        return dataclasses.replace(self, shift=shift)

    def correction(self, batch_size: float) -> float:
        """log of the factor the swept optima put on the law at ``batch_size``: interpolated in
        log B between swept sizes, fading to nothing over one octave beyond either end."""
        if not self.residuals:
            return 0.0
        xs, rs = (np.asarray(v, dtype=float) for v in zip(*self.residuals))
        x = math.log(float(batch_size))
        if x < xs[0]:
            return float(rs[0] * max(0.0, 1.0 - (xs[0] - x) / math.log(2.0)))
        if x > xs[-1]:
            return float(rs[-1] * max(0.0, 1.0 - (x - xs[-1]) / math.log(2.0)))
        return float(np.interp(x, xs, rs))

    def _lr_of(self, a: np.ndarray, b: np.ndarray, batch_size: float) -> np.ndarray:
        logb = math.log(float(batch_size))
        tail = self.shift * logb + self.correction(batch_size)
        if self.name in ("power", "rule"):
            return np.exp(a + b * logb + tail)
        return np.exp(a + SHAPES[self.name](np.full_like(b, logb), b) + tail)

    def lr_interval(self, batch_size: float) -> Optional[tuple[float, float]]:
        """The CI interval of lr at ``batch_size`` over the bootstrap draws (None without them)."""
        if not self.draws:
            return None
        a, b = np.asarray(self.draws, dtype=float).T
        lo, hi = np.quantile(self._lr_of(a, b, batch_size), [(1 - CI) / 2, 1 - (1 - CI) / 2])
        center = self.lr(batch_size)
        return float(min(lo, center)), float(max(hi, center))

    def lr(self, batch_size: float) -> float:
        return self.law_lr(batch_size) * math.exp(self.correction(batch_size))

    def law_lr(self, batch_size: float) -> float:
        """The law alone, without the swept optima's correction."""
        if self.name in ("power", "rule"):
            return float(self.params["c"] * batch_size ** (self.params["k"] + self.shift))
        shape = SHAPES[self.name](np.log(float(batch_size)), np.log(self.params["b_noise"]))
        return float(self.params["lr_max"] * math.exp(shape) * batch_size**self.shift)

    @property
    def formula(self) -> str:
        p = self.params
        fix = " x the swept optima's factor at B (answer.residuals)" if self.residuals else ""
        if self.name in ("power", "rule"):
            return f"lr = {p['c']:.6g} * batch_size**{p['k'] + self.shift:.3g}{fix}"
        tail = f" / batch_size**{-self.shift:g}" if self.shift else ""
        if self.name == "saturating":
            return f"lr = {p['lr_max']:.6g} / (1 + {p['b_noise']:.6g} / batch_size){tail}{fix}"
        return (
            f"lr = {p['lr_max']:.6g} / (0.5 * (sqrt({p['b_noise']:.6g} / batch_size)"
            f" + sqrt(batch_size / {p['b_noise']:.6g}))){tail}{fix}"
        )


def corrected(law: LawFit, optima: Sequence[Optimum]) -> LawFit:
    """``law`` times the factor by which each swept optimum departs from it, interpolated
    between swept batch sizes (:meth:`LawFit.correction`): the answer for lr*(B) that bends
    more sharply than any of the laws (a knee between two swept sizes), when leaving a batch
    size out shows the departures are shared by neighbours and not noise."""
    rows = tuple((math.log(o.batch_size), math.log(o.lr / law.law_lr(o.batch_size))) for o in by_batch(optima))
    return dataclasses.replace(law, residuals=rows)


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
sizes clearly better (:data:`LOBO_MARGIN`, :data:`REGRET_FLOOR`)."""
MIN_FIT = {"rule": 1, "power": 2, "saturating": 3, "surge": 3}
"""Optima a law needs to be fitted (the bending laws: one more than their two parameters)."""
LOBO_MARGIN = 1.1
"""A later law of :data:`LOBO_NAMES` replaces an earlier one only when its leave-one-out regret
(or error) is below the earlier's divided by this, and lower by :data:`REGRET_FLOOR` (or
:data:`LOBO_FLOOR`)."""
LOBO_FLOOR = math.log(1.05)
"""Leave-one-out errors (in log lr) closer than 5% do not tell laws apart."""
REGRET_FLOOR = 0.005
"""Mean leave-one-out regrets closer than half a percent of val loss do not tell laws apart."""
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
    curve: tuple = ()
    """The batch size's U-curve as measured, (log lr, log mean val loss) per LR tried, sorted:
    what the predicted LR would have cost there (:meth:`regret`)."""

    def error(self, law: str) -> float:
        """|log(predicted / measured)| for ``law``."""
        return abs(math.log(self.predicted[law] / self.measured))

    def regret(self, law: str) -> Optional[float]:
        """Val loss at ``law``'s predicted LR (interpolated on the measured U-curve in log lr,
        its end values beyond it) over the best measured there, minus 1."""
        if not self.curve:
            return None
        xs, ys = (np.asarray(v, dtype=float) for v in zip(*self.curve))
        return math.expm1(float(np.interp(math.log(self.predicted[law]), xs, ys)) - float(ys.min()))


def leave_one_out(
    optima: Sequence[Optimum], names: Sequence[str], rule_k: float = 0.0, curves: Optional[dict] = None
) -> list[Holdout]:
    """For every optimum, each law in ``names`` (and each corrected to the others' optima, as
    ``name+``) refitted without it and evaluated at its batch size (laws the remaining optima
    do not suffice for are left out of ``predicted``). ``curves``: per batch size its measured
    U-curve (:attr:`Holdout.curve`), for the regret of each prediction."""
    optima = by_batch(optima)
    curves = curves or {}
    out = []
    for j, o in enumerate(optima):
        rest = optima[:j] + optima[j + 1 :]
        predicted = {}
        for name in names:
            law = fit_law(name, rest, rule_k, n_boot=0)
            if law is not None:
                predicted[name] = law.lr(o.batch_size)
                predicted[name + "+"] = corrected(law, rest).lr(o.batch_size)
        out.append(Holdout(o.batch_size, o.lr, (o.lo, o.hi), predicted, tuple(curves.get(o.batch_size, ()))))
    return out


def loo_regret(holdouts: Sequence[Holdout], name: str) -> Optional[float]:
    """Mean regret of ``name``'s predictions at the left-out batch sizes (None unless every one
    was predicted and has its U-curve)."""
    regrets = [h.regret(name) for h in holdouts if name in h.predicted]
    if len(holdouts) < 2 or len(regrets) < len(holdouts) or any(r is None for r in regrets):
        return None
    return sum(r for r in regrets if r is not None) / len(regrets)


def loo_score(holdouts: Sequence[Holdout], name: str) -> Optional[float]:
    """Root mean square leave-one-out error of ``name`` in log lr (None unless every left-out
    batch size could be predicted)."""
    errors = [h.error(name) for h in holdouts if name in h.predicted]
    if len(holdouts) < 2 or len(errors) < len(holdouts):
        return None
    return math.sqrt(sum(e * e for e in errors) / len(errors))


def choose_law(laws: Sequence[LawFit], holdouts: Sequence[Holdout], optima: Sequence[Optimum] = ()) -> Optional[LawFit]:
    """The law that predicts left-out batch sizes best, preferring the earlier of
    :data:`LOBO_NAMES` unless a later one's error is clearly lower (:data:`LOBO_MARGIN`,
    :data:`LOBO_FLOOR`). With no leave-one-out score at all: the rule's law (or the first).
    Given the ``optima``, the chosen law corrected to them (:func:`corrected`) replaces it when
    it predicts left-out batch sizes clearly better in turn."""
    chosen = _choose(laws, holdouts)
    if chosen is None or not optima:
        return chosen
    plain, fixed = criterion(holdouts, chosen.name), criterion(holdouts, chosen.name + "+")
    if plain is not None and fixed is not None and _clearly_better(fixed, plain, holdouts):
        return corrected(chosen, optima)
    return chosen


def criterion(holdouts: Sequence[Holdout], name: str) -> Optional[float]:
    """What a law is chosen by: its mean leave-one-out regret when the holdouts carry their
    U-curves, else its leave-one-out error in log lr."""
    if holdouts and all(h.curve for h in holdouts):
        return loo_regret(holdouts, name)
    return loo_score(holdouts, name)


def _clearly_better(score: float, best: float, holdouts: Sequence[Holdout]) -> bool:
    floor = REGRET_FLOOR if holdouts and all(h.curve for h in holdouts) else LOBO_FLOOR
    return score < best / LOBO_MARGIN and best - score > floor


def _choose(laws: Sequence[LawFit], holdouts: Sequence[Holdout]) -> Optional[LawFit]:
    if not laws:
        return None
    scored: list[tuple[LawFit, float]] = []
    for law in laws:
        score = criterion(holdouts, law.name)
        if score is not None:
            scored.append((law, score))
    if not scored:
        return laws[0]
    chosen, best = scored[0]
    for law, score in scored[1:]:
        if _clearly_better(score, best, holdouts):
            chosen, best = law, score
    return chosen


def intervals_overlap(a: tuple, b: tuple) -> bool:
    """Do [a0, a1] and [b0, b1] overlap? ``None`` stands for an unbounded end."""
    a_lo, a_hi = (a[0] if a[0] is not None else -math.inf), (a[1] if a[1] is not None else math.inf)
    b_lo, b_hi = (b[0] if b[0] is not None else -math.inf), (b[1] if b[1] is not None else math.inf)
    return a_lo <= b_hi and b_lo <= a_hi
