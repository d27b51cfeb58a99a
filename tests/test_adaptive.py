"""The adaptive searcher without Ray running: its plan on synthetic U-curves whose lr*(B) is
known (it must find it, within its budget, and say which stop rule ended it), the Tune
Searcher that runs the plan in rounds (packs, concurrency, checkpoint), and the spec fields."""

import math

import pytest
from ray.tune.search import Searcher

from search_spaces.scaling import TrialHParams, config_key
from services import metrics as m
from services.orchestration.adaptive import AdaptiveSearch, Outcome, first_batch_sizes, plan_round, records, stop_line
from services.orchestration.packs import pack_size
from services.results.analysis import summarize
from services.spec import SpecError, parse_spec
from tests.conftest import spec_dict

BUDGET = 1000
SIZES = [8, 16, 32, 64, 128, 256, 512]


def _spec(max_trials=72, target=0.25, optimizers=("sgd",), rules=None, **searcher):
    space = {
        "batch_sizes": SIZES,
        "lr_per_sample": {"low": 1e-4, "high": 1e-1},
        "reductions": ["mean", "sum"],
        "optimizers": list(optimizers),
        **({"rules": rules} if rules else {}),
    }
    return parse_spec(
        spec_dict(
            searcher={"kind": "adaptive", "max_trials": max_trials, "target_interval": target, **searcher},
            space=space,
            budget={"samples": BUDGET},
            asha={"enabled": False},
        )
    )


def truth(b):
    """lr*(B) of the synthetic problem, mean-equivalent: neither the linear rule nor any law's
    shape (a kink at B = 64)."""
    return 0.01 * b**0.8 if b <= 64 else 0.01 * 64**0.8 * (b / 64) ** 0.4


