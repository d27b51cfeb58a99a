"""A driver killed after Tune saved its last state but before MLflow got the last writes: Tune
restores every trial as ended and never runs them again, so the resumed sweep writes what the
dead driver had not from Tune's own record of each trial (its result.json): the last results of
runs it left RUNNING, and whole runs it never created."""

import pytest
from mlflow.tracking import MlflowClient

from services import metrics as m
from services.orchestration.runner import resume_sweep, run_sweep
from services.spec import parse_spec
from services.tracking.runs import SweepRuns
from tests.conftest import spec_dict

pytestmark = pytest.mark.integration  # real Ray, MLflow and processes: `make test-fast` skips these

SPEC = spec_dict(
    name="lastflush",
    searcher={"kind": "grid", "max_concurrent": 2, "seed": 0},
    space={
        "batch_sizes": [32, 64],
        "lr_per_sample": {"low": 1e-3, "high": 1e-2, "grid_points": 2},
        "reductions": ["mean"],
        "optimizers": ["sgd"],
    },
    budget={"samples": 3000, "report_every_samples": 1000},
    asha={"enabled": False},
)


@pytest.mark.parametrize("pack_size", [1, 2])
def test_a_resume_writes_what_a_driver_killed_in_its_last_flush_had_not(tmp_path, ray_session, pack_size):
    spec = parse_spec({**SPEC, "resources": {"pack_size": pack_size}})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        # the driver dies at its last flush: each trial's last result never reaches MLflow, no
        # run (nor the parent) is ended, and the B=64 trials, queued behind the others, have no
        # run yet; Tune's state says every trial finished
        start, result = SweepRuns.start, SweepRuns.result

        def unwritten(config, r=None):
            return int(config["batch_size"]) == 64 or (r is not None and r[m.SAMPLES_SEEN] >= 3000)

        mp.setattr(SweepRuns, "start", lambda self, t, c: None if unwritten(c) else start(self, t, c))
        mp.setattr(SweepRuns, "result", lambda self, t, c, r: None if unwritten(c, r) else result(self, t, c, r))
        for name in ("end", "end_submission", "mark_superseded"):
            mp.setattr(SweepRuns, name, lambda self, *a, **k: None)
        # what it had staged below that is written before run_sweep returns (a dead driver writes
        # nothing later; left to the writer's linger, it could land while the resume reads the runs)
        mp.setattr(SweepRuns, "close", lambda self, status: self.write_staged())
        outcome = run_sweep(spec, tracking_uri=uri, stream=open(tmp_path / "sweep.log", "w"))
    client = MlflowClient(uri)
    children = client.search_runs([outcome.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'trial'")
    assert len(children) == 2 and {c.info.status for c in children} == {"RUNNING"}
    assert all(c.data.metrics.get(m.SAMPLES_SEEN, 0) < 3000 for c in children)
    assert {c.data.params["batch_size"] for c in children} == {"32"}

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        resume_sweep(spec, tracking_uri=uri, stream=open(tmp_path / "resume.log", "w"))
    children = client.search_runs([outcome.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'trial'")
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    assert sorted(c.data.params["batch_size"] for c in children) == ["32", "32", "64", "64"]
    for child in children:
        steps = [p.step for p in client.get_metric_history(child.info.run_id, m.VAL_LOSS)]
        assert steps[-1] >= 3000 and len(steps) == len(set(steps)) == 3, steps  # whole, each point once
        assert child.data.tags[m.TAG_DIVERGED] == "false" and child.data.tags[m.TAG_STOPPED_EARLY] == "false"
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
