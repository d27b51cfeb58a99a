"""ASHA that compares a trial only with trials of its own cell: optimizer x reduction x
schedule x batch size.

Plain ASHA ranks every trial against every other at each rung. In a sweep over
optimizers, Adam's faster early progress would stop every SGD trial, and the sweep could
not export an SGD constant; across batch sizes, small batches take more updates per sample
and lead early, so large batch sizes would be stopped before their U-curves exist.
:class:`GroupedASHA` keeps Ray's ASHA logic whole and gives each cell its own set of
brackets, so within a cell the LRs compete at equal samples seen.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Mapping

from ray.tune.schedulers import ASHAScheduler

from search_spaces.scaling import cell_key


class GroupedASHA(ASHAScheduler):
    def __init__(self, group_key: Callable[[Mapping[str, Any]], Any] = cell_key, **asha_kwargs):
        super().__init__(**asha_kwargs)
        self._group_key = group_key
        self._empty_brackets = copy.deepcopy(self._brackets)
        self._group_brackets: dict[Any, list] = {}

    def on_trial_add(self, tune_controller, trial):
        key = self._group_key(trial.config)
        if key not in self._group_brackets:
            self._group_brackets[key] = copy.deepcopy(self._empty_brackets)
        # ASHA assigns the new trial to one of self._brackets: make those the group's own.
        self._brackets = self._group_brackets[key]
        super().on_trial_add(tune_controller, trial)

    def debug_string(self) -> str:
        lines = [f"GroupedASHA: num_stopped={self._num_stopped}"]
        for key, brackets in self._group_brackets.items():
            lines += [f"{key}: " + b.debug_str() for b in brackets]
        return "\n".join(lines)
