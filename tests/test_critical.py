"""The critical batch size from learning curves, and the batch size recommended from it: on
synthetic curves whose B_crit is known, and on curves the sweep cannot read it from."""

import json
import math

import numpy as np
import pytest

from search_spaces.scaling import derive
from services.errors import ExportError
from services.results import critical as cr
from services.results.analysis import TrialRecord, summarize
from services.results.recommend import NoRecommendation, recommend
from services.results.settings import settings_doc
from tests.test_cli import run_cli

BATCHES = (8, 16, 32, 64, 128, 256, 512)
SPEEDS = {0.5: 0.6, 1.0: 1.0, 2.0: 0.75}
"""LR factor -> how fast its curve falls: the middle LR is each batch size's best."""


def sweep(b_crit=100.0, every=20, total=20000, batches=BATCHES, slow=None, noise=0.0):
    """Records and val-loss curves in which reaching loss level L takes E = a(L) (1 + B / b_crit)
    samples at the best LR: the frontier E = E_min + S_min B with B_crit = ``b_crit`` at every
    target. ``slow``: {batch size: factor} slowing that batch size's curves (breaks the model)."""
    records, curves = [], {}
    rng = np.random.default_rng(0)
    for b in batches:
        for factor, speed in SPEEDS.items():
            hp = derive(batch_size=b, reduction="mean", optimizer="sgd", lr_per_sample=1e-3 * factor)
            speed *= (slow or {}).get(b, 1.0) * math.exp(noise * rng.normal())
            xs = np.arange(0, total + 1, every, dtype=float)
            ys = 1.0 + 2.0 * np.exp(-speed * xs / (500.0 * (1 + b / b_crit)))
            run = f"r{b}-{factor}"
            curves[run] = list(zip(xs.tolist(), ys.tolist()))
            records.append(
                TrialRecord(run, run, "FINISHED", hp, val_loss=float(ys[-1]), samples_seen=total, initial_loss=3.0)
            )
    (group,) = summarize(records)
    return group, records, curves


def test_recovers_a_known_critical_batch_size_within_its_interval():
    c = cr.critical_batch(*sweep(b_crit=100.0))
    assert [f.fraction for f in c.frontiers] == list(cr.TARGET_FRACTIONS)
    for f in c.frontiers:
        assert f.verdict.startswith("B_crit ="), f.verdict
        lo, hi = f.interval
        assert lo <= 100 <= hi and hi / lo < 2, (f.b_crit, f.interval)
        assert f.b_crit == pytest.approx(100, rel=0.1)
        assert f.loo_error < 0.05
    assert c.headline is c.frontiers[-1]
    assert c.advice.startswith("past B ~ 1") and "saves < 25% of the steps" in c.advice
    doc = cr.critical_doc(c)
    assert doc["b_crit"] == c.headline.b_crit and len(doc["frontiers"]) == 4
    assert [p["batch_size"] for p in doc["frontiers"][0]["per_batch_size"]] == list(BATCHES)
    json.dumps(doc)  # finite or None throughout: it goes into an export


@pytest.mark.parametrize("b_crit", [30.0, 300.0])
def test_the_estimate_follows_the_curves(b_crit):
    head = cr.critical_batch(*sweep(b_crit=b_crit)).headline
    assert head is not None and head.b_crit == pytest.approx(b_crit, rel=0.15)


def test_perfect_scaling_is_a_lower_bound_not_a_number():
    c = cr.critical_batch(*sweep(b_crit=1e7))  # steps halve with every doubling up to B = 512
    assert c.headline is None
    assert all(f.verdict.startswith("above: B_crit >") for f in c.frontiers), [f.verdict for f in c.frontiers]
    assert "up to B = 512 every doubling still buys nearly half the steps" in c.advice


def test_no_scaling_at_all_is_an_upper_bound():
    c = cr.critical_batch(*sweep(b_crit=0.5))  # equal steps at every B: larger batches only cost samples
    assert c.headline is None
    assert all(f.verdict.startswith("below: B_crit <") for f in c.frontiers), [f.verdict for f in c.frontiers]


def test_a_frontier_that_misses_a_left_out_batch_size_is_inconclusive():
    c = cr.critical_batch(*sweep(slow={32: 0.25, 128: 3.0}))
    assert c.headline is None
    assert any("the frontier fitted without a batch size misses" in f.verdict for f in c.frontiers)
    assert not any(f.conclusive for f in c.frontiers if f.loo_error > cr.LOO_TOLERANCE)


def test_evaluations_an_epoch_apart_cannot_locate_the_targets():
    c = cr.critical_batch(*sweep(every=10000))
    assert c.headline is None
    assert any("evaluate more often (budget.report_every_samples)" in f.verdict for f in c.frontiers), [
        f.verdict for f in c.frontiers
    ]


