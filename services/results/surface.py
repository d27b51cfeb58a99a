"""lr*(B) at every batch size from one fit of the loss surface over (log lr, B).

Each batch size's U-curve near its best LR is a parabola in log lr, fitted to log val loss:

    log loss = a_B + b_B * x + h * x**2,    x = log lr - (the best tried log lr at B)

with its own level ``a_B`` and slope ``b_B`` (so its own optimum ``x* = -b_B / 2h``) but one
curvature ``h`` shared by every batch size. The shape comes from every trial of the group, so
a batch size whose points lie mostly on one side of its optimum still gets a vertex, and one
noisy cell cannot bend its own parabola into a false optimum. (Per batch size with a free
curvature, 8 LRs and one seed gave lr*(B) intervals up to 15x wide on the quickstart.)

The interval is a joint bootstrap: every replicate resamples the LRs of every batch size
(each LR with all its seeds' points) and refits the whole surface, so the replicates of
different batch sizes move together through the shared curvature, as the laws fitted over
them (:mod:`services.results.laws`) need.

Trials that diverged or did not learn close the U-curve (they bound the optimum) but are no
points of the parabola. Points are sorted first and the generator is seeded: the same trials
in any order give the same figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from services.results.fit import CI, N_BOOT, Optimum

N_FIT = 5
"""Distinct LRs nearest the best at each batch size that its parabola is fitted to: about a
factor 4-5 of LR on the grids samplewise ships, where a U-curve is still a parabola."""


BOWL = 2.0
"""LRs whose val loss is within this factor of the best at their batch size are the U-curve's
bowl, where a parabola in log loss fits. An LR beyond it closes the U-curve but is no point of
its parabola: SGD's loss often falls until a stability cliff, and one point past the cliff
(loss x10) would drag the vertex a factor 2 below the best LR tried (the quickstart's SGD)."""


@dataclass(frozen=True)
class Cell:
    """One batch size's points: log mean-equivalent LR, log val loss, and every LR tried."""

    batch_size: int
    x: np.ndarray
    y: np.ndarray
    tried: np.ndarray
    """log LR of every trial tried here, diverged and not learned included (sorted, unique)."""
    seeds: int = 1
    """Training seeds among the points."""


def make_cell(
    batch_size: int, lrs: Sequence[float], losses: Sequence[float], tried: Sequence[float] = (), seeds: int = 1
) -> Cell:
    x = np.log(np.asarray(lrs, dtype=float))
    y = np.log(np.asarray(losses, dtype=float))
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    order = np.lexsort((y, x))
    all_tried = np.concatenate([x, np.log(np.asarray(tried, dtype=float))])
    return Cell(int(batch_size), x[order], y[order], np.unique(all_tried[np.isfinite(all_tried)]), seeds)


def _means(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ux, inv = np.unique(x, return_inverse=True)
    return ux, np.bincount(inv, weights=y) / np.bincount(inv)


@dataclass(frozen=True)
class _Window:
    cell: Cell
    center: float
    """The best tried log LR (lowest mean log loss), the origin of the cell's parabola."""
    levels: np.ndarray
    """The distinct log LRs fitted (the N_FIT nearest the best)."""
    members: list
    """Per level, the indices of its points in ``cell.x``."""


def _window(cell: Cell, n_fit: int) -> _Window:
    ux, mean = _means(cell.x, cell.y)
    center = float(ux[int(np.argmin(mean))])
    # only the bowl: an LR past the stability cliff (or far down the slow side) is tried, not fitted
    bowl = ux[mean <= mean.min() + math.log(BOWL)]
    near = np.sort(bowl[np.argsort(np.abs(bowl - center), kind="stable")[: max(n_fit, 3)]])
    return _Window(cell, center, near, [np.flatnonzero(cell.x == v) for v in near])


def _fit(windows: list[_Window], picks: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Least squares of the shared-curvature surface on the levels ``picks[j]`` (indices into
    window j's levels, repeats allowed); returns each cell's vertex offset and the curvature."""
    rows, ys = [], []
    n = len(windows)
    for j, (w, pick) in enumerate(zip(windows, picks)):
        for i in pick:
            for p in w.members[i]:
                dx = w.cell.x[p] - w.center
                row = np.zeros(2 * n + 1)
                row[2 * j], row[2 * j + 1], row[-1] = 1.0, dx, dx * dx
                rows.append(row)
                ys.append(w.cell.y[p])
    a = np.asarray(rows)
    beta = np.linalg.lstsq(a, np.asarray(ys), rcond=None)[0]
    h = float(beta[-1])
    slopes = beta[1:-1:2]
    if not h > 0:
        return np.full(n, np.nan), h
    return -slopes / (2 * h), h


def _identifiable(w: _Window, pick: np.ndarray) -> bool:
    return len(np.unique(pick)) >= 2


def surface_optima(cells: Sequence[Cell], n_fit: int = N_FIT, n_boot: int = N_BOOT, seed: int = 0) -> list[Optimum]:
    """lr*(B) per batch size (cells with at least two distinct LRs), from one shared-curvature
    fit, with joint bootstrap replicates (``Optimum.boot``, replicate r of every batch size
    from the same draw)."""
    cells = sorted((c for c in cells if len(np.unique(c.x)) >= 2), key=lambda c: c.batch_size)
    if not cells:
        return []
    windows = [_window(c, n_fit) for c in cells]
    full = [np.arange(len(w.levels)) for w in windows]
    offsets, h = _fit(windows, full)
    rng = np.random.default_rng([seed, 7])
    reps = np.empty((n_boot, len(windows)))
    for r in range(n_boot):
        picks = [rng.integers(0, len(w.levels), len(w.levels)) for w in windows]
        off, _ = _fit(windows, picks)
        for j, (w, pick) in enumerate(zip(windows, picks)):
            lo_x, hi_x = w.levels[pick].min(), w.levels[pick].max()
            if not _identifiable(w, pick) or not np.isfinite(off[j]):
                reps[r, j] = _best(w, pick)
            else:
                reps[r, j] = float(np.clip(w.center + off[j], lo_x, hi_x))
    q = (1 - CI) / 2
    out = []
    for j, w in enumerate(windows):
        lo_x, hi_x = float(w.levels.min()), float(w.levels.max())
        vertex = w.center + offsets[j] if np.isfinite(offsets[j]) else None
        interior = vertex is not None and lo_x < vertex < hi_x
        center = float(vertex) if interior and vertex is not None else w.center
        lo, hi = np.quantile(reps[:, j], [q, 1 - q])
        lo, hi = min(float(lo), center), max(float(hi), center)
        tried = w.cell.tried
        if not interior:  # the optimum lies somewhere between the best's tried neighbours
            below, above = tried[tried < center], tried[tried > center]
            lo = min(lo, float(below.max())) if len(below) else lo
            hi = max(hi, float(above.min())) if len(above) else hi
        on_edge = bool(len(tried) > 1 and (w.center <= tried.min() or w.center >= tried.max()))
        ux, mean = _means(w.cell.x, w.cell.y)
        out.append(
            Optimum(
                batch_size=w.cell.batch_size,
                lr=math.exp(center),
                lo=math.exp(lo),
                hi=math.exp(hi),
                best_tried_lr=math.exp(w.center),
                best_loss=float(math.exp(mean[ux == w.center][0])),
                n_points=int(len(w.cell.x)),
                on_edge=on_edge,
                method="surface" if interior else "best tried",
                seeds=w.cell.seeds,
                boot=tuple(reps[:, j].tolist()),
            )
        )
    return out


def _best(w: _Window, pick: np.ndarray) -> float:
    levels = np.unique(pick)
    means = [float(np.mean(w.cell.y[w.members[i]])) for i in levels]
    return float(w.levels[levels[int(np.argmin(means))]])


def curvature(cells: Sequence[Cell], n_fit: int = N_FIT) -> Optional[float]:
    """The shared curvature h of log loss in log lr (None when the fit has none)."""
    cells = [c for c in cells if len(np.unique(c.x)) >= 2]
    if not cells:
        return None
    windows = [_window(c, n_fit) for c in cells]
    _, h = _fit(windows, [np.arange(len(w.levels)) for w in windows])
    return h if h > 0 else None
