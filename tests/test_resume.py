"""Kill a real sweep driver with SIGKILL mid-run, resume it, and count the MLflow runs."""

import os
import signal
import subprocess
import sys
import time

import yaml
from mlflow.tracking import MlflowClient

from services import metrics as m
from tests.conftest import ROOT

SPEC = {
    "name": "resumable",
    "workload": {"name": "digits_mlp", "params": {"hidden": 32}},
    "searcher": {"kind": "random", "num_trials": 8, "max_concurrent": 2, "seed": 0},
    "space": {"batch_sizes": [16, 32], "lr_per_sample": {"low": 1e-3, "high": 1e-2},
              "reductions": ["mean"], "optimizers": ["sgd"]},
    "budget": {"epochs": 12},
    "asha": {"enabled": False},
    # checkpoint and snapshot often, so the kill lands between checkpoints of running trials
    "failures": {"checkpoint_every_s": 0.5, "snapshot_every_s": 1},
}


def _cli(*args, cwd, log, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "services.cli", *args], cwd=cwd, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, **kw)


def _children(client, experiment_id):
    return client.search_runs([experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'trial'")


def test_sigkill_mid_sweep_then_resume_keeps_one_run_per_trial(tmp_path):
    (tmp_path / "resume.yaml").write_text(yaml.safe_dump(SPEC))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "driver.log"
    client = MlflowClient(uri)
    client.search_experiments()  # create the store's tables first: two processes must not both migrate it
    driver = _cli("sweep", "resume.yaml", "--tracking-uri", uri, cwd=tmp_path, log=log, start_new_session=True)
    finished, deadline = [], time.monotonic() + 180
    try:
        while time.monotonic() < deadline and len(finished) < 2:
            time.sleep(0.3)
            experiment = client.get_experiment_by_name("resumable")
            if experiment is not None:
                finished = [r for r in _children(client, experiment.experiment_id) if r.info.status == "FINISHED"]
        assert len(finished) >= 2, "the sweep never got going"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
    experiment = client.get_experiment_by_name("resumable")
    before = {r.data.tags[m.TAG_TRIAL_ID]: r for r in _children(client, experiment.experiment_id)}
    assert len([r for r in before.values() if r.info.status == "FINISHED"]) < SPEC["searcher"]["num_trials"]
    assert any(r.info.status == "RUNNING" for r in before.values()), "nothing was cut off"

    resumed = _cli("resume", "resume.yaml", "--tracking-uri", uri, cwd=tmp_path, log=tmp_path / "resume.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resume.log").read_text()[-3000:]

    parents = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'parent'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    after = _children(client, experiment.experiment_id)
    trial_ids = [r.data.tags[m.TAG_TRIAL_ID] for r in after]
    assert len(trial_ids) == len(set(trial_ids)), "a trial got a second child run"
    done = [r for r in after if r.info.status == "FINISHED"]
    assert len(done) >= SPEC["searcher"]["num_trials"]
    assert all(r.info.status in ("FINISHED", "KILLED") for r in after), "a run was left RUNNING"
    # finished trials were kept, not run again
    for trial_id, run in before.items():
        if run.info.status == "FINISHED":
            assert client.get_run(run.info.run_id).info.end_time == run.info.end_time, trial_id
    # every run's curve has each sample count once: continued trials did not log twice
    for run in after:
        steps = [p.step for p in client.get_metric_history(run.info.run_id, m.SAMPLES_SEEN)]
        assert len(steps) == len(set(steps))
