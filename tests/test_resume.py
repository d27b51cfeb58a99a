"""Interrupt a real sweep driver (Ctrl-C, SIGTERM, SIGKILL), resume it, and count the MLflow runs:
for any moment of the interruption, one FINISHED run per configuration with its whole curve."""

import math
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from search_spaces.scaling import config_key
from services import metrics as m
from services.orchestration.reaper import descendants
from tests.conftest import cli_env

pytestmark = pytest.mark.integration  # real Ray, MLflow and processes: `make test-fast` skips these

NUM_TRIALS = 8
SPEC = {
    "name": "resumable",
    "workload": {"name": "digits_mlp", "params": {"hidden": 32}},
    "searcher": {"kind": "random", "num_trials": NUM_TRIALS, "max_concurrent": 2, "seed": 0},
    "space": {
        "batch_sizes": [16, 32],
        "lr_per_sample": {"low": 1e-3, "high": 1e-2},
        "reductions": ["mean"],
        "optimizers": ["sgd"],
    },
    "budget": {"epochs": 8, "report_every_samples": 2000},
    "asha": {"enabled": False},
    # checkpoint and snapshot often, so the kill lands between checkpoints of running trials
    "failures": {"checkpoint_every_s": 0.5, "snapshot_every_s": 1},
}


def _cli(*args, cwd, log, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=cwd,
        env=cli_env(),
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **kw,
    )


def _children(client, experiment_id):
    return client.search_runs([experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'trial'")


def _start_and_wait(tmp_path, spec, min_finished):
    """Start the sweep driver (in its own process group, like a terminal's foreground job) and
    return once ``min_finished`` trials have finished."""
    (tmp_path / "resume.yaml").write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    driver = _cli("sweep", "resume.yaml", "--tracking-uri", uri, cwd=tmp_path, log=tmp_path / "driver.log")
    finished, deadline = [], time.monotonic() + 180
    while time.monotonic() < deadline and len(finished) < min_finished and driver.poll() is None:
        time.sleep(0.3)
        try:
            experiment = client.get_experiment_by_name(spec["name"])
        except Exception:  # the driver is still creating the store's tables
            continue
        if experiment is not None:
            finished = [r for r in _children(client, experiment.experiment_id) if r.info.status == "FINISHED"]
    if len(finished) < min_finished:
        os.killpg(driver.pid, signal.SIGKILL)
        pytest.fail("the sweep never got going: " + (tmp_path / "driver.log").read_text()[-3000:])
    return driver, client, uri


def _still_running(processes):
    """Those of {pid: start time} that still run (not zombies)."""
    out = []
    for pid, start in processes.items():
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if fields[19] == start and fields[0] != "Z":
            out.append((pid, open(f"/proc/{pid}/cmdline").read().replace("\0", " ")[:80]))
    return out


def _resume_and_check(tmp_path, client, uri, spec, finished_before):
    resumed = _cli("resume", "resume.yaml", "--tracking-uri", uri, cwd=tmp_path, log=tmp_path / "resume.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    experiment = client.get_experiment_by_name(spec["name"])
    parents = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'parent'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    after = _children(client, experiment.experiment_id)
    assert all(r.info.status in ("FINISHED", "KILLED") for r in after), "a run was left RUNNING"
    done = [r for r in after if r.info.status == "FINISHED"]
    keys = [config_key(r.data.params) for r in done]
    assert len(done) == spec["searcher"]["num_trials"], f"{len(done)} FINISHED runs for {NUM_TRIALS} trials"
    assert len(set(keys)) == len(keys), "a configuration was trained (and counted) twice"
    # finished runs were kept, not run again
    for run in finished_before:
        assert client.get_run(run.info.run_id).info.end_time == run.info.end_time, run.info.run_name
    # every curve is whole: each report once, from the first interval to the budget
    for run in done:
        steps = [p.step for p in client.get_metric_history(run.info.run_id, m.VAL_LOSS)]
        assert steps == _report_steps(int(run.data.params["batch_size"])), (run.info.run_name, steps)
    return after


def _report_steps(batch_size, n_train=1078, interval=2000):
    """The sample counts at which an uninterrupted trial reports (services.training.train.run_trial)."""
    total, samples, next_report, steps = math.ceil(SPEC["budget"]["epochs"] * n_train), 0, interval, []
    while samples < total:
        samples += batch_size
        if samples < total and (samples < next_report or total - samples < interval / 2):
            continue
        steps.append(samples)
        next_report = (samples // interval + 1) * interval
    return steps


def test_sigkill_at_any_moment_then_resume_keeps_one_finished_run_per_configuration(tmp_path):
    # no experiment snapshot after the start: every trial that finished before the kill is unknown
    # to the restored Tune state, the worst moment for a kill
    # in trial packs of 2: the kill lands while packs run (they resume from their checkpoints),
    # after others finished (their members are replayed from MLflow)
    # (a wider model: packs train fast, and the kill must land before the last one ends)
    spec = {
        **SPEC,
        "workload": {"name": "digits_mlp", "params": {"hidden": 1024}},
        "failures": {"checkpoint_every_s": 0, "snapshot_every_s": 3600},
        "resources": {"pack_size": 2},
    }
    driver, client, uri = _start_and_wait(tmp_path, spec, min_finished=3)
    assert "packs of up to 2 (4 Tune trials for 8 configurations)" in (tmp_path / "driver.log").read_text()
    started = descendants(driver.pid, exclude=-1)  # the local Ray it started, trial workers included
    assert len(started) >= 3
    driver.kill()  # SIGKILL to the driver alone: nothing of it may run on
    driver.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _still_running(started):
        time.sleep(0.5)
    assert not _still_running(started), _still_running(started)
    experiment = client.get_experiment_by_name(spec["name"])
    before = _children(client, experiment.experiment_id)
    finished_before = [r for r in before if r.info.status == "FINISHED"]
    assert len(finished_before) < NUM_TRIALS
    _resume_and_check(tmp_path, client, uri, spec, finished_before)


def test_ctrl_c_exits_nonzero_leaves_the_sweep_resumable_and_resume_finishes_it(tmp_path):
    # one configuration per trial: the interrupted trials continue from their checkpoints (packs
    # resuming from theirs: the SIGKILL test above)
    spec = {**SPEC, "resources": {"pack_size": 1}}
    driver, client, uri = _start_and_wait(tmp_path, spec, min_finished=2)
    os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends to the foreground group
    status = driver.wait(timeout=120)
    log = (tmp_path / "driver.log").read_text()
    assert status == 130, log[-3000:]
    assert "interrupted" in log and "make resume" in log, log[-2000:]
    # quiet by default: none of Ray's and Tune's banners and hints on the terminal
    for noise in ("Token authentication", "View detailed results", "TensorBoard", "Configuration for experiment"):
        assert noise not in log, noise
    experiment = client.get_experiment_by_name(SPEC["name"])
    parent = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'parent'")[0]
    assert parent.info.status == "KILLED"
    before = _children(client, experiment.experiment_id)
    assert all(r.info.status != "RUNNING" for r in before)
    finished_before = [r for r in before if r.info.status == "FINISHED"]
    assert len(finished_before) < NUM_TRIALS
    _resume_and_check(tmp_path, client, uri, spec, finished_before)
