"""A pack's side of per-member ASHA: asks the sweep's rungs whether a member stops
(:mod:`services.orchestration.rungs` holds them, in a Ray actor).

A member asks only when its result can change ASHA's answer: when it ends, or once it has
seen as many samples as the lowest rung still open to it (the actor says which after each
ask). Between rungs a pack goes on without a round trip.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

from services import metrics as m

AskMany = Callable[[list[tuple[str, Mapping[str, Any], Mapping[str, Any], bool, bool]]], list[tuple[bool, float]]]
"""``Rungs.ask_many``: (member id, configuration, result, last, replayed) each -> (stop, next rung)."""


class MemberRungs:
    """ASHA's answers for one pack's members ``ids`` (their tracked ids) and ``configs``."""

    def __init__(self, ask_many: AskMany, ids: Sequence[str], configs: Sequence[Mapping[str, Any]], budget: int):
        self._ask_many = ask_many
        self._ids = list(ids)
        self._configs = [dict(c) for c in configs]
        self._budget = budget
        self._next = [0.0] * len(self._ids)
        self.asked = 0
        """Results sent to the rungs (for tests and benchmarks: most results are not)."""

    @classmethod
    def connect(cls, name: str, ids: Sequence[str], configs: Sequence[Mapping[str, Any]], budget: int) -> "MemberRungs":
        """The pack's view of the rungs actor ``name`` that the sweep's driver started."""
        import ray

        actor = ray.get_actor(name)
        return cls(lambda asks: ray.get(actor.ask_many.remote(asks)), ids, configs, budget)

    def stops(self, member: int, result: Mapping[str, Any]) -> bool:
        """Whether ASHA stops member ``member`` (its index in the pack) at ``result``."""
        last = m.ended(result, self._budget)
        if not last and result[m.SAMPLES_SEEN] < self._next[member]:
            return False
        [(stop, nxt)] = self._ask([(member, result, last)], replayed=False)
        self._next[member] = nxt
        return stop

    def replay(self, results: Sequence[Mapping[str, Any]], finished: bool = False) -> None:
        """Hand the rungs what this pack reported before (a pack continued from a checkpoint, or
        a ``finished`` pack replayed on resume from MLflow): a new driver's rungs start empty.
        In a finished pack, a member whose last result is not an end was stopped by ASHA (MLflow
        keeps no such flag)."""
        asks = [
            (int(j), dict(r), m.ended(r, self._budget))
            for result in results
            for j, r in result.get(m.MEMBERS, {}).items()
        ]
        if finished:
            last = {j: i for i, (j, _, _) in enumerate(asks)}
            for i in last.values():
                j, r, ended = asks[i]
                if not ended:
                    asks[i] = (j, {**r, m.STOPPED: 1.0}, True)
        for (j, _, _), (_, nxt) in zip(asks, self._ask(asks, replayed=True)):
            self._next[j] = nxt

    def _ask(self, asks: Sequence[tuple[int, Mapping[str, Any], bool]], replayed: bool) -> list[tuple[bool, float]]:
        if not asks:
            return []
        self.asked += len(asks)
        answers = self._ask_many([(self._ids[j], self._configs[j], dict(r), last, replayed) for j, r, last in asks])
        return [(bool(stop), float(nxt) if nxt is not None else math.inf) for stop, nxt in answers]
