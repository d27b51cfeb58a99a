"""Define-by-run search spaces for ``OptunaSearch`` that tie the LR to the batch size.

The sampler sees only what is suggested: the rule constant c (the LR per sample) under a name
per optimizer (``lr_per_sample_sgd``, ...: each optimizer's c is modelled on its own, in its
own range; per optimizer and batch size when stratified), and, unless the search is
stratified, ``batch_size``, ``reduction``, ``optimizer``, and ``schedule`` and ``seed`` when
the space lists more than one schedule / any seeds. The optimizer ``lr``, the rescaled ``eps``
and weight decay are derived by :func:`search_spaces.scaling.derive` and returned, so Tune
merges them into the trial config.

Three modes:

- ``free``: the sampler picks every value.
- ``stratified``: trial number t trains cell t mod n of the cells (batch size x optimizer x
  reduction x schedule x seed, batch size varying fastest), so every cell gets its share of
  trials; the sampler picks only c, modelled per optimizer and batch size (``lr_per_sample_
  sgd_b64``, shared by the reductions, whose c means the same step): where the rule fails,
  lr*(B) moves off the tied c, and a model pooled across batch sizes would stop bracketing it.
- ``grid``: ``lr_step`` indexes ``grid_points`` log-spaced values of each optimizer's range.

A trial pack's member (:mod:`search_spaces.packs`) carries its cell's index as the user
attribute ``CELL_ATTR``: in any mode it trains that cell.

The functions are pure: no I/O, no state.
"""

from __future__ import annotations

import functools
import itertools
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from search_spaces.packs import CELL_ATTR
from search_spaces.scaling import derive
from search_spaces.space import SpaceSpec

if TYPE_CHECKING:
    import optuna

MODES = ("free", "stratified", "grid")


def lr_param(optimizer: str, batch_size: int | None = None) -> str:
    """The name the sampler sees for the LR per sample of ``optimizer`` (at ``batch_size``)."""
    return f"lr_per_sample_{optimizer}" + (f"_b{batch_size}" if batch_size is not None else "")


def cells(space: SpaceSpec, seed: int) -> list[dict[str, Any]]:
    """Every (batch size, optimizer, reduction, schedule, seed) of the space, batch size fastest."""
    seeds = list(space.seeds) if space.seeds else [seed]
    return [
        {"seed": s, "schedule": sch, "optimizer": o, "reduction": r, "batch_size": b}
        for s, sch, o, r, b in itertools.product(
            seeds, space.schedules, space.optimizers, space.reductions, space.batch_sizes
        )
    ]


def grid_lrs(space: SpaceSpec, optimizer: str, reduction: str | None = None) -> list[float]:
    """The ``grid_points`` log-spaced LRs per sample of ``optimizer``'s range, both ends included;
    with ``space.interleave`` and a tied rule, ``reduction``'s share of the interleaved grid
    (``grid_points`` x reductions LRs over the range, every reduction-th one)."""
    rng = space.lr_range(optimizer)
    if rng.count == 1:
        return [float(np.sqrt(rng.low * rng.high))]
    parts = len(space.reductions) if interleaved(space, optimizer) and reduction is not None else 1
    part = [str(r) for r in space.reductions].index(str(reduction)) if parts > 1 else 0
    return [float(v) for v in np.geomspace(rng.low, rng.high, rng.count * parts)[part::parts]]


def interleaved(space: SpaceSpec, optimizer: str) -> bool:
    """Do ``optimizer``'s reductions take interleaved grid LRs (``space.interleave``, a tied rule)?"""
    return space.interleave and len(space.reductions) > 1 and space.rule_for(optimizer) != "none"


def _pick(trial: "optuna.Trial", space: SpaceSpec, seed: int) -> dict[str, Any]:
    cell = {
        "batch_size": trial.suggest_categorical("batch_size", list(space.batch_sizes)),
        "reduction": trial.suggest_categorical("reduction", list(space.reductions)),
        "optimizer": trial.suggest_categorical("optimizer", list(space.optimizers)),
        "seed": trial.suggest_categorical("seed", list(space.seeds)) if space.seeds else seed,
    }
    # a single schedule is a constant, not a dimension the sampler models
    schedules = list(space.schedules)
    cell["schedule"] = trial.suggest_categorical("schedule", schedules) if len(schedules) > 1 else schedules[0]
    return cell


def suggest(trial: "optuna.Trial", space: SpaceSpec, seed: int, mode: str = "free") -> dict[str, Any]:
    """Suggest one trial's values from ``space`` and return its full derived config."""
    member_of = trial.user_attrs.get(CELL_ATTR)  # a pack's member: its cell is the pack's
    if member_of is not None or mode == "stratified":
        all_cells = cells(space, seed)
        cell = all_cells[(trial.number if member_of is None else int(member_of)) % len(all_cells)]
    else:
        cell = _pick(trial, space, seed)
    optimizer = cell["optimizer"]
    if mode == "grid":
        lrs = grid_lrs(space, optimizer, cell["reduction"])
        lr_per_sample = lrs[trial.suggest_categorical("lr_step", list(range(len(lrs))))]
    else:
        rng = space.lr_range(optimizer)
        name = lr_param(optimizer, cell["batch_size"] if mode == "stratified" else None)
        lr_per_sample = trial.suggest_float(name, rng.low, rng.high, log=True)
    return cell_config(space, cell, lr_per_sample)


def cell_config(space: SpaceSpec, cell: dict[str, Any], lr_per_sample: float) -> dict[str, Any]:
    """The full derived config of one cell of ``space`` (:func:`cells`) at ``lr_per_sample``."""
    optimizer = cell["optimizer"]
    hp = derive(
        batch_size=cell["batch_size"],
        reduction=cell["reduction"],
        optimizer=optimizer,
        lr_per_sample=lr_per_sample,
        rule=space.rule_for(optimizer),
        weight_decay=space.weight_decay.value,
        decoupled_decay=space.weight_decay.mode == "decoupled",
        momentum=space.momentum,
        eps=space.eps,
        seed=cell["seed"],
        schedule=cell["schedule"],
        betas=space.betas,
        reference_batch_size=space.ref_batch_size,
        decay_tie=space.weight_decay.tie,
    )
    return hp.as_config()


def tied_space(space: SpaceSpec, seed: int, mode: str = "free") -> Callable[["optuna.Trial"], dict[str, Any]]:
    """The define-by-run function ``OptunaSearch(space=...)`` takes.

    A ``functools.partial`` of a module-level function, so Tune can pickle the searcher
    into its experiment checkpoint.
    """
    if mode not in MODES:
        raise ValueError(f"mode: unknown {mode!r}, expected one of {MODES}")
    return functools.partial(suggest, space=space, seed=seed, mode=mode)


def grid_points(space: SpaceSpec) -> dict[str, list[Any]]:
    """The grid for ``optuna.samplers.GridSampler``: every suggested name with its values.

    ``lr_step`` indexes each optimizer's ``grid_points`` log-spaced LRs per sample (the spec
    requires the same count for every optimizer of a grid search).
    """
    steps = max(len(grid_lrs(space, o)) for o in space.optimizers)
    grid: dict[str, list[Any]] = {
        "batch_size": list(space.batch_sizes),
        "reduction": list(space.reductions),
        "optimizer": list(space.optimizers),
        "lr_step": list(range(steps)),
    }
    if len(space.schedules) > 1:
        grid["schedule"] = list(space.schedules)
    if space.seeds:
        grid["seed"] = list(space.seeds)
    return grid
