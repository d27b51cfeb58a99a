"""Search spaces that tie the learning rate to the batch size.

Public surface: the scaling rules (:mod:`search_spaces.scaling`) and the define-by-run
spaces for Optuna (:mod:`search_spaces.tied`).
"""

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
from search_spaces.tied import grid_points, grid_size, suggest, tied_space

__all__ = [
    "DEFAULT_RULE",
    "OPTIMIZERS",
    "REDUCTIONS",
    "RULE_EXPONENT",
    "TrialHParams",
    "derive",
    "grid_points",
    "grid_size",
    "lr_exponent",
    "lr_for",
    "suggest",
    "tied_space",
]
