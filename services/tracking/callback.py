"""The MLflow adapter's Tune side: a ``tune.Callback`` in the Tune driver that copies what each
Tune event carries and queues the write.

It is the only place samplewise writes to MLflow from a sweep: one writer process, so a SQLite
store is safe and workers on other nodes need no route to the tracking server. The writes
themselves (:class:`services.tracking.runs.SweepRuns`) run in order on a background thread
(:class:`services.tracking.writer.Writer`), so Tune's loop never waits on the store.
"""

from __future__ import annotations

import json
import os
import re
import threading
from typing import TYPE_CHECKING, Mapping

from ray import tune
from ray.air.constants import EXPR_RESULT_FILE

from services import metrics as m
from services.errors import TrackingError
from services.tracking.runs import SweepRuns
from services.tracking.store import PARENT_TAG
from services.tracking.writer import Writer

if TYPE_CHECKING:
    from services.spec import SweepSpec

__all__ = ["PARENT_TAG", "MlflowTracker", "error_summary", "memory_kill_reason"]


_MEMORY_KILL = re.compile(r"running low on memory|memory pressure \(OOM\)|OutOfMemoryError")
_MEMORY_USAGE = re.compile(r"was ([\d.]+GB used / [\d.]+GB limit)")


def memory_kill_reason(text: str) -> str | None:
    """The reason for a trial whose worker Ray's memory monitor killed, or None if ``text`` (an
    error message or traceback) says nothing of it.

    Ray reports the kill by more than one route: as ``OutOfMemoryError`` from the trial's task,
    or as the actor's death (``ActorDiedError``) whose message ends with Ray's advice. Both carry
    the node's usage ("was 2.9GB used / 3.0GB limit"), which the reason keeps."""
    if not _MEMORY_KILL.search(text):
        return None
    usage = _MEMORY_USAGE.search(text)
    return (
        "killed by Ray's memory monitor (node memory "
        f"{usage.group(1) if usage else 'nearly full'}); give the trial less to hold"
    )


def error_summary(trial) -> str:
    """One line for a failed trial: the memory monitor's kill (:func:`memory_kill_reason`), else
    the last line of its traceback (e.g. ``ValueError: bad shape``)."""
    text = ""
    try:  # Tune writes the error to the trial's local directory before calling back
        if trial.error_file:
            with open(trial.error_file) as f:
                text = f.read()
    except OSError:
        pass
    reason = memory_kill_reason(text)
    if reason:
        return reason
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Failure #")]
    return (lines[-1] if lines else "trial failed")[:500]


def tune_results(trial) -> list[dict]:
    """Every result Tune recorded for ``trial``: its ``result.json`` (one JSON object a line)
    in the run's storage, local or remote; [] when there is none."""
    try:
        storage = trial.storage
        with storage.storage_filesystem.open_input_stream(f"{storage.trial_fs_path}/{EXPR_RESULT_FILE}") as f:
            text = f.read().decode()
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, ValueError, AttributeError):
        return []


