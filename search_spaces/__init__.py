"""Search spaces that tie the learning rate to the batch size.

Public surface: the scaling rules and the hyperparameter schema (:mod:`search_spaces.scaling`),
the space's schema (:mod:`search_spaces.space`), the batch-size / LR schedules
(:mod:`search_spaces.schedules`) and the define-by-run spaces for Optuna (:mod:`search_spaces.tied`).
"""

from search_spaces import adam
from search_spaces.scaling import (
    DEFAULT_RULE,
    OPTIMIZERS,
    REDUCTIONS,
    RULE_EXPONENT,
    TrialHParams,
    derive,
    lr_exponent,
    lr_for,
)
from search_spaces.space import SpaceSpec
from search_spaces.tied import grid_points, suggest, tied_space

__all__ = [
    "adam",
    "DEFAULT_RULE",
    "OPTIMIZERS",
    "REDUCTIONS",
    "RULE_EXPONENT",
    "TrialHParams",
    "derive",
    "grid_points",
    "SpaceSpec",
    "lr_exponent",
    "lr_for",
    "suggest",
    "tied_space",
]
