"""The laws physics predicts for lr*(B), fitted beside the power law, and the choice between them.

- saturating (McCandlish et al. 2018): lr*(B) = lr_max / (1 + B_noise / B), linear below
  B_noise and flat above;
- surge, for Adam (Li et al. 2024): lr*(B) = lr_max / (0.5 (sqrt(B_noise/B) + sqrt(B/B_noise))),
  square-root below B_noise, peaking there and falling above.

:func:`fit_laws` fits them with bootstrap intervals over the optima of :mod:`services.results.fit`;
:func:`choose_law` keeps the power law unless another law's AICc is clearly lower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from services.results.fit import CI, N_BOOT, Optimum, by_batch, fit_power_law, fit_weights, replicates, weighted_line

MIN_POINTS_PER_PARAM = 2
"""A two-parameter law beside the power law needs at least 4 batch sizes with an optimum."""
AIC_MARGIN = 2.0
"""Another law replaces the power law only when its AICc is lower by more than this."""

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
        shape = SHAPES[self.name](np.log(float(batch_size)), np.log(self.params["b_noise"]))
        return float(self.params["lr_max"] * math.exp(shape) * batch_size**self.shift)

    @property
    def formula(self) -> str:
        p = self.params
        if self.name == "power":
            return f"lr = {p['c']:.6g} * batch_size**{p['k']:.3g}"
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


def fit_laws(
    optima: Sequence[Optimum], shift: float = 0.0, adaptive: bool = False, n_boot: int = N_BOOT, seed: int = 0
) -> list[LawFit]:
    """The power law, the saturating law and (for Adam-like ``adaptive`` optimizers) the surge
    law, fitted to ``optima`` with bootstrap intervals. ``shift``: see :class:`LawFit`.

    The two-parameter laws beside the power law are fitted only with at least
    ``2 * MIN_POINTS_PER_PARAM`` batch sizes.
    """
    optima = by_batch(optima)
    n = len(optima)
    if n < 2:
        return []
    logb = np.log([o.batch_size for o in optima])
    w = fit_weights(optima)
    y = np.log([o.lr for o in optima])
    reps = replicates(optima, n_boot, seed)
    q = (1 - CI) / 2
    sizes = tuple(o.batch_size for o in optima)

    power = fit_power_law(optima, n_boot, seed)
    if power is None:
        return []
    k, logc = weighted_line(logb, y, w)
    chi2 = float((((y - logc - k * logb) ** 2) * w).sum())
    laws = [
        LawFit(
            "power",
            {"c": power.c, "k": power.k},
            {"c": (power.c_lo, power.c_hi), "k": (power.k_lo, power.k_hi)},
            0.0,
            sizes,
            chi2,
        )
    ]
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
        laws.append(
            LawFit(
                name,
                {"lr_max": math.exp(amp), "b_noise": math.exp(log_bn)},
                {
                    "lr_max": (math.exp(min(amp_lo, amp)), math.exp(max(amp_hi, amp))),
                    "b_noise": (
                        None if at_low else math.exp(min(bn_lo, log_bn)),
                        None if at_high else math.exp(max(bn_hi, log_bn)),
                    ),
                },
                -shift,
                sizes,
                float(chi2),
            )
        )
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