class MlflowTracker(tune.Callback):
    """Writes every trial of one sweep to MLflow as a child run of the submission's parent run.

    The writer's first job creates the experiment and the parent run (``experiment_id``,
    ``parent_run_id``), so the store opens while Ray and Tune start (importing MLflow's SQL
    store alone takes about 1.5 s; a new SQLite store needs its tables too: 2-4 s). If it
    cannot, the next Tune step raises the :class:`TrackingError`. :meth:`close` waits until
    everything is written.
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
    ):
        self.tracking_uri = tracking_uri
        self.spec = spec
        self.budget_samples = budget_samples
        self._parent_tags = dict(parent_tags or {})
        self._opened = threading.Event()
        self._setup(None, None)
        self._writer.submit(self._open, spec_path)

    def _open(self, spec_path: str) -> None:
        """The writer's first job: the experiment and the parent run."""
        try:
            self._unless_failed(self.runs.open, spec_path, self._parent_tags)
        finally:
            self._opened.set()

    def _setup(self, experiment_id: str | None, parent_run_id: str | None) -> None:
        self.error: TrackingError | None = None
        self._member_last: dict[str, dict] = {}  # a pack member's id -> its last result
        self._ended: set[str] = set()  # runs whose end is queued
        self._started: set[str] = set()  # Tune trials started in this submission
        self.runs = SweepRuns(self.tracking_uri, self.spec, self._parent_tags.get(m.TAG_RAY_RUN, ""))
        self.runs.experiment_id, self.runs.parent_run_id = experiment_id, parent_run_id
        self._writer = Writer(self.runs.write_staged, self.LINGER_S, f"MLflow {self.tracking_uri}")
        if self.tracking_uri.startswith(("http://", "https://")):
            # MLflow retries a request for minutes by default; the writer retries on its own terms
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

    @property
    def experiment_id(self) -> str | None:
        return self.runs.experiment_id

    @property
    def parent_run_id(self) -> str | None:
        return self.runs.parent_run_id

    def wait_open(self) -> None:
        """Block until the experiment and parent run exist; raise the store's error if they cannot."""
        self._opened.wait()
        if self.error is not None:
            raise self.error

    # -- Tune's pickles and snapshots ----------------------------------------------------------

    def __getstate__(self):
        # Tune pickles its callbacks inside ``Tuner()``, often before the store has opened: the
        # ids may still be None here. They reach a restored tracker through :meth:`get_state`
        # (Tune's experiment snapshots) or, failing that, by the Ray run tag of its parent run.
        return {
            "tracking_uri": self.tracking_uri,
            "spec": self.spec,
            "budget_samples": self.budget_samples,
            "_parent_tags": self._parent_tags,
            "experiment_id": self.experiment_id,
            "parent_run_id": self.parent_run_id,
        }

    def __setstate__(self, state):
        # a restored tracker reconnects and reads the runs back from MLflow, the one record of
        # what was already logged
        ids = state.pop("experiment_id"), state.pop("parent_run_id")
        self.__dict__.update(state)
        self._opened = threading.Event()
        self._opened.set()
        self._setup(*ids)

    def get_state(self) -> dict | None:
        """Tune saves this with every experiment snapshot and hands it to :meth:`set_state` on restore."""
        if self.parent_run_id is None:
            return None
        return {"experiment_id": self.experiment_id, "parent_run_id": self.parent_run_id}

    def set_state(self, state: dict) -> None:
        self.runs.experiment_id, self.runs.parent_run_id = state["experiment_id"], state["parent_run_id"]

    # -- Tune callbacks, on Tune's loop: copy what is needed, queue the write -----------------

    def _submit(self, fn, *args) -> None:
        self._writer.submit(self._unless_failed, fn, *args)

    def _unless_failed(self, fn, *args) -> None:
        if self.error is not None:  # with no experiment or parent run there is nothing to write to
            return
        try:
            fn(*args)
        except TrackingError as err:  # the store cannot hold this sweep: stop its writes and the sweep
            self.error = err

    def on_step_begin(self, iteration, trials, **info):
        if self.error is not None:  # the store could not be opened: stop before trials run untracked
            raise self.error

    def on_trial_start(self, iteration, trials, trial, **info):
        self._started.add(trial.trial_id)
        for member, config in m.tracked(trial.trial_id, trial.config):
            self._submit(self.runs.start, member, config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if m.MEMBERS not in result:
            self._submit(self.runs.result, trial.trial_id, dict(trial.config), dict(result))
            return
        members = dict(m.tracked(trial.trial_id, trial.config))
        for j, metrics in result[m.MEMBERS].items():
            member = m.member_id(trial.trial_id, int(j))
            metrics = {**metrics, m.NODE_ID: result.get(m.NODE_ID)} if m.NODE_ID in result else dict(metrics)
            self._member_last[member] = metrics
            self._submit(self.runs.result, member, members[member], metrics)
            if m.ended(metrics, self.budget_samples):
                self._end(member, members[member], "FINISHED", self._end_tags(metrics))  # the pack goes on

    def _end_tags(self, last: Mapping) -> dict[str, str]:
        diverged, stopped = bool(last.get(m.DIVERGED)), m.stopped_early(last, self.budget_samples)
        return {m.TAG_DIVERGED: str(diverged).lower(), m.TAG_STOPPED_EARLY: str(stopped).lower()}

    def _end(self, member: str, config: dict, status: str, tags: dict[str, str]) -> None:
        if member not in self._ended:
            self._ended.add(member)
            self._submit(self.runs.end, member, config, status, tags)

    def on_trial_complete(self, iteration, trials, trial, **info):
        for member, config in m.tracked(trial.trial_id, trial.config):
            last = (trial.last_result or {}) if member == trial.trial_id else self._member_last.get(member, {})
            self._end(member, config, "FINISHED", self._end_tags(last))

    def on_trial_error(self, iteration, trials, trial, **info):
        tags = {m.TAG_ERROR: error_summary(trial)}
        for member, config in m.tracked(trial.trial_id, trial.config):
            self._end(member, config, "FAILED", tags)

    def on_experiment_end(self, trials, **info):
        # trials Tune restored as already ended never start again: their runs are the sweep's,
        # and what a driver killed in its last writes had not logged is in Tune's record
        for trial in trials:
            if trial.status == "TERMINATED" and trial.trial_id not in self._started:
                self._submit(self._recover, trial)
        self._submit(self.runs.claim_trials, [member for t in trials for member, _ in m.tracked(t.trial_id, t.config)])
        self.close("KILLED")

    def _recover(self, trial) -> None:
        """On the writer's thread: write and finish the runs of a trial Tune restored as ended
        that a dead driver left RUNNING or never created, from the trial's ``result.json``
        (Tune's record of every result it got; read only for such a trial, so a large resumed
        sweep reads few)."""
        tracked = m.tracked(trial.trial_id, trial.config)
        if not any(self.runs.unfinished(member, config) for member, config in tracked):
            return
        history: dict[str, list[dict]] = {}
        for result in tune_results(trial):
            if m.MEMBERS in result:
                for j, metrics in result[m.MEMBERS].items():
                    history.setdefault(m.member_id(trial.trial_id, int(j)), []).append(dict(metrics))
            else:
                history.setdefault(trial.trial_id, []).append(result)
        for member, config in tracked:
            if history.get(member):
                self.runs.recover(member, config, history[member], self._end_tags(history[member][-1]))

    def close(self, status: str = "KILLED") -> None:
        """Write everything queued, then mark every trial run still open with ``status``."""
        self._submit(self.runs.close, status)
        self._writer.flush()

    def finish(self, status: str) -> None:
        """End the submission: close every trial run (KILLED if still open), then mark the
        parent run ``status``; raises the store's error if it could never be opened."""
        self.close("KILLED")
        self.wait_open()
        if status == "FINISHED":
            self._submit(self.runs.mark_superseded)
        self._submit(self.runs.end_submission, status)
        self._writer.flush()
        if self._writer.lost:
            raise TrackingError(
                f"{self._writer.lost} writes to MLflow {self.tracking_uri} were lost (it did not "
                f"answer for {self._writer.RETRY_S:g} s); Ray Tune's results of every trial are "
                f"under {self._parent_tags.get(m.TAG_RAY_RUN, 'the Ray run directory')}"
            )
