"""Which configurations train together as one trial pack, as pure functions.

A pack (``services.training.pack``) trains K members that share their cell (batch size x
optimizer x reduction x schedule x seed) and differ only in the LR per sample, in one
vectorized model. The searcher therefore hands out a pack's members together: each member is
one Optuna trial of the tied space (:mod:`search_spaces.tied`), enqueued with its cell (the
``CELL_ATTR`` user attribute) and, on a grid, its LR step, so the sampler picks only what it
picks for a single trial.

- ``grid``: each cell's grid LRs, cut into ``ceil(points / K)`` packs (a pack takes every
  ``ceil(points / K)``-th LR, so each one spans the whole range); every grid point exactly once.
  A pack's members come in a seeded random order of their LRs, as a grid's trials do (Optuna's
  GridSampler shuffles its points): ASHA hears a pack's members in member order, and in LR
  order it would see each cell's curve from one end, letting nearly every member pass a rung
  (on the SGD grid with ASHA: 51 of 224 configurations stopped in LR order, 140 one per trial).
- ``stratified`` (tpe, random): a cell's trials, as many as trial ``t -> cell t mod n`` gives it
  unpacked, cut into packs taken in rounds over the cells, as the unpacked sweep takes its
  trials: every cell's first round is sampled before any cell's second, so TPE learns from
  every cell's first LRs before it proposes the next.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from search_spaces.space import SpaceSpec

CELL_ATTR = "samplewise_cell"
"""Optuna user attribute of a pack member's trial: the index of its cell in ``tied.cells``."""


@dataclass(frozen=True)
class Member:
    """One configuration of a pack: its cell and the Optuna params fixed for it."""

    cell: int
    params: dict[str, Any] = field(default_factory=dict)


def _split(count: int, size: int) -> list[int]:
    """``count`` members cut into ``ceil(count / size)`` packs of near-equal sizes, largest first."""
    packs = math.ceil(count / size)
    return [count // packs + (1 if i < count % packs else 0) for i in range(packs)]


def plan_packs(
    space: SpaceSpec, mode: str, num_trials: int, size: int, grid_steps: int = 0, seed: int = 0
) -> list[list[Member]]:
    """The packs of a sweep of ``num_trials`` configurations, at most ``size`` members each, in
    the order the searcher hands them out (see the module docstring). ``grid_steps``: the
    number of grid LRs per cell (``mode == "grid"``, every grid point a member); ``seed``: the
    order of a grid pack's members."""
    if size < 1:
        raise ValueError(f"size: a pack holds at least one member, got {size}")
    n = space.cells()
    rounds: list[list[list[Member]]] = []  # per cell, its packs in order
    for cell in range(n):
        if mode == "grid":
            windows = math.ceil(grid_steps / size)
            per_cell = []
            for w in range(windows):
                steps = list(range(w, grid_steps, windows))
                random.Random(seed * 1_000_003 + cell * 1_009 + w).shuffle(steps)
                per_cell.append([Member(cell, {"lr_step": s}) for s in steps])
        elif mode == "stratified":
            count = len(range(cell, num_trials, n))
            per_cell = [[Member(cell)] * k for k in _split(count, size)] if count else []
        else:
            raise ValueError(f"mode: packs need a grid or stratified search, got {mode!r}")
        rounds.append(per_cell)
    out: list[list[Member]] = []
    sizes = space.batch_sizes  # the cells' batch size varies fastest (``tied.cells``)
    by_cost = sorted(range(n), key=lambda cell: sizes[cell % len(sizes)])
    for r in range(max((len(p) for p in rounds), default=0)):
        # the smallest batch sizes (the most steps) first, so no long pack starts last
        out.extend(rounds[cell][r] for cell in by_cost if r < len(rounds[cell]))
    return out


def largest_pack(mode: str, searcher: str, num_trials: int, cells: int, grid_steps: int = 0) -> int:
    """The most members a pack may have without changing what the searcher learns: a grid
    cell's points; for random search a cell's trials; for TPE half of them (two rounds, so
    the second is proposed knowing the first)."""
    if mode == "grid":
        return max(1, grid_steps)
    per_cell = math.ceil(num_trials / cells)
    return max(1, per_cell if searcher == "random" else per_cell // 2)
