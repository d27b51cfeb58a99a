"""A user's own training loop (workload.train: package.module:function, ``train(ctx)``) swept
through real Ray Tune and MLflow: tracked, exported, failed with the broken contract named,
and resumed after a kill -9 of the driver."""

import json
import subprocess
import sys
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from search_spaces.scaling import config_key
from services import metrics as m
from tests.conftest import cli_env
from tests.test_resume import _children, _start_and_wait

LOOP_SPEC = {
    "name": "user_loop_test",
    "workload": {"train": "docs.examples.dataloader_loop:train", "params": {"hidden": 32}},
    "searcher": {"kind": "grid", "max_concurrent": 2, "seed": 0},
    "space": {
        "batch_sizes": [32, 64],
        "reductions": ["mean", "sum"],
        "optimizers": ["sgd"],
        "lr_per_sample": {"low": 1e-3, "high": 1e-3, "grid_points": 1},
    },
    "budget": {"samples": 4 * 1437, "report_every_samples": 1437},
    "asha": {"enabled": False},
    "failures": {"checkpoint_every_s": 0, "snapshot_every_s": 3600},
}


def _run(*args, cwd, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _write(tmp_path, spec, name="loop.yaml"):
    (tmp_path / name).write_text(yaml.safe_dump(spec))
    return name


def test_validate_refuses_a_loop_that_is_not_annotated_and_an_epoch_budget(tmp_path):
    bad = {**LOOP_SPEC, "workload": {"train": "tests.plugin_workloads:unannotated_loop"}}
    out = _run("validate", _write(tmp_path, bad), cwd=tmp_path)
    assert (
        out.returncode == 2
        and "workload.train: tests.plugin_workloads:unannotated_loop is not a training loop" in out.stderr
    )
    epochs = {**LOOP_SPEC, "budget": {"epochs": 4}}
    out = _run("validate", _write(tmp_path, epochs), cwd=tmp_path)
    assert out.returncode == 2 and "budget.epochs: a workload.train loop owns its data" in out.stderr, out.stderr
    both = {**LOOP_SPEC, "workload": {"train": LOOP_SPEC["workload"]["train"], "name": "digits_mlp"}}
    out = _run("validate", _write(tmp_path, both), cwd=tmp_path)
    assert (
        out.returncode == 2
        and "workload: give name (a workload) or train (your own training loop), not both" in out.stderr
    ), out.stderr


@pytest.mark.integration
def test_a_loop_that_breaks_the_contract_fails_its_trials_with_the_rule_named(tmp_path):
    spec = {**LOOP_SPEC, "name": "broken_loop", "workload": {"train": "tests.plugin_workloads:loop_without_objective"}}
    spec["failures"] = {"max_retries": 0}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = _run("sweep", _write(tmp_path, spec), "--tracking-uri", uri, cwd=tmp_path)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    client = MlflowClient(uri)
    runs = _children(client, client.get_experiment_by_name("broken_loop").experiment_id)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FAILED"}
    assert all("report: val_loss is required" in r.data.tags[m.TAG_ERROR] for r in runs), runs[0].data.tags


@pytest.mark.integration
def test_a_dataloader_loop_sweep_survives_kill_9_and_resume_with_whole_curves(tmp_path):
    spec = LOOP_SPEC
    (tmp_path / "resume.yaml").write_text(yaml.safe_dump(spec))
    driver, client, uri = _start_and_wait(tmp_path, spec, min_finished=0)
    # kill once a trial is halfway, not once one finished: MLflow shows a finished run up to a
    # second late, and by then the whole sweep had ended once in CI (nothing left to resume)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and driver.poll() is None:
        try:
            experiment = client.get_experiment_by_name(spec["name"])
            runs = _children(client, experiment.experiment_id) if experiment is not None else []
        except Exception:  # the driver is still creating the store's tables
            runs = []
        if any(r.data.metrics.get(m.SAMPLES_SEEN, 0) >= 2 * 1437 for r in runs):
            break
        time.sleep(0.1)
    assert driver.poll() is None, "the sweep ended before it could be killed"
    driver.kill()
    driver.wait()
    time.sleep(2)
    resumed = _run("resume", "resume.yaml", "--tracking-uri", uri, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    experiment = client.get_experiment_by_name(spec["name"])
    runs = _children(client, experiment.experiment_id)
    done = [r for r in runs if r.info.status == "FINISHED"]
    assert len(done) == 4 and len({config_key(r.data.params) for r in done}) == 4
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)
    for run in done:
        assert run.data.params["workload"] == "docs.examples.dataloader_loop:train"
        steps = [p.step for p in client.get_metric_history(run.info.run_id, m.VAL_LOSS)]
        assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] >= 4 * 1437, (run.info.run_name, steps)
        assert len(steps) == 5, steps  # the initial loss, then one report per epoch, none lost or doubled
        assert run.data.metrics[m.UPDATES] > 0 and run.data.metrics[m.DIVERGED] == 0.0
    exported = _run("export", "resume.yaml", "--tracking-uri", uri, "--out-dir", "out", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-2000:]
    doc = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert doc["loss_unit"] == "sample" and doc["constants"], doc.keys()
