"""The adaptive searcher: each round's trials go where lr*(B) is still uncertain.

A grid spends most of its trials far from every batch size's optimum; TPE spends its budget
on one best point. This searcher targets the answer, the function lr*(B):

- **round 0**: the smallest, the middle and the largest batch size, ``first_round_lrs`` LRs
  per sample log-spaced over the whole range;
- **each later round**: the sweep's own analysis (:func:`services.results.analysis.summarize`,
  the surface fit and the chosen law, exactly what the export will say) of everything so
  far; every batch size whose lr* interval is not yet within ``target_interval`` gets
  ``round_lrs`` LRs around its lr* (the fitted law's prediction where it has no trials yet,
  four times past the best tried one where that is at the edge of what was tried), the
  widest intervals first when the budget is short;
- it ends when every swept batch size's lr* is known to within the target, when
  ``max_trials`` configurations are spent, or when no LR is left that was not tried.

Under a tied rule the reductions are pooled (one U-curve per batch size in the
mean-equivalent LR), so a round's LRs alternate between them; each LR is trained at every
seed of ``space.seeds``. The rounds are synchronous: :func:`plan_round` is a pure function of
the spec and the finished configurations, so two sweeps with the same seed propose the same
trials (training is seeded), and :class:`AdaptiveSearch` (a Tune ``Searcher``) pickles its
state into Tune's experiment checkpoint, so a killed sweep resumes where it was.
"""

from __future__ import annotations

import logging
import math
import pickle
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

import numpy as np
from ray.tune.search import Searcher

from search_spaces.scaling import RULE_EXPONENT, TrialHParams
from search_spaces.tied import cell_config
from services import metrics as m
from services.orchestration.packs import member_results
from services.results.analysis import GroupSummary, TrialRecord, analysis_key, pooled, summarize
from services.results.fit import Optimum
from services.spec import SweepSpec

log = logging.getLogger(__name__)

WIDEN = 1.5
"""A round's LRs span this multiple of the current interval on each side of lr*: a point
outside the interval on both sides keeps the vertex bracketed."""
UNKNOWN_HALF_WIDTH = math.log(4.0)
"""Half-width (log) of a round at a batch size with no trials yet: the law's prediction may be
off by a knee (SGD's lr* jumps ~5x between neighbouring batch sizes on MNIST-1D)."""
EDGE_STEP = math.log(4.0)
"""How far past the best tried LR a round looks when that LR is the smallest or largest tried."""
SAME_LR = 0.02
"""Two LRs per sample closer than this (in log) count as one: not proposed again."""


@dataclass(frozen=True)
class Outcome:
    """One finished configuration as the searcher saw it."""

    config: dict
    val_loss: Optional[float] = None
    initial_loss: Optional[float] = None
    samples_seen: int = 0
    diverged: bool = False
    failed: bool = False

    @classmethod
    def of(cls, config: dict, last: Optional[dict], error: bool) -> "Outcome":
        last = last or {}
        return cls(
            dict(config),
            last.get(m.VAL_LOSS),
            last.get(m.INITIAL_VAL_LOSS),
            int(last.get(m.SAMPLES_SEEN, 0) or 0),
            bool(last.get(m.DIVERGED)),
            error or not last,
        )


def records(outcomes: list[Outcome], budget_samples: int) -> list[TrialRecord]:
    """The outcomes as the analysis reads trial runs."""
    out = []
    for i, o in enumerate(outcomes):
        val = o.val_loss if o.val_loss is not None and math.isfinite(o.val_loss) else None
        out.append(
            TrialRecord(
                run_id=f"adaptive-{i:07d}",
                trial_id=str(i),
                status="FAILED" if o.failed else "FINISHED",
                hp=TrialHParams.from_config(o.config),
                val_loss=val,
                samples_seen=o.samples_seen,
                diverged=o.diverged,
                stopped_early=not (o.failed or o.diverged) and o.samples_seen < budget_samples,
                initial_loss=o.initial_loss,
            )
        )
    return out


