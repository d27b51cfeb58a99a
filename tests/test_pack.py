"""Trial packs (services.training.pack): K members trained in lockstep with torch.func give the
losses each member gets alone; a member that stops leaves the pack; models vmap cannot run
train one member at a time."""

import copy
import logging

import pytest
from torch import nn

from search_spaces import derive
from search_spaces.schedules import Schedule
from services import metrics as m
from services.training.pack import train_members, train_pack, unpackable
from services.training.packable import workload_refusal
from services.training.train import Budget, run_trial
from services.training.workloads import Workload, digits_mlp

CASES = {
    "momentum+coupled-wd": dict(optimizer="momentum", weight_decay=1e-2),
    "adam+coupled-wd": dict(optimizer="adam", weight_decay=1e-2),
    "adamw": dict(optimizer="adamw", weight_decay=0.1),
    "sgd-sum+decoupled-wd": dict(optimizer="sgd", reduction="sum", weight_decay=1e-2, decoupled_decay=True),
}
LRS = {"momentum": 1e-3, "adam": 1e-4, "adamw": 1e-4, "sgd": 2e-3}


@pytest.fixture(scope="module")
def workload():
    return digits_mlp(hidden=32)


def _members(batch_size=32, **kw):
    base = {"reduction": "mean", **kw}
    c = LRS[base["optimizer"]]
    seeds = (0, 0, 1, 2)  # two members share a seed: same init and order, other LR
    return [derive(batch_size=batch_size, lr_per_sample=c * f, seed=s, **base) for f, s in zip((0.5, 1, 2, 4), seeds)]


def _alone(workload, hp, budget):
    reports = []
    run_trial(workload, hp, budget, lambda r, s: reports.append(r))
    return reports


@pytest.mark.parametrize("case", list(CASES))
def test_a_pack_of_4_gives_each_member_the_losses_it_gets_alone(workload, case):
    members = _members(**CASES[case])
    budget = Budget(total_samples=3 * workload.n_train, interval_samples=workload.n_train)
    assert unpackable(workload, members, budget) is None and workload_refusal(workload) is None
    packed: dict[int, list[dict]] = {i: [] for i in range(4)}
    train_pack(workload, members, budget, lambda i, r: packed[i].append(r))
    for i, hp in enumerate(members):
        alone = _alone(workload, hp, budget)
        assert [r[m.SAMPLES_SEEN] for r in packed[i]] == [r[m.SAMPLES_SEEN] for r in alone]
        for a, b in zip(packed[i], alone):
            for key in (m.TRAIN_LOSS, m.VAL_LOSS, m.VAL_ACCURACY, m.INITIAL_VAL_LOSS, m.LR, m.UPDATES):
                assert a[key] == pytest.approx(b[key], rel=1e-5), (i, key)
    assert packed[0][-1][m.VAL_LOSS] != packed[1][-1][m.VAL_LOSS]  # the LRs did differ


def test_a_member_that_stops_leaves_and_the_others_train_on_unchanged(workload):
    members = _members(optimizer="adam")
    budget = Budget(total_samples=3 * workload.n_train, interval_samples=workload.n_train)
    packed: dict[int, list[dict]] = {i: [] for i in range(4)}

    def report(i, r):
        packed[i].append(r)
        return i == 1  # the scheduler stops member 1 at its first report

    train_pack(workload, members, budget, report)
    assert len(packed[1]) == 1 and all(len(packed[i]) == 3 for i in (0, 2, 3))
    for i in (0, 2, 3):
        alone = _alone(workload, members[i], budget)
        assert [r[m.VAL_LOSS] for r in packed[i]] == pytest.approx([r[m.VAL_LOSS] for r in alone], rel=1e-5)


