"""The MLflow adapter: the only place samplewise writes to MLflow.

It runs in the Tune driver as a ``tune.Callback`` (one writer process, so a SQLite store is
safe and workers on other nodes need no route to the tracking server). A sweep submission
is one parent run; each trial is a child run nested under it with the trial's params, its
metrics at ``step = samples_seen``, and tags for its trial id and how it ended.
MLflow is imported lazily: importing samplewise does not import MLflow. Opening the store and
the queries shared with the rest of samplewise live in :mod:`services.store` (no Ray there).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from ray import tune

from services import metrics as m
from services.errors import TrackingError
from services.store import (  # noqa: F401 - the store's names, for callers that hold a tracker
    PARENT_TAG,
    SUPERSEDED_WHY,
    check_store,
    child_runs,
    client_for,
    ensure_experiment,
    recorded_results,
    start_parent_run,
    trial_key,
)
from services.writer import Writer

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from services.spec import SweepSpec


def error_summary(trial) -> str:
    """The last line of a failed trial's traceback (e.g. ``ValueError: bad shape``)."""
    text = ""
    try:  # Tune writes the error to the trial's local directory before calling back
        if trial.error_file:
            with open(trial.error_file) as f:
                text = f.read()
    except OSError:
        pass
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Failure #")]
    return (lines[-1] if lines else "trial failed")[:500]


@dataclass
class _Staged:
    """One run's writes waiting for the next ``log_batch`` (MLflow takes at most 1000 metrics,
    100 params and 100 tags per call)."""

    metrics: list = field(default_factory=list)
    params: list = field(default_factory=list)
    tags: dict = field(default_factory=dict)  # key -> RunTag: the last value of a key wins