# ---- the plan: pure functions of the spec and the outcomes -------------------------------


def _config(spec: SweepSpec, optimizer: str, reduction: str, schedule: str, seed: int, b: int, c: float) -> dict:
    cell = {"seed": seed, "schedule": schedule, "optimizer": optimizer, "reduction": reduction, "batch_size": b}
    return cell_config(spec.space, cell, c)


def _groups(spec: SweepSpec) -> list[tuple[str, str, tuple[str, ...]]]:
    """(optimizer, schedule, reductions) of each answer the sweep gives: the reductions are
    pooled under a tied rule, separate under ``none`` (as :func:`analysis_key` groups them)."""
    space = spec.space
    out: list[tuple[str, str, tuple[str, ...]]] = []
    for o in space.optimizers:
        reds = tuple(space.reductions)
        parts = [reds] if pooled(space.rule_for(o)) else [(r,) for r in reds]
        out.extend((o, s, part) for s in space.schedules for part in parts)
    return out


def _key(optimizer: str, schedule: str, reductions: tuple[str, ...], rule: str) -> tuple[str, str, str]:
    return (optimizer, "*" if pooled(rule) else reductions[0], schedule)


def spread(o: Optimum) -> float:
    """How far lr*'s interval reaches from lr* (log; inf at the edge of what was tried): within
    the target when ``spread <= log(1 + target_interval)``."""
    return math.inf if o.on_edge else max(math.log(o.hi / o.lr), math.log(o.lr / o.lo), 0.0)


def first_batch_sizes(batch_sizes: tuple[int, ...] | list[int]) -> list[int]:
    """Round 0's batch sizes: the smallest, the one nearest the geometric middle, the largest."""
    sizes = sorted(batch_sizes)
    middle = min(sizes, key=lambda b: (abs(math.log(b) - (math.log(sizes[0]) + math.log(sizes[-1])) / 2), b))
    return sorted({sizes[0], middle, sizes[-1]})


@dataclass(frozen=True)
class Need:
    """What one batch size of one answer still needs: the LRs (per sample) to try, and how
    uncertain its lr* is now (log half-width; inf without an interior estimate)."""

    key: tuple[str, str, str]
    batch_size: int
    half_width: float
    lrs: tuple[float, ...]


def _lr_per_sample(lr_meq: float, b: int, rule: str) -> float:
    return lr_meq / b ** RULE_EXPONENT[rule]


def needs(spec: SweepSpec, groups: dict[tuple[str, str, str], GroupSummary], tried: dict) -> list[Need]:
    """Every batch size not yet within the target, with the LRs per sample its next round tries.

    ``tried``: (answer key, batch size) -> the log LRs per sample tried there already."""
    s = spec.searcher
    target = math.log(1 + s.target_interval)
    out = []
    for optimizer, schedule, reds in _groups(spec):
        rule = spec.space.rule_for(optimizer)
        key = _key(optimizer, schedule, reds, rule)
        g = groups.get(key)
        rng = spec.space.lr_range(optimizer)
        lo_c, hi_c = math.log(rng.low), math.log(rng.high)
        optima = {o.batch_size: o for o in (g.optima if g else [])}
        for b in spec.space.batch_sizes:
            o = optima.get(b)
            have = tried.get((key, b), [])
            if o is not None and not o.on_edge:
                half = spread(o)
                if half <= target:
                    continue
                center, span = math.log(o.lr), max(half, target) * WIDEN
            elif o is not None:  # the best tried LR is the smallest or largest tried: look past it
                best = math.log(_lr_per_sample(o.best_tried_lr, b, rule))
                side = -1.0 if have and best <= min(have) + SAME_LR else 1.0
                center = math.log(o.best_tried_lr) + side * EDGE_STEP
                half, span = math.inf, EDGE_STEP
            elif g is not None and g.answer is not None:  # not trained here yet: the law's prediction
                center, half, span = math.log(g.answer.law.lr(b)), math.inf, UNKNOWN_HALF_WIDTH
            else:
                continue  # round 0 has not reached this answer
            shift = RULE_EXPONENT[rule] * math.log(b)  # log lr_meq - log c
            lrs = _new_points(center - shift, span, s.round_lrs, have, (lo_c, hi_c))
            if lrs:
                out.append(Need(key, b, half, tuple(math.exp(x) for x in lrs)))
    return out


