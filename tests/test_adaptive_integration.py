"""The adaptive searcher on real Ray Tune and MLflow: a driver killed mid-sweep resumes to one run
per configuration, the configurations an uninterrupted sweep with the same seed trains."""

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


def test_a_killed_adaptive_sweep_resumes_to_the_trials_an_uninterrupted_one_with_its_seed_trains(tmp_path):
    # one sweep uninterrupted, one killed inside round 0 and resumed: the same seed proposes the
    # same configurations both ways, each trained once (rounds packed in both)
    whole, log = _sweep(tmp_path / "whole", SPEC)
    assert "adaptive search, ASHA off, packs of up to 4" in log
    assert len(set(whole)) == len(whole) and 12 < len(whole) <= MAX_TRIALS  # round 0's 12, then more
    stop = [line for line in log.splitlines() if line.startswith("adaptive search:")]
    assert len(stop) == 1 and f"of at most {MAX_TRIALS} configurations" in stop[0]

    driver, client, uri = _start_and_wait(tmp_path, SPEC, min_finished=4)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    time.sleep(1)
    experiment = client.get_experiment_by_name(SPEC["name"])
    before = [r for r in _children(client, experiment.experiment_id) if r.info.status == "FINISHED"]
    assert len(before) < len(whole)
    resumed = _cli("resume", "resume.yaml", "--tracking-uri", uri, cwd=tmp_path, log=tmp_path / "resume.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    after = _children(client, experiment.experiment_id)
    assert all(r.info.status in ("FINISHED", "KILLED") for r in after), "a run was left RUNNING"
    keys = [config_key(r.data.params) for r in after if r.info.status == "FINISHED"]
    assert len(set(keys)) == len(keys), "a configuration was trained (and counted) twice"
    assert Counter(keys) == Counter(whole)
    for run in before:  # what had finished was kept, not trained again
        assert client.get_run(run.info.run_id).info.end_time == run.info.end_time
    assert stop[0] in (tmp_path / "resume.log").read_text()  # and it ended on the same rule