def test_too_few_batch_sizes_say_so():
    c = cr.critical_batch(*sweep(batches=(16, 64)))
    assert c.frontiers == [] and c.note.startswith("inconclusive: 2 batch sizes with curves (need 3)")
    assert c.advice == c.note and cr.critical_doc(c)["b_crit"] is None


def test_samples_to_interpolates_between_the_bracketing_evaluations():
    curve = [(0.0, 3.0), (100.0, 2.0), (200.0, 1.0)]
    assert cr.samples_to(curve, 1.5) == (150.0, 100.0, 200.0)
    assert cr.samples_to(curve, 3.0) == (0.0, 0.0, 0.0)
    assert cr.samples_to(curve, 0.5) is None
    assert cr.samples_to([(0.0, 3.0), (100.0, math.nan), (200.0, 1.0)], 2.0) == (100.0, 0.0, 200.0)


def _constant(b_crit=100.0, **kw):
    g, records, curves = sweep(b_crit=b_crit, **kw)
    c = cr.critical_batch(g, records, curves)
    space = {
        "reference_batch_size": 8,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "weight_decay": 0.0,
        "decoupled_decay": False,
        "decay_tie": "fixed",
        "momentum": 0.9,
        "warmup_samples": 0,
    }
    return {
        "optimizer": "sgd",
        "reduction": "mean",
        "schedule": "constant",
        "k": 1.0,
        "lr_per_sample": 1e-3,
        "formula": "lr = 0.001 * batch_size**1",
        "batch_sizes_swept": list(BATCHES),
        "settings": settings_doc("sgd", "mean", "linear", space, 4000, 0, 8e-3),
        "batch": cr.critical_doc(c),
    }


def test_recommend_meets_the_budget_it_was_given():
    const = _constant()
    head = const["batch"]["frontiers"][-1]
    s_min, e_min = head["s_min"], head["e_min"]
    balanced = recommend(const)
    assert balanced.batch_size == round(const["batch"]["b_crit"])
    assert balanced.steps == pytest.approx(2 * s_min, rel=0.02) and balanced.samples == pytest.approx(
        2 * e_min, rel=0.02
    )
    within = recommend(const, sample_budget=3 * e_min)  # B = 2 B_crit
    assert within.samples <= 3 * e_min and within.batch_size == pytest.approx(2 * balanced.batch_size, abs=2)
    one_more = within.batch_size + 1
    assert e_min + s_min * one_more > 3 * e_min  # the largest B within the budget: fewest steps
    fast = recommend(const, step_budget=3 * s_min)  # B = B_crit / 2
    assert fast.steps <= 3 * s_min and s_min + e_min / (fast.batch_size - 1) > 3 * s_min
    with pytest.raises(NoRecommendation, match="no batch size reaches val loss .* within 10 samples"):
        recommend(const, sample_budget=10)
    with pytest.raises(NoRecommendation, match="within 1 steps"):
        recommend(const, step_budget=1)
    with pytest.raises(ExportError, match="--sample-budget: must be a positive number, got -5"):
        recommend(const, sample_budget=-5)
    huge = recommend(const, sample_budget=1e9)  # the goal alone: far above the swept 8..512
    assert huge.batch_size == 512 and huge.note.startswith("the goal alone gives B = ")
    assert "outside the swept 8..512; this is the largest measured batch size" in huge.note
    assert huge.samples <= 1e9 and within.note == ""
    tiny = recommend(const, step_budget=1e6)  # any B meets it: the smallest is below 8
    assert tiny.batch_size == 8 and "smallest measured" in tiny.note


def test_recommend_refuses_an_inconclusive_export():
    with pytest.raises(NoRecommendation, match="no batch size to recommend: above: B_crit >"):
        recommend(_constant(b_crit=1e7))
    with pytest.raises(NoRecommendation, match="exported before version 4"):
        recommend({"optimizer": "sgd", "reduction": "mean"})


