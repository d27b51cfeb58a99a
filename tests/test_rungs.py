"""ASHA per pack member: the rungs a pack asks give, member by member, the decisions Ray's ASHA
gives the same results as Tune trials, though a member asks only where its answer can change."""

import math
import random

import pytest
from ray.tune.schedulers import TrialScheduler

from services import metrics as m
from services.orchestration.rungs import Rungs, _Member
from services.orchestration.schedulers import GroupedASHA
from services.training.rungs import MemberRungs

BUDGET = 8400
INTERVAL = 1300
"""Reports fall between the rungs (1000, 1500, 2250, 3375, 5062, 7593) and skip some: ASHA records
a trial at a rung it skipped at a later result, which is then a decision too."""
ASHA = {"time_attr": m.SAMPLES_SEEN, "max_t": BUDGET, "grace_period": 1000, "reduction_factor": 1.5}


def member_streams(seed: int, cells: int = 3, per_cell: int = 6) -> list[tuple[str, dict, list[dict]]]:
    """(id, config, results) for members of several cells: noisy falling curves, some diverging."""
    rng = random.Random(seed)
    out = []
    for c in range(cells):
        config = {"batch_size": 2**c, "reduction": "mean", "optimizer": "sgd", "lr_per_sample": 0.1}
        for j in range(per_cell):
            level, results = rng.uniform(0.5, 2.0), []
            diverge_at = rng.choice([None, None, None, rng.randrange(1, 7)])
            for i in range(1, 8):
                samples = min(i * INTERVAL, BUDGET)
                diverged = diverge_at is not None and i >= diverge_at
                loss = 1e3 if diverged else level / i**0.3 + rng.uniform(0, 0.05)
                results.append({m.SAMPLES_SEEN: samples, m.VAL_LOSS: loss, m.DIVERGED: float(diverged)})
                if diverged:
                    break
            out.append((f"c{c}m{j}", config, results))
    return out


def interleaved(streams, seed: int):
    """Every result once, each member's in its own order, members interleaved at random."""
    rng, cursors, order = random.Random(seed), {s[0]: 0 for s in streams}, []
    live = list(streams)
    while live:
        member, config, results = rng.choice(live)
        order.append((member, config, results[cursors[member]]))
        cursors[member] += 1
        if cursors[member] == len(results):
            live.remove((member, config, results))
    return order


def as_tune_does(order) -> tuple[dict[str, tuple[bool, int]], GroupedASHA]:
    """What Ray's ASHA decides when each member is a Tune trial: every result to
    on_trial_result; the last (a stop, a divergence, the budget) to on_trial_complete too."""
    asha, trials, out = GroupedASHA(metric=m.OBJECTIVE, mode=m.MODE, **ASHA), {}, {}
    for member, config, result in order:
        if member in out:
            continue  # stopped: Tune trains it no further
        if member not in trials:
            trials[member] = _Member(member, config)
            asha.on_trial_add(None, trials[member])
        stop = asha.on_trial_result(None, trials[member], result) == TrialScheduler.STOP
        last = m.ended(result, BUDGET)
        if stop or last:
            asha.on_trial_complete(None, trials[member], result)
            out[member] = (stop and not last, result[m.SAMPLES_SEEN])
    return out, asha


def as_packs_do(order) -> tuple[dict[str, tuple[bool, int]], Rungs, int]:
    rungs, out = Rungs(**ASHA), {}
    clients = {}
    for member, config, result in order:
        if member in out:
            continue
        if member not in clients:
            clients[member] = MemberRungs(rungs.ask_many, [member], [config], BUDGET)
        if clients[member].stops(0, result) or m.ended(result, BUDGET):
            out[member] = (not m.ended(result, BUDGET), result[m.SAMPLES_SEEN])
    return out, rungs, sum(c.asked for c in clients.values())


@pytest.mark.parametrize("seed", range(4))
def test_members_are_stopped_where_ray_asha_stops_the_same_results_as_trials(seed):
    order = interleaved(member_streams(seed), seed)
    expected, asha = as_tune_does(order)
    got, rungs, asked = as_packs_do(order)
    assert got == expected
    assert rung_values(rungs._asha) == rung_values(asha)  # every rung holds the same rewards
    stopped = [s for stop, s in expected.values() if stop]
    assert len(stopped) >= 3 and all(s >= 1000 for s in stopped)  # ASHA stopped some, at rungs
    assert any(not stop and s == BUDGET for stop, s in expected.values())  # and let some finish
    assert asked < 0.7 * len(order)  # results below every open rung need no round trip


@pytest.mark.parametrize("from_mlflow", [False, True])  # a pack's own record, or a finished pack's runs
def test_a_replay_rebuilds_the_rungs_and_a_stopped_member_stays_stopped(from_mlflow):
    streams = member_streams(7, cells=1, per_cell=5)
    order = interleaved(streams, 7)
    first = Rungs(**ASHA)
    clients = {s[0]: MemberRungs(first.ask_many, [s[0]], [s[1]], BUDGET) for s in streams}
    reported: dict[str, list[dict]] = {s[0]: [] for s in streams}
    stopped = set()
    for member, _, result in order:
        if member in stopped or (reported[member] and m.ended(reported[member][-1], BUDGET)):
            continue
        stop = clients[member].stops(0, result)
        reported[member].append({**result, m.STOPPED: 1.0} if stop else result)
        stopped |= {member} if stop else set()
    assert stopped
    # a new driver's rungs hear what the packs reported, and hold what the old ones held
    again = Rungs(**ASHA)
    for member, config, _ in streams:
        history = [{k: v for k, v in r.items() if not (from_mlflow and k == m.STOPPED)} for r in reported[member]]
        MemberRungs(again.ask_many, [member], [config], BUDGET).replay(
            [{m.MEMBERS: {"0": r}} for r in history], finished=from_mlflow
        )
    assert rung_values(again._asha) == rung_values(first._asha)
    for member, config, _ in streams:  # a pack that starts over is told again to stop its stopped members
        assert again.ask(member, config, reported[member][0], False) == (member in stopped, math.inf)


def rung_values(asha: GroupedASHA) -> list:
    return [[(t, dict(r)) for t, r in b._rungs] for bs in asha._group_brackets.values() for b in bs]