def _new_points(center: float, span: float, n: int, have: list[float], bounds: tuple[float, float]) -> list[float]:
    """``n`` log LRs evenly over ``center +- span`` (within ``bounds``) that were not tried yet;
    where most were, the same grid shifted by a half or a quarter step (the offset giving the
    most new points), so a batch size that already holds a round's LRs gets the ones between."""
    step = 2 * span / (n - 1)
    best: list[float] = []
    for offset in (0.0, 0.5, 0.25, 0.75):
        lrs: list[float] = []
        for i in range(n if offset == 0 else n - 1):
            x = float(min(max(center - span + (i + offset) * step, bounds[0]), bounds[1]))
            if all(abs(x - t) > SAME_LR for t in have + lrs):
                lrs.append(x)
        if len(lrs) > len(best):
            best = lrs
        if len(best) * 2 >= n:
            break
    return best


def _expand(spec: SweepSpec, key: tuple[str, str, str], b: int, lrs, offset: int) -> list[dict]:
    """The configurations of LRs ``lrs`` at batch size ``b``: at every seed, the reductions of
    a pooled answer taken in turn (starting at ``offset``)."""
    optimizer, reduction, schedule = key
    reds = list(spec.space.reductions) if reduction == "*" else [reduction]
    seeds = list(spec.space.seeds) if spec.space.seeds else [spec.searcher.seed]
    return [
        _config(spec, optimizer, reds[(i + offset) % len(reds)], schedule, seed, b, c)
        for i, c in enumerate(lrs)
        for seed in seeds
    ]


def plan_round(spec: SweepSpec, outcomes: list[Outcome], budget_samples: int) -> list[dict]:
    """The next round's configurations (empty: the search is done), within ``max_trials``."""
    left = spec.num_trials - len(outcomes)
    if left <= 0:
        return []
    if not outcomes:
        configs = []
        s = spec.searcher
        for optimizer, schedule, reds in _groups(spec):
            rng = spec.space.lr_range(optimizer)
            cs = [float(c) for c in np.geomspace(rng.low, rng.high, s.first_round_lrs)]
            key = _key(optimizer, schedule, reds, spec.space.rule_for(optimizer))
            for j, b in enumerate(first_batch_sizes(spec.space.batch_sizes)):
                configs.extend(_expand(spec, key, b, cs, j))
        return configs[:left]
    recs = records(outcomes, budget_samples)
    groups = {g.key: g for g in summarize(recs, spec.space.lr_ranges())}
    tried: dict[tuple, list[float]] = defaultdict(list)
    for r in recs:
        tried[(analysis_key(r), r.batch_size)].append(math.log(r.lr_per_sample))
    todo = sorted(needs(spec, groups, tried), key=lambda n: (-n.half_width, n.key, n.batch_size))
    configs = []
    for n in todo:
        more = _expand(spec, n.key, n.batch_size, n.lrs, len(tried[(n.key, n.batch_size)]))
        configs.extend(more[: left - len(configs)])
        if len(configs) >= left:
            break
    return configs