def test_batch_command_prints_the_batch_size_with_its_whole_setting(tmp_path):
    const = _constant()
    doc = {"sweep": "s", "parent_run_id": "p", "constants": [const]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    e_min = const["batch"]["frontiers"][-1]["e_min"]
    out = run_cli("batch", path, "--sample-budget", 3 * e_min, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    first, second, third, fourth = out.stdout.splitlines()
    b = recommend(const, sample_budget=3 * e_min).batch_size
    assert first == f"batch_size = {b} (sgd, mean: fewest steps within {3 * e_min:g} samples)"
    assert second.startswith("  to reach val loss ") and "B_crit = 1" in second
    assert third.startswith(f"  at B = {b}: lr={1e-3 * b:.6g} weight_decay=0 warmup_samples=0")
    assert fourth.startswith("  past B ~ ")
    as_json = json.loads(run_cli("batch", path, "--json", cwd=tmp_path).stdout)
    assert as_json["batch_size"] == round(const["batch"]["b_crit"]) and as_json["lr"] == pytest.approx(
        1e-3 * as_json["batch_size"]
    )
    impossible = run_cli("batch", path, "--step-budget", 1, cwd=tmp_path)
    assert impossible.returncode == 1 and len(impossible.stderr.strip().splitlines()) == 1
    assert "no batch size reaches val loss" in impossible.stderr
    both = run_cli("batch", path, "--step-budget", 1, "--sample-budget", 5, cwd=tmp_path)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    inconclusive = {**doc, "constants": [_constant(b_crit=1e7)]}
    path.write_text(json.dumps(inconclusive))
    refused = run_cli("batch", path, cwd=tmp_path)
    assert refused.returncode == 1 and "no batch size to recommend: above: B_crit >" in refused.stderr


def test_frontier_plot_draws_each_group(tmp_path):
    from services.results.plot_frontier import write_frontier

    measured, bounded = cr.critical_batch(*sweep()), cr.critical_batch(*sweep(b_crit=1e7))
    path = write_frontier("s", [measured, bounded, cr.critical_batch(*sweep(batches=(8, 16)))], tmp_path)
    assert path == tmp_path / "s-frontier.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_frontier("s", [cr.critical_batch(*sweep(batches=(8, 16)))], tmp_path / "none") is None


def test_curves_read_in_bulk_equal_the_curves_read_run_by_run(tmp_path, monkeypatch):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from services import metrics as m
    from services.results import records as rec

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    experiment = client.create_experiment("curves")
    trials = []
    for i in range(5):
        run = client.create_run(experiment).info.run_id
        points = [Metric(m.VAL_LOSS, 3.0 - 0.1 * i - 0.2 * s, 0, 100 * s) for s in range(1, 4 + i)]
        client.log_batch(run, metrics=points)
        hp = derive(batch_size=16, reduction="mean", optimizer="sgd", lr_per_sample=1e-3)
        trials.append(TrialRecord(run, str(i), "FINISHED", hp, val_loss=1.0, initial_loss=3.0))
    trials.append(TrialRecord("failed", "x", "FAILED", hp))
    monkeypatch.setattr(rec, "BULK_RUNS", 2)  # several chunks
    bulk = rec.loss_curves(client, trials)
    monkeypatch.setattr(client._tracking_client.store, "get_metric_history_bulk", None)
    assert bulk == rec.loss_curves(client, trials)
    assert sorted(len(c) for c in bulk.values()) == [4, 5, 6, 7, 8] and "failed" not in bulk
    assert all(c[0] == (0.0, 3.0) for c in bulk.values())


def test_transfer_table_lists_each_export_s_regret_per_held_out_batch_size(tmp_path):
    from services.results.transfer_table import markdown

    def export(name, rule, regrets):
        checks = [
            {"batch_size": b, "regret": r, "regret_interval": [0.0, r] if r is not None else [None, None]}
            for b, r in regrets.items()
        ]
        const = {"optimizer": "adamw", "reduction": "mean", "formula": f"lr = {name}", "settings": {"rule": rule}}
        const["transfer"] = {"verdict": f"verdict {name}", "checks": checks}
        return {"sweep": name, "constants": [const]}

    table = markdown([export("a", "sqrt", {8: 0.0, 256: 0.074}), export("b", "sde", {32: 0.01, 256: None})])
    head, rule, first, second = table.splitlines()
    assert head == "| sweep | optimizer | rule | answer | regret at B=8 | regret at B=32 | regret at B=256 | verdict |"
    assert first == "| a | adamw mean | sqrt | `lr = a` | 0.0% [0.0%, 0.0%] | - | 7.4% [0.0%, 7.4%] | verdict a |"
    assert second == "| b | adamw mean | sde | `lr = b` | - | 1.0% [0.0%, 1.0%] | diverged | verdict b |"
    path = tmp_path / "a.json"
    path.write_text(json.dumps(export("a", "sqrt", {8: 0.0})))
    out = run_cli("table", path, cwd=tmp_path)
    assert out.returncode == 0 and "| a | adamw mean | sqrt |" in out.stdout


def test_b_simple_is_read_where_each_frontier_reached_its_target():
    c = cr.critical_batch(*sweep())
    histories = {p.run_id: [(0.0, 10.0), (40000.0, 410.0)] for f in c.frontiers for p in f.points}  # 10 + s / 100
    with_noise = cr.with_b_simple(c, histories)
    for f in with_noise.frontiers:
        expected = float(np.median([10 + p.samples / 100 for p in f.points]))
        assert f.b_simple == pytest.approx(expected)
    assert with_noise.b_simple_at_target == with_noise.frontiers[-1].b_simple
    assert with_noise.advice.endswith(f"; B_simple there ~ {with_noise.b_simple_at_target:.3g})")
    assert cr.critical_doc(with_noise)["frontiers"][0]["b_simple_at_target"] == with_noise.frontiers[0].b_simple
    assert cr.with_b_simple(c, {}).b_simple_at_target is None and c.advice.endswith(")")
    assert cr.value_at([(0.0, 1.0), (10.0, math.nan), (20.0, 3.0)], 10.0) == 2.0
