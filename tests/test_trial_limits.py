"""Trials that hang or cannot learn, through real Ray Tune and MLflow: they end, FAILED or
diverged, with their reason, and the sweep goes on."""

import math
import time

import pytest
from mlflow.tracking import MlflowClient

from services import metrics as m
from services.spec import parse_spec
from tests.conftest import spec_dict

pytestmark = pytest.mark.integration  # real Ray, MLflow and processes: `make test-fast` skips these


def _children(client, outcome):
    return client.search_runs([outcome.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'trial'")


@pytest.mark.parametrize("in_c", [True, False], ids=["stuck-in-C", "stuck-in-Python"])
def test_a_hanging_trial_fails_with_timed_out_after_n_s(in_c, tmp_path, ray_session, monkeypatch):
    from services.orchestration.runner import run_sweep

    monkeypatch.chdir(tmp_path)
    spec = parse_spec(
        spec_dict(
            name="hangs",
            workload={"name": "tests.plugin_workloads:hangs", "params": {"in_c": in_c}},
            searcher={"kind": "random", "num_trials": 2, "max_concurrent": 2, "seed": 0},
            budget={"epochs": 2},
            noise={"enabled": False},
            failures={"trial_timeout_s": 3, "max_retries": 1},
        )
    )
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
    from services.orchestration.runner import run_sweep

    monkeypatch.chdir(tmp_path)
    spec = parse_spec(
        spec_dict(
            name="nan",
            workload={"name": "tests.plugin_workloads:nan_at_init"},
            budget={"epochs": 1},
            noise={"enabled": False},
        )
    )
    outcome = run_sweep(spec, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    children = _children(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), outcome)
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags[m.TAG_DIVERGED] == "true"
        assert math.isfinite(child.data.metrics[m.OBJECTIVE]), child.data.metrics


def test_a_trial_killed_by_rays_memory_monitor_fails_and_the_sweep_goes_on(tmp_path):
    """A local Ray whose memory monitor acts at 12% of this machine's memory, and trials that
    each hold a GiB more per step: the monitor kills them; the driver must not crash."""
    import os
    import subprocess
    import sys

    import yaml

    from tests.conftest import ROOT

    spec = spec_dict(
        name="oom",
        workload={"name": "tests.plugin_workloads:memory_hog", "params": {"gib": 1.0}},
        searcher={"kind": "random", "num_trials": 2, "max_concurrent": 1, "seed": 0},
        budget={"epochs": 1},
        noise={"enabled": False},
        failures={"max_retries": 0},
    )
    (tmp_path / "oom.yaml").write_text(yaml.safe_dump(spec))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_memory_usage_threshold": "0.12",
        "RAY_memory_monitor_refresh_ms": "100",
    }
    env.pop("RAY_ADDRESS", None)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "sweep", "oom.yaml", "--tracking-uri", uri],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = done.stdout + done.stderr
    assert "Caught unexpected exception" not in out, out[-3000:]
    assert done.returncode == 1 and "2 failed" in out, out[-3000:]  # every trial failed: exit 1
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("oom")
    children = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'trial'")
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FAILED"
        assert "killed by Ray's memory monitor" in child.data.tags[m.TAG_ERROR], child.data.tags[m.TAG_ERROR]