def stop_line(spec: SweepSpec, groups: list[GroupSummary], configurations: int) -> str:
    """Which of the user's stop rules ended an adaptive sweep, from its final analysis."""
    target = spec.searcher.target_interval
    widest: Optional[tuple[float, str, int]] = None
    for g in groups:
        for o in g.optima:
            width = math.expm1(spread(o))
            if widest is None or width > widest[0]:
                widest = (width, g.name, o.batch_size)
    swept = {(g.key, o.batch_size) for g in groups for o in g.optima}
    missing = len(_groups(spec)) * len(spec.space.batch_sizes) - len(swept)
    head = f"adaptive search: {configurations} of at most {spec.num_trials} configurations"
    if widest is not None and widest[0] <= target and not missing:
        where = f"widest +-{widest[0]:.0%}, {widest[1]} B={widest[2]}"
        return f"{head}; target reached: every batch size's lr* within +-{target:.0%} ({where})"
    why = "max_trials spent" if configurations >= spec.num_trials else "no untried LR left to narrow it"
    if widest is None:
        return f"{head}; {why} before any lr* was found"
    text = "at the edge of what was tried" if math.isinf(widest[0]) else f"+-{widest[0]:.0%}"
    gaps = f", {missing} batch sizes without an estimate" if missing else ""
    return f"{head}; {why}, target +-{target:.0%} not reached: widest lr* {text} ({widest[1]} B={widest[2]}){gaps}"


# ---- the Tune searcher --------------------------------------------------------------------


class AdaptiveSearch(Searcher):
    """Runs :func:`plan_round` on Tune: hands out a round's configurations (as packs of one
    cell's LRs when ``pack_size`` > 1), waits until the whole round has ended, plans the next.
    Keeps at most ``max_concurrent`` trials running itself (so its state is whole in its own
    checkpoint)."""

    def __init__(self, spec: SweepSpec, budget_samples: int, pack_size: int = 1):
        super().__init__(metric=m.OBJECTIVE, mode=m.MODE)
        self.spec = spec
        self.budget_samples = budget_samples
        self.pack_size = max(1, pack_size)
        self.max_concurrent = spec.searcher.max_concurrent
        self.outcomes: list[Outcome] = []
        self.queue: list[list[dict]] = []  # this round's trials not handed out yet
        self.live: dict[str, list[dict]] = {}  # Tune trial id -> the configurations it trains
        self.last: dict[str, dict[int, dict]] = {}  # Tune trial id -> member -> last result
        self.rounds = 0
        self.done = False

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = max_concurrent
        return True

    def _next_round(self) -> None:
        configs = plan_round(self.spec, self.outcomes, self.budget_samples)
        if not configs:
            self.done = True
            return
        self.rounds += 1
        self.queue = self._trials(configs)
        log.info("adaptive round %d: %d configurations in %d trials", self.rounds, len(configs), len(self.queue))

    def _trials(self, configs: list[dict]) -> list[list[dict]]:
        if self.pack_size == 1:
            return [[c] for c in configs]
        cells: dict[tuple, list[dict]] = defaultdict(list)
        for c in configs:
            cells[(c["batch_size"], c["optimizer"], c["reduction"], c["schedule"], c["seed"])].append(c)
        packs = []
        for cell in sorted(cells, key=lambda k: (k[0], k[1:])):  # small batch sizes (most steps) first
            members = cells[cell]
            n = math.ceil(len(members) / self.pack_size)
            for w in range(n):  # every n-th LR: each pack spans the cell's range
                pack = members[w::n]
                random.Random(f"{self.spec.searcher.seed}|{cell}|{w}").shuffle(pack)  # a str seeds alike in any process
                packs.append(pack)
        return packs

    def suggest(self, trial_id: str) -> Optional[dict]:
        if self.done:
            return Searcher.FINISHED  # type: ignore[return-value]  # Tune's end marker is a str
        if len(self.live) >= self.max_concurrent:
            return None
        if not self.queue and not self.live:
            self._next_round()
            if self.done:
                return Searcher.FINISHED
        if not self.queue:
            return None  # the round is still running: the next one needs its results
        trial = self.queue.pop(0)
        self.live[trial_id] = trial
        return {m.PACK: trial} if self.pack_size > 1 else dict(trial[0])

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.live:
            return
        members = member_results(result) if self.pack_size > 1 else {0: result}
        for j, metrics in members.items():
            self.last.setdefault(trial_id, {})[j] = metrics

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id not in self.live:
            return
        if result:
            self.on_trial_result(trial_id, result)
        last = self.last.pop(trial_id, {})
        for j, config in enumerate(self.live.pop(trial_id)):
            self.outcomes.append(Outcome.of(config, last.get(j), error))

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
