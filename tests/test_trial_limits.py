"""Trials that hang or cannot learn, through real Ray Tune and MLflow: they end, FAILED or
diverged, with their reason, and the sweep goes on."""

import math
import time

import pytest
from mlflow.tracking import MlflowClient

from services import metrics as m
from services.spec import parse_spec
from tests.conftest import spec_dict


def _children(client, outcome):
    return client.search_runs([outcome.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'trial'")


@pytest.mark.parametrize("in_c", [True, False], ids=["stuck-in-C", "stuck-in-Python"])
def test_a_hanging_trial_fails_with_timed_out_after_n_s(in_c, tmp_path, ray_session, monkeypatch):
    from services.runner import run_sweep

    monkeypatch.chdir(tmp_path)
    spec = parse_spec(spec_dict(
        name="hangs", workload={"name": "tests.plugin_workloads:hangs", "params": {"in_c": in_c}},
        searcher={"kind": "random", "num_trials": 2, "max_concurrent": 2, "seed": 0},
        budget={"epochs": 2}, noise={"enabled": False}, failures={"trial_timeout_s": 3, "max_retries": 1}))
    start = time.monotonic()
    outcome = run_sweep(spec, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert time.monotonic() - start < 120
    assert outcome.num_errors == 2
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    children = _children(client, outcome)
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FAILED"
        assert "timed out after 3 s" in child.data.tags[m.TAG_ERROR], child.data.tags[m.TAG_ERROR]
    assert client.get_run(outcome.parent_run_id).info.status == "FINISHED"


def test_a_nan_initial_loss_reports_a_finite_objective(tmp_path, ray_session, monkeypatch):
    from services.runner import run_sweep

    monkeypatch.chdir(tmp_path)
    spec = parse_spec(spec_dict(name="nan", workload={"name": "tests.plugin_workloads:nan_at_init"},
                                budget={"epochs": 1}, noise={"enabled": False}))
    outcome = run_sweep(spec, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    children = _children(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), outcome)
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags[m.TAG_DIVERGED] == "true"
        assert math.isfinite(child.data.metrics[m.OBJECTIVE]), child.data.metrics