class MlflowTracker(tune.Callback):
    """Writes every trial of one sweep to MLflow as a child run of ``parent_run_id``.

    Callbacks copy what they need from the trial and hand the write to a background writer;
    :meth:`close` waits until everything is written. The writer's first job creates the
    experiment and the parent run (``experiment_id``, ``parent_run_id``), so the store opens
    while Tune starts; if it cannot, the next Tune step raises the :class:`TrackingError`.
    """

    LINGER_S = 1.0
    """Longest a reported metric waits before it is written (the MLflow UI lags by this much)."""

    def __init__(
        self,
        tracking_uri: str,
        spec: "SweepSpec",
        budget_samples: int,
        *,
        spec_path: str = "",
        parent_tags: Mapping[str, str] | None = None,
        artifact_location: str | None = None,
    ):
        self.tracking_uri = tracking_uri
        self.budget_samples = budget_samples
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.spec = spec
        self.sweep = spec.name
        self.workload = spec.workload.name
        self._parent_tags = dict(parent_tags or {})
        self._client: "MlflowClient | None" = None
        self._opened = threading.Event()
        self.error: TrackingError | None = None
        self._reset()
        # The store is opened on the writer thread while Ray and Tune start (importing MLflow's
        # SQL store alone takes about 1.5 s; a new SQLite store needs its tables too: 2-4 s).
        self._writer.submit(self._open_store, spec_path, self._parent_tags, artifact_location)

    def _open_store(self, spec_path: str, parent_tags: dict[str, str], artifact_location: str | None) -> None:
        """Create (or find) the sweep's experiment and its parent run: the writer's first job."""
        try:
            self.experiment_id = ensure_experiment(self.client, self.sweep, artifact_location)
            parent = start_parent_run(self.client, self.experiment_id, self.spec, spec_path)
            for key, value in parent_tags.items():
                self.client.set_tag(parent, key, value)
            self.parent_run_id = parent
        except TrackingError as err:
            self.error = err
        except Exception as err:  # the store took the experiment but not the run: same verdict
            summary = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            self.error = TrackingError(f"MLflow tracking store {self.tracking_uri} is not usable: {summary}")
        finally:
            self._opened.set()

    def wait_open(self) -> None:
        """Block until the experiment and parent run exist; raise the store's error if they cannot."""
        self._opened.wait()
        if self.error is not None:
            raise self.error

    def _reset(self) -> None:
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._open: set[str] = set()  # runs this tracker must still end
        self._last_step: dict[str, int] = {}  # run id -> last samples_seen logged
        self._node_tagged: set[str] = set()
        self._staged: dict[str, dict[str, list]] = {}  # run id -> metrics, params, tags not yet written
        self._previous: dict[str, str] = {}  # run id -> status, for runs a previous driver created
        self._unclaimed: dict[tuple, list[str]] = {}  # configuration -> previous runs no trial took yet
        self._loaded = False
        self._writer = Writer(self._write_staged, self.LINGER_S, f"MLflow {self.tracking_uri}")
        if self.tracking_uri.startswith(("http://", "https://")):
            # MLflow retries a request for minutes by default; the writer retries on its own terms
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

    _PICKLED = (
        "tracking_uri",
        "budget_samples",
        "experiment_id",
        "parent_run_id",
        "spec",
        "sweep",
        "workload",
        "_parent_tags",
    )

    def __getstate__(self):
        # Tune pickles its callbacks inside ``Tuner()``, often before the store has opened: the
        # ids may still be None here. They reach a restored tracker through :meth:`get_state`
        # (Tune's experiment snapshots) or, failing that, :meth:`_find_parent`.
        return {k: self.__dict__[k] for k in self._PICKLED}

    def __setstate__(self, state):
        # a restored tracker reconnects and reads the runs back from MLflow, the one record of
        # what was already logged
        self.__dict__.update(state)
        self._client = None
        self._opened = threading.Event()
        self._opened.set()
        self.error = None
        self._reset()

    def get_state(self) -> dict | None:
        """Tune saves this with every experiment snapshot and hands it to :meth:`set_state` on restore."""
        if self.parent_run_id is None:
            return None
        return {"experiment_id": self.experiment_id, "parent_run_id": self.parent_run_id}

    def set_state(self, state: dict) -> None:
        self.experiment_id, self.parent_run_id = state["experiment_id"], state["parent_run_id"]

    def _find_parent(self) -> None:
        """A tracker restored from a pickle taken before its store opened finds its parent run
        by the Ray run it belongs to (a tag unique to the submission)."""
        ray_run = self._parent_tags.get(m.TAG_RAY_RUN)
        experiment = self.client.get_experiment_by_name(self.sweep)
        runs = (
            []
            if experiment is None or not ray_run
            else self.client.search_runs(
                [experiment.experiment_id], filter_string=f"tags.`{m.TAG_RAY_RUN}` = '{ray_run}'", max_results=1
            )
        )
        if not runs:  # nothing to write to: stop the writes and, at Tune's next step, the sweep
            self.error = TrackingError(f"sweep {self.sweep!r}: no MLflow parent run for Ray run {ray_run}")
            raise self.error
        self.experiment_id, self.parent_run_id = experiment.experiment_id, runs[0].info.run_id

    def _load_existing(self) -> None:
        """Adopt the child runs a previous driver of this sweep created (resume after a crash):
        by trial id for the trials Tune restores, by configuration for the trials the restored
        searcher asks for again (those the dead driver started after Tune's last snapshot)."""
        if self._loaded:
            return
        self._loaded = True
        if self.parent_run_id is None:
            self._find_parent()
        for run in child_runs(self.client, self.experiment_id, self.parent_run_id):
            run_id, status = run.info.run_id, run.info.status
            trial_id = run.data.tags.get(m.TAG_TRIAL_ID)
            if trial_id:
                self._runs[trial_id] = run_id
            self._last_step[run_id] = int(run.data.metrics.get(m.SAMPLES_SEEN, -1))
            self._previous[run_id] = status
            self._unclaimed.setdefault(trial_key(run.data.params), []).append(run_id)
            if status == "RUNNING":  # cut off by the crash: continue it or end it
                self._open.add(run_id)
        for runs in self._unclaimed.values():  # finished runs first: a configuration asked for again takes that one
            runs.sort(key=lambda r: self._previous[r] != "FINISHED")

    def _claim(self, run_id: str) -> None:
        for key, runs in list(self._unclaimed.items()):
            if run_id in runs:
                runs.remove(run_id)
                if not runs:
                    del self._unclaimed[key]

    @property
    def client(self) -> "MlflowClient":
        if self._client is None:
            self._client = client_for(self.tracking_uri, create=True)
        return self._client

    # -- writes, on the writer thread ---------------------------------------------------------

    def _start(self, trial_id: str, config: dict) -> str:
        from mlflow.entities import Param, RunTag

        self._load_existing()
        run_id = self._runs.get(trial_id)
        adopted = self._unclaimed.get(trial_key(config))
        if run_id is None and adopted:  # this configuration already has a run: continue it, no second run
            run_id = self._runs[trial_id] = adopted[0]
            self._stage(run_id).tags[m.TAG_TRIAL_ID] = RunTag(m.TAG_TRIAL_ID, trial_id)
        if run_id is not None:
            self._claim(run_id)
            if self._previous.get(run_id, "FINISHED") != "FINISHED" and run_id not in self._open:
                self.client.update_run(run_id, status="RUNNING")  # interrupted before: it goes on now
                self._open.add(run_id)
            return run_id
        config = dict(config, workload=self.workload)
        name = f"{config.get('optimizer')}-{config.get('reduction')}-B{config.get('batch_size')}-{trial_id}"
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={
                PARENT_TAG: self.parent_run_id,
                m.TAG_SWEEP: self.sweep,
                m.TAG_ROLE: "trial",
                m.TAG_TRIAL_ID: trial_id,
            },
        )
        self._stage(run.info.run_id).params.extend(Param(key, str(config[key])) for key in m.PARAMS if key in config)
        self._runs[trial_id] = run.info.run_id
        self._open.add(run.info.run_id)
        return run.info.run_id

    def _write_result(self, trial_id: str, config: dict, result: dict) -> None:
        """Stage one result; :meth:`_write_staged` writes it within ``LINGER_S``."""
        from mlflow.entities import Metric, RunTag

        run_id = self._start(trial_id, config)
        step = int(result[m.SAMPLES_SEEN])
        if step <= self._last_step.get(run_id, -1):
            return  # logged before a resume rewound this trial to an older checkpoint
        self._last_step[run_id] = step
        now = int(time.time() * 1000)
        staged = self._stage(run_id)
        staged.metrics.extend(Metric(key, float(result[key]), now, step) for key in m.REPORTED if key in result)
        if result.get(m.DIVERGED):
            staged.tags[m.TAG_DIVERGED] = RunTag(m.TAG_DIVERGED, "true")
        if m.NODE_ID in result and run_id not in self._node_tagged:
            staged.tags[m.TAG_NODE_ID] = RunTag(m.TAG_NODE_ID, str(result[m.NODE_ID]))
            self._node_tagged.add(run_id)

    def _stage(self, run_id: str) -> "_Staged":
        return self._staged.setdefault(run_id, _Staged())

    def _write_staged(self, only: str | None = None) -> None:
        """Write what is staged (for run ``only``, or for all): one ``log_batch`` per run, more
        only past MLflow's per-call limits. A failed write leaves the rest staged."""
        for run_id in [only] if only else list(self._staged):
            staged = self._staged.pop(run_id, None)
            if staged is None:
                continue
            try:
                metrics, params, tags = staged.metrics, staged.params, list(staged.tags.values())
                while metrics or params or tags:
                    self.client.log_batch(run_id, metrics=metrics[:900], params=params[:100], tags=tags[:100])
                    metrics, params, tags = metrics[900:], params[100:], tags[100:]
            except Exception:  # what was not written stays staged, for the writer's next try
                staged.metrics, staged.params = metrics, params
                staged.tags = {t.key: t for t in tags}
                self._staged[run_id] = staged
                raise

    def _write_end(self, trial_id: str, config: dict, status: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        run_id = self._start(trial_id, config)
        self._stage(run_id).tags.update((k, RunTag(k, v)) for k, v in tags.items())
        self._write_staged(run_id)
        if run_id in self._open:
            self.client.set_terminated(run_id, status=status)
            self._open.discard(run_id)

    def _write_close(self, status: str) -> None:
        self._write_staged()
        self._load_existing()
        for run_id in list(self._open):
            self.client.set_terminated(run_id, status=status)
            self._open.discard(run_id)

    def _claim_trials(self, trial_ids: list[str]) -> None:
        self._load_existing()
        for trial_id in trial_ids:
            if trial_id in self._runs:
                self._claim(self._runs[trial_id])

    def _write_superseded(self) -> None:
        """After a resumed sweep completed: a finished run that no trial of the restored sweep
        asked for again (TPE, told other results, chose differently) is not one of the sweep's
        configurations. It is marked KILLED with a tag saying why, so no analysis counts it."""
        from mlflow.entities import RunTag

        for runs in self._unclaimed.values():
            for run_id in runs:
                if self._previous.get(run_id) == "FINISHED":
                    self.client.log_batch(run_id, tags=[RunTag(m.TAG_SUPERSEDED, SUPERSEDED_WHY)])
                    self.client.update_run(run_id, status="KILLED")
        self._unclaimed.clear()

    # -- Tune callbacks, on Tune's loop: copy what is needed, queue the write -----------------

    def _submit(self, fn, *args) -> None:
        self._writer.submit(self._unless_failed, fn, *args)

    def _unless_failed(self, fn, *args) -> None:
        if self.error is None:  # with no experiment or parent run there is nothing to write to
            fn(*args)

    def on_step_begin(self, iteration, trials, **info):
        if self.error is not None:  # the store could not be opened: stop before trials run untracked
            raise self.error

    def on_trial_start(self, iteration, trials, trial, **info):
        self._submit(self._start, trial.trial_id, dict(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._submit(self._write_result, trial.trial_id, dict(trial.config), dict(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        diverged = bool(last.get(m.DIVERGED))
        stopped = not diverged and last.get(m.SAMPLES_SEEN, 0) < self.budget_samples
        tags = {m.TAG_DIVERGED: str(diverged).lower(), m.TAG_STOPPED_EARLY: str(stopped).lower()}
        self._submit(self._write_end, trial.trial_id, dict(trial.config), "FINISHED", tags)

    def on_trial_error(self, iteration, trials, trial, **info):
        tags = {m.TAG_ERROR: error_summary(trial)}
        self._submit(self._write_end, trial.trial_id, dict(trial.config), "FAILED", tags)

    def on_experiment_end(self, trials, **info):
        # trials Tune restored as already ended never start again: their runs are the sweep's
        self._submit(self._claim_trials, [t.trial_id for t in trials])
        self.close("KILLED")

    def close(self, status: str = "KILLED") -> None:
        """Write everything queued, then mark every trial run still open with ``status``."""
        self._submit(self._write_close, status)
        self._writer.flush()

    def finish(self, status: str) -> None:
        """End the submission: close every trial run (KILLED if still open), then mark the
        parent run ``status``; raises the store's error if it could never be opened."""
        self.close("KILLED")
        self.wait_open()
        if status == "FINISHED":
            self._submit(self._write_superseded)
        self._submit(lambda: self.client.set_terminated(self.parent_run_id, status=status))
        self._writer.flush()
        if self._writer.lost:
            raise TrackingError(
                f"{self._writer.lost} writes to MLflow {self.tracking_uri} were lost (it did not "
                f"answer for {self._writer.RETRY_S:g} s); Ray Tune's results of every trial are "
                f"under {self._parent_tags.get(m.TAG_RAY_RUN, 'the Ray run directory')}"
            )
