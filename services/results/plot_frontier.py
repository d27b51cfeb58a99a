"""``<sweep>-frontier.png``: steps against samples to each target loss, one panel per group.

Each point is a batch size's fewest steps (over its LRs) to the target, and the samples they
took; the line is the fitted trade-off (S / S_min - 1)(E / E_min - 1) = 1, drawn where it
measured B_crit (a bound has no curve). The target the answer quotes is drawn boldest, with
B_crit (2 S_min steps, 2 E_min samples) marked; the title says what the panel concludes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from services.results.critical import CriticalBatch  # noqa: E402


def write_frontier(sweep: str, criticals: Sequence[CriticalBatch], out_dir: Path) -> Path | None:
    """Write the frontier figure; None when no group has a frontier to draw."""
    shown = [c for c in criticals if c.frontiers]
    if not shown:
        return None
    cols = min(len(shown), 2)
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.6 * rows), squeeze=False)
    for ax in axes.flat[len(shown) :]:
        ax.set_visible(False)
    cmap = plt.get_cmap("plasma")
    for ax, c in zip(axes.flat, shown):
        head = c.headline
        for i, f in enumerate(c.frontiers):
            color = cmap(0.85 * i / max(1, len(c.frontiers) - 1))
            bold = f is head
            e = np.array([p.samples for p in f.points])
            s = np.array([p.steps for p in f.points])
            label = f"loss {f.target:.3g}" + (f": B_crit {f.b_crit:.3g}" if bold else "")
            ax.plot(e, s, "o", color=color, ms=7 if bold else 4, alpha=1 if bold else 0.6, label=label)
            if bold:
                for p in f.points:
                    ax.annotate(
                        f"B={p.batch_size}", (p.samples, p.steps), textcoords="offset points", xytext=(5, 4), fontsize=8
                    )
            if f.s_min and f.e_min and f.verdict.startswith("B_crit ="):  # a bound has no curve to draw
                grid = np.geomspace(f.e_min * 1.02, max(e.max(), 2 * f.e_min) * 1.5, 200)
                ax.plot(
                    grid,
                    f.s_min * grid / (grid - f.e_min),
                    "-",
                    color=color,
                    lw=2.6 if bold else 0.9,
                    alpha=1 if bold else 0.6,
                )
                if bold:
                    ax.plot([2 * f.e_min], [2 * f.s_min], "*", color="black", ms=14, zorder=5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("samples to reach the target (E)")
        ax.set_ylabel("optimizer steps to reach it (S)")
        simple = f", B_simple {c.b_simple_at_target:.3g}" if c.b_simple_at_target else ""
        if head is not None:
            lo, hi = head.interval
            said = f"B_crit {head.b_crit:.3g} [{lo:.3g}, {hi:.3g}]"
        else:
            said = c.advice.split(";")[0].split(" (to reach")[0]
        title = f"{c.group}: {said}{simple}"
        ax.set_title(title if len(title) <= 70 else title[:69] + "…", fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(True, which="both", alpha=0.2)
    fig.suptitle(f"{sweep}: steps vs samples per batch size (star: B_crit)", fontsize=12)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{sweep}-frontier.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
