"""The four plots people look at, as PNGs (matplotlib, no display needed).

1. ``u_curves``: val loss per sample vs LR, one curve per batch size.
2. ``collapse``: the same against LR per sample (lr / B**k): the curves collapse when the rule holds.
3. ``lr_star``: lr*(B) on log-log with intervals, every fitted law (the chosen one solid), the
   rule's line, B_noise and B_simple marked.
4. ``learning_curves``: val loss vs samples seen for the best trial at each batch size.
Each figure has one panel per optimizer x reduction.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from services.results.analysis import GroupSummary, TrialRecord, candidates  # noqa: E402


def loss_label(loss_unit: str = "sample") -> str:
    """The loss axis: per sample, or per item for a per-item loss (e.g. tokens)."""
    return f"validation loss per {loss_unit} (nats)"


PLOTS = ("u_curves", "collapse", "lr_star", "learning_curves")


def _panels(n: int, title: str):
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=13)
    return fig, list(axes.flat[:n])


def _log_y(ax) -> None:
    """Log y; label the 2..9 ticks too when the data span less than a decade and a half."""
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    if hi / lo < 30:

        def label(value, _pos):  # 1, 2, 3 and 5 times a power of ten: enough, never crowded
            lead = round(value / 10 ** math.floor(math.log10(value)), 6) if value > 0 else 0
            return f"{value:.2g}" if lead in (1, 2, 3, 5) else ""

        ax.yaxis.set_minor_formatter(FuncFormatter(label))
        ax.yaxis.set_major_formatter(FuncFormatter(label))
        ax.tick_params(axis="y", which="minor", labelsize=8)
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())


def _log_axes(ax, xbase: int = 10) -> None:
    ax.set_xscale("log", base=xbase)
    ax.xaxis.set_minor_formatter(NullFormatter())
    _log_y(ax)


def _colors(batch_sizes: Sequence[int]) -> dict[int, tuple]:
    cmap = plt.get_cmap("viridis")
    sizes = sorted(batch_sizes)
    return {b: cmap(i / max(1, len(sizes) - 1) * 0.9) for i, b in enumerate(sizes)}


def _group_title(g: GroupSummary) -> str:
    sched = f", {g.schedule} schedule" if g.schedule != "constant" else ""
    return f"{g.optimizer}, {g.reduction} reduction{sched} ({g.rule} rule, k={g.k:g})"


def _u_curves(groups, by_group, x_of, xlabel, title, ylabel):
    fig, axes = _panels(len(groups), title)
    for ax, g in zip(axes, groups):
        members = by_group[(g.optimizer, g.reduction, g.schedule)]
        colors = _colors({t.batch_size for t in members if t.usable})
        for bs in sorted(colors):
            # the trials the analysis compares at this batch size: full budget where any is
            trials = sorted(candidates([t for t in members if t.batch_size == bs]), key=x_of)
            xs, ys = [x_of(t) for t in trials], [t.val_loss for t in trials]
            ax.plot(xs, ys, "-", color=colors[bs], lw=1.3, label=f"B={bs}")
            full = [t for t in trials if not t.stopped_early]
            short = [t for t in trials if t.stopped_early]
            ax.plot([x_of(t) for t in full], [t.val_loss for t in full], "o", color=colors[bs], ms=4)
            ax.plot([x_of(t) for t in short], [t.val_loss for t in short], "o", mfc="white", color=colors[bs], ms=4)
        _log_axes(ax)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(
            _group_title(g)
            + ("\nhollow: stopped early by ASHA" if any(t.stopped_early for t in members if t.usable) else ""),
            fontsize=10,
        )
        ax.grid(True, which="both", alpha=0.25)
        if colors:
            ax.legend(fontsize=8, title="batch size", title_fontsize=8)
    fig.tight_layout()
    return fig


def _lr_star(groups, title):
    fig, axes = _panels(len(groups), title)
    for ax, g in zip(axes, groups):
        if not g.optima:
            ax.text(0.5, 0.5, "no batch size with two or more LRs", ha="center", transform=ax.transAxes)
            ax.set_title(_group_title(g), fontsize=10)
            continue
        above = set(g.above_range)
        bs = np.array([o.batch_size for o in g.optima], dtype=float)
        lr = np.array([o.lr for o in g.optima])
        err = np.array([[o.lr - o.lo for o in g.optima], [o.hi - o.lr for o in g.optima]])
        inside = np.array([o.batch_size not in above for o in g.optima])
        ax.errorbar(
            bs[inside], lr[inside], yerr=err[:, inside], fmt="o", color="C0", capsize=3, label="lr*(B), 90% interval"
        )
        if (~inside).any():
            ax.errorbar(
                bs[~inside],
                lr[~inside],
                yerr=err[:, ~inside],
                fmt="o",
                mfc="white",
                color="C0",
                capsize=3,
                label="above the checked range",
            )
        grid = np.geomspace(bs.min() / 1.3, bs.max() * 1.3, 80)
        styles = {"power": "C1", "saturating": "C4", "surge": "C5"}
        for law in g.laws:
            chosen = g.chosen is not None and law.name == g.chosen.name
            if law.name == "power":
                text = f"power: k = {law.params['k']:.2f} [{law.intervals['k'][0]:.2f}, {law.intervals['k'][1]:.2f}]"
            else:
                lo, hi = law.intervals["b_noise"]
                text = (
                    f"{law.name}: B_noise = {law.params['b_noise']:.3g} "
                    f"[{'-' if lo is None else f'{lo:.3g}'}, {'-' if hi is None else f'{hi:.3g}'}]"
                )
            aicc = f", AICc {law.aicc:.1f}" if np.isfinite(law.aicc) else ""
            ax.plot(
                grid,
                [law.lr(b) for b in grid],
                "-" if chosen else "--",
                color=styles[law.name],
                lw=2.2 if chosen else 1.2,
                label=text + aicc + (" (chosen)" if chosen else ""),
            )
        if g.rule_c is not None:
            ax.plot(grid, g.rule_c[0] * grid**g.k, ":", color="C2", lw=1.6, label=f"rule: k = {g.k:g}, c fitted")
        else:
            anchor_b, anchor_lr = (g.best.batch_size, g.best.lr) if g.best else (bs[0], lr[0])
            ax.plot(grid, anchor_lr * (grid / anchor_b) ** g.k, ":", color="C2", label=f"rule: k = {g.k:g}")
        noise_law = g.b_noise_law
        if noise_law is not None and noise_law is g.chosen:
            ax.axvline(noise_law.params["b_noise"], color="C4", ls="-.", lw=1, label="B_noise (LR fit)")
        if g.b_simple_range:
            lo_s, hi_s = g.b_simple_range
            ax.axvspan(lo_s, hi_s, color="C3", alpha=0.12, label=f"B_simple measured {lo_s:.0f}..{hi_s:.0f}")
        _log_axes(ax, xbase=2)
        ax.set_xlabel("batch size B (samples)")
        ax.set_ylabel("optimal learning rate lr*(B)")
        ax.set_title(_group_title(g) + f"\n{g.verdict}", fontsize=9)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _learning_curves(groups, histories, title, ylabel):
    fig, axes = _panels(len(groups), title)
    for ax, g in zip(axes, groups):
        colors = _colors([b.batch_size for b in g.per_batch])
        for b in g.per_batch:
            curve = histories.get((g.optimizer, g.reduction, g.schedule, b.batch_size))
            if curve:
                steps, values = zip(*curve)
                ax.plot(
                    steps, values, "-", color=colors[b.batch_size], lw=1.4, label=f"B={b.batch_size}, lr={b.lr:.2g}"
                )
        _log_y(ax)
        ax.set_xlabel("training samples seen")
        ax.set_ylabel(ylabel)
        ax.set_title(_group_title(g) + ": best trial per batch size", fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        if g.per_batch:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_plots(
    sweep: str,
    records: Sequence[TrialRecord],
    groups: Sequence[GroupSummary],
    histories: Mapping[tuple, Sequence[tuple[float, float]]],
    out_dir: Path,
    loss_unit: str = "sample",
) -> list[Path]:
    """Write the four PNGs as ``<out_dir>/<sweep>-<plot>.png``; returns their paths."""
    ylabel = loss_label(loss_unit)
    by_group: dict[tuple, list[TrialRecord]] = {}
    for r in records:
        by_group.setdefault((r.optimizer, r.reduction, r.schedule), []).append(r)
    groups = [g for g in groups if by_group.get((g.optimizer, g.reduction, g.schedule))]
    figures = {
        "u_curves": _u_curves(
            groups,
            by_group,
            lambda t: t.lr,
            "learning rate (optimizer lr)",
            f"{sweep}: validation loss vs learning rate",
            ylabel,
        ),
        "collapse": _u_curves(
            groups,
            by_group,
            lambda t: t.lr_per_sample,
            "LR per sample c = lr / B**k",
            f"{sweep}: validation loss vs LR per sample (curves collapse when the rule holds)",
            ylabel,
        ),
        "lr_star": _lr_star(groups, f"{sweep}: optimal learning rate vs batch size"),
        "learning_curves": _learning_curves(groups, histories, f"{sweep}: learning curves", ylabel),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PLOTS:
        path = out_dir / f"{sweep}-{name}.png"
        figures[name].savefig(path, dpi=110)
        plt.close(figures[name])
        paths.append(path)
    return paths
