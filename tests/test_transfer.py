"""The transfer check scored without training: held-out batch sizes, regret, its interval and
verdict, checks of an older answer left out, and the sub-sweeps a check trains."""

import math

import pytest

from search_spaces.scaling import derive
from services.orchestration.transfer import first_jobs, next_jobs, sub_spec
from services.results import transfer as tr
from services.results.analysis import TrialRecord, summarize
from services.spec import parse_spec
from tests.conftest import spec_dict


def test_held_out_batch_sizes_interpolate_and_extrapolate_one_octave():
    assert tr.held_out([16, 32, 64, 128, 256]) == [8, 91, 512]
    assert tr.held_out([8, 16, 64, 512]) == [4, 181, 1024]  # the widest gap, 64..512
    assert tr.held_out([1, 2]) == [4]  # nothing below 1, no whole number between 1 and 2
    for b in tr.held_out([16, 32, 64, 128, 256]):
        assert b not in (16, 32, 64, 128, 256)


def test_factor_of_takes_whole_powers_of_two_only():
    assert tr.factor_of(0.4, 0.1) == 2
    assert tr.factor_of(0.05, 0.1) == -1
    assert tr.factor_of(0.13, 0.1) is None  # trained for another answer


def points(losses_by_factor):
    return [tr.Point(f, s, v) for f, per_seed in losses_by_factor.items() for s, v in enumerate(per_seed)]


def test_regret_is_loss_at_the_answer_over_the_best_of_the_bracket():
    c = tr.score("g", 64, "mean", 0.1, points({-1: [0.20, 0.21], 0: [0.10, 0.11], 1: [0.30, 0.31]}), 0.05)
    assert c.regret == 0.0 and c.best_factor == 0 and c.verdict == "within" and c.interval == (0.0, 0.0)
    c = tr.score("g", 64, "mean", 0.1, points({-1: [0.100, 0.100], 0: [0.120, 0.120], 1: [0.3, 0.3]}), 0.05)
    assert c.regret == pytest.approx(0.2) and c.best_factor == -1 and c.verdict == "fails"
    assert c.best_lr == pytest.approx(0.05)


def test_a_noisy_regret_is_inconclusive_and_a_diverged_answer_fails():
    c = tr.score("g", 64, "mean", 0.1, points({-1: [0.10, 0.10], 0: [0.10, 0.13], 1: [0.3, 0.3]}), 0.05)
    assert c.interval[0] <= 0.05 < c.interval[1] and c.verdict == "inconclusive"
    c = tr.score("g", 64, "mean", 0.1, points({-1: [0.10, 0.10], 0: [math.inf, 0.1]}), 0.05)
    assert c.verdict == "fails" and math.isinf(c.regret)


def test_a_best_at_the_bracket_edge_is_a_bound_and_asks_for_more():
    c = tr.score("g", 64, "mean", 0.1, points({-1: [0.101, 0.101], 0: [0.1, 0.1], 1: [0.09, 0.09]}), 0.5)
    assert c.at_edge and c.best_factor == 1 and c.verdict == "inconclusive"  # within 50%, but a bound


def _records(spec_text_batch, answer_of, factors, seeds=(0, 1), loss=lambda f: 0.1 + 0.01 * f * f):
    out = []
    for f in factors:
        for seed in seeds:
            b = spec_text_batch
            hp = derive(
                batch_size=b, reduction="mean", optimizer="sgd", lr_per_sample=answer_of(b) * 2.0**f / b, seed=seed
            )
            out.append(
                TrialRecord(f"r{b}-{f}-{seed}", f"t{f}{seed}", "FINISHED", hp, val_loss=loss(f), samples_seen=100)
            )
    return out


def _sweep():
    rows = []
    for b in (16, 32, 64, 128):
        for i, c in enumerate((1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)):
            hp = derive(batch_size=b, reduction="mean", optimizer="sgd", lr_per_sample=c, seed=0)
            lr = c * b
            rows.append(
                TrialRecord(
                    f"s{b}-{i}", f"s{b}{i}", "FINISHED", hp, val_loss=0.3 + 0.05 * math.log(lr / (4e-3 * b)) ** 2
                )
            )
    return summarize(rows)


