"""The MLflow tracker against a real SQLite store: how a tracker that Tune pickled or
snapshotted finds its sweep's parent run again after a driver restart."""

import pickle
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from search_spaces.scaling import derive
from services import metrics as m
from services.errors import TrackingError
from services.spec import load_spec
from services.tracking.callback import PARENT_TAG, MlflowTracker
from tests.conftest import SWEEPS

CONFIG = derive(batch_size=32, reduction="mean", optimizer="sgd", lr_per_sample=1e-3).as_config()


def _tracker(uri: str, ray_run: str) -> MlflowTracker:
    return MlflowTracker(uri, load_spec(SWEEPS / "smoke.yaml"), 1000, parent_tags={m.TAG_RAY_RUN: ray_run})


def _report(tracker: MlflowTracker, trial_id: str, samples: int) -> None:
    trial = SimpleNamespace(trial_id=trial_id, config=CONFIG, last_result={m.SAMPLES_SEEN: samples}, error_file=None)
    tracker.on_trial_result(iteration=1, trials=[trial], trial=trial, result={m.SAMPLES_SEEN: samples, m.VAL_LOSS: 1.0})
    tracker.on_trial_complete(iteration=2, trials=[trial], trial=trial)


def _as_pickled_before_the_store_opened(tracker: MlflowTracker) -> MlflowTracker:
    state = tracker.__getstate__()
    state.update(experiment_id=None, parent_run_id=None)  # what ``Tuner()`` may pickle
    restored = MlflowTracker.__new__(MlflowTracker)
    restored.__setstate__(state)
    return restored


def test_a_tracker_pickled_before_its_store_opened_finds_its_parent_by_ray_run(tracking_uri):
    first = _tracker(tracking_uri, "/ray/smoke-1")
    first.wait_open()
    other = _tracker(tracking_uri, "/ray/smoke-2")  # a later submission of the same sweep
    other.wait_open()
    restored = _as_pickled_before_the_store_opened(first)
    _report(restored, "t0", 1000)
    restored.close()

    run = MlflowClient(tracking_uri).search_runs([first.experiment_id], filter_string=f"tags.`{m.TAG_TRIAL_ID}` = 't0'")
    assert [r.data.tags[PARENT_TAG] for r in run] == [first.parent_run_id]
    assert restored.parent_run_id == first.parent_run_id != other.parent_run_id


def test_tune_snapshots_carry_the_parent_run(tracking_uri):
    tracker = _tracker(tracking_uri, "/ray/smoke-1")
    tracker.wait_open()
    state = tracker.get_state()
    restored = pickle.loads(pickle.dumps(tracker))
    restored.set_state(state)
    assert (restored.experiment_id, restored.parent_run_id) == (tracker.experiment_id, tracker.parent_run_id)


def test_a_restored_tracker_without_its_parent_run_stops_the_sweep(tracking_uri):
    tracker = _tracker(tracking_uri, "/ray/smoke-1")
    tracker.wait_open()
    MlflowClient(tracking_uri).delete_run(tracker.parent_run_id)
    restored = _as_pickled_before_the_store_opened(tracker)
    _report(restored, "t0", 1000)
    restored.close()
    with pytest.raises(TrackingError, match="no MLflow parent run for Ray run /ray/smoke-1"):
        restored.on_step_begin(iteration=3, trials=[])


# Ray's memory monitor reports a kill by two routes; both must give the trial the same reason.
_RAY_ADVICE = (
    "Refer to the documentation on how to address the out of memory issue: https://docs.ray.io/en/"
    "latest/ray-observability/user-guides/debug-apps/debug-memory.html. Consider provisioning more "
    "memory on this node or reducing task parallelism by requesting more CPUs per task. To adjust the "
    "kill threshold, set the environment variable `RAY_memory_usage_threshold` when starting Ray."
)
_AS_ACTOR_DEATH = (
    "Failure # 1 (occurred at 2026-11-22_10-00-00)\n"
    "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.\n"
    "\tclass_name: ImplicitFunc\n\tactor_id: 5d1e\n\tpid: 4242\n"
    "1 worker(s) were killed due to the node running low on memory. "
    "Memory on the node (IP: 10.0.0.2, ID: 9f3a) was 2.95GB used / 2.82GB limit (1.046)\n" + _RAY_ADVICE + "\n"
)
_AS_TASK_ERROR = "Failure # 1\nTraceback (most recent call last):\n  ...\nValueError: bad shape\n"


@pytest.mark.parametrize(
    "text, summary",
    [
        (_AS_ACTOR_DEATH, "killed by Ray's memory monitor (node memory 2.95GB used / 2.82GB limit)"),
        (_AS_TASK_ERROR, "ValueError: bad shape"),
        ("", "trial failed"),
    ],
    ids=["memory-kill-as-actor-death", "task-error", "no-error-file-text"],
)
def test_a_failed_trial_gets_one_line_naming_its_cause(text, summary, tmp_path):
    from services.tracking.callback import error_summary

    error_file = tmp_path / "error.txt"
    error_file.write_text(text)
    assert error_summary(SimpleNamespace(error_file=str(error_file))).startswith(summary)


def test_a_run_created_just_before_the_driver_died_gets_its_params_when_resumed(tracking_uri):
    first = _tracker(tracking_uri, "/ray/smoke-1")
    first.wait_open()
    trial = SimpleNamespace(trial_id="t0", config=CONFIG, last_result={}, error_file=None)
    # the run exists; its params were staged for the next write when the driver was killed
    first._writer.submit(first.runs.start, "t0", CONFIG)
    first._writer.submit(lambda: first.runs._staged.clear())
    first._writer.flush()
    client = MlflowClient(tracking_uri)
    [run] = client.search_runs([first.experiment_id], filter_string=f"tags.`{m.TAG_TRIAL_ID}` = 't0'")
    assert run.data.params == {}
    resumed = pickle.loads(pickle.dumps(first))  # what a resumed sweep's Tune restores
    resumed.on_trial_start(iteration=1, trials=[trial], trial=trial)
    _report(resumed, "t0", 1000)
    resumed.close()
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["lr_per_sample"] == str(CONFIG["lr_per_sample"]) and run.data.params["workload"]


def test_artifacts_of_a_local_store_go_beside_its_database_not_into_the_working_folder(tmp_path, monkeypatch):
    """MLflow's own default artifact root is ``./mlruns`` in the process's folder: a tracker opened
    from anywhere (a test, a notebook) would leave one there."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    store = tmp_path / "store"
    store.mkdir()
    tracker = _tracker(f"sqlite:///{store / 'mlflow.db'}", "/ray/smoke-1")
    tracker.wait_open()
    tracker.close()
    experiment = MlflowClient(f"sqlite:///{store / 'mlflow.db'}").get_experiment(tracker.experiment_id)
    assert experiment.artifact_location == (store / "mlartifacts" / "smoke").as_uri()
    assert list(cwd.iterdir()) == []
