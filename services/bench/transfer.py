"""Bench 8, on real Ray Tune and MLflow: is the answer right at batch sizes nobody swept, and
the same whichever order the trials finish in?

- the transfer check (:mod:`services.orchestration.transfer`) of the quickstart and of
  sweeps/sgd_linear_scaling.yaml. Goal: at every held-out batch size, for every group, the
  answered LR within 5% val-loss regret of the best of its bracket, for at most 25% of the
  sweep's samples;
- the quickstart run again with ``max_concurrent: 1`` (its trials finish in another order).
  Goal: the same verdicts, answers at the held-out batch sizes within each other's intervals.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from services.bench.report import Result
from services.bench.sweeps import timed_sweep


def _tiny(spec):
    """A toy version for ``--quick``: two batch sizes, 2 LRs, one epoch; checked at B = 32 only."""
    lrs = spec.space.lr_per_sample
    fewer = (
        {o: r.model_copy(update={"grid_points": 2}) for o, r in lrs.items()}
        if isinstance(lrs, dict)
        else lrs.model_copy(update={"grid_points": 2})
    )
    space = spec.space.model_copy(update={"batch_sizes": [16, 64], "lr_per_sample": fewer})
    return spec.model_copy(
        update={
            "space": space,
            "budget": spec.budget.model_copy(update={"epochs": 1}),
            "transfer": spec.transfer.model_copy(
                update={"batch_sizes": [32], "extend": 0, "seeds": [0], "max_seeds": 1}
            ),
        }
    )


def _checked(spec, store: Path, db: str):
    """Sweep ``spec``, then its transfer check: (groups, transfers, report, share of the
    sweep's samples the check trained, the sweep's wall seconds, its trial records)."""
    from services.orchestration.transfer import checked_groups, run_transfer, samples_share
    from services.results.analysis import summarize
    from services.results.records import find_parent_run, load_records
    from services.tracking.store import client_for

    uri = f"sqlite:///{store / db}"
    wall, _, outcome = timed_sweep(spec, store, uri, track=True)
    transfers, report = run_transfer(
        spec,
        tracking_uri=uri,
        parent_run_id=outcome.parent_run_id,
        stream=io.StringIO(),
        storage_path=str(store / "ray"),
    )
    client = client_for(uri)
    parent = find_parent_run(client, spec.name, outcome.parent_run_id)
    records = load_records(client, parent)
    groups = checked_groups(summarize(records, spec.space.lr_ranges()), spec)
    return groups, transfers, report, samples_share(parent, records, transfers), wall, records


def _regret_row(name: str, transfers, report: str, tolerance: float, cost: float) -> Result:
    regrets = {f"{t.group} B={c.batch_size}": c.regret for t in transfers for c in t.checks}
    worst = max(regrets.values(), default=math.inf)
    head = f"worst regret {worst:.1%}" if math.isfinite(worst) else "an answered LR diverged"
    figure = f"{head} over {len(regrets)} checks; {cost:.0%} of the sweep's samples; " + "; ".join(
        f"{t.group}: {t.verdict}" for t in transfers
    )
    return Result(
        name,
        figure,
        f"regret <= {tolerance:.0%} at every held-out batch size, <= 25% of the sweep's samples",
        bool(regrets) and worst <= tolerance and cost <= 0.25,
        {"regrets": {k: round(v, 4) for k, v in regrets.items()}, "table": report.splitlines()},
    )


def _answers(groups, sizes):
    return {
        g.name: {
            "verdict": g.verdict.split(":")[0],
            "law": g.answer.source,
            "lr": {b: (g.answer.law.lr(b), g.answer.law.lr_interval(b) or (0.0, math.inf)) for b in sizes},
        }
        for g in groups
        if g.answer is not None
    }


def bench_transfer(quick: bool, store: Path) -> list[Result]:
    from services.orchestration.transfer import batch_sizes
    from services.paths import project_dir
    from services.spec import load_spec

    spec = load_spec(str(project_dir() / "sweeps" / "quickstart.yaml"))
    grid = load_spec(str(project_dir() / "sweeps" / "sgd_linear_scaling.yaml"))
    if quick:
        spec, grid = _tiny(spec), _tiny(grid)
    groups, transfers, report, cost, _, _ = _checked(spec, store, "transfer.db")
    rows = [_regret_row("quickstart answer at held-out batch sizes", transfers, report, spec.transfer.tolerance, cost)]
    _, g_transfers, g_report, g_cost, _, _ = _checked(grid, store, "transfer_grid.db")
    rows.append(
        _regret_row("SGD grid answer at held-out batch sizes", g_transfers, g_report, grid.transfer.tolerance, g_cost)
    )

    serial = spec.model_copy(
        update={"name": spec.name + "_serial", "searcher": spec.searcher.model_copy(update={"max_concurrent": 1})}
    )
    uri = f"sqlite:///{store / 'transfer.db'}"
    serial_wall, _, outcome = timed_sweep(serial, store, uri, track=True)
    from services.results.analysis import summarize
    from services.results.records import find_parent_run, load_records
    from services.tracking.store import client_for

    client = client_for(uri)
    serial_groups = summarize(
        load_records(client, find_parent_run(client, serial.name, outcome.parent_run_id)), spec.space.lr_ranges()
    )
    sizes = batch_sizes(spec, groups)
    a, b = _answers(groups, sizes), _answers(serial_groups, sizes)
    same_verdicts = {g: v["verdict"] for g, v in a.items()} == {g: v["verdict"] for g, v in b.items()}
    within = all(
        g in b
        and b[g]["lr"][s][1][0] <= a[g]["lr"][s][0] <= b[g]["lr"][s][1][1]
        and a[g]["lr"][s][1][0] <= b[g]["lr"][s][0] <= a[g]["lr"][s][1][1]
        for g in a
        for s in sizes
    )
    moved = max(
        (abs(math.log(b[g]["lr"][s][0] / a[g]["lr"][s][0])) for g in a if g in b for s in sizes), default=math.nan
    )
    rows.append(
        Result(
            "quickstart answers with max_concurrent 1 vs 2",
            f"verdicts {'the same' if same_verdicts else 'DIFFER'}; answers at B = {sizes} moved by at most "
            f"{math.expm1(moved):.1%} ({'within' if within else 'OUTSIDE'} each other's intervals); "
            f"the serial sweep took {serial_wall:.0f} s",
            "the same verdicts, answers within each other's intervals",
            same_verdicts and within,
            {
                "max_concurrent_2": {g: {"verdict": v["verdict"], "law": v["law"]} for g, v in a.items()},
                "max_concurrent_1": {g: {"verdict": v["verdict"], "law": v["law"]} for g, v in b.items()},
            },
        )
    )
    return rows
