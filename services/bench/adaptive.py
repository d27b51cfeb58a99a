"""Bench 9, on real Ray Tune and MLflow: the adaptive searcher against the full grid, side by
side on the same workload (sweeps/sgd_linear_scaling.yaml vs sweeps/sgd_adaptive.yaml, and the
same for Adam): configurations and samples trained, wall time, lr*(B) with its interval at
every swept batch size, and the transfer check of each answer at the same held-out sizes.

Goal: the adaptive answer within the grid answer's interval at every swept batch size, regret
<= 5% at every held-out one, for <= 1/3 of the grid's samples.
"""

from __future__ import annotations

import math
from pathlib import Path

from services.bench.report import Result
from services.bench.transfer import _checked, _tiny

PAIRS = (("sgd_linear_scaling", "sgd_adaptive"), ("adam_sqrt_scaling", "adam_adaptive"))
SAMPLES_GOAL = 1 / 3


def _tiny_adaptive(spec):
    spec = _tiny(spec)
    searcher = spec.searcher.model_copy(update={"max_trials": 8, "first_round_lrs": 3, "round_lrs": 2})
    return spec.model_copy(update={"searcher": searcher})


def _run(spec, store: Path, db: str) -> dict:
    """Sweep ``spec`` and check its answer: what it cost and what it answered."""
    groups, transfers, _, _, wall, records = _checked(spec, store, db)
    line = ""
    if spec.searcher.kind == "adaptive":
        from services.orchestration.adaptive import stop_line

        line = stop_line(spec, groups, len(records))
    regrets = [c.regret for t in transfers for c in t.checks]
    return {
        "configurations": len(records),
        "samples": sum(r.samples_seen for r in records),
        "wall_s": wall,
        "groups": {g.name: g for g in groups},
        "worst_regret": max(regrets, default=math.inf),
        "verdicts": {t.group: t.verdict for t in transfers},
        "checks": {f"{t.group} B={c.batch_size}": round(c.regret, 4) for t in transfers for c in t.checks},
        "stop": line,
    }


def _compare(grid: dict, adaptive: dict) -> tuple[int, int, int, dict]:
    """At the swept batch sizes: where the adaptive answer lies within the grid answer's
    interval, where its lr* lies within the grid's lr* interval, of how many; the rows."""
    same, agree, total, rows = 0, 0, 0, {}
    for name, g in grid["groups"].items():
        a = adaptive["groups"].get(name)
        if a is None or a.answer is None or g.answer is None:
            continue
        theirs = {x.batch_size: x for x in a.optima}
        for o in g.optima:
            b, mine = o.batch_size, theirs.get(o.batch_size)
            answer, ref = a.answer.law.lr(b), g.answer.law.lr(b)
            lo, hi = g.answer.law.lr_interval(b) or (ref, ref)
            within = lo <= answer <= hi
            measured = mine is not None and not o.on_edge and o.lo <= mine.lr <= o.hi
            same, agree, total = same + within, agree + measured, total + 1
            rows[f"{name} B={b}"] = (
                f"answer {answer:.3g} vs the grid's {ref:.3g} [{lo:.3g}, {hi:.3g}] "
                f"({'within' if within else 'OUTSIDE'}); "
                f"lr* {mine.lr:.3g} [{mine.lo:.3g}, {mine.hi:.3g}] vs the grid's {o.lr:.3g} [{o.lo:.3g}, {o.hi:.3g}]"
                if mine
                else f"answer {answer:.3g} vs the grid's {ref:.3g}; no lr* of its own"
            )
    return same, agree, total, rows


def bench_adaptive(quick: bool, store: Path) -> list[Result]:
    from services.paths import project_dir
    from services.spec import load_spec

    rows = []
    for grid_name, adaptive_name in PAIRS:
        grid_spec = load_spec(str(project_dir() / "sweeps" / f"{grid_name}.yaml"))
        adaptive_spec = load_spec(str(project_dir() / "sweeps" / f"{adaptive_name}.yaml"))
        if quick:
            grid_spec, adaptive_spec = _tiny(grid_spec), _tiny_adaptive(adaptive_spec)
        grid = _run(grid_spec, store, f"{grid_name}.db")
        adaptive = _run(adaptive_spec, store, f"{adaptive_name}.db")
        same, agree, total, per_batch = _compare(grid, adaptive)
        share = adaptive["samples"] / (grid["samples"] or 1)
        fmt = lambda r: f"{r:.1%}" if math.isfinite(r) else "an answer diverged"  # noqa: E731
        figure = (
            f"{share:.1%} of the grid's samples ({adaptive['configurations']} vs {grid['configurations']} "
            f"configurations, {adaptive['wall_s']:.0f} s vs {grid['wall_s']:.0f} s); answer within the grid "
            f"answer's interval at {same} of {total} swept batch sizes (lr* within the grid's at {agree}); worst "
            f"held-out regret {fmt(adaptive['worst_regret'])} (grid {fmt(grid['worst_regret'])})"
        )
        rows.append(
            Result(
                f"{adaptive_name} vs the {grid_name} grid",
                figure,
                "answer within the grid answer's interval at every swept B, held-out regret <= 5%, "
                "<= 1/3 of the grid's samples",
                total > 0 and same == total and adaptive["worst_regret"] <= 0.05 and share <= SAMPLES_GOAL,
                {
                    "stop": adaptive["stop"],
                    "samples": {"grid": grid["samples"], "adaptive": adaptive["samples"]},
                    "verdicts": {"grid": grid["verdicts"], "adaptive": adaptive["verdicts"]},
                    "held_out_regret": {"grid": grid["checks"], "adaptive": adaptive["checks"]},
                    "answers": {
                        name: {"grid": g.answer.formula if g.answer else None}
                        | {"adaptive": a.answer.formula if (a := adaptive["groups"].get(name)) and a.answer else None}
                        for name, g in grid["groups"].items()
                    },
                    **per_batch,
                },
            )
        )
    return rows
