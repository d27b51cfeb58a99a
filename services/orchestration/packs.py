"""Trial packs in a sweep: how many members a pack holds, and the searcher that fills packs.

One Tune trial trains a pack (``config["pack"]``: its members' configurations) as one
vectorized model (:mod:`services.training.pack`). Everything else sees members: each is its
own Optuna trial (told its own objective), its own MLflow run (the tracker fans a pack's
results out, :mod:`services.tracking.callback`) and its own progress line.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search_spaces.packs import CELL_ATTR, Member, largest_pack, plan_packs
from search_spaces.tied import grid_lrs
from services import metrics as m
from services.spec import SweepSpec
from services.training import workloads
from services.training.packable import budget_refusal
from services.training.train import budget_of

log = logging.getLogger(__name__)

PACK_BYTES = 2 * 1024**3
"""Memory a pack's members may hold together (parameters, gradients, optimizer state, with
room for activations): a bound on the pack size for large models."""
BYTES_PER_PARAM = 4 * 8
"""float32 parameter, its gradient, two optimizer slots, and as much again for activations."""


def pack_size(spec: SweepSpec, n_params: Optional[int], refusal: Optional[str]) -> tuple[int, str]:
    """How many configurations each Tune trial trains, and why (one line for the sweep's
    header). ``refusal``: why the workload cannot be packed (None: it can); ``n_params``: its
    model's parameter count (None: a user's loop)."""
    asked = spec.resources.pack_size
    if asked == 1:
        return 1, "packs off (resources.pack_size: 1)"
    if spec.workload.train is not None:
        return 1, "packs off: a workload.train loop trains one configuration at a time"
    if refusal:
        return 1, f"packs off: {refusal}"
    if spec.searcher.kind == "adaptive":  # a round's LRs of one cell train together
        size = max(spec.searcher.first_round_lrs, spec.searcher.round_lrs)
        size = min(size, asked) if asked is not None else size
        if n_params:
            size = min(size, max(1, PACK_BYTES // (n_params * BYTES_PER_PARAM)))
        if size == 1:
            return 1, "packs off: a model whose pack would not fit in memory"
        return size, f"packs of up to {size} (each round's LRs of a cell together)"
    mode = _mode(spec)
    if mode == "free":
        return 1, "packs off: the sampler picks the cell (searcher.stratify: false)"
    steps = _grid_steps(spec)
    if mode == "grid" and spec.num_trials < spec.space.grid_size():
        return 1, "packs off: a partial grid (searcher.num_trials below the grid size)"
    if spec.searcher.kind == "tpe" and asked is None:
        # measured on the quickstart (seeds 0-3): TPE asked 4 LRs at once found a better best val
        # loss in 10 of 16 optimizer x reduction groups, a worse mean in 3 of the 4: not shown equal
        return 1, "packs off: TPE proposes one LR at a time (resources.pack_size asks for packs)"
    size = largest_pack(mode, spec.searcher.kind, spec.num_trials, spec.space.cells(), steps)
    if asked is not None:
        size = min(size, asked)
    if n_params:
        size = min(size, max(1, PACK_BYTES // (n_params * BYTES_PER_PARAM)))
    if size == 1:
        return 1, "packs off: one configuration per cell and round"
    packs = len(plan_packs(spec.space, mode, spec.num_trials, size, steps))
    return size, f"packs of up to {size} ({packs} Tune trials for {spec.num_trials} configurations)"


def _mode(spec: SweepSpec) -> str:
    if spec.searcher.kind == "grid":
        return "grid"
    return "stratified" if spec.searcher.stratify else "free"


def _grid_steps(spec: SweepSpec) -> int:
    return max(len(grid_lrs(spec.space, o)) for o in spec.space.optimizers)


def plan(spec: SweepSpec, size: int) -> list[list[Member]]:
    """The sweep's packs of at most ``size`` members, in the order they are handed out."""
    return plan_packs(spec.space, _mode(spec), spec.num_trials, size, _grid_steps(spec), spec.searcher.seed)


def member_results(result: dict) -> dict[int, dict]:
    """A pack's result by member, from Tune's result as callbacks get it (``result["members"]``)
    or flattened as searchers get it (``result["members/0/val/loss_per_sample"]``)."""
    if m.MEMBERS in result:
        return {int(j): dict(metrics) for j, metrics in result[m.MEMBERS].items()}
    out: dict[int, dict] = {}
    prefix = m.MEMBERS + "/"
    for key, value in result.items():
        if key.startswith(prefix):
            j, _, name = key[len(prefix) :].partition("/")
            out.setdefault(int(j), {})[name] = value
    return out


class PackSearch(OptunaSearch):
    """``OptunaSearch`` whose every suggestion is a pack: its members are Optuna trials of the
    tied space, enqueued with the pack's cell (and, on a grid, their LR step), so the sampler
    proposes each member's LR per sample as it would a single trial's (TPE, asked for K at
    once, counts the pending ones as bad results: constant liar). Each member is told its own
    last objective when the pack ends."""

    def __init__(self, *args: Any, packs: list[list[Member]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._packs = packs
        self._next = 0
        self._members: dict[str, int] = {}  # Tune trial id -> members it trains
        self._last: dict[str, dict[int, dict]] = {}  # Tune trial id -> member -> last result

    def suggest(self, trial_id: str) -> Optional[dict]:
        if trial_id not in self._members:
            if self._next >= len(self._packs):
                return Searcher.FINISHED  # type: ignore[return-value]  # Tune's end marker is a str
            pack = self._packs[self._next]
            for member in pack:
                self._study.enqueue_trial(member.params, user_attrs={CELL_ATTR: member.cell})
            self._members[trial_id] = len(pack)
            self._next += 1
        configs = [super(PackSearch, self).suggest(m.member_id(trial_id, j)) for j in range(self._members[trial_id])]
        return {m.PACK: configs}

    @property
    def _study(self) -> optuna.Study:
        assert self._ot_study is not None  # set up by OptunaSearch's constructor (metric and mode given)
        return self._ot_study

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        for j, metrics in member_results(result).items():
            self._last.setdefault(trial_id, {})[j] = metrics

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id not in self._members:
            return
        if result:
            self.on_trial_result(trial_id, result)
        last = self._last.pop(trial_id, {})
        for j in range(self._members[trial_id]):
            member = last.get(j)
            super().on_trial_complete(m.member_id(trial_id, j), member if member else None, error)


def sweep_packs(spec: SweepSpec, facts: workloads.Facts) -> tuple[Optional[list], str, int]:
    """The sweep's packs (None: one configuration per trial, or an adaptive search, which
    packs each round as it plans it), a line saying why, and the pack size."""
    budget = budget_of(spec, facts.n_train)
    refusal = facts.pack_refusal or next(
        filter(None, (budget_refusal(budget, kind) for kind in spec.space.schedules)), None
    )
    size, why = pack_size(spec, facts.n_params, refusal)
    return (plan(spec, size) if size > 1 and spec.searcher.kind != "adaptive" else None), why, size
