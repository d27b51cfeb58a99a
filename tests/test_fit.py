"""The scaling-rule estimators and laws on synthetic U-curves with a known answer."""

import math

import numpy as np
import pytest

from services.results.fit import PowerLaw, fit_power_law, optimal_lr, rule_constant, valid_range, verdict
from services.results.laws import choose_law, fit_laws, leave_one_out

BATCHES = (8, 16, 32, 64, 128, 256, 512)


def u_curve(true_lr, rng, n=9, width=10.0, noise=0.005, grid=None):
    lrs = grid if grid is not None else true_lr * np.geomspace(1 / width, width, n)
    return lrs, 0.3 + 0.1 * np.log(lrs / true_lr) ** 2 + (rng.normal(0, noise, len(lrs)) if noise else 0.0)


def optima_for(true_lr_of_b, batch_sizes=BATCHES, seed=0, noise=0.005, grid=None):
    rng = np.random.default_rng(seed)
    return [optimal_lr(b, *u_curve(true_lr_of_b(b), rng, noise=noise, grid=grid)) for b in batch_sizes]


def linear(b):
    return 1e-3 * b


def sqrt(b):
    return 1e-3 * b**0.5


def saturating(b, bn=64.0):
    return 0.05 / (1 + bn / b)


def surge(b, bn=64.0):
    return 0.01 / (0.5 * (math.sqrt(bn / b) + math.sqrt(b / bn)))


def test_optimal_lr_finds_the_vertex_between_grid_points():
    lrs = 3.3e-3 * np.geomspace(0.1, 10, 9) * 1.17  # the true optimum is not on the grid
    losses = 0.3 + 0.1 * np.log(lrs / 3.3e-3) ** 2
    o = optimal_lr(64, lrs, losses)
    assert o.method == "quadratic" and not o.on_edge
    assert o.lr == pytest.approx(3.3e-3, rel=0.02)
    assert o.lo <= o.lr <= o.hi


def test_minimum_on_the_edge_of_the_range_is_flagged():
    lrs = np.geomspace(1e-4, 1e-2, 6)
    losses = 1.0 - 0.1 * np.log(lrs)  # still falling at the largest LR: range too narrow
    o = optimal_lr(32, lrs, losses)
    assert o.on_edge and o.best_tried_lr == pytest.approx(1e-2)


def test_a_failed_lr_above_the_best_brackets_it_without_moving_it():
    lrs = np.geomspace(1e-3, 1e-1, 5)
    losses = 0.3 + 0.1 * np.log(lrs / 3e-2) ** 2
    alone = optimal_lr(16, lrs, losses)
    closed = optimal_lr(16, lrs, losses, tried_lrs=[0.3])  # diverged or at chance: tried, not fitted
    assert not closed.on_edge
    assert closed.lr == pytest.approx(alone.lr)


def test_row_order_changes_no_figure():
    rng = np.random.default_rng(3)
    lrs, losses = u_curve(2e-3, rng, noise=0.02)
    seeds = np.tile([0, 1, 2], 3)
    a = optimal_lr(32, lrs, losses, seeds=seeds)
    perm = rng.permutation(len(lrs))
    b = optimal_lr(32, lrs[perm], losses[perm], seeds=seeds[perm])
    assert (a.lr, a.lo, a.hi, a.boot) == (b.lr, b.lo, b.hi, b.boot)
    optima = optima_for(sqrt, noise=0.02)
    fa, fb = fit_power_law(optima), fit_power_law(optima[::-1])
    assert (fa.k, fa.k_lo, fa.k_hi, fa.c_lo) == (fb.k, fb.k_lo, fb.k_hi, fb.c_lo)
    la, lb = fit_laws(optima), fit_laws(list(reversed(optima)))
    assert [(x.params, x.intervals) for x in la] == [(x.params, x.intervals) for x in lb]


def test_the_interval_covers_seed_to_seed_noise():
    """Two seeds whose U-curves disagree: the pooled interval must cover both seeds' optima."""
    grid = np.geomspace(1e-3, 1e-1, 11)
    seed_a = 0.3 + 0.1 * np.log(grid / 6e-3) ** 2
    seed_b = 0.3 + 0.1 * np.log(grid / 2e-2) ** 2
    own = [optimal_lr(64, grid, curve) for curve in (seed_a, seed_b)]
    pooled = optimal_lr(64, np.concatenate([grid, grid]), np.concatenate([seed_a, seed_b]), seeds=[0] * 11 + [1] * 11)
    assert pooled.seeds == 2
    for o in own:
        assert pooled.lo <= o.lr * 1.01 and o.lr <= pooled.hi * 1.01


