"""Pure functions over a table of trial results: the best LR per sample per group, whether the
group's scaling rule holds, which law describes lr*(B), and the formula a user can apply.

A group is one optimizer x reduction x schedule. Within a group, trials that trained the full
budget are compared (ASHA-stopped ones only if none did); diverged and failed trials never
win, and a trial that did not learn (see :data:`LEARN_FRACTION`) closes a U-curve like a
diverged one instead of dragging its vertex.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

from search_spaces.scaling import ADAPTIVE, PARAM_NAMES, RULE_EXPONENT, TrialHParams
from services.results.fit import Optimum, PowerLaw, rule_constant, valid_range, verdict
from services.results.laws import LOBO_NAMES, Holdout, LawFit, choose_law, fit_laws, intervals_overlap, leave_one_out
from services.results.laws import loo_regret as _loo_regret
from services.results.laws import loo_score as _loo_score
from services.results.surface import make_cell, surface_optima

LEARN_FRACTION = 0.1
"""A trial learned when its val loss fell below its initial loss by at least this fraction of
what the best trial at its batch size achieved; below that it sits at chance (next to the
divergence cliff, or at an LR too small to move) and counts as tried, not as a U-curve point."""
EDGE_FRACTION = 0.05
"""A best LR per sample in the outer 5% (in log) of its searched range sits at the range's edge."""


