"""The four plots people look at, as PNGs (matplotlib, no display needed).

1. ``u_curves``: val loss per sample vs LR (a sum-reduced SGD trial's times B), one curve per batch size.
2. ``collapse``: the same against LR per sample (lr / B**k): the curves collapse when the rule holds.
3. ``lr_star``: lr*(B) on log-log with intervals, the chosen law drawn boldest, the other
   laws thin, the rule's line, B_noise and B_simple marked, and the transfer check's held-out
   batch sizes (the best LR of each bracket, and its regret).
4. ``learning_curves``: val loss vs samples seen for the best trial at each batch size.
Each figure has one panel per group (optimizer x schedule, and reduction unless pooled).
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

from services.results.analysis import GroupSummary, TrialRecord, analysis_key, candidates  # noqa: E402


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
    """'sgd, mean+sum (linear rule)': short enough for a 6-inch panel at size 10."""
    sched = f", {g.schedule}" if g.schedule != "constant" else ""
    return f"{g.optimizer}, {g.reduction}{sched} ({g.rule} rule)"


def _u_curves(groups, by_group, x_of, xlabel, title, ylabel):
    fig, axes = _panels(len(groups), title)
    for ax, g in zip(axes, groups):
        members = by_group[g.key]
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


def _law_label(law) -> str:
    if law.name in ("power", "rule"):
        lo, hi = law.intervals.get("k", (law.params["k"], law.params["k"]))
        return f"{law.name}: k = {law.params['k']:.2f} [{lo:.2f}, {hi:.2f}]"
    lo, hi = law.intervals.get("b_noise", (None, None))
    return (
        f"{law.name}: B_noise {law.params['b_noise']:.3g} "
        f"[{'-' if lo is None else f'{lo:.3g}'}, {'-' if hi is None else f'{hi:.3g}'}]"
    )


LAW_COLORS = {"rule": "C2", "power": "C1", "saturating": "C4", "surge": "C5"}


def _lr_star(groups, title, transfers):
    fig, axes = _panels(len(groups), title)
    for ax, g in zip(axes, groups):
        if not g.optima:
            ax.text(0.5, 0.5, "no batch size with two or more LRs", ha="center", transform=ax.transAxes)
            ax.set_title(_group_title(g), fontsize=10)
            continue
        bs = np.array([o.batch_size for o in g.optima], dtype=float)
        lr = np.array([o.lr for o in g.optima])
        err = np.array([[o.lr - o.lo for o in g.optima], [o.hi - o.lr for o in g.optima]])
        edge = np.array([o.on_edge for o in g.optima])
        ax.errorbar(bs[~edge], lr[~edge], yerr=err[:, ~edge], fmt="o", color="0.25", capsize=3, label="lr*(B), 90%")
        if edge.any():
            ax.plot(bs[edge], lr[edge], "o", mfc="white", color="0.25", label="best LR at the grid's edge")
        checks = transfers.get(g.name) or []
        lo_b = min([bs.min()] + [c["batch_size"] for c in checks])
        hi_b = max([bs.max()] + [c["batch_size"] for c in checks])
        grid = np.geomspace(lo_b / 1.3, hi_b * 1.3, 80)
        others = [law for law in g.laws if law is not g.chosen]
        for law in others + ([g.chosen] if g.chosen is not None else []):  # the answer drawn last, on top
            mine = law is g.chosen
            regret, error = g.loo_regret(law.key), g.loo_score(law.key)
            loo = (
                f", LOBO regret {regret:.1%}"
                if regret is not None
                else f", LOBO error {math.expm1(error):.0%}"
                if error is not None
                else ""
            )
            ax.plot(
                grid,
                [law.lr(b) for b in grid],
                "-" if mine else "--",
                color=LAW_COLORS[law.name],
                lw=3.0 if mine else 1.0,
                alpha=1.0 if mine else 0.7,
                label=("answer: " if mine else "") + _law_label(law) + (" x optima" if law.residuals else "") + loo,
            )
        if checks:
            ax.plot(
                [c["batch_size"] for c in checks],
                [c["best_lr"] for c in checks],
                "*",
                ms=13,
                color="C3",
                mec="k",
                label="transfer check: best of bracket",
            )
            for c in checks:
                regret = c.get("regret")
                text = "-" if regret is None else f"{regret:.0%}"
                ax.annotate(
                    text, (c["batch_size"], c["best_lr"]), textcoords="offset points", xytext=(6, -12), fontsize=8
                )
        noise_law = g.b_noise_law
        if noise_law is not None and noise_law is g.chosen:
            ax.axvline(noise_law.params["b_noise"], color="C4", ls="-.", lw=1, label="B_noise (LR fit)")
        if g.b_simple_range:
            lo_s, hi_s = g.b_simple_range
            ax.axvspan(lo_s, hi_s, color="C3", alpha=0.10, label=f"B_simple measured {lo_s:.0f}..{hi_s:.0f}")
        _log_axes(ax, xbase=2)
        ax.set_xlabel("batch size B (samples)")
        pooled_sgd = len(g.reductions) > 1 and g.optimizer in ("sgd", "momentum")
        ax.set_ylabel("optimal lr*(B)" + (" (mean-equivalent)" if pooled_sgd else ""))
        head = g.verdict.split(":")[0].split(";")[0]
        ax.set_title(f"{_group_title(g)}\nrule k = {g.k_meq:g}: {head}", fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _learning_curves(groups, histories, title, ylabel):
    fig, axes = _panels(len(groups), title)
    for ax, g in zip(axes, groups):
        colors = _colors([b.batch_size for b in g.per_batch])
        for b in g.per_batch:
            curve = histories.get((g.name, b.batch_size))
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
    transfers: Mapping[str, Sequence[dict]] | None = None,
) -> list[Path]:
    """Write the four PNGs as ``<out_dir>/<sweep>-<plot>.png``; returns their paths.
    ``transfers``: per group name, the transfer check's rows (``batch_size``, ``best_lr``,
    ``regret``), drawn on the lr*(B) plot."""
    ylabel = loss_label(loss_unit)
    by_group: dict[tuple, list[TrialRecord]] = {}
    for r in records:
        by_group.setdefault(analysis_key(r), []).append(r)
    groups = [g for g in groups if by_group.get(g.key)]
    figures = {
        "u_curves": _u_curves(
            groups,
            by_group,
            lambda t: t.hp.mean_lr,
            "learning rate (as under mean reduction)",
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
        "lr_star": _lr_star(groups, f"{sweep}: optimal learning rate vs batch size", transfers or {}),
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