@pytest.mark.parametrize("rule_k, truth", [(1.0, linear), (0.5, sqrt), (0.0, lambda b: 1e-3)])
def test_exact_power_laws_hold_for_their_own_rule(rule_k, truth):
    grid = np.geomspace(1e-6, 10, 71)  # log-spaced: exact optima land on grid points
    law = fit_power_law(optima_for(truth, noise=0.0, grid=grid))
    assert verdict(law, rule_k).startswith("holds"), verdict(law, rule_k)
    wrong = verdict(law, rule_k + 0.5)
    assert wrong.startswith("does not hold"), wrong


@pytest.mark.parametrize("k", [1.0, 0.5, 0.0])
def test_noisy_power_laws_are_recovered(k):
    law = fit_power_law(optima_for(lambda b: 1e-3 * b**k))
    assert law.k == pytest.approx(k, abs=0.1)
    assert law.k_lo <= k <= law.k_hi
    assert verdict(law, k).startswith("holds")


def test_the_verdict_compares_with_a_tolerance():
    law = PowerLaw(
        k=1.0,
        k_lo=0.9999999999999998,
        k_hi=1.0000000000000002,
        c=1e-3,
        c_lo=1e-3,
        c_hi=1e-3,
        batch_sizes=(8, 16, 32, 64),
    )
    assert verdict(law, 1.0).startswith("holds")


def test_a_wide_interval_is_inconclusive_never_does_not_hold():
    wide = PowerLaw(k=0.75, k_lo=-0.37, k_hi=1.0 - 1e-3, c=1e-3, c_lo=1e-3, c_hi=1e-3, batch_sizes=(8, 16, 32, 64))
    text = verdict(wide, 1.0 + 0.01)
    assert text.startswith("inconclusive") and "cannot tell" in text
    covers = PowerLaw(k=0.7, k_lo=0.39, k_hi=1.04, c=1e-3, c_lo=1e-3, c_hi=1e-3, batch_sizes=(8, 16, 32, 64))
    assert verdict(covers, 0.5).startswith("inconclusive") and "also 1" in verdict(covers, 0.5)
    narrow = PowerLaw(k=0.55, k_lo=0.4, k_hi=0.7, c=1e-3, c_lo=1e-3, c_hi=1e-3, batch_sizes=(8, 16, 32, 64))
    assert verdict(narrow, 0.5).startswith("holds")
    assert verdict(narrow, 1.0).startswith("does not hold") and "points at 0.5" in verdict(narrow, 1.0)


def test_too_few_batch_sizes_is_inconclusive():
    law = fit_power_law(optima_for(linear, batch_sizes=(8, 16)))
    assert len(law.batch_sizes) == 2
    assert verdict(law, 1.0).startswith("inconclusive")
    assert fit_power_law([]) is None


def test_valid_range_stops_where_lr_star_flattens():
    law, above = valid_range(optima_for(lambda b: 1e-3 * min(b, 64)))
    assert max(law.batch_sizes) in (64, 128)
    assert [o.batch_size for o in above] == [b for b in (128, 256, 512) if b > max(law.batch_sizes)]
    assert law.k_lo <= 1.0 <= law.k_hi


def test_no_flattening_keeps_every_batch_size():
    law, above = valid_range(optima_for(lambda b: 2e-4 * b))
    assert above == [] and len(law.batch_sizes) == 7


def test_rule_constant_recovers_c():
    c, lo, hi = rule_constant(optima_for(lambda b: 2e-4 * b), 1.0)
    assert c == pytest.approx(2e-4, rel=0.05) and lo <= c <= hi


def chosen_law(optima, rule_k=0.0, adaptive=False):
    laws = fit_laws(optima, rule_k=rule_k, adaptive=adaptive)
    names = [law.name for law in laws]
    return choose_law(laws, leave_one_out(optima, names, rule_k)), laws


