"""Pure functions over a table of trial results: the best LR per sample per group, and
whether the group's scaling rule holds (:mod:`services.fit`).

A group is one optimizer x reduction. Within a group, trials that trained the full budget
are compared (ASHA-stopped ones only if none did); diverged and failed trials never win.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Optional

from services.fit import Optimum, PowerLaw, optimal_lr, valid_range, verdict


@dataclass(frozen=True)
class TrialRecord:
    """One trial as read back from the tracking store."""

    run_id: str
    trial_id: str
    status: str  # FINISHED / FAILED / KILLED / RUNNING
    optimizer: str
    reduction: str
    rule: str
    k: float
    batch_size: int
    lr: float
    lr_per_sample: float
    val_loss: Optional[float] = None
    val_accuracy: Optional[float] = None
    samples_seen: int = 0
    diverged: bool = False
    stopped_early: bool = False
    b_simple: Optional[float] = None
    """Last gradient noise scale the trial measured."""
    error: Optional[str] = None
    """Last line of a failed trial's error."""
    schedule: str = "constant"
    seed: int = 0
    updates: int = 0
    wall_s: Optional[float] = None
    """Seconds from the trial's start to its end, as MLflow recorded them."""

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
    """lr*(B) = c * B**k fitted over the batch sizes where the rule holds."""
    above_range: list[int] = field(default_factory=list)
    """Batch sizes above the valid range: lr* stopped following the fit there."""
    verdict: str = "inconclusive: no fit"

    @property
    def valid_batch_range(self) -> Optional[tuple[int, int]]:
        return (min(self.law.batch_sizes), max(self.law.batch_sizes)) if self.law else None

    @property
    def b_simple(self) -> Optional[float]:
        return self.best.b_simple if self.best else None

    @property
    def lr_per_sample(self) -> Optional[float]:
        return self.best.lr_per_sample if self.best else None


def candidates(records: list[TrialRecord]) -> list[TrialRecord]:
    """The trials to compare: usable ones that trained the full budget, else all usable ones."""
    usable = [r for r in records if r.usable]
    full = [r for r in usable if not r.stopped_early]
    return full or usable


def _counts(records: list[TrialRecord]) -> dict[str, int]:
    return {
        "total": len(records),
        "completed": sum(r.usable and not r.stopped_early for r in records),
        "stopped_early": sum(r.usable and r.stopped_early for r in records),
        "diverged": sum(r.diverged for r in records),
        "failed": sum(r.status == "FAILED" for r in records),
        "killed": sum(r.status in ("KILLED", "RUNNING") and not r.diverged for r in records),
    }


def summarize(records: Iterable[TrialRecord]) -> list[GroupSummary]:
    """One summary per optimizer x reduction x schedule, sorted by name."""
    groups: dict[tuple[str, str, str], list[TrialRecord]] = defaultdict(list)
    for record in records:
        groups[(record.optimizer, record.reduction, record.schedule)].append(record)
    out = []
    for (optimizer, reduction, schedule), members in sorted(groups.items()):
        pool = candidates(members)
        best = min(pool, key=lambda r: r.val_loss) if pool else None
        per_batch, optima = [], []
        for bs in sorted({r.batch_size for r in members if r.usable}):
            at_bs = candidates([r for r in members if r.batch_size == bs])
            top = min(at_bs, key=lambda r: r.val_loss)
            per_batch.append(BatchBest(bs, top.lr, top.lr_per_sample, top.val_loss, top.val_accuracy,
                                       len(at_bs), not top.stopped_early, top.b_simple))
            if len({r.lr for r in at_bs}) >= 2:
                tried = [r.lr for r in members if r.batch_size == bs and (r.usable or r.diverged)]
                optima.append(optimal_lr(bs, [r.lr for r in at_bs], [r.val_loss for r in at_bs], tried))
        rule, k = members[0].rule, members[0].k
        law, above = valid_range(optima) if len(optima) >= 2 else (None, [])
        out.append(GroupSummary(
            optimizer, reduction, schedule, rule, k, best, per_batch, _counts(members),
            optima=optima, law=law, above_range=[o.batch_size for o in above], verdict=verdict(law, k),
        ))
    return out


def format_table(groups: list[GroupSummary]) -> str:
    """The end-of-sweep table: best config per optimizer x reduction (x schedule) with its LR per sample."""
    scheduled = any(g.schedule != "constant" for g in groups)
    sched = lambda g: f"{g.schedule:<13} " if scheduled else ""  # noqa: E731
    header = (
        f"{'optimizer':<9} {'reduction':<9} {'schedule':<13} " if scheduled else f"{'optimizer':<9} {'reduction':<9} "
    ) + (
        f"{'rule':<6} {'lr/sample c':>11} {'k':>4} {'best B':>6} "
        f"{'lr':>9} {'val loss':>9} {'val acc':>7}  trials (ok/stopped/diverged/failed)"
    )
    lines = [header, "-" * len(header)]
    for g in groups:
        c = g.counts
        trials = f"{c['total']} ({c['completed']}/{c['stopped_early']}/{c['diverged']}/{c['failed']})"
        lead = f"{g.optimizer:<9} {g.reduction:<9} {sched(g)}{g.rule:<6} "
        if g.best is None:
            lines.append(f"{lead}{'-':>11} {g.k:>4g} {'-':>6} {'-':>9} {'-':>9} {'-':>7}  {trials}")
            continue
        b = g.best
        acc = f"{b.val_accuracy:.3f}" if b.val_accuracy is not None else "-"
        lines.append(f"{lead}{b.lr_per_sample:>11.3e} {g.k:>4g} {b.batch_size:>6} "
                     f"{b.lr:>9.3e} {b.val_loss:>9.4f} {acc:>7}  {trials}")
    return "\n".join(lines)


def format_outcomes(records: list[TrialRecord]) -> str:
    """One line of counts, then one line per failed trial with its error."""
    c = _counts(records)
    lines = [f"{c['total']} trials: {c['completed']} completed, {c['stopped_early']} stopped early by ASHA, "
             f"{c['diverged']} diverged, {c['failed']} failed" + (f", {c['killed']} killed" if c["killed"] else "")]
    for r in records:
        if r.status == "FAILED":
            lines.append(f"  failed {r.trial_id} ({r.optimizer}, {r.reduction}, B={r.batch_size}): {r.error}")
    return "\n".join(lines)
