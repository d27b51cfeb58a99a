"""Trial packs in a sweep, without Ray running: which configurations the searcher puts in one
pack (search_spaces.packs), the searcher that hands them out (PackSearch, on a real Optuna
study), and the pack size a spec gets."""

import collections

import optuna
import pytest
from ray.tune.search import Searcher
from ray.tune.utils import flatten_dict

from search_spaces import suggest
from search_spaces.packs import CELL_ATTR, largest_pack, plan_packs
from search_spaces.tied import cells
from services import metrics as m
from services.orchestration.packs import PackSearch, pack_size, plan
from services.orchestration.runner import make_searcher
from services.spec import parse_spec
from tests.conftest import spec_dict


def _spec(**overrides):
    base = dict(
        searcher={"kind": "grid", "max_concurrent": 2, "seed": 0},
        space={
            "batch_sizes": [16, 64, 256],
            "lr_per_sample": {"low": 1e-3, "high": 1e-1, "grid_points": 10},
            "reductions": ["mean", "sum"],
            "optimizers": ["sgd"],
        },
        asha={"enabled": False},
    )
    base.update(overrides)
    return parse_spec(spec_dict(**base))


def test_a_grid_plan_covers_every_grid_point_once_each_pack_one_cell_spanning_the_range():
    spec = _spec()
    packs = plan_packs(spec.space, "grid", spec.num_trials, 4, grid_steps=10)
    points = [(member.cell, member.params["lr_step"]) for pack in packs for member in pack]
    assert sorted(points) == [(c, s) for c in range(6) for s in range(10)]
    assert all(len({member.cell for member in pack}) == 1 and len(pack) <= 4 for pack in packs)
    assert [len(p) for p in packs[:6]] == [4] * 6 and len(packs) == 6 * 3  # 10 points: packs of 4, 3, 3
    first = sorted(member.params["lr_step"] for member in packs[0])
    assert first[0] == 0 and first[-1] >= 9 - 2  # each pack spans the range, not one end of it
    # members come in a seeded random order of their LRs (ASHA hears them in member order)
    orders = [[member.params["lr_step"] for member in pack] for pack in packs]
    assert sum(order != sorted(order) for order in orders) >= len(orders) // 2
    again = plan_packs(spec.space, "grid", spec.num_trials, 4, grid_steps=10)
    assert [[member.params["lr_step"] for member in pack] for pack in again] == orders
    other = plan_packs(spec.space, "grid", spec.num_trials, 4, grid_steps=10, seed=1)
    assert [[member.params["lr_step"] for member in pack] for pack in other] != orders


def test_a_stratified_plan_gives_each_cell_its_unpacked_share_in_rounds():
    spec = _spec(searcher={"kind": "tpe", "num_trials": 50, "seed": 0})
    n = spec.space.cells()
    packs = plan_packs(spec.space, "stratified", 50, 4, 0)
    per_cell = collections.Counter(member.cell for pack in packs for member in pack)
    unpacked = collections.Counter(t % n for t in range(50))
    assert per_cell == unpacked
    first_round = packs[:n]  # every cell's first pack before any cell's second
    assert sorted(pack[0].cell for pack in first_round) == list(range(n))
    assert largest_pack("stratified", "tpe", 160, 20) == 4  # two rounds: TPE learns between them
    assert largest_pack("stratified", "random", 160, 20) == 8
    with pytest.raises(ValueError, match="size"):
        plan_packs(spec.space, "stratified", 50, 0)


def test_a_members_cell_attribute_picks_its_cell_in_any_mode():
    spec = _spec()
    everything = cells(spec.space, 0)
    trial = optuna.trial.FixedTrial({"lr_step": 3}, number=0)
    trial.set_user_attr(CELL_ATTR, 4)
    config = suggest(trial, spec.space, 0, "grid")
    assert {k: config[k] for k in ("batch_size", "reduction")} == {
        k: everything[4][k] for k in ("batch_size", "reduction")
    }
    trial = optuna.trial.FixedTrial({"lr_per_sample_sgd_b64": 0.01}, number=0)
    trial.set_user_attr(CELL_ATTR, 1)  # number 0 would be cell 0 (B=16)
    assert suggest(trial, spec.space, 0, "stratified")["batch_size"] == 64


def test_the_pack_searcher_hands_out_packs_and_tells_each_member_its_own_objective():
    spec = _spec(
        searcher={"kind": "tpe", "num_trials": 24, "seed": 0, "max_concurrent": 2}, resources={"pack_size": 16}
    )
    size, _ = pack_size(spec, 1000, None)
    packs = plan(spec, size)
    assert size == 2 and len(packs) == 12
    searcher = make_searcher(spec, packs)
    assert isinstance(searcher, PackSearch)
    seen = []
    for t in range(12):
        config = searcher.suggest(f"t{t}")
        members = config[m.PACK]
        assert len({(c["batch_size"], c["reduction"]) for c in members}) == 1
        assert len({c["lr_per_sample"] for c in members}) == len(members)
        seen += [(c["batch_size"], c["reduction"]) for c in members]
        result = {str(j): {m.OBJECTIVE: 1.0 + t + j / 10, m.SAMPLES_SEEN: 100} for j in range(len(members))}
        searcher.on_trial_result(f"t{t}", flatten_dict({m.MEMBERS: result}))  # as Tune hands results to searchers
        searcher.on_trial_complete(f"t{t}", {m.OBJECTIVE: 0.0})  # the last result: no member reported
    assert searcher.suggest("t12") == Searcher.FINISHED
    assert collections.Counter(seen) == collections.Counter(
        (c["batch_size"], c["reduction"]) for c in cells(spec.space, 0) for _ in range(4)
    )
    told = sorted(t.value for t in searcher._ot_study.trials)
    assert told == sorted(1.0 + t + j / 10 for t in range(12) for j in range(2))


def test_the_pack_size_follows_the_search_the_spec_and_memory():
    grid = _spec()
    assert pack_size(grid, 1000, None)[0] == 10  # a grid cell's points
    assert pack_size(_spec(resources={"pack_size": 3}), 1000, None)[0] == 3
    assert pack_size(grid, 10**8, None)[0] == 1  # a model whose pack would not fit
    assert pack_size(_spec(asha={"enabled": True}), 1000, None)[0] == 10  # ASHA stops members one by one
    size, why = pack_size(grid, 1000, "the model does not run under torch.func.vmap (x)")
    assert size == 1 and "vmap" in why
    partial = _spec(searcher={"kind": "grid", "num_trials": 7, "seed": 0})
    assert pack_size(partial, 1000, None)[0] == 1
    free = _spec(searcher={"kind": "tpe", "num_trials": 60, "seed": 0, "stratify": False})
    assert pack_size(free, 1000, None)[0] == 1
    tpe = _spec(searcher={"kind": "tpe", "num_trials": 48, "seed": 0})
    assert pack_size(tpe, 1000, None)[0] == 1  # TPE packs only when asked for
    assert (
        pack_size(tpe.model_copy(update={"resources": tpe.resources.model_copy(update={"pack_size": 8})}), 1000, None)[
            0
        ]
        == 4
    )
    random = _spec(searcher={"kind": "random", "num_trials": 48, "seed": 0})
    assert pack_size(random, 1000, None)[0] == 8  # a cell's 8 random trials
    with pytest.raises(Exception, match="pack_size"):
        _spec(resources={"pack_size": 0})
