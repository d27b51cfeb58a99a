"""One sweep submission's runs in MLflow: the parent run, a child run per trial, and what each
child holds. Every write the tracker makes goes through here, on the writer's thread; nothing
here knows Ray Tune (the Tune callback in :mod:`services.tracking.callback` calls in).

A trial's run carries its hyperparameters as params, its metrics at ``step = samples_seen``,
and tags for its trial id and how it ended. Writes are staged per run and written with one
``log_batch`` (see :meth:`SweepRuns.write_staged`). A resumed submission adopts the runs a
previous driver created, by trial id and by configuration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from search_spaces.scaling import TrialHParams, config_key
from services import metrics as m
from services.errors import TrackingError
from services.tracking.store import (
    PARENT_TAG,
    SUPERSEDED_WHY,
    child_runs,
    client_for,
    ensure_experiment,
    start_parent_run,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from services.spec import SweepSpec


@dataclass
class _Staged:
    """One run's writes waiting for the next ``log_batch`` (MLflow takes at most 1000 metrics,
    100 params and 100 tags per call)."""

    metrics: list = field(default_factory=list)
    params: list = field(default_factory=list)
    tags: dict = field(default_factory=dict)  # key -> RunTag: the last value of a key wins


class SweepRuns:
    """The runs of one submission of sweep ``spec.name`` in the store at ``tracking_uri``."""

    def __init__(self, tracking_uri: str, spec: "SweepSpec", ray_run: str = "") -> None:
        self.tracking_uri = tracking_uri
        self.spec = spec
        self.sweep = spec.name
        self.workload = spec.workload.label
        self.ray_run = ray_run
        """The Ray run directory: a tag unique to the submission, to find its parent run again."""
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._client: "MlflowClient | None" = None
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._open: set[str] = set()  # runs this submission must still end
        self._last_step: dict[str, int] = {}  # run id -> last samples_seen logged
        self._node_tagged: set[str] = set()
        self._staged: dict[str, _Staged] = {}  # run id -> metrics, params, tags not yet written
        self._previous: dict[str, str] = {}  # run id -> status, for runs a previous driver created
        self._unclaimed: dict[tuple, list[str]] = {}  # configuration -> previous runs no trial took yet
        self._paramless: set[str] = set()  # previous runs created just before their driver died
        self._loaded = False

    @property
    def client(self) -> "MlflowClient":
        if self._client is None:
            self._client = client_for(self.tracking_uri, create=True)
        return self._client

    # -- the submission ------------------------------------------------------------------------

    def open(self, spec_path: str, parent_tags: dict[str, str]) -> None:
        """Create (or find) the sweep's experiment and start the submission's parent run."""
        try:
            self.experiment_id = ensure_experiment(self.client, self.sweep)
            self.parent_run_id = start_parent_run(self.client, self.experiment_id, self.spec, spec_path, parent_tags)
        except TrackingError:
            raise
        except Exception as err:  # the store took the experiment but not the run: same verdict
            summary = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise TrackingError(f"MLflow tracking store {self.tracking_uri} is not usable: {summary}") from None

    def _find_parent(self) -> None:
        """Runs restored from a pickle taken before the store opened find their parent run by
        the Ray run it belongs to."""
        experiment = self.client.get_experiment_by_name(self.sweep)
        runs = (
            []
            if experiment is None or not self.ray_run
            else self.client.search_runs(
                [experiment.experiment_id], filter_string=f"tags.`{m.TAG_RAY_RUN}` = '{self.ray_run}'", max_results=1
            )
        )
        if experiment is None or not runs:
            raise TrackingError(f"sweep {self.sweep!r}: no MLflow parent run for Ray run {self.ray_run}")
        self.experiment_id, self.parent_run_id = experiment.experiment_id, runs[0].info.run_id

    def _ids(self) -> tuple[str, str]:
        """(experiment id, parent run id) of the submission, once the store is open."""
        if self.experiment_id is None or self.parent_run_id is None:
            raise TrackingError(f"sweep {self.sweep!r}: its MLflow parent run is not known yet")
        return self.experiment_id, self.parent_run_id

    def _load_existing(self) -> None:
        """Adopt the child runs a previous driver of this sweep created (resume after a crash):
        by trial id for the trials Tune restores, by configuration for the trials the restored
        searcher asks for again (those the dead driver started after Tune's last snapshot)."""
        if self._loaded:
            return
        if self.parent_run_id is None:
            self._find_parent()
        self._loaded = True
        experiment_id, parent_run_id = self._ids()
        for run in child_runs(self.client, experiment_id, parent_run_id):
            run_id, status = run.info.run_id, run.info.status
            trial_id = run.data.tags.get(m.TAG_TRIAL_ID)
            if trial_id:
                self._runs[trial_id] = run_id
            self._last_step[run_id] = int(run.data.metrics.get(m.SAMPLES_SEEN, -1))
            self._previous[run_id] = status
            if run.data.params:
                self._unclaimed.setdefault(config_key(run.data.params), []).append(run_id)
            else:  # its params were still staged when the driver died: the trial that adopts it logs them
                self._paramless.add(run_id)
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

    # -- a trial's run -------------------------------------------------------------------------

    def start(self, trial_id: str, config: dict) -> str:
        """The run of trial ``trial_id``: adopted from a previous driver, or created."""
        from mlflow.entities import RunTag

        self._load_existing()
        run_id = self._runs.get(trial_id)
        adopted = self._unclaimed.get(config_key(config))
        if run_id is None and adopted:  # this configuration already has a run: continue it, no second run
            run_id = self._runs[trial_id] = adopted[0]
            self._stage(run_id).tags[m.TAG_TRIAL_ID] = RunTag(m.TAG_TRIAL_ID, trial_id)
        if run_id is not None:
            self._claim(run_id)
            if self._previous.get(run_id, "FINISHED") != "FINISHED" and run_id not in self._open:
                self.client.update_run(run_id, status="RUNNING")  # interrupted before: it goes on now
                self._open.add(run_id)
            if run_id in self._paramless:
                self._paramless.discard(run_id)
                self._stage_params(run_id, config)
            return run_id
        hp = TrialHParams.from_config(config)
        run = self.client.create_run(
            self._ids()[0],
            run_name=f"{hp.optimizer}-{hp.reduction}-B{hp.batch_size}-{trial_id}",
            tags={
                PARENT_TAG: self.parent_run_id,
                m.TAG_SWEEP: self.sweep,
                m.TAG_ROLE: "trial",
                m.TAG_TRIAL_ID: trial_id,
            },
        )
        self._stage_params(run.info.run_id, config)
        self._runs[trial_id] = run.info.run_id
        self._open.add(run.info.run_id)
        return run.info.run_id

    def _stage_params(self, run_id: str, config: dict) -> None:
        from mlflow.entities import Param

        params = {**TrialHParams.from_config(config).as_params(), "workload": self.workload}
        self._stage(run_id).params.extend(Param(key, params[key]) for key in m.PARAMS)

    def result(self, trial_id: str, config: dict, result: dict) -> None:
        """Stage one result; :meth:`write_staged` writes it."""
        from mlflow.entities import Metric, RunTag

        run_id = self.start(trial_id, config)
        step = int(result[m.SAMPLES_SEEN])
        if step <= self._last_step.get(run_id, -1):
            return  # logged before a resume rewound this trial to an older checkpoint
        self._last_step[run_id] = step
        now = int(time.time() * 1000)
        staged = self._stage(run_id)
        reported = [(key, value) for key, value in result.items() if m.is_reported(key)]
        staged.metrics.extend(Metric(key, float(value), now, step) for key, value in reported)
        if result.get(m.DIVERGED):
            staged.tags[m.TAG_DIVERGED] = RunTag(m.TAG_DIVERGED, "true")
        if m.NODE_ID in result and run_id not in self._node_tagged:
            staged.tags[m.TAG_NODE_ID] = RunTag(m.TAG_NODE_ID, str(result[m.NODE_ID]))
            self._node_tagged.add(run_id)

    def _stage(self, run_id: str) -> _Staged:
        return self._staged.setdefault(run_id, _Staged())

    def write_staged(self, only: str | None = None) -> None:
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

    def end(self, trial_id: str, config: dict, status: str, tags: dict[str, str]) -> None:
        """End a trial's run with ``status`` and ``tags``, once everything staged is written."""
        from mlflow.entities import RunTag

        run_id = self.start(trial_id, config)
        self._stage(run_id).tags.update((k, RunTag(k, v)) for k, v in tags.items())
        self.write_staged(run_id)
        if run_id in self._open:
            self.client.set_terminated(run_id, status=status)
            self._open.discard(run_id)

    def unfinished(self, trial_id: str, config: dict) -> bool:
        """Whether a previous driver left ``trial_id``'s run unfinished: RUNNING and still open,
        or never created (the driver died with the trial's first writes still queued)."""
        self._load_existing()
        run_id = self._runs.get(trial_id)
        if run_id is None:
            adopted = self._unclaimed.get(config_key(config))
            run_id = adopted[0] if adopted else None
        return run_id is None or (self._previous.get(run_id) == "RUNNING" and run_id in self._open)

    def recover(self, trial_id: str, config: dict, results: list[dict], tags: dict[str, str]) -> None:
        """A trial that ended under a dead driver that left its run RUNNING or never created it
        (killed in its last writes): log what the run lacks of ``results`` (what Tune
        recorded), creating the run if need be, and finish it."""
        if not self.unfinished(trial_id, config):
            return
        for result in results:
            self.result(trial_id, config, result)
        self.end(trial_id, config, "FINISHED", tags)

    def close(self, status: str) -> None:
        """Write what is staged and end every run still open with ``status``."""
        self.write_staged()
        self._load_existing()
        for run_id in list(self._open):
            self.client.set_terminated(run_id, status=status)
            self._open.discard(run_id)

    def claim_trials(self, trial_ids: list[str]) -> None:
        """Trials Tune restored as already ended: their runs are the sweep's."""
        self._load_existing()
        for trial_id in trial_ids:
            if trial_id in self._runs:
                self._claim(self._runs[trial_id])

    def mark_superseded(self) -> None:
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

    def end_submission(self, status: str) -> None:
        self.client.set_terminated(self._ids()[1], status=status)