def test_collect_scores_the_current_answer_and_leaves_an_older_one_out():
    (g,) = _sweep()
    now = g.answer.law.lr
    current = (256, {g.name: now(256)}, _records(256, now, (-1, 0, 1)))
    older = (256, {g.name: now(256) * 1.3}, _records(256, lambda b: now(b) * 1.3, (-1, 0, 1), loss=lambda f: 9.0))
    (t,) = tr.collect([g], [current, older], 0.05)
    (c,) = t.checks
    assert c.batch_size == 256 and c.regret == 0.0 and c.seeds == 2 and c.factors == [-1, 0, 1]
    assert t.verdict.startswith("transfers within 5%")
    assert "256" in tr.format_table([t])


def test_the_check_trains_exactly_the_answer_times_powers_of_two():
    (g,) = _sweep()
    spec = parse_spec(
        spec_dict(
            searcher={"kind": "grid", "max_concurrent": 1, "seed": 0},
            space={
                "batch_sizes": [16, 32, 64, 128],
                "lr_per_sample": {"low": 1e-3, "high": 1.6e-2, "grid_points": 5},
                "reductions": ["mean", "sum"],
                "optimizers": ["sgd"],
            },
        )
    )
    jobs = first_jobs(spec, [g], [8, 256])
    assert [(j.batch_size, j.reduction, j.factors) for j in jobs] == [
        (8, "mean", (-1, 0, 1)),
        (256, "mean", (-1, 0, 1)),
    ]
    sub = sub_spec(spec, 256, "mean", [jobs[1]])
    assert sub.space.batch_sizes == [256] and sub.num_trials == 3 * 2  # three LRs, two seeds
    assert not sub.asha.enabled and not sub.noise.enabled and not sub.transfer.enabled
    from search_spaces.tied import grid_lrs

    lrs = [c * 256 for c in grid_lrs(sub.space, "sgd")]  # the linear rule: mean lr = c * B
    assert [tr.factor_of(lr, g.answer.law.lr(256)) for lr in lrs] == [-1, 0, 1]
    edge = tr.Transfer(g.name, [tr.score(g.name, 256, "mean", 1.0, points({-1: [1.0], 0: [0.9], 1: [0.8]}), 0.05)])
    (more,) = next_jobs(spec, [g], [edge])
    assert more.factors == (2,) and more.batch_size == 256


def test_an_open_verdict_above_the_tolerance_gets_more_seeds_and_a_settled_one_none():
    (g,) = _sweep()
    spec = parse_spec(spec_dict(transfer={"max_seeds": 4}))
    bracket = {-2: [0.3, 0.3], -1: [0.10, 0.10], 0: [0.10, 0.13], 1: [0.3, 0.3]}  # best x1/2, not at the edge
    noisy = tr.score(g.name, 256, "mean", 1.0, points(bracket), 0.05)
    assert noisy.verdict == "inconclusive" and noisy.regret > 0.05 and noisy.seed_ids == (0, 1)
    (more,) = next_jobs(spec, [g], [tr.Transfer(g.name, [noisy])])
    assert more.factors == (-2, -1, 0, 1) and more.seeds == (2, 3)
    sub = sub_spec(spec, 256, "mean", [more])
    assert sub.space.seeds == [2, 3]
    settled = tr.score(g.name, 256, "mean", 1.0, points({-1: [0.2, 0.2], 0: [0.1, 0.1], 1: [0.3, 0.3]}), 0.05)
    assert next_jobs(spec, [g], [tr.Transfer(g.name, [settled])]) == []
    four = [tr.Point(f, s, bracket[f][s % 2]) for f in bracket for s in range(4)]
    capped = tr.score(g.name, 256, "mean", 1.0, four, 0.05)
    assert capped.seeds == 4 and next_jobs(spec, [g], [tr.Transfer(g.name, [capped])]) == []