@dataclass(frozen=True)
class TrialRecord:
    """One trial as read back from the tracking store."""

    run_id: str
    trial_id: str
    status: str  # FINISHED / FAILED / KILLED / RUNNING
    hp: TrialHParams
    """The trial's hyperparameters; ``record.batch_size`` and the like read them through."""
    val_loss: Optional[float] = None
    val_accuracy: Optional[float] = None
    samples_seen: int = 0
    diverged: bool = False
    stopped_early: bool = False
    b_simple: Optional[float] = None
    """Last gradient noise scale the trial measured."""
    error: Optional[str] = None
    """Last line of a failed trial's error."""
    updates: int = 0
    wall_s: Optional[float] = None
    """Seconds from the trial's start to its end, as MLflow recorded them."""
    initial_loss: Optional[float] = None
    """Val loss per sample before the first update (None for runs that did not record it)."""
    test_loss: Optional[float] = None
    test_accuracy: Optional[float] = None
    """Held-out test metrics, recorded only for an exported best configuration."""

    def __getattr__(self, name: str) -> Any:
        if name in PARAM_NAMES:  # called only for names the record itself lacks
            return getattr(self.hp, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def usable(self) -> bool:
        return self.status == "FINISHED" and not self.diverged and self.val_loss is not None


@dataclass(frozen=True)
class BatchBest:
    batch_size: int
    lr: float
    lr_per_sample: float
    val_loss: float
    val_accuracy: Optional[float]
    trials: int
    full_budget: bool
    """False when every trial at this batch size was stopped early by ASHA."""
    b_simple: Optional[float] = None
    """Noise scale measured by the best trial at this batch size."""
    did_not_learn: int = 0
    """Trials at this batch size that did not learn (counted as tried, not fitted)."""
    run_id: str = ""
    reduction: str = ""
    """The best trial's run and reduction (a pooled group's best may be either reduction's)."""


@dataclass(frozen=True)
class Answer:
    """The formula a user applies at any batch size, and where it comes from.

    ``source``: the law that predicted left-out batch sizes best over the whole swept range
    (:func:`services.results.laws.choose_law`): 'rule' (the rule's exponent, c fitted), 'power
    law', 'saturating' or 'surge'; or 'best trial' (too few batch sizes with an optimum to fit
    anything: the best trial's c with the rule's exponent, unchecked). ``law`` is fitted in the
    mean-equivalent LR (``law.shift`` 0); :meth:`for_reduction` gives a reduction's own.
    """

    source: str
    law: LawFit
    batch_range: tuple[int, int]
    """The batch sizes the formula was fitted (or, for 'best trial', swept) over."""

    @property
    def formula(self) -> str:
        return self.law.formula

    def for_reduction(self, optimizer: str, reduction: str, rule: str) -> LawFit:
        """The law in the optimizer LR of ``reduction`` (SGD under a tied sum: divided by B)."""
        tied_sum = reduction == "sum" and rule != "none" and optimizer not in ADAPTIVE
        return self.law.with_shift(-1.0 if tied_sum else 0.0)


def lr_exponent_meq(rule: str) -> float:
    """The rule's exponent of B in the mean-equivalent LR (linear 1, sqrt 0.5, none 0)."""
    return RULE_EXPONENT[rule]


def pooled(rule: str) -> bool:
    """Under a tied rule the reductions' updates are identical (SGD: lr / B under sum; Adam: eps
    * B; coupled decay * B), so their trials are one U-curve per batch size, in the
    mean-equivalent LR; under ``none`` they differ and are analysed apart."""
    return rule != "none"


@dataclass(frozen=True)
class GroupSummary:
    optimizer: str
    reduction: str
    schedule: str
    rule: str
    k: float
    best: Optional[TrialRecord]
    per_batch: list[BatchBest] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    optima: list[Optimum] = field(default_factory=list)
    """lr*(B) estimated from the U-curve at each batch size with at least two LRs."""
    law: Optional[PowerLaw] = None
    """lr*(B) = c * B**k fitted over the batch sizes where one power law holds (the rule's regime)."""
    above_range: list[int] = field(default_factory=list)
    """Batch sizes above that regime: lr* stopped following the fit there."""
    verdict: str = "inconclusive: no fit"
    laws: list[LawFit] = field(default_factory=list)
    """Every law fitted over the interior optima (power, saturating, and surge for Adam)."""
    chosen: Optional[LawFit] = None
    """The best-supported law (:func:`services.results.fit.choose_law`)."""
    rule_c: Optional[tuple[float, float, float]] = None
    """(c, lo, hi) of lr = c * B**k with the rule's k, fitted over the rule's regime."""
    answer: Optional[Answer] = None
    range_edge: Optional[str] = None
    """'low' or 'high' when the best trial's LR per sample sits at that edge of its searched range."""
    lr_range: Optional[tuple[float, float]] = None
    """The LR-per-sample range searched for this optimizer, when known."""
    reductions: tuple[str, ...] = ()
    """The reductions pooled in this group (``reduction`` names them joined by '+')."""
    holdouts: list[Holdout] = field(default_factory=list)
    """Leave one batch size out: lr* there predicted by each law fitted to the others."""
    agreement: list[dict] = field(default_factory=list)
    """For pooled reductions, per batch size each reduction's own lr* (mean-equivalent) and
    interval, and whether the intervals overlap."""

    @property
    def name(self) -> str:
        return f"{self.optimizer}/{self.reduction}" + (f"/{self.schedule}" if self.schedule != "constant" else "")

    @property
    def key(self) -> tuple[str, str, str]:
        """The :func:`analysis_key` of the group's trials."""
        return _key(self.optimizer, self.reduction, self.rule, self.schedule)

    @property
    def k_meq(self) -> float:
        """The rule's exponent of B in the mean-equivalent LR, the one the verdict tests."""
        return lr_exponent_meq(self.rule)

    def loo_score(self, law: str) -> Optional[float]:
        """Root mean square leave-one-out error of ``law`` in log lr."""
        return _loo_score(self.holdouts, law)

    def loo_regret(self, law: str) -> Optional[float]:
        """Mean regret of ``law``'s leave-one-out predictions on the left-out U-curves."""
        return _loo_regret(self.holdouts, law)

    @property
    def reductions_agree(self) -> Optional[bool]:
        """Pooled reductions: do their own lr* intervals overlap at every batch size both have?"""
        if not self.agreement:
            return None
        return all(row["agree"] for row in self.agreement)

    @property
    def holds_for(self) -> Optional[tuple[int, int]]:
        """The batch sizes over which the rule was found to hold (only when it does)."""
        if self.law is None or not self.verdict.startswith("holds"):
            return None
        return (min(self.law.batch_sizes), max(self.law.batch_sizes))

    @property
    def b_simple(self) -> Optional[float]:
        return self.best.b_simple if self.best else None

    @property
    def b_simple_range(self) -> Optional[tuple[float, float]]:
        """Smallest and largest B_simple measured by the best trial at each batch size."""
        values = [b.b_simple for b in self.per_batch if b.b_simple]
        return (min(values), max(values)) if values else None

    @property
    def b_noise_law(self) -> Optional[LawFit]:
        """The law whose B_noise to report: the chosen one if it has one, else the surge fit (Adam)
        or the saturating fit (SGD), though not chosen."""
        if self.chosen is not None and "b_noise" in self.chosen.params:
            return self.chosen
        fallback = "surge" if self.optimizer in ADAPTIVE else "saturating"  # the law of this optimizer
        return next((law for law in self.laws if law.name == fallback), None)

    @property
    def b_noise_agrees(self) -> Optional[bool]:
        """Does B_noise from the LR fit agree with the measured B_simple (intervals overlap)?"""
        law, measured = self.b_noise_law, self.b_simple_range
        if law is None or measured is None:
            return None
        return intervals_overlap(law.intervals["b_noise"], measured)

    @property
    def lr_per_sample(self) -> Optional[float]:
        """The exported constant c: fitted over the rule's regime, else the best trial's."""
        if self.rule_c is not None:
            return self.rule_c[0]
        return self.best.lr_per_sample if self.best else None


def loss_of(record: TrialRecord) -> float:
    """The val loss of a usable record (one that has it)."""
    if record.val_loss is None:
        raise ValueError(f"trial {record.trial_id}: no validation loss")
    return record.val_loss


def complete(record: TrialRecord) -> bool:
    """The run holds the params the analysis needs (a run cut off before its first write does not)."""
    return (
        record.optimizer != "?"
        and record.batch_size >= 1
        and math.isfinite(record.lr)
        and math.isfinite(record.lr_per_sample)
    )


def candidates(records: list[TrialRecord]) -> list[TrialRecord]:
    """The trials to compare: usable ones that trained the full budget, else all usable ones."""
    usable = [r for r in records if r.usable]
    full = [r for r in usable if not r.stopped_early]
    return full or usable


def learned(records: list[TrialRecord]) -> tuple[list[TrialRecord], list[TrialRecord]]:
    """Split trials of one batch size into (learned, did not learn); see :data:`LEARN_FRACTION`."""
    known = [(r, r.initial_loss, r.val_loss) for r in records if r.initial_loss is not None and r.val_loss is not None]
    if not known:
        return records, []
    best = min(loss for _, _, loss in known)
    best_gain = max(initial - loss for _, initial, loss in known)
    if best_gain <= 0:  # nobody improved on the initial loss
        bad = [r for r, _, _ in known]
    else:
        bad = [r for r, initial, loss in known if initial - loss < LEARN_FRACTION * best_gain and loss > best]
    out = {id(r) for r in bad}  # by identity: comparing frozen dataclasses field by field is O(n^2) work
    return [r for r in records if id(r) not in out], bad


def trial_counts(records: list[TrialRecord], did_not_learn: int = 0) -> dict[str, int]:
    return {
        "total": len(records),
        "completed": sum(r.usable and not r.stopped_early for r in records),
        "stopped_early": sum(r.usable and r.stopped_early for r in records),
        "diverged": sum(r.diverged for r in records),
        "failed": sum(r.status == "FAILED" for r in records),
        "killed": sum(r.status in ("KILLED", "RUNNING") and not r.diverged for r in records),
        "did_not_learn": did_not_learn,
    }


def _edge(c: float, lr_range: Optional[tuple[float, float]]) -> Optional[str]:
    if not lr_range or lr_range[0] >= lr_range[1]:
        return None
    lo, hi = math.log(lr_range[0]), math.log(lr_range[1])
    pos = (math.log(c) - lo) / (hi - lo)
    return "low" if pos <= EDGE_FRACTION else "high" if pos >= 1 - EDGE_FRACTION else None


def _noise_note(per_batch: list[BatchBest], optima: list[Optimum]) -> str:
    """Say so when most batch sizes lie above the measured noise scale, where lr*(B) is expected
    to flatten (McCandlish et al. 2018) and a linear or square-root rule cannot hold."""
    measured = sorted(b.b_simple for b in per_batch if b.b_simple)
    if not measured or not optima:
        return ""
    median = measured[len(measured) // 2]
    above = sum(o.batch_size > median for o in optima)
    if above * 2 <= len(optima):
        return ""
    return (
        f"; {above} of {len(optima)} batch sizes lie above the measured noise scale B_simple ~ {median:.0f}, "
        "where lr* is expected to flatten"
    )


def _answer(
    g_best: Optional[TrialRecord], rule_k: float, chosen: Optional[LawFit], swept: list[int]
) -> Optional[Answer]:
    if chosen is not None:
        source = {"power": "power law"}.get(chosen.name, chosen.name)
        source += ", corrected to the swept optima" if chosen.residuals else ""
        return Answer(source, chosen, (min(swept), max(swept)))
    if g_best is None:
        return None
    c = g_best.hp.mean_lr / g_best.batch_size**rule_k
    fit = LawFit("rule", {"c": c, "k": rule_k}, {"c": (c, c), "k": (rule_k, rule_k)}, 0.0, tuple(swept), 0.0)
    return Answer("best trial", fit, (min(swept), max(swept)))


def u_curve(records: list[TrialRecord]) -> tuple[tuple[float, float], ...]:
    """One batch size's measured U-curve: (log mean-equivalent lr, log mean val loss) per LR
    tried, every finished trial included; a diverged one counts as the worst loss seen there
    (or its initial loss, if worse)."""
    finite = [r.val_loss for r in records if r.status == "FINISHED" and not r.diverged and r.val_loss is not None]
    initial = [r.initial_loss for r in records if r.initial_loss is not None]
    if not finite:
        return ()
    worst = max(finite + initial)
    by: dict[float, list[float]] = defaultdict(list)
    for r in records:
        if r.status == "FINISHED" or r.diverged:
            loss = worst if r.diverged or r.val_loss is None else r.val_loss
            by[math.log(r.hp.mean_lr)].append(math.log(max(loss, 1e-12)))
    return tuple((x, sum(v) / len(v)) for x, v in sorted(by.items()))


def _optima(members: list[TrialRecord]) -> tuple[list[Optimum], list[BatchBest], int]:
    """lr*(B) in the mean-equivalent LR (one surface fit over the group), the best trial per
    batch size, and how many trials did not learn."""
    per_batch, cells, not_learned = [], [], 0
    for bs in sorted({r.batch_size for r in members if r.usable}):
        at_bs = candidates([r for r in members if r.batch_size == bs])
        fit_pool, bad = learned(at_bs)
        not_learned += len(bad)
        top = min(at_bs, key=lambda r: (r.val_loss, r.run_id))
        per_batch.append(
            BatchBest(
                bs,
                top.lr,
                top.lr_per_sample,
                loss_of(top),
                top.val_accuracy,
                len(at_bs),
                not top.stopped_early,
                top.b_simple,
                len(bad),
                top.run_id,
                top.reduction,
            )
        )
        tried = [r.hp.mean_lr for r in members if r.batch_size == bs and (r.usable or r.diverged)]
        seeds = len({r.seed for r in fit_pool})
        cells.append(make_cell(bs, [r.hp.mean_lr for r in fit_pool], [loss_of(r) for r in fit_pool], tried, seeds))
    return surface_optima(cells), per_batch, not_learned


def _agreement(members: list[TrialRecord], reductions: tuple[str, ...]) -> list[dict]:
    """Each pooled reduction's own lr* per batch size, and whether their intervals overlap."""
    if len(reductions) < 2:
        return []
    own = {red: {o.batch_size: o for o in _optima([r for r in members if r.reduction == red])[0]} for red in reductions}
    rows = []
    for bs in sorted(set.intersection(*(set(v) for v in own.values()))):
        found = {red: own[red][bs] for red in reductions}
        if any(o.on_edge for o in found.values()):
            continue
        lo = max(o.lo for o in found.values())
        hi = min(o.hi for o in found.values())
        rows.append(
            {
                "batch_size": bs,
                **{red: {"lr": o.lr, "interval": [o.lo, o.hi]} for red, o in found.items()},
                "agree": lo <= hi,
            }
        )
    return rows


def summarize_group(members: list[TrialRecord], lr_range: Optional[tuple[float, float]] = None) -> GroupSummary:
    """The summary of one optimizer x schedule (x reduction, unless the rule pools them)."""
    first = members[0]
    reductions = tuple(sorted({r.reduction for r in members}, key=["mean", "sum"].index))
    pool = candidates(members)
    best = min(pool, key=lambda r: (r.val_loss, r.run_id)) if pool else None
    optima, per_batch, not_learned = _optima(members)
    rule_k = lr_exponent_meq(first.rule)
    interior = [o for o in optima if not o.on_edge]  # an optimum on the edge is a bound, not an estimate
    law, above = valid_range(interior) if len(interior) >= 2 else (None, [])
    text = verdict(law, rule_k)
    text += "" if text.startswith("holds") else _noise_note(per_batch, optima)
    adaptive = first.optimizer in ADAPTIVE
    laws = fit_laws(interior, rule_k=rule_k, adaptive=adaptive)
    names = [n for n in LOBO_NAMES if adaptive or n != "surge"]
    curves = {o.batch_size: u_curve([r for r in members if r.batch_size == o.batch_size]) for o in interior}
    holdouts = leave_one_out(interior, names, rule_k, curves) if len(interior) >= 2 else []
    chosen = choose_law(laws, holdouts, interior)
    regime = [o for o in interior if law is not None and o.batch_size in law.batch_sizes]
    rule_c = rule_constant(regime, rule_k) if len(regime) >= 2 else None
    swept = [b.batch_size for b in per_batch]
    return GroupSummary(
        first.optimizer,
        "+".join(reductions),
        first.schedule,
        first.rule,
        first.k,
        best,
        per_batch,
        trial_counts(members, not_learned),
        optima=optima,
        law=law,
        above_range=[o.batch_size for o in above],
        verdict=text,
        laws=laws,
        chosen=chosen,
        rule_c=rule_c,
        answer=_answer(best, rule_k, chosen, swept) if swept else None,
        range_edge=_edge(best.lr_per_sample, lr_range) if best else None,
        lr_range=lr_range,
        reductions=reductions,
        holdouts=holdouts,
        agreement=_agreement(members, reductions) if pooled(first.rule) else [],
    )


def _key(optimizer: str, reduction: str, rule: str, schedule: str) -> tuple[str, str, str]:
    return (optimizer, "*" if pooled(rule) else reduction, schedule)


def analysis_key(record: TrialRecord) -> tuple[str, str, str]:
    """(optimizer, reduction or '*' when the rule pools the reductions, schedule)."""
    return _key(record.optimizer, record.reduction, record.rule, record.schedule)


def summarize(
    records: Iterable[TrialRecord], lr_ranges: Optional[Mapping[str, tuple[float, float]]] = None
) -> list[GroupSummary]:
    """One summary per optimizer x schedule (x reduction under rule ``none``; a tied rule pools
    the reductions, see :func:`pooled`), sorted by name. ``lr_ranges``: the LR-per-sample range
    searched per optimizer, for the edge warnings."""
    groups: dict[tuple[str, str, str], list[TrialRecord]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.run_id, r.trial_id)):  # row order never matters
        if complete(record):
            groups[analysis_key(record)].append(record)
    return [summarize_group(members, (lr_ranges or {}).get(key[0])) for key, members in sorted(groups.items())]
