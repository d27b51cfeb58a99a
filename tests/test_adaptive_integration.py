"""The adaptive searcher on real Ray Tune and MLflow: the same seed proposes the same trials
(its rounds packed), and a driver killed mid-sweep resumes to one run per configuration."""

import os
import signal
import time
from collections import Counter

import pytest
import yaml
from mlflow.tracking import MlflowClient

from search_spaces.scaling import config_key
from tests.test_resume import _children, _cli, _start_and_wait

pytestmark = pytest.mark.integration  # real Ray, MLflow and processes: `make test-fast` skips these

MAX_TRIALS = 14
SPEC = {
    "name": "adaptive_small",
    "workload": {"name": "digits_mlp", "params": {"hidden": 32}},
    "searcher": {
        "kind": "adaptive",
        "max_trials": MAX_TRIALS,
        "first_round_lrs": 4,  # round 0: B = 16, 32, 64 at 4 LRs; then 2 LRs where lr* is widest
        "round_lrs": 2,
        "max_concurrent": 2,
        "seed": 0,
    },
    "space": {
        "batch_sizes": [16, 32, 64],
        "lr_per_sample": {"low": 1e-3, "high": 3e-1},
        "reductions": ["mean", "sum"],
        "optimizers": ["sgd"],
    },
    "budget": {"epochs": 4, "report_every_samples": 2000},
    "asha": {"enabled": False},
    "failures": {"checkpoint_every_s": 0.5, "snapshot_every_s": 1},
}


def _sweep(folder, spec):
    folder.mkdir()
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    driver = _cli("sweep", "spec.yaml", "--tracking-uri", uri, cwd=folder, log=folder / "driver.log")
    assert driver.wait(timeout=300) == 0, (folder / "driver.log").read_text()[-3000:]
    client = MlflowClient(uri)
    runs = _children(client, client.get_experiment_by_name(spec["name"]).experiment_id)
    return [config_key(r.data.params) for r in runs], (folder / "driver.log").read_text()


def test_two_sweeps_with_the_same_seed_train_the_same_configurations(tmp_path):
    first, log = _sweep(tmp_path / "a", SPEC)
    again, log_again = _sweep(tmp_path / "b", SPEC)
    assert "adaptive search, ASHA off, packs of up to 4" in log
    assert Counter(first) == Counter(again) and len(set(first)) == len(first)
    assert 12 < len(first) <= MAX_TRIALS  # round 0's 12, then at least one more round
    stop = [line for line in log.splitlines() if line.startswith("adaptive search:")]
    assert stop and stop == [line for line in log_again.splitlines() if line.startswith("adaptive search:")]
    assert f"of at most {MAX_TRIALS} configurations" in stop[0]


def test_a_killed_adaptive_sweep_resumes_to_one_finished_run_per_configuration(tmp_path):
    spec = {**SPEC, "resources": {"pack_size": 1}}
    driver, client, uri = _start_and_wait(tmp_path, spec, min_finished=5)  # inside round 0
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    time.sleep(1)
    experiment = client.get_experiment_by_name(spec["name"])
    before = [r for r in _children(client, experiment.experiment_id) if r.info.status == "FINISHED"]
    assert len(before) < MAX_TRIALS
    resumed = _cli("resume", "resume.yaml", "--tracking-uri", uri, cwd=tmp_path, log=tmp_path / "resume.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    after = _children(client, experiment.experiment_id)
    assert all(r.info.status in ("FINISHED", "KILLED") for r in after), "a run was left RUNNING"
    done = [r for r in after if r.info.status == "FINISHED"]
    keys = [config_key(r.data.params) for r in done]
    assert len(set(keys)) == len(keys), "a configuration was trained (and counted) twice"
    assert 12 < len(done) <= MAX_TRIALS
    for run in before:  # what had finished was kept, not trained again
        assert client.get_run(run.info.run_id).info.end_time == run.info.end_time
    # the resumed search proposed what an uninterrupted one does
    uninterrupted, _ = _sweep(tmp_path / "whole", spec)
    assert Counter(keys) == Counter(uninterrupted)
