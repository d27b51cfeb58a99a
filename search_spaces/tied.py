"""Define-by-run search spaces for ``OptunaSearch`` that tie the LR to the batch size.

The sampler sees only what is suggested: ``batch_size``, ``reduction``, ``optimizer``,
``lr_per_sample`` (the rule constant c), and ``schedule`` and ``seed`` when the space
lists more than one schedule / any seeds. The optimizer ``lr``, the rescaled ``eps`` and
weight decay are derived by :func:`search_spaces.scaling.derive` and returned, so Tune
merges them into the trial config. The functions are pure: no I/O, no state.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from search_spaces.scaling import derive

if TYPE_CHECKING:  # the spec imports nothing from here at run time
    import optuna

    from services.spec import SpaceSpec


def suggest(trial: "optuna.Trial", space: "SpaceSpec", seed: int) -> dict[str, Any]:
    """Suggest one trial's values from ``space`` and return its full derived config."""
    batch_size = trial.suggest_categorical("batch_size", list(space.batch_sizes))
    reduction = trial.suggest_categorical("reduction", list(space.reductions))
    optimizer = trial.suggest_categorical("optimizer", list(space.optimizers))
    lr_per_sample = trial.suggest_float(
        "lr_per_sample", space.lr_per_sample.low, space.lr_per_sample.high, log=True
    )
    # a single schedule is a constant, not a dimension the sampler models
    schedules = list(space.schedules)
    schedule = trial.suggest_categorical("schedule", schedules) if len(schedules) > 1 else schedules[0]
    if space.seeds:
        seed = trial.suggest_categorical("seed", list(space.seeds))
    hp = derive(
        batch_size=batch_size,
        reduction=reduction,
        optimizer=optimizer,
        lr_per_sample=lr_per_sample,
        rule=space.rule_for(optimizer),
        weight_decay=space.weight_decay.value,
        decoupled_decay=space.weight_decay.mode == "decoupled",
        momentum=space.momentum,
        eps=space.eps,
        seed=seed,
        schedule=schedule,
    )
    return hp.as_config()


def tied_space(space: "SpaceSpec", seed: int) -> Callable[["optuna.Trial"], dict[str, Any]]:
    """The define-by-run function ``OptunaSearch(space=...)`` takes.

    A ``functools.partial`` of a module-level function, so Tune can pickle the searcher
    into its experiment checkpoint.
    """
    return functools.partial(suggest, space=space, seed=seed)


def grid_points(space: "SpaceSpec") -> dict[str, list[Any]]:
    """The grid for ``optuna.samplers.GridSampler``: every suggested name with its values.

    ``lr_per_sample`` takes ``space.lr_per_sample.grid_points`` log-spaced values,
    both ends included.
    """
    rng = space.lr_per_sample
    if rng.grid_points == 1 or rng.low == rng.high:
        lrs = [float(np.sqrt(rng.low * rng.high))]
    else:
        lrs = [float(v) for v in np.geomspace(rng.low, rng.high, rng.grid_points)]
    grid = {
        "batch_size": list(space.batch_sizes),
        "reduction": list(space.reductions),
        "optimizer": list(space.optimizers),
        "lr_per_sample": lrs,
    }
    if len(space.schedules) > 1:
        grid["schedule"] = list(space.schedules)
    if space.seeds:
        grid["seed"] = list(space.seeds)
    return grid


def grid_size(space: "SpaceSpec") -> int:
    return int(np.prod([len(v) for v in grid_points(space).values()]))