def test_a_diverging_member_leaves_with_a_finite_objective(workload):
    members = _members(optimizer="sgd")
    members[3] = derive(batch_size=32, reduction="mean", optimizer="sgd", lr_per_sample=5.0, seed=2)
    budget = Budget(total_samples=3 * workload.n_train, interval_samples=workload.n_train)
    packed: dict[int, list[dict]] = {i: [] for i in range(4)}
    train_pack(workload, members, budget, lambda i, r: packed[i].append(r))
    assert packed[3][-1][m.DIVERGED] == 1.0 and len(packed[3]) == 1
    assert packed[3][-1][m.VAL_LOSS] < 1e30
    assert all(packed[i][-1][m.DIVERGED] == 0.0 and len(packed[i]) == 3 for i in (0, 1, 2))


class BranchingNet(nn.Module):
    """Data-dependent control flow: a branch on a value computed from the batch."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(64, 10), nn.Linear(64, 10)

    def forward(self, x):
        return self.a(x) if x.mean() > 0.25 else self.b(x)


def test_a_model_vmap_cannot_run_trains_its_members_one_after_another(workload, caplog):
    branching = Workload(**{**workload.__dict__, "model_fn": BranchingNet})
    members = _members(optimizer="momentum")[:2]
    budget = Budget(total_samples=2 * workload.n_train, interval_samples=workload.n_train)
    got: dict[int, list[dict]] = {0: [], 1: []}

    def report(i, r):
        got[i].append(r)
        return i == 1  # stopped at its first report, as in a pack

    with caplog.at_level(logging.WARNING, logger="services.training.pack"):
        train_members(branching, members, budget, report)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "one after another" in warnings[0] and "vmap" in warnings[0]
    assert len(got[1]) == 1 and len(got[0]) == 2
    assert [r[m.VAL_LOSS] for r in got[0]] == [r[m.VAL_LOSS] for r in _alone(branching, members[0], budget)]


@pytest.mark.parametrize("kill_at", [1, 2, 5])  # within the first member, at its last report, within the last
def test_members_trained_one_after_another_continue_from_a_points_state(workload, kill_at):
    branching = Workload(**{**workload.__dict__, "model_fn": BranchingNet})
    members = _members(optimizer="momentum")[:3]
    budget = Budget(total_samples=2 * workload.n_train, interval_samples=workload.n_train)
    whole: dict[int, list[dict]] = {i: [] for i in range(3)}
    train_members(branching, members, budget, lambda i, r: whole[i].append(r))
    assert [len(r) for r in whole.values()] == [2, 2, 2]

    states: list[dict] = []

    def point(samples, state):
        states.append(copy.deepcopy(state()))
        if len(states) == kill_at:
            raise KeyboardInterrupt  # the worker dies after this point

    first: dict[int, list[dict]] = {i: [] for i in range(3)}
    with pytest.raises(KeyboardInterrupt):
        train_members(branching, members, budget, lambda i, r: first[i].append(r), point=point)
    assert states[-1], "a point of members trained one after another has state to continue from"
    rest: dict[int, list[dict]] = {i: [] for i in range(3)}
    last = train_members(branching, members, budget, lambda i, r: rest[i].append(r), restored=states[-1])
    for i in range(3):
        got = first[i] + rest[i]
        assert [r[m.SAMPLES_SEEN] for r in got] == [r[m.SAMPLES_SEEN] for r in whole[i]], i
        assert [r[m.VAL_LOSS] for r in got] == pytest.approx([r[m.VAL_LOSS] for r in whole[i]], rel=1e-6), i
        assert last[i][m.VAL_LOSS] == pytest.approx(whole[i][-1][m.VAL_LOSS], rel=1e-6)


def test_members_that_differ_in_more_than_the_lr_and_seed_are_not_a_pack(workload):
    members = _members(optimizer="sgd")
    members[2] = derive(batch_size=64, reduction="mean", optimizer="sgd", lr_per_sample=1e-3)
    assert "batch_size" in unpackable(workload, members, Budget(100, 100))
    assert "micro-batches" in unpackable(workload, _members(optimizer="sgd"), Budget(100, 100, micro_batch=8))
    assert unpackable(workload, _members(optimizer="sgd"), Budget(100, 100, noise_batches=(8, 64))) is None


def test_each_member_measures_the_noise_scale_it_measures_alone(workload):
    members = _members(optimizer="momentum")
    budget = Budget(total_samples=3 * workload.n_train, interval_samples=workload.n_train // 2, noise_batches=(16, 128))
    packed: dict[int, list[dict]] = {i: [] for i in range(4)}
    train_pack(workload, members, budget, lambda i, r: packed[i].append(r))
    for i, hp in enumerate(members):
        alone = _alone(workload, hp, budget)
        got, want = [r.get(m.B_SIMPLE) for r in packed[i]], [r.get(m.B_SIMPLE) for r in alone]
        assert [g is None for g in got] == [w is None for w in want], i  # not positive yet: both skip it
        assert [g for g in got if g] == pytest.approx([w for w in want if w], rel=1e-4), i
        assert [r[m.VAL_LOSS] for r in packed[i]] == pytest.approx([r[m.VAL_LOSS] for r in alone], rel=1e-5)
    assert len({round(packed[i][-1][m.B_SIMPLE], 3) for i in range(4)}) > 1  # each member its own


def test_a_pack_continued_from_a_points_state_reports_what_it_reports_uninterrupted(workload):
    members = _members(optimizer="adam")
    members[3] = derive(batch_size=32, reduction="mean", optimizer="adam", lr_per_sample=0.5, seed=2)  # diverges
    budget = Budget(total_samples=4 * workload.n_train, interval_samples=workload.n_train, noise_batches=(16, 128))
    whole: dict[int, list[dict]] = {i: [] for i in range(4)}
    train_pack(workload, members, budget, lambda i, r: whole[i].append(r))
    assert len(whole[3]) < 4  # a member left before the checkpoint

    states: list[dict] = []

    def point(samples, state):
        if len(states) < 2:
            states.append(copy.deepcopy(state()))
            if len(states) == 2:
                raise KeyboardInterrupt  # the worker dies after its second point

    first: dict[int, list[dict]] = {i: [] for i in range(4)}
    with pytest.raises(KeyboardInterrupt):
        train_pack(workload, members, budget, lambda i, r: first[i].append(r), point=point)
    rest: dict[int, list[dict]] = {i: [] for i in range(4)}
    last = train_pack(workload, members, budget, lambda i, r: rest[i].append(r), restored=states[-1])
    for i in range(4):
        got = first[i] + rest[i]
        assert [r[m.SAMPLES_SEEN] for r in got] == [r[m.SAMPLES_SEEN] for r in whole[i]]
        for key in (m.VAL_LOSS, m.TRAIN_LOSS, m.B_SIMPLE, m.UPDATES):
            assert [r.get(key) for r in got] == pytest.approx([r.get(key) for r in whole[i]], rel=1e-6), (i, key)
        assert last[i][m.SAMPLES_SEEN] == whole[i][-1][m.SAMPLES_SEEN]


@pytest.mark.parametrize("schedule", ["lr_decay", "batch_growth"])
def test_members_follow_a_milestone_schedule_as_they_do_alone(workload, schedule):
    members = [
        derive(batch_size=16, reduction="mean", optimizer="momentum", lr_per_sample=c, seed=s, schedule=schedule)
        for c, s in ((1e-3, 0), (3e-3, 1), (1e-2, 2))
    ]
    budget = Budget(
        total_samples=4 * workload.n_train,
        interval_samples=workload.n_train,
        schedule=Schedule(factor=4, milestones=(0.3, 0.6)),
    )
    assert unpackable(workload, members, budget) is None
    packed: dict[int, list[dict]] = {i: [] for i in range(3)}
    train_pack(workload, members, budget, lambda i, r: packed[i].append(r))
    for i, hp in enumerate(members):
        alone = _alone(workload, hp, budget)
        for key in (m.VAL_LOSS, m.LR, m.BATCH_SIZE, m.UPDATES):
            assert [r[key] for r in packed[i]] == pytest.approx([r[key] for r in alone], rel=1e-5), (i, key)
    assert len({r[m.BATCH_SIZE] for r in packed[0]}) > 1 or len({r[m.LR] for r in packed[0]}) > 1  # it moved
    plateau = Budget(100, 100, schedule=Schedule(patience=2))
    assert "plateaus" in unpackable(workload, members, plateau)
