"""The scaling-rule estimators on synthetic U-curves with a known answer."""

import math

import numpy as np
import pytest

from services.fit import fit_power_law, optimal_lr, valid_range, verdict


def u_curve(true_lr, rng, n=9, width=10.0, noise=0.005):
    lrs = true_lr * np.geomspace(1 / width, width, n)
    return lrs, 0.3 + 0.1 * np.log(lrs / true_lr) ** 2 + rng.normal(0, noise, n)


def optima_for(true_lr_of_b, batch_sizes=(8, 16, 32, 64, 128, 256, 512), seed=0):
    rng = np.random.default_rng(seed)
    return [optimal_lr(b, *u_curve(true_lr_of_b(b), rng)) for b in batch_sizes]


def test_optimal_lr_finds_the_vertex_between_grid_points():
    rng = np.random.default_rng(1)
    lrs, losses = u_curve(3.3e-3, rng, noise=0.0)
    lrs = lrs * 1.17  # the true optimum is not on the grid
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


@pytest.mark.parametrize("k", [1.0, 0.5, 0.0])
def test_power_law_recovers_k_with_an_interval_covering_it(k):
    law = fit_power_law(optima_for(lambda b: 1e-3 * b**k))
    assert law.k == pytest.approx(k, abs=0.1)
    assert law.k_lo <= k <= law.k_hi
    assert verdict(law, k).startswith("holds")


def test_verdict_rejects_the_wrong_rule():
    law = fit_power_law(optima_for(lambda b: 1e-3 * b**0.5))
    assert verdict(law, 1.0).startswith("does not hold")


def test_valid_range_stops_where_lr_star_flattens():
    law, above = valid_range(optima_for(lambda b: 1e-3 * min(b, 64)))
    assert max(law.batch_sizes) in (64, 128)
    assert [o.batch_size for o in above] == [b for b in (128, 256, 512) if b > max(law.batch_sizes)]
    assert law.k_lo <= 1.0 <= law.k_hi


def test_no_flattening_keeps_every_batch_size():
    law, above = valid_range(optima_for(lambda b: 2e-4 * b))
    assert above == [] and len(law.batch_sizes) == 7


def test_too_few_batch_sizes_is_inconclusive():
    law = fit_power_law(optima_for(lambda b: 1e-3 * b, batch_sizes=(8, 16)))
    assert verdict(law, 1.0).startswith("inconclusive")
    assert fit_power_law([]) is None and math.isnan(float("nan"))


def test_an_interval_covering_a_neighbouring_rule_is_inconclusive():
    from services.fit import PowerLaw

    wide = PowerLaw(k=0.7, k_lo=0.39, k_hi=1.04, c=1e-3, c_lo=1e-3, c_hi=1e-3, batch_sizes=(8, 16, 32, 64))
    assert verdict(wide, 0.5).startswith("inconclusive") and "also 1" in verdict(wide, 0.5)
    narrow = PowerLaw(k=0.55, k_lo=0.4, k_hi=0.7, c=1e-3, c_lo=1e-3, c_hi=1e-3, batch_sizes=(8, 16, 32, 64))
    assert verdict(narrow, 0.5).startswith("holds")
    assert verdict(narrow, 1.0).startswith("does not hold")