def outcome(config, noise=0.01):
    """A U-curve in log lr around ``truth``, diverging 6x above it, with a small fixed wiggle."""
    hp = TrialHParams.from_config(config)
    x = math.log(hp.mean_lr / truth(hp.batch_size))
    if x > math.log(6):
        return Outcome(config, None, 2.3, BUDGET // 3, True)
    wiggle = noise * math.sin(1000 * hp.mean_lr + hp.batch_size)
    return Outcome(config, 1.0 + 0.3 * x * x + wiggle, 2.3, BUDGET, False)


def search(spec, fn=outcome):
    outcomes, rounds = [], []
    while configs := plan_round(spec, outcomes, BUDGET):
        rounds.append(configs)
        outcomes += [fn(c) for c in configs]
    return outcomes, rounds


def test_round_0_is_the_ends_and_the_middle_over_the_whole_range_reductions_in_turn():
    spec = _spec(first_round_lrs=6)
    assert first_batch_sizes(SIZES) == [8, 64, 512]
    assert first_batch_sizes([16, 32]) == [16, 32]
    first = plan_round(spec, [], BUDGET)
    assert len(first) == 18 and {c["batch_size"] for c in first} == {8, 64, 512}
    cs = sorted({c["lr_per_sample"] for c in first})
    assert len(cs) == 6 and cs[0] == pytest.approx(1e-4) and cs[-1] == pytest.approx(1e-1)
    at_8 = [c["reduction"] for c in first if c["batch_size"] == 8]
    assert at_8.count("mean") == at_8.count("sum") == 3  # pooled under the linear rule: in turn
    # rule none analyses each reduction apart: each gets its own round 0
    alone = plan_round(_spec(rules={"sgd": "none"}), [], BUDGET)
    assert len(alone) == 36 and sum(c["reduction"] == "sum" for c in alone) == 18


def test_it_finds_lr_star_at_every_batch_size_within_its_budget_and_says_the_target_was_reached():
    spec = _spec(max_trials=200)
    outcomes, rounds = search(spec)
    assert len(rounds) >= 3 and len(outcomes) < 120  # stopped on the target, well inside the budget
    groups = summarize(records(outcomes, BUDGET), spec.space.lr_ranges())
    optima = {o.batch_size: o for o in groups[0].optima}
    assert sorted(optima) == SIZES
    for b, o in optima.items():
        assert not o.on_edge and o.lo / 1.3 <= truth(b) <= o.hi * 1.3, (b, o.lr, o.lo, o.hi, truth(b))
        assert o.lo >= o.lr / 1.25 * 0.999 and o.hi <= o.lr * 1.25 * 1.001, (b, o.lo, o.lr, o.hi)
    line = stop_line(spec, groups, len(outcomes))
    assert "target reached" in line and f"{len(outcomes)} of at most 200" in line
    # later rounds spend their LRs near lr*, not over the whole range as a grid does
    late = [c for r in rounds[1:] for c in r]
    near = sum(abs(math.log(TrialHParams.from_config(c).mean_lr / truth(c["batch_size"]))) < math.log(4) for c in late)
    assert near >= 0.8 * len(late)


def test_a_short_budget_is_respected_and_the_line_says_it_ran_out():
    spec = _spec(max_trials=30)
    outcomes, _ = search(spec, lambda c: outcome(c, noise=0.2))  # noisy: intervals stay wide
    assert len(outcomes) == 30
    groups = summarize(records(outcomes, BUDGET), spec.space.lr_ranges())
    line = stop_line(spec, groups, len(outcomes))
    assert "max_trials spent, target +-25% not reached" in line, line


def test_the_same_outcomes_give_the_same_plan():
    first, _ = search(_spec(max_trials=60))
    again, _ = search(_spec(max_trials=60))
    assert [config_key(o.config) for o in first] == [config_key(o.config) for o in again]
    other, _ = search(_spec(max_trials=60, seed=1))  # the seed trains each configuration
    assert {o.config["seed"] for o in other} == {1}


def test_an_lr_already_tried_is_not_proposed_again():
    outcomes, _ = search(_spec(max_trials=200))
    keys = [(o.config["batch_size"], round(math.log(o.config["lr_per_sample"]), 2)) for o in outcomes]
    assert len(keys) == len(set(keys))


def _drive(searcher, ids, fn=outcome, finish=True):
    """Ask ``searcher`` for trials ``ids``; finish each one it gave (unless ``finish`` is False)."""
    given = {}
    for trial_id in ids:
        config = searcher.suggest(trial_id)
        if config in (None, Searcher.FINISHED):
            return given, config
        given[trial_id] = config
        if finish:
            members = config.get(m.PACK, [config])
            if m.PACK in config:
                result = {f"{m.MEMBERS}/{j}/{k}": v for j, c in enumerate(members) for k, v in _result(fn(c)).items()}
            else:
                result = _result(fn(config))
            searcher.on_trial_complete(trial_id, result)
    return given, None


def _result(o: Outcome) -> dict:
    return {
        m.VAL_LOSS: o.val_loss if o.val_loss is not None else float("nan"),
        m.INITIAL_VAL_LOSS: o.initial_loss,
        m.SAMPLES_SEEN: o.samples_seen,
        m.DIVERGED: float(o.diverged),
    }


def test_the_searcher_waits_for_its_round_then_plans_the_next_and_ends_with_finished():
    spec = _spec(max_trials=40)
    searcher = AdaptiveSearch(spec, BUDGET)
    searcher.set_max_concurrency(100)
    given, _ = _drive(searcher, [f"t{i}" for i in range(18)], finish=False)
    assert len(given) == 18 and searcher.suggest("t18") is None  # round 0 still running
    for trial_id, config in given.items():
        searcher.on_trial_complete(trial_id, _result(outcome(config)))
    rest, end = _drive(searcher, [f"u{i}" for i in range(200)])
    assert end == Searcher.FINISHED and len(given) + len(rest) == 40
    configs = list(given.values()) + list(rest.values())
    assert [config_key(c) for c in configs] == [config_key(o.config) for o in search(spec)[0]]


def test_the_searcher_keeps_to_max_concurrent():
    searcher = AdaptiveSearch(_spec(max_concurrent=2), BUDGET)
    assert searcher.suggest("a") and searcher.suggest("b") and searcher.suggest("c") is None
    searcher.on_trial_complete("a", _result(outcome(searcher.live["a"][0])))
    assert searcher.suggest("c") is not None


def test_packs_hold_one_cell_of_a_round_and_each_member_is_heard():
    spec = _spec(max_trials=40)
    size, why = pack_size(spec, 1000, None)
    assert size == 6 and "each round's LRs of a cell" in why
    searcher = AdaptiveSearch(spec, BUDGET, pack_size=size)
    searcher.set_max_concurrency(100)
    given, end = _drive(searcher, [f"p{i}" for i in range(200)])
    assert end == Searcher.FINISHED
    members = [c for config in given.values() for c in config[m.PACK]]
    assert len(members) == 40 and len(searcher.outcomes) == 40
    for config in given.values():
        cells = {(c["batch_size"], c["reduction"], c["seed"]) for c in config[m.PACK]}
        assert len(cells) == 1 and len(config[m.PACK]) <= size
    assert all(o.val_loss is not None or o.diverged for o in searcher.outcomes)


def test_a_checkpoint_taken_mid_round_restores_the_rest_of_the_search(tmp_path):
    spec = _spec(max_trials=40)
    searcher = AdaptiveSearch(spec, BUDGET)
    searcher.set_max_concurrency(100)
    first, _ = _drive(searcher, [f"t{i}" for i in range(25)])
    running, _ = _drive(searcher, ["r0", "r1"], finish=False)
    searcher.save(str(tmp_path / "state.pkl"))
    restored = AdaptiveSearch(spec, BUDGET)
    restored.restore(str(tmp_path / "state.pkl"))
    for trial_id, config in running.items():  # Tune runs them again and reports them
        restored.on_trial_complete(trial_id, _result(outcome(config)))
    rest, end = _drive(restored, [f"u{i}" for i in range(200)])
    assert end == Searcher.FINISHED
    configs = [*first.values(), *running.values(), *rest.values()]
    assert [config_key(c) for c in configs] == [config_key(o.config) for o in search(spec)[0]]


def test_a_failed_trial_counts_against_the_budget_and_is_not_fitted():
    spec = _spec(max_trials=30)
    searcher = AdaptiveSearch(spec, BUDGET)
    searcher.set_max_concurrency(100)
    config = searcher.suggest("x")
    searcher.on_trial_complete("x", None, error=True)
    assert searcher.outcomes[0].failed and searcher.outcomes[0].config == config
    assert records(searcher.outcomes, BUDGET)[0].status == "FAILED"


@pytest.mark.parametrize(
    "searcher, message",
    [
        ({"kind": "adaptive"}, "searcher.max_trials: required for the adaptive searcher"),
        (
            {"kind": "adaptive", "max_trials": 10, "num_trials": 10},
            "searcher.num_trials: 10; the adaptive searcher takes max_trials",
        ),
        (
            {"kind": "random", "num_trials": 4, "max_trials": 10},
            "searcher.max_trials: 10 is for the adaptive searcher; random takes num_trials",
        ),
        ({"kind": "adaptive", "max_trials": 10, "target_interval": 0}, "searcher.target_interval"),
        ({"kind": "adaptive", "max_trials": 10, "round_lrs": 1}, "searcher.round_lrs"),
    ],
)
def test_bad_adaptive_settings_are_refused_naming_the_field(searcher, message):
    with pytest.raises(SpecError, match=message.replace("+", r"\+")):
        parse_spec(spec_dict(searcher=searcher))


def test_an_adaptive_spec_counts_its_trials_at_most_max_trials():
    spec = parse_spec(spec_dict(searcher={"kind": "adaptive", "max_trials": 24}))
    assert spec.num_trials == 24
