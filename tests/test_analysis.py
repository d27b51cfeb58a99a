"""The group summaries on synthetic trial tables: row order, trials that did not learn,
mean and sum giving the same science, range-edge warnings."""

import random

import numpy as np
import pytest

from search_spaces.scaling import derive
from services.results.analysis import TrialRecord, summarize
from services.results.table import format_table

BATCHES = (8, 16, 32, 64, 128, 256)
GRID = np.geomspace(1e-4, 1e-1, 13)


def _loss(lr_mean, batch_size, seed):
    """A U-curve in the mean-equivalent LR with its optimum at 2e-3 * B (linear scaling)."""
    noise = np.random.default_rng([seed, batch_size, int(lr_mean * 1e9)]).normal(0, 0.004)
    return 0.3 + 0.08 * np.log(lr_mean / (2e-3 * batch_size)) ** 2 + noise


def records(reduction="mean", seeds=(0,), cliff_at_chance=False):
    out = []
    for seed in seeds:
        for b in BATCHES:
            for c in GRID:
                hp = derive(batch_size=b, reduction=reduction, optimizer="sgd", lr_per_sample=float(c), seed=seed)
                lr_mean = c * b
                loss = _loss(lr_mean, b, seed)
                diverged = lr_mean > 2e-3 * b * 30
                if cliff_at_chance and lr_mean > 2e-3 * b * 8:  # dead network: at chance, not diverged
                    loss, diverged = 2.30, False
                out.append(
                    TrialRecord(
                        run_id=f"{reduction}-{seed}-{b}-{c:.3g}",
                        trial_id=f"t{len(out)}",
                        status="FINISHED",
                        hp=hp,
                        val_loss=float(loss),
                        samples_seen=1000,
                        diverged=diverged,
                        initial_loss=2.31,
                        b_simple=500.0,
                    )
                )
    return out


def figures(groups):
    return [
        (
            g.verdict,
            g.law.k_lo if g.law else None,
            g.law.k_hi if g.law else None,
            g.answer.formula if g.answer else None,
            [(o.lr, o.lo, o.hi) for o in g.optima],
        )
        for g in groups
    ]


def test_row_order_changes_nothing():
    rows = records(seeds=(0, 1))
    shuffled = rows[:]
    random.Random(4).shuffle(shuffled)
    assert figures(summarize(rows)) == figures(summarize(shuffled))


def test_mean_and_sum_give_the_same_science():
    (mean,) = summarize(records("mean"))
    (total,) = summarize(records("sum"))
    assert mean.verdict.startswith("holds") and total.verdict.startswith("holds")
    # the laws are fitted in the mean-equivalent LR: the same numbers for both reductions
    assert total.law.k == pytest.approx(mean.law.k, abs=1e-9)
    assert (total.law.k_lo, total.law.k_hi) == pytest.approx((mean.law.k_lo, mean.law.k_hi), abs=1e-9)
    assert total.lr_per_sample == pytest.approx(mean.lr_per_sample, rel=1e-9)
    assert mean.answer.source == "rule" and mean.holds_for == (8, 256)
    b = 100
    assert total.answer.for_reduction("sgd", "sum", "linear").lr(b) == pytest.approx(mean.answer.law.lr(b) / b)


def test_a_tied_rule_pools_mean_and_sum_into_one_answer():
    """Identical updates (SGD under the linear rule) are one U-curve per batch size: one group,
    one answer, and each reduction's own lr* shown to agree with the other's."""
    groups = summarize(records("mean", seeds=(0,)) + records("sum", seeds=(1,)))
    (g,) = groups
    assert g.reductions == ("mean", "sum") and g.reduction == "mean+sum"
    assert g.counts["total"] == 2 * len(BATCHES) * len(GRID)
    assert g.agreement and g.reductions_agree
    assert g.answer.law.lr(64) == pytest.approx(2e-3 * 64, rel=0.1)
    assert "mean and sum pooled" in format_table(groups)


def test_trials_at_chance_close_the_u_curve_without_dragging_it():
    (clean,) = summarize(records())
    (cliff,) = summarize(records(cliff_at_chance=True))
    assert cliff.counts["did_not_learn"] > 0 and clean.counts["did_not_learn"] == 0
    for a, b in zip(clean.optima, cliff.optima):
        assert not b.on_edge
        assert b.lr == pytest.approx(a.lr, rel=0.15), b.batch_size
    assert cliff.verdict.startswith("holds")


def test_seeds_widen_nothing_they_should_not_and_count():
    (one,) = summarize(records(seeds=(0,)))
    (three,) = summarize(records(seeds=(0, 1, 2)))
    assert all(o.seeds == 3 for o in three.optima) and all(o.seeds == 1 for o in one.optima)
    assert three.verdict.startswith("holds")


def test_the_table_warns_when_the_best_c_sits_at_a_range_edge():
    top = float(GRID[5])  # 1.8e-3, just below the optimum at 2e-3: the range stops too soon
    rows = [r for r in records() if r.lr_per_sample <= top * 1.0001]
    (g,) = summarize(rows, {"sgd": (1e-4, top)})
    assert g.range_edge == "high"
    table = format_table([g])
    assert "at the high edge" in table and "widen lr_per_sample for sgd upwards" in table
    (g,) = summarize(records(), {"sgd": (1e-4, 1e-1)})
    assert g.range_edge is None and "warning" not in format_table([g])
