"""Bench 7, on real Ray Tune and MLflow: trial packs in sweeps, against the bare packed compute
of the same configurations and against the same sweeps one configuration per trial."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import torch

from search_spaces.scaling import TrialHParams
from services.bench.report import Result
from services.bench.sweeps import timed_sweep

# ---- 7. packs in sweeps: the physical limit, the quickstart, the SGD grid ----------------------


def _sweep_groups(uri: str, spec, parent_run_id: str) -> tuple[list, dict[str, dict]]:
    """A finished sweep's records, and per optimizer/reduction its verdict, exponent interval
    and best validation loss."""
    from services.results.analysis import loss_of, summarize
    from services.results.records import find_parent_run, load_records
    from services.tracking.store import client_for

    client = client_for(uri)
    records = load_records(client, find_parent_run(client, spec.name, parent_run_id))
    groups = {}
    for g in summarize(records, spec.space.lr_ranges()):
        law = g.law
        groups[f"{g.optimizer}/{g.reduction}"] = {
            "verdict": g.verdict.split(":")[0],
            "k": [round(law.k, 2), round(law.k_lo, 2), round(law.k_hi, 2)] if law else None,
            "best_val_loss": round(loss_of(g.best), 4) if g.best else None,
        }
    return records, groups


def _unpacked(spec):
    return spec.model_copy(
        update={
            "name": spec.name + "_unpacked",
            "resources": spec.resources.model_copy(update={"pack_size": 1}),
        }
    )


def _side_by_side(spec, store: Path, db: str) -> tuple[tuple[float, list, dict], tuple[float, list, dict]]:
    """``spec`` as it is, then one configuration per trial, tracked in one store: (wall s,
    records, groups) of each (:func:`_sweep_groups`)."""
    uri = f"sqlite:///{store / db}"
    out = []
    for each in (spec, _unpacked(spec)):
        wall, _, outcome = timed_sweep(each, store, uri, track=True)
        out.append((wall, *_sweep_groups(uri, each, outcome.parent_run_id)))
    return out[0], out[1]


def _overlap(a: Optional[list], b: Optional[list]) -> bool:
    return a is None or b is None or (a[1] <= b[2] and b[1] <= a[2])


def bench_limit(quick: bool, store: Path) -> list[Result]:
    """The quickstart sweep (in packs) against two references, side by side:

    - the bare compute of its configurations: each cell's members trained as one pack
      (:mod:`services.training.pack`), noise-scale measurement included, in one process on all
      cores, without tracking or Ray. Goal: the sweep within 1.5x of it;
    - the same sweep one configuration per trial (``resources.pack_size: 1``, what the
      quickstart runs by default). Goal: the packed sweep in 15 s, with the same or a better
      best validation loss in each group.
    """
    from services.paths import project_dir
    from services.spec import load_spec
    from services.training import workloads
    from services.training.pack import SHARED, train_members
    from services.training.train import budget_of

    spec = load_spec(str(project_dir() / "sweeps" / "quickstart.yaml"))
    # TPE packs only when asked for: 4 LRs proposed at once, half a cell's 8 trials per pack
    spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"pack_size": 8})})
    if quick:  # random: packs of a whole cell's 2 trials (TPE would take them one per round)
        spec = spec.model_copy(
            update={
                "searcher": spec.searcher.model_copy(update={"num_trials": 40, "kind": "random"}),
                "budget": spec.budget.model_copy(update={"epochs": 1}),
            }
        )
    (wall, records, packed), (alone_wall, _, alone) = _side_by_side(spec, store, "limit.db")
    groups: dict[tuple, list[TrialHParams]] = {}
    for r in records:
        groups.setdefault(tuple(getattr(r.hp, name) for name in SHARED), []).append(r.hp)
    workload = workloads.load(spec.workload)
    budget = budget_of(spec, workload.n_train)
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        start = time.perf_counter()
        for members in groups.values():
            train_members(workload, members, budget, lambda i, r: None)
        bare = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    ratio = wall / bare
    detail = {
        "sweep_wall_s": round(wall, 1),
        "packed_bare_compute_s": round(bare, 1),
        "configurations": len(records),
        "cells": len(groups),
        "largest_cell": max(len(g) for g in groups.values()),
    }
    limit = Result(
        "quickstart sweep vs its bare packed compute",
        f"{ratio:.1f}x ({wall:.0f} s sweep / {bare:.1f} s packed, {len(records)} configurations)",
        "<= 1.5x",
        ratio <= 1.5,
        detail,
    )
    better = all(
        packed[g]["best_val_loss"] is not None and packed[g]["best_val_loss"] <= (alone[g]["best_val_loss"] or 0)
        for g in packed
    )
    quickstart = Result(
        "quickstart in packs vs one configuration per trial",
        f"{wall:.0f} s packed, {alone_wall:.0f} s unpacked; best val loss "
        + ", ".join(f"{g} {packed[g]['best_val_loss']} vs {alone[g]['best_val_loss']}" for g in packed),
        "<= 15 s, best val loss per group the same or better",
        wall <= 15 and better,
        {"packed_wall_s": round(wall, 1), "unpacked_wall_s": round(alone_wall, 1), "packed": packed, "unpacked": alone},
    )
    return [limit, quickstart]


def bench_packed_grid(quick: bool, store: Path, asha: bool = False) -> Result:
    """sweeps/sgd_linear_scaling.yaml (224 grid configurations) in packs against one
    configuration per trial, side by side. Goal: >= 5x faster, the same verdict per group.

    ``asha``: the same grid with ASHA on (per member in packs, :mod:`services.orchestration.rungs`).
    Goal: >= 1.5x faster; the members ASHA stops leave their packs. Verdicts are reported, not
    a goal: which trials survive ASHA depends on the order results reach it, packed or not."""
    from services.paths import project_dir
    from services.spec import load_spec

    spec = load_spec(str(project_dir() / "sweeps" / "sgd_linear_scaling.yaml"))
    if asha:
        spec = spec.model_copy(
            update={"name": spec.name + "_asha", "asha": spec.asha.model_copy(update={"enabled": True})}
        )
    if quick:
        spec = spec.model_copy(
            update={
                "space": spec.space.model_copy(
                    update={
                        "batch_sizes": [64, 256],
                        "reductions": ["mean"],
                        "lr_per_sample": spec.space.lr_range("sgd").model_copy(update={"grid_points": 4}),
                    }
                ),
                "budget": spec.budget.model_copy(update={"epochs": 1}),
            }
        )
    (wall, records, packed), (alone_wall, alone_records, alone) = _side_by_side(
        spec, store, "grid_asha.db" if asha else "grid.db"
    )
    ratio = alone_wall / wall
    same = all(packed[g]["verdict"] == alone[g]["verdict"] for g in packed)
    overlap = all(_overlap(packed[g]["k"], alone[g]["k"]) for g in packed)
    figure = f"{ratio:.1f}x ({alone_wall:.0f} s -> {wall:.0f} s); "
    if asha:
        stopped = [sum(r.stopped_early for r in rs) for rs in (records, alone_records)]
        figure += f"stopped by ASHA {stopped[0]} vs {stopped[1]} of {len(records)}; "
    figure += "verdicts " + ", ".join(
        f"{g} {packed[g]['verdict']} (k {packed[g]['k']}) vs {alone[g]['verdict']} (k {alone[g]['k']})" for g in packed
    )
    detail = {
        "packed_wall_s": round(wall, 1),
        "unpacked_wall_s": round(alone_wall, 1),
        "configurations": spec.num_trials,
        "same_verdicts": same,
        "k_intervals_overlap": overlap,
        "packed": packed,
        "unpacked": alone,
    }
    if asha:
        return Result(
            "SGD grid with ASHA in packs vs one configuration per trial", figure, ">= 1.5x", ratio >= 1.5, detail
        )
    return Result(
        "SGD grid in packs vs one configuration per trial", figure, ">= 5x, same verdicts", ratio >= 5 and same, detail
    )
