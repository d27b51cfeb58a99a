"""The transfer check, scored: is the answered LR as good as the best LR nearby at a batch size
the sweep never trained?

At each held-out batch size B (:func:`held_out`), the check trains the answered LR and a
bracket of factors of 2 around it (x1/2, x1, x2 by default, widened while the best is at the
bracket's edge), over several seeds (:mod:`services.orchestration.transfer` runs it). Here,
with no training:

- ``regret`` = val loss at the answered LR / the bracket's best val loss - 1 (a diverged run
  counts as infinite loss), from the mean over seeds;
- its interval resamples the seeds (paired: one draw of seeds for every LR);
- the verdict: 'within' when the interval's upper end is at most the tolerance, 'fails' when
  its lower end is above it (or the answered LR diverged), else 'inconclusive'; a best LR
  still at the bracket's edge makes the regret a lower bound, never 'within' unless x1 is
  itself the best.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from services.results.fit import CI

N_BOOT = 2000
"""Seed resamples for a regret's interval."""
STALE = 1e-3
"""A trial whose LR is not a whole power of 2 off the answer (in log2, beyond this) was run for
another answer (an older export's) and is not scored against this one."""


def held_out(swept: Sequence[int]) -> list[int]:
    """The default held-out batch sizes: one octave below the smallest swept, the geometric
    middle of the widest gap between swept ones (the gap nearest the range's middle on ties),
    and one octave above the largest: interpolation, and one step of extrapolation each way."""
    swept = sorted(set(int(b) for b in swept))
    if not swept:
        return []
    out = [swept[0] // 2] if swept[0] >= 2 else []
    center = math.sqrt(swept[0] * swept[-1])
    gaps = [(a, b) for a, b in zip(swept, swept[1:]) if b - a >= 2]
    if gaps:
        width = max(math.log(b / a) for a, b in gaps)
        wide = [(a, b) for a, b in gaps if math.log(b / a) >= width - 1e-9]
        a, b = min(wide, key=lambda g: (round(abs(math.log(math.sqrt(g[0] * g[1]) / center)), 9), -g[0]))
        middle = int(round(math.sqrt(a * b)))
        out.append(min(max(middle, a + 1), b - 1))
    out.append(swept[-1] * 2)
    return out


@dataclass(frozen=True)
class Point:
    """One transfer trial: its LR's factor off the answer (log2) and its result."""

    factor: int
    seed: int
    loss: float
    """Val loss per sample; ``inf`` when the trial diverged (or did not finish)."""


def factor_of(lr: float, answered: float) -> Optional[int]:
    """log2(lr / answered) when it is a whole number (see :data:`STALE`), else None."""
    x = math.log2(lr / answered)
    return int(round(x)) if abs(x - round(x)) <= STALE else None


@dataclass(frozen=True)
class Check:
    """The transfer check at one batch size for one group."""

    group: str
    batch_size: int
    reduction: str
    answered_lr: float
    """The answer's LR (mean-equivalent) at ``batch_size``."""
    losses: dict
    """factor (log2 of LR / answered) -> mean val loss over seeds (inf when any diverged)."""
    seeds: int
    regret: float
    interval: tuple[float, float]
    best_factor: int
    at_edge: bool
    """The best LR is the bracket's outermost on its side: the regret is a lower bound."""
    verdict: str
    """'within', 'fails' or 'inconclusive' (against ``tolerance``)."""
    tolerance: float
    seed_ids: tuple[int, ...] = ()
    """The training seeds compared (every factor has each)."""

    @property
    def best_lr(self) -> float:
        return self.answered_lr * 2.0**self.best_factor

    @property
    def factors(self) -> list[int]:
        return sorted(self.losses)


def _regrets(matrix: np.ndarray, zero: int) -> np.ndarray:
    """Regret of row ``zero`` per column set: matrix (factors, seeds, draws) -> (draws,)."""
    with np.errstate(invalid="ignore"):
        mean = matrix.mean(axis=1)
        best = mean.min(axis=0)
        return np.where(np.isfinite(mean[zero]), mean[zero] / best - 1.0, np.inf)


def score(
    group: str,
    batch_size: int,
    reduction: str,
    answered_lr: float,
    points: Sequence[Point],
    tolerance: float,
    seed: int = 0,
) -> Optional[Check]:
    """Score one group's check at one batch size (None without a point at the answered LR).
    Only seeds every factor has are compared (a factor missing some is left out)."""
    by: dict[int, dict[int, float]] = {}
    for p in points:
        by.setdefault(p.factor, {})[p.seed] = p.loss
    if 0 not in by:
        return None
    seeds = sorted(by[0])
    factors = sorted(f for f, s in by.items() if all(x in s for x in seeds))
    matrix = np.array([[by[f][s] for s in seeds] for f in factors])  # (factors, seeds)
    zero = factors.index(0)
    regret = float(_regrets(matrix[:, :, None], zero)[0])
    means = matrix.mean(axis=1)
    best_i = int(np.argmin(means))
    best_factor = factors[best_i]
    at_edge = best_factor != 0 and best_i in (0, len(factors) - 1)
    rng = np.random.default_rng([seed, batch_size, 11])
    picks = rng.integers(0, len(seeds), size=(len(seeds), N_BOOT))
    boot = np.minimum(_regrets(matrix[:, picks], zero), 1e300)  # inf (diverged) sorts last
    q = (1 - CI) / 2
    lo, hi = (float(v) if v < 1e300 else math.inf for v in np.quantile(boot, [q, 1 - q]))
    lo, hi = min(lo, regret), max(hi, regret)
    if not math.isfinite(regret) or lo > tolerance:
        verdict = "fails"
    elif hi <= tolerance and not at_edge:
        verdict = "within"
    else:
        verdict = "inconclusive"
    return Check(
        group,
        batch_size,
        reduction,
        answered_lr,
        {f: float(v) for f, v in zip(factors, means)},
        len(seeds),
        regret,
        (lo, hi),
        best_factor,
        at_edge,
        verdict,
        tolerance,
        tuple(seeds),
    )


@dataclass(frozen=True)
class Transfer:
    """A group's transfer checks and what they say together."""

    group: str
    checks: list[Check] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """'transfers within 5% (largest regret 1.2% at B = 512)', 'does not transfer: ...' or
        'inconclusive: ...'."""
        if not self.checks:
            return "inconclusive: no transfer check"
        tol = self.checks[0].tolerance
        worst = max(self.checks, key=lambda c: c.regret)
        failed = [c for c in self.checks if c.verdict == "fails"]
        if failed:
            return "does not transfer: " + ", ".join(f"regret {_pct(c.regret)} at B = {c.batch_size}" for c in failed)
        if all(c.verdict == "within" for c in self.checks):
            return f"transfers within {tol:.0%} (largest regret {_pct(worst.regret)} at B = {worst.batch_size})"
        unsure = [c for c in self.checks if c.verdict != "within"]
        return "inconclusive: " + ", ".join(
            f"B = {c.batch_size} regret {_pct(c.regret)} [{_pct(c.interval[0])}, {_pct(c.interval[1])}]"
            + (" (best LR at the bracket's edge)" if c.at_edge else "")
            for c in unsure
        )

    @property
    def batch_range(self) -> Optional[tuple[int, int]]:
        sizes = [c.batch_size for c in self.checks]
        return (min(sizes), max(sizes)) if sizes else None

    def nearest(self, batch_size: float) -> Optional[Check]:
        """The check at the batch size nearest ``batch_size`` (in log)."""
        if not self.checks:
            return None
        return min(self.checks, key=lambda c: (abs(math.log(c.batch_size / batch_size)), c.batch_size))


def _pct(x: float) -> str:
    return "diverged" if not math.isfinite(x) else f"{x:.1%}"


def format_table(transfers: Sequence[Transfer]) -> str:
    """The transfer table: per group and held-out batch size the answered LR, the bracket's best,
    the regret with its interval and the verdict; then each group's verdict."""
    width = max([len("group")] + [len(t.group) for t in transfers])
    header = (
        f"{'group':<{width}} {'B':>5} {'trained':<7} {'answer lr':>10} {'best lr':>10} {'best':>5} "
        f"{'regret':>8} {'interval':>17}  verdict"
    )
    lines = [header, "-" * len(header)]
    for t in transfers:
        for c in sorted(t.checks, key=lambda c: c.batch_size):
            factor = (
                "x1"
                if c.best_factor == 0
                else f"x{2.0**c.best_factor:g}"
                if c.best_factor > 0
                else f"x1/{2**-c.best_factor}"
            )
            interval = f"[{_pct(c.interval[0])}, {_pct(c.interval[1])}]"
            lines.append(
                f"{t.group:<{width}} {c.batch_size:>5} {c.reduction:<7} {c.answered_lr:>10.4g} {c.best_lr:>10.4g} "
                f"{factor:>5} {_pct(c.regret):>8} {interval:>17}  {c.verdict}" + (" (edge)" if c.at_edge else "")
            )
    lines.append("")
    lines += [f"{t.group}: {t.verdict}" for t in transfers]
    if any("+" in t.group for t in transfers):
        lines.append(
            "(lr: the mean-equivalent LR, the one a mean-reduced loss takes; pooled reductions train "
            "identical updates, so each batch size checks one of them)"
        )
    return "\n".join(lines)


def collect(groups: Sequence, runs: Sequence[tuple[int, dict, Sequence]], tolerance: float) -> list[Transfer]:
    """Score the checks of ``groups`` (:class:`~services.results.analysis.GroupSummary`) from
    ``runs``: per transfer run, (batch size, {group name: answered lr}, its trial records).
    A run made for another answer than the group's current one is not counted (it checked an
    older export); a trial that failed is left out, one that diverged counts as infinite loss."""
    from services.results.analysis import analysis_key

    by_key = {g.key: g for g in groups}
    points: dict[tuple[str, int], list[Point]] = {}
    reductions: dict[tuple[str, int], str] = {}
    for batch_size, answers, records in runs:
        for r in records:
            g = by_key.get(analysis_key(r))
            if g is None or g.name not in answers or r.batch_size != batch_size or g.answer is None:
                continue
            now = g.answer.law.lr(batch_size)
            if abs(math.log(answers[g.name] / now)) > STALE:  # checked an earlier answer
                continue
            if r.status != "FINISHED" and not r.diverged:
                continue
            f = factor_of(r.hp.mean_lr, now)
            if f is None:
                continue
            loss = math.inf if r.diverged or r.val_loss is None else float(r.val_loss)
            points.setdefault((g.name, batch_size), []).append(Point(f, r.seed, loss))
            reductions[(g.name, batch_size)] = r.reduction
    out = []
    for g in groups:
        if g.answer is None:
            continue
        checks = []
        for (name, b), pts in sorted(points.items()):
            if name == g.name:
                check = score(g.name, b, reductions[(name, b)], g.answer.law.lr(b), pts, tolerance)
                if check is not None:
                    checks.append(check)
        if checks:
            out.append(Transfer(g.name, checks))
    return out
