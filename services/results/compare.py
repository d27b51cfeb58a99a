"""Compare batch-size / LR schedules at equal sample budgets (``samplewise compare``).

Per optimizer x reduction and schedule, the base LR per sample is the one with the lowest
mean final validation loss across seeds (the tuned c); for it the report gives final
validation accuracy mean +- sd over seeds, parameter updates, wall time, and learning curves
against samples seen and against updates.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from services import metrics as m
from services.results.analysis import TrialRecord, loss_of

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


@dataclass(frozen=True)
class ScheduleResult:
    optimizer: str
    reduction: str
    schedule: str
    lr_per_sample: float
    seeds: int
    val_accuracy_mean: float
    val_accuracy_sd: float
    val_loss_mean: float
    updates_mean: float
    wall_s_mean: float
    wall_s_sd: float
    run_ids: tuple[str, ...]


def _sd(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def compare(records: Sequence[TrialRecord]) -> list[ScheduleResult]:
    """One row per optimizer x reduction x schedule, at that schedule's tuned LR per sample."""
    cells: dict[tuple, list[TrialRecord]] = defaultdict(list)
    for r in records:
        if r.usable and not r.stopped_early:
            cells[(r.optimizer, r.reduction, r.schedule, r.lr_per_sample)].append(r)
    best: dict[tuple, tuple[float, list[TrialRecord]]] = {}
    for (opt, red, sched, _c), runs in cells.items():
        loss = statistics.fmean(loss_of(r) for r in runs)
        if (opt, red, sched) not in best or loss < best[(opt, red, sched)][0]:
            best[(opt, red, sched)] = (loss, runs)
    out = []
    for (opt, red, sched), (loss, runs) in sorted(best.items()):
        accs = [r.val_accuracy or 0.0 for r in runs]
        walls = [r.wall_s for r in runs if r.wall_s is not None]
        out.append(
            ScheduleResult(
                opt,
                red,
                sched,
                runs[0].lr_per_sample,
                len(runs),
                statistics.fmean(accs),
                _sd(accs),
                loss,
                statistics.fmean(r.updates for r in runs),
                statistics.fmean(walls) if walls else float("nan"),
                _sd(walls),
                tuple(r.run_id for r in runs),
            )
        )
    return out


def format_compare(rows: Sequence[ScheduleResult]) -> str:
    header = (
        f"{'optimizer':<9} {'reduction':<9} {'schedule':<13} {'c':>9} {'seeds':>5} {'val acc':>15} "
        f"{'val loss':>9} {'updates':>9} {'vs lr_decay':>11} {'wall s':>12}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        ref = next(
            (x for x in rows if (x.optimizer, x.reduction, x.schedule) == (r.optimizer, r.reduction, "lr_decay")), None
        )
        ratio = f"{r.updates_mean / ref.updates_mean:.2f}x" if ref else "-"
        lines.append(
            f"{r.optimizer:<9} {r.reduction:<9} {r.schedule:<13} {r.lr_per_sample:>9.2e} {r.seeds:>5} "
            f"{r.val_accuracy_mean:>8.4f}+-{r.val_accuracy_sd:<5.4f} {r.val_loss_mean:>9.4f} {r.updates_mean:>9.0f} "
            f"{ratio:>11} {r.wall_s_mean:>6.1f}+-{r.wall_s_sd:<4.1f}"
        )
    return "\n".join(lines)


def curves(client: "MlflowClient", rows: Sequence[ScheduleResult]) -> dict[str, list[dict]]:
    """Per run of each row: val loss against samples seen and against updates."""
    out: dict[str, list[dict]] = {}
    for row in rows:
        for run_id in row.run_ids:
            loss = {p.step: p.value for p in client.get_metric_history(run_id, m.VAL_LOSS)}
            updates = {p.step: p.value for p in client.get_metric_history(run_id, m.UPDATES)}
            points = sorted((s, updates.get(s), v) for s, v in loss.items())
            out.setdefault(row.schedule, []).append(
                {
                    "run_id": run_id,
                    "samples": [p[0] for p in points],
                    "updates": [p[1] for p in points],
                    "val_loss": [p[2] for p in points],
                }
            )
    return out


def plot(sweep: str, rows: Sequence[ScheduleResult], per_schedule: dict[str, list[dict]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    # identical until the first event (same seeds), so the styles differ as well as the colours
    styles = {"constant": ("C7", ":"), "lr_decay": ("C0", "--"), "batch_growth": ("C3", "-")}
    for schedule, runs in per_schedule.items():
        color, style = styles.get(schedule, ("C5", "-."))
        for i, run in enumerate(runs):
            label = schedule if i == 0 else None
            for ax, x in zip(axes, (run["samples"], run["updates"])):
                ax.plot(x, run["val_loss"], color=color, ls=style, lw=1.3, alpha=0.85, label=label)
    for ax, xlabel in zip(axes, ("training samples seen", "parameter updates")):
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss per sample (nats)")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(title="schedule (one line per seed)", fontsize=8, title_fontsize=8)
    axes[1].set_xscale("log")
    from matplotlib.ticker import NullFormatter

    axes[1].xaxis.set_minor_formatter(NullFormatter())
    fig.suptitle(f"{sweep}: schedules at equal sample budgets, tuned LR per sample each", fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(client: "MlflowClient", sweep: str, parent_run_id: str, records: Sequence[TrialRecord], out_dir: Path):
    """Table text, and the JSON and PNG written to ``out_dir`` and logged on the parent run."""
    import json

    rows = compare(records)
    per_schedule = curves(client, rows)
    json_path = out_dir / f"{sweep}-compare.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path.write_text(
        json.dumps({"sweep": sweep, "parent_run_id": parent_run_id, "rows": [asdict(r) for r in rows]}, indent=2) + "\n"
    )
    png = plot(sweep, rows, per_schedule, out_dir / f"{sweep}-compare.png")
    for path in (json_path, png):
        client.log_artifact(parent_run_id, str(path), artifact_path="compare")
    return format_compare(rows), [json_path, png]
