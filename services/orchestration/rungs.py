"""ASHA per pack member, for sweeps whose trials are packs.

Tune asks its scheduler about Tune trials, and a pack (one Tune trial, K configurations) has
no way to hear "stop member 3". So in a packed sweep Tune's own scheduler is FIFO, and the
sweep's :class:`~services.orchestration.schedulers.GroupedASHA` (Ray's ASHA brackets, one set
per cell) lives in :class:`Rungs`, a Ray actor the packs ask. It is fed each member as if the
member were a Tune trial, in the order Tune feeds a trial: every result to
``on_trial_result``, and a member's last one (ASHA stopped it, it diverged or it spent its
budget) to ``on_trial_complete`` as well. So a member is stopped where the same configuration
would be stopped as a trial of its own that reached the rung at the same moment. A member ASHA
stops leaves its pack and costs nothing more; its run says "stopped early" as a trial's does.

A pack asks through :class:`services.training.rungs.MemberRungs`, only at the results that can
change ASHA's answer (``tests/test_rungs.py`` checks that this gives ASHA's decisions exactly).
"""

from __future__ import annotations

import math
import uuid
from typing import Any, Mapping

import ray
from ray.tune.schedulers import TrialScheduler

from services import metrics as m
from services.orchestration.schedulers import GroupedASHA

Ask = tuple[str, Mapping[str, Any], Mapping[str, Any], bool, bool]
"""(member id, member configuration, result, whether the result is the member's last, whether
it is replayed) for :meth:`Rungs.ask`."""


_CONTROLLER: Any = None
"""Tune's controller, which Ray's ASHA is handed and never reads."""


class _Member:
    """What Ray's ASHA reads of a trial: its id, and its config (for the cell)."""

    def __init__(self, trial_id: str, config: Mapping[str, Any]):
        self.trial_id = trial_id
        self.config = dict(config)


class Rungs:
    """The sweep's ASHA, deciding per pack member (see the module docstring)."""

    def __init__(self, **asha: Any):
        self._asha = GroupedASHA(metric=m.OBJECTIVE, mode=m.MODE, **asha)
        self._members: dict[str, _Member] = {}
        self._stopped: set[str] = set()
        self._left: set[str] = set()

    def ask(
        self, member: str, config: Mapping[str, Any], result: Mapping[str, Any], last: bool, replayed: bool = False
    ) -> tuple[bool, float]:
        """Whether ASHA stops ``member`` at ``result``, and from how many samples seen on its
        next result can change that (inf: never). ``last``: the member ends here anyway.
        ``replayed``: a result the member reported before (to rungs a dead driver held); it
        is recorded, and ASHA's answer then is the one it carries (``metrics.STOPPED``)."""
        if member in self._left:  # asked again: a pack that started over, or a replay
            return member in self._stopped, math.inf
        trial: Any = self._members.get(member)  # a Trial to Ray's ASHA
        if trial is None:
            trial = self._members[member] = _Member(member, config)
            self._asha.on_trial_add(_CONTROLLER, trial)
        stop = self._asha.on_trial_result(_CONTROLLER, trial, dict(result)) == TrialScheduler.STOP and not last
        if replayed:
            stop = bool(result.get(m.STOPPED))
        if stop or last:
            self._asha.on_trial_complete(_CONTROLLER, trial, dict(result))
            self._left.add(member)
            if stop:
                self._stopped.add(member)
            return stop, math.inf
        return False, self._next_rung(member)

    def ask_many(self, asks: list[Ask]) -> list[tuple[bool, float]]:
        """:meth:`ask` for each of ``asks``, in order: one round trip for a pack's members."""
        return [self.ask(*a) for a in asks]

    def _next_rung(self, member: str) -> float:
        # Ray's ASHA records a trial at the highest rung its result reached and, at its later
        # results, at each lower rung it skipped; a result below every rung still open to it
        # changes nothing. (_Bracket._rungs: (milestone, {trial id: reward}), Ray 2.60.)
        bracket = self._asha._trial_info[member]
        return min((float(t) for t, recorded in bracket._rungs if member not in recorded), default=math.inf)


def start(asha: Mapping[str, Any]) -> tuple[str, Any]:
    """Start the sweep's :class:`Rungs` actor on the Ray this driver is connected to; returns
    its name (what the trainable looks it up by) and its handle, which the driver must hold:
    the actor ends with the driver, or when the handle is dropped."""
    name = f"samplewise-rungs-{uuid.uuid4().hex[:12]}"
    actor = ray.remote(num_cpus=0)(Rungs).options(name=name).remote(**asha)
    return name, actor
