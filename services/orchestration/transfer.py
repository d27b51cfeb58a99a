"""The transfer check, run: the answered LR and a bracket around it trained at batch sizes the
sweep never trained, as runs nested under the sweep's MLflow parent run.

Per held-out batch size (``transfer.batch_sizes``, default :func:`services.results.transfer.held_out`)
one small grid sweep trains every group's answered LR x 2**-octaves .. x 2**octaves over the
check's seeds, with the sweep's workload, budget and rules (so the LR is exactly the answer's).
Pooled reductions train identical updates, so each batch size checks one of them in turn.
Then, while a check's best LR is the bracket's outermost (up to ``transfer.extend`` rounds),
one more factor of 2 is trained on that side; and where the regret is above the tolerance
but its interval reaches below it, the bracket gets 2 more seeds (up to ``transfer.max_seeds``).
:mod:`services.results.transfer` scores it.

Running it again checks only what is missing for the current answer: a finished check is
read back from MLflow, not trained twice.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from typing import IO, Optional

from search_spaces.scaling import RULE_EXPONENT
from services import metrics as m
from services import paths
from services.errors import ExportError
from services.results import transfer as tr
from services.results.analysis import GroupSummary, summarize
from services.spec import SweepSpec, parse_spec
from services.tracking.store import PARENT_TAG


@dataclass(frozen=True)
class Job:
    """Train ``factors`` (log2 of LR / answer) for ``group`` at ``batch_size`` under ``reduction``,
    on ``seeds`` (default the check's)."""

    group: GroupSummary
    batch_size: int
    reduction: str
    factors: tuple[int, ...]
    seeds: tuple[int, ...] = ()


def checked_groups(groups: list[GroupSummary], spec: SweepSpec) -> list[GroupSummary]:
    """The groups the check covers: those with an answer, under the sweep's first schedule
    (the LR range of a check is per optimizer, so one schedule a check)."""
    first = spec.space.schedules[0]
    return [g for g in groups if g.answer is not None and g.schedule == first]


def batch_sizes(spec: SweepSpec, groups: list[GroupSummary]) -> list[int]:
    if spec.transfer.batch_sizes:
        return sorted(spec.transfer.batch_sizes)
    return tr.held_out(sorted({b.batch_size for g in groups for b in g.per_batch}))


def first_jobs(spec: SweepSpec, groups: list[GroupSummary], sizes: list[int]) -> list[Job]:
    """The bracket at every held-out batch size, pooled reductions taking turns."""
    o = spec.transfer.octaves
    factors = tuple(range(-o, o + 1))
    jobs = []
    for i, b in enumerate(sizes):
        for g in groups:
            reductions = g.reductions or (g.reduction,)
            jobs.append(Job(g, b, reductions[i % len(reductions)], factors))
    return jobs


def answered(g: GroupSummary, batch_size: int) -> float:
    """The answer's mean-equivalent LR at ``batch_size``."""
    assert g.answer is not None
    return g.answer.law.lr(batch_size)


def sub_spec(spec: SweepSpec, batch_size: int, reduction: str, jobs: list[Job]) -> SweepSpec:
    """A grid sweep of ``jobs`` (same batch size, reduction and number of factors) with the
    sweep's workload, budget and rules; noise scale and ASHA off, one LR range per optimizer
    whose grid is exactly the answer x 2**factor."""
    doc = spec.model_dump(mode="json", exclude={"description"})
    space = doc["space"]
    lr_ranges = {}
    for job in jobs:
        opt = job.group.optimizer
        c = answered(job.group, batch_size) / batch_size ** RULE_EXPONENT[job.group.rule]
        low, high = c * 2.0 ** min(job.factors), c * 2.0 ** max(job.factors)
        lr_ranges[opt] = {"low": low, "high": high, "grid_points": len(job.factors)}
    space.update(
        batch_sizes=[batch_size],
        reductions=[reduction],
        optimizers=[j.group.optimizer for j in jobs],
        rules={j.group.optimizer: j.group.rule for j in jobs},
        schedules=[jobs[0].group.schedule],
        seeds=list(jobs[0].seeds or spec.transfer.seeds),
        lr_per_sample=lr_ranges,
        interleave=False,
    )
    doc["searcher"] = {**doc["searcher"], "kind": "grid", "num_trials": None, "max_trials": None}
    doc["asha"] = {**doc["asha"], "enabled": False}
    doc["noise"] = {**doc["noise"], "enabled": False}
    doc["transfer"] = {**doc["transfer"], "enabled": False, "batch_sizes": None}
    return parse_spec(doc, f"transfer check at B = {batch_size}")


def next_jobs(spec: SweepSpec, groups: list[GroupSummary], transfers: list[tr.Transfer]) -> list[Job]:
    """One more factor of 2 outwards where a check's best LR is at its bracket's edge; else, where
    its regret is above the tolerance but its interval reaches below it, the bracket on 2 more
    seeds (up to ``transfer.max_seeds``)."""
    by_name = {g.name: g for g in groups}
    limit = spec.transfer.octaves + spec.transfer.extend
    jobs = []
    for t in transfers:
        for c in t.checks:
            g = by_name[t.group]
            if c.at_edge and abs(c.best_factor) < limit:
                step = c.best_factor + (1 if c.best_factor > 0 else -1)
                jobs.append(Job(g, c.batch_size, c.reduction, (step,), c.seed_ids))
            elif c.verdict == "inconclusive" and c.regret > c.tolerance and c.seeds < spec.transfer.max_seeds:
                more = min(2, spec.transfer.max_seeds - c.seeds)
                start = max(c.seed_ids) + 1 if c.seed_ids else 0
                jobs.append(Job(g, c.batch_size, c.reduction, tuple(c.factors), tuple(range(start, start + more))))
    return jobs


def _run_jobs(spec, spec_path, jobs, uri, parent_id, stream, storage_path=None) -> int:
    """One grid sweep per (batch size, reduction, bracket size); returns the trials run."""
    from services.orchestration.runner import run_sweep

    buckets: dict[tuple, list[Job]] = {}
    for job in jobs:
        buckets.setdefault((job.batch_size, job.reduction, len(job.factors), job.seeds), []).append(job)
    trials = 0
    for (b, red, _, _), bucket in sorted(buckets.items()):
        sub = sub_spec(spec, b, red, bucket)
        tags = {
            m.TAG_ROLE: "transfer",
            PARENT_TAG: parent_id,
            m.TAG_TRANSFER_OF: parent_id,
            m.TAG_TRANSFER_BATCH: str(b),
            m.TAG_TRANSFER_ANSWERS: json.dumps({j.group.name: answered(j.group, b) for j in bucket}),
            m.TAG_RUN_NAME: f"transfer-B{b}",
        }
        run_sweep(
            sub, spec_path=spec_path, tracking_uri=uri, stream=stream, parent_tags=tags, storage_path=storage_path
        )
        trials += sub.num_trials
    return trials


def run_transfer(
    spec: SweepSpec,
    *,
    spec_path: str = "",
    tracking_uri: Optional[str] = None,
    ray_address: Optional[str] = None,
    parent_run_id: Optional[str] = None,
    stream: Optional[IO[str]] = None,
    storage_path: Optional[str] = None,
) -> tuple[list[tr.Transfer], str]:
    """Run what is missing of the sweep's transfer check; returns the scored checks and the
    report (the transfer table and what it cost next to the sweep)."""
    from services.orchestration.runner import init_ray, shutdown_ray
    from services.results.records import find_parent_run, load_records, read_transfers
    from services.tracking.store import client_for

    stream = stream or sys.stdout
    uri = tracking_uri or paths.tracking_uri()
    client = client_for(uri)
    parent = find_parent_run(client, spec.name, parent_run_id)
    records = load_records(client, parent)
    groups = checked_groups(summarize(records, spec.space.lr_ranges()), spec)
    if not groups:
        raise ExportError(f"sweep {spec.name!r}: no group has an answer to check; run the sweep first")
    sizes = batch_sizes(spec, groups)
    tol = spec.transfer.tolerance
    transfers = read_transfers(client, parent, groups, tol)
    done = {(t.group, c.batch_size) for t in transfers for c in t.checks}
    jobs = [j for j in first_jobs(spec, groups, sizes) if (j.group.name, j.batch_size) not in done]
    started = init_ray(ray_address if ray_address is not None else paths.ray_address(), spec.name)
    t0, trials = time.monotonic(), 0
    try:
        for _ in range(spec.transfer.extend + spec.transfer.max_seeds + 1):  # each round ends one open question
            if not jobs:
                break
            trials += _run_jobs(spec, spec_path, jobs, uri, parent.info.run_id, stream, storage_path)
            transfers = read_transfers(client, parent, groups, tol)
            jobs = next_jobs(spec, groups, transfers)
    finally:
        if started:
            shutdown_ray()
    wall = time.monotonic() - t0
    report = tr.format_table(transfers) + "\n" + _cost(parent, records, transfers, trials, wall)
    return transfers, report


def _trials(transfers: list[tr.Transfer]) -> int:
    """Trials the scored checks rest on: every LR of every bracket on every seed compared."""
    return sum(len(c.losses) * c.seeds for t in transfers for c in t.checks)


def samples_share(parent, records, transfers: list[tr.Transfer]) -> float:
    """The samples the check of the current answer trains over those the sweep trained."""
    budget = int(parent.data.tags.get(m.TAG_BUDGET_SAMPLES, 0))
    return _trials(transfers) * budget / (sum(r.samples_seen for r in records) or 1)


def _cost(parent, records, transfers: list[tr.Transfer], trials: int, wall: float) -> str:
    """What the check of the current answer cost next to the sweep, in trials and samples."""
    checked = _trials(transfers)
    sweep_wall = (parent.info.end_time - parent.info.start_time) / 1000 if parent.info.end_time else math.nan
    line = (
        f"transfer check: {checked} trials, {samples_share(parent, records, transfers):.0%} of the samples the sweep's "
        f"{len(records)} trials trained"
    )
    if trials:
        line += f"; this run trained {trials} in {wall:.0f} s (the sweep took {sweep_wall:.0f} s)"
    return line