@pytest.mark.parametrize("noise", [0.0, 0.01])
@pytest.mark.parametrize(
    "truth, rule_k, adaptive, expected",
    [
        (linear, 1.0, False, "rule"),
        (sqrt, 0.5, True, "rule"),
        (linear, 0.5, True, "power"),  # the rule's exponent is wrong: the fitted one predicts better
        (saturating, 1.0, False, "saturating"),
        (surge, 0.5, True, "surge"),
    ],
)
def test_laws_are_told_apart_by_leaving_one_batch_size_out(truth, rule_k, adaptive, expected, noise):
    optima = optima_for(truth, noise=noise, batch_sizes=(4, 8, 16, 32, 64, 128, 256, 512, 1024))
    chosen, laws = chosen_law(optima, rule_k, adaptive)
    assert chosen.name == expected, [(law.name, law.params) for law in laws]
    if expected in ("saturating", "surge"):
        lo, hi = chosen.intervals["b_noise"]
        assert lo is not None and hi is not None and lo <= 64 <= hi
        assert chosen.params["b_noise"] == pytest.approx(64, rel=0.3)
    for b in (8, 64, 512):
        assert chosen.lr(b) == pytest.approx(truth(b), rel=0.15)


def test_a_saturating_truth_is_never_answered_by_the_rule_of_its_low_end():
    """Linear up to B_noise = 32, flat above: over 16..256 (the quickstart's range) the rule fits
    the low end only, and leaving a batch size out shows it; the answer must bend."""
    truth = lambda b: saturating(b, bn=32.0)  # noqa: E731
    optima = optima_for(truth, noise=0.005, batch_sizes=(16, 32, 64, 128, 256))
    chosen, _ = chosen_law(optima, rule_k=1.0)
    assert chosen.name != "rule"
    for b in (8, 96, 192, 512):  # held out: inside the range and one octave beyond each end
        assert chosen.lr(b) == pytest.approx(truth(b), rel=0.25), b


def test_linear_data_bounds_b_noise_from_below_only():
    laws = fit_laws(optima_for(linear, noise=0.0, grid=np.geomspace(1e-6, 10, 71)))
    sat = next(law for law in laws if law.name == "saturating")
    assert sat.intervals["b_noise"][1] is None  # no saturation seen: B_noise above the swept sizes
    assert sat.params["b_noise"] > 512


def test_sum_reduced_sgd_gets_the_mean_equivalent_law_divided_by_b():
    """Under sum the optimizer LR of SGD is the mean one over B: saturating then means
    lr = lr_max / (B + B_noise), with the same B_noise as under mean."""
    m, _ = chosen_law(optima_for(saturating, noise=0.0), rule_k=1.0)
    s = m.with_shift(-1.0)
    assert m.name == s.name == "saturating"
    assert s.params["b_noise"] == m.params["b_noise"]
    assert s.lr(100) == pytest.approx(m.lr(100) / 100, rel=1e-9)
    assert "/ batch_size**1" in s.formula


def test_a_law_corrected_to_the_optima_follows_a_knee_and_fades_beyond_the_range():
    from services.results.laws import corrected, fit_law

    truth = lambda b: 0.004 * b if b <= 32 else 1.0  # noqa: E731 - a knee no law bends through
    optima = optima_for(truth, noise=0.0, batch_sizes=(8, 16, 32, 64, 128, 256))
    law = fit_law("saturating", optima, rule_k=1.0)
    fixed = corrected(law, optima)
    assert fixed.key == "saturating+" and "answer.residuals" in fixed.formula
    for o in optima:  # through every swept optimum
        assert fixed.lr(o.batch_size) == pytest.approx(o.lr, rel=1e-9)
    assert fixed.lr(91) == pytest.approx(1.0, rel=0.1)  # between 64 and 128, both at 1.0
    assert fixed.lr(512) == pytest.approx(law.lr(512), rel=1e-9)  # an octave past the end: the law alone
    assert fixed.with_shift(-1.0).lr(91) == pytest.approx(fixed.lr(91) / 91, rel=1e-9)


def test_leaving_out_a_batch_size_scores_what_its_prediction_would_have_cost():
    from services.results.laws import Holdout, loo_regret

    curve = tuple((math.log(lr), math.log(loss)) for lr, loss in ((0.1, 0.30), (0.2, 0.20), (0.4, 0.25)))
    h = Holdout(32, 0.2, (0.15, 0.3), {"a": 0.2, "b": 0.4, "c": 10.0}, curve)
    assert h.regret("a") == pytest.approx(0.0)
    assert h.regret("b") == pytest.approx(0.25)
    assert h.regret("c") == pytest.approx(0.25)  # beyond the curve: its end value
    assert loo_regret([h, h], "b") == pytest.approx(0.25)
