"""The MLflow adapter: the only place samplewise writes to MLflow.

It runs in the Tune driver as a ``tune.Callback`` (one writer process, so a SQLite store is
safe and workers on other nodes need no route to the tracking server). A sweep submission
is one parent run; each trial is a child run nested under it with the trial's params, its
metrics at ``step = samples_seen``, and tags for its trial id and how it ended.
MLflow is imported lazily: importing samplewise does not import MLflow.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Mapping

from ray import tune

from services import metrics as m
from services.errors import TrackingError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from services.spec import SweepSpec

PARENT_TAG = "mlflow.parentRunId"


def client_for(tracking_uri: str) -> "MlflowClient":
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def check_store(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, naming the URI, when a tracking server does not answer its health check."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as err:
        reason = str(getattr(err, "reason", err))
    raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason}); nothing was started")


def ensure_experiment(client: "MlflowClient", name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created if missing (one experiment per sweep name)."""
    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception as err:  # any store failure: unreachable server, bad URI, locked file
        summary = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrackingError(f"MLflow tracking store {client.tracking_uri} is not usable: {summary}") from None


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)


def start_parent_run(client: "MlflowClient", experiment_id: str, spec: "SweepSpec", spec_path: str) -> str:
    """Create the parent run of a sweep submission, with the spec as params and artifact."""
    from mlflow.entities import Param

    run = client.create_run(
        experiment_id,
        run_name=spec.name,
        tags={m.TAG_SWEEP: spec.name, m.TAG_ROLE: "parent", m.TAG_SPEC_PATH: spec_path},
    )
    flat: dict[str, str] = {}
    _flatten("", spec.model_dump(mode="json", exclude={"description"}), flat)
    params = [Param(k, v[:6000]) for k, v in sorted(flat.items())]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    client.log_dict(run.info.run_id, spec.model_dump(mode="json"), "spec.yaml")
    return run.info.run_id


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


class _Writer:
    """Runs MLflow writes in order on one background thread, so Tune's event loop (and with it
    every trial waiting on its report) never waits on the tracking store."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.failures = 0

    def submit(self, fn, *args) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="samplewise-mlflow-writer", daemon=True)
            self._thread.start()
        self._queue.put((fn, args))

    def flush(self) -> None:
        if self._thread is not None:
            self._queue.join()

    def _run(self) -> None:
        while True:
            fn, args = self._queue.get()
            try:
                fn(*args)
            except Exception as err:  # a lost write must not kill the sweep; say so once per kind
                self.failures += 1
                if self.failures == 1:
                    print(f"samplewise: warning: MLflow write failed ({type(err).__name__}: {err}); "
                          "the sweep goes on", file=sys.stderr)
            finally:
                self._queue.task_done()


class MlflowTracker(tune.Callback):
    """Writes every trial of one sweep to MLflow as a child run of ``parent_run_id``.

    Callbacks copy what they need from the trial and hand the write to a background writer;
    :meth:`close` waits until everything is written.
    """

    def __init__(
        self, tracking_uri: str, experiment_id: str, parent_run_id: str, spec: "SweepSpec", budget_samples: int
    ):
        self.tracking_uri = tracking_uri
        self.budget_samples = budget_samples
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.sweep = spec.name
        self.workload = spec.workload.name
        self._client: "MlflowClient | None" = None
        self._reset()

    def _reset(self) -> None:
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._open: set[str] = set()  # runs this tracker must still end
        self._last_step: dict[str, int] = {}  # run id -> last samples_seen logged
        self._node_tagged: set[str] = set()
        self._loaded = False
        self._writer = _Writer()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_client", "_writer")}

    def __setstate__(self, state):
        # Tune pickles its callbacks into the experiment; a restored tracker reconnects and
        # reads the runs back from MLflow, the one record of what was already logged.
        self.__dict__.update(state)
        self._client = None
        self._reset()

    def _load_existing(self) -> None:
        """Adopt the child runs a previous driver of this sweep created (resume after a crash)."""
        if self._loaded:
            return
        self._loaded = True
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'",
                max_results=1000, page_token=token,
            )
            for run in page:
                trial_id = run.data.tags.get(m.TAG_TRIAL_ID)
                if trial_id:
                    self._runs[trial_id] = run.info.run_id
                    self._last_step[run.info.run_id] = int(run.data.metrics.get(m.SAMPLES_SEEN, -1))
                    if run.info.status == "RUNNING":  # cut off by the crash: continue it or end it
                        self._open.add(run.info.run_id)
            token = page.token
            if not token:
                return

    @property
    def client(self) -> "MlflowClient":
        if self._client is None:
            self._client = client_for(self.tracking_uri)
        return self._client

    # -- writes, on the writer thread ---------------------------------------------------------

    def _start(self, trial_id: str, config: dict) -> str:
        from mlflow.entities import Param

        self._load_existing()
        if trial_id in self._runs:
            return self._runs[trial_id]
        config = dict(config, workload=self.workload)
        name = f"{config.get('optimizer')}-{config.get('reduction')}-B{config.get('batch_size')}-{trial_id}"
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={PARENT_TAG: self.parent_run_id, m.TAG_SWEEP: self.sweep, m.TAG_ROLE: "trial", m.TAG_TRIAL_ID: trial_id},
        )
        params = [Param(key, str(config[key])) for key in m.PARAMS if key in config]
        self.client.log_batch(run.info.run_id, params=params)
        self._runs[trial_id] = run.info.run_id
        self._open.add(run.info.run_id)
        return run.info.run_id

    def _write_result(self, trial_id: str, config: dict, result: dict) -> None:
        from mlflow.entities import Metric, RunTag

        run_id = self._start(trial_id, config)
        step = int(result[m.SAMPLES_SEEN])
        if step <= self._last_step.get(run_id, -1):
            return  # logged before a resume rewound this trial to an older checkpoint
        self._last_step[run_id] = step
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(result[key]), now, step) for key in m.REPORTED if key in result]
        tags = [RunTag(m.TAG_DIVERGED, "true")] if result.get(m.DIVERGED) else []
        if m.NODE_ID in result and run_id not in self._node_tagged:
            tags.append(RunTag(m.TAG_NODE_ID, str(result[m.NODE_ID])))
            self._node_tagged.add(run_id)
        self.client.log_batch(run_id, metrics=metrics, tags=tags)  # one call per result

    def _write_end(self, trial_id: str, config: dict, status: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        run_id = self._start(trial_id, config)
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if run_id in self._open:
            self.client.set_terminated(run_id, status=status)
            self._open.discard(run_id)

    def _write_close(self, status: str) -> None:
        self._load_existing()
        for run_id in list(self._open):
            self.client.set_terminated(run_id, status=status)
            self._open.discard(run_id)

    # -- Tune callbacks, on Tune's loop: copy what is needed, queue the write -----------------

    def on_trial_start(self, iteration, trials, trial, **info):
        self._writer.submit(self._start, trial.trial_id, dict(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._writer.submit(self._write_result, trial.trial_id, dict(trial.config), dict(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        diverged = bool(last.get(m.DIVERGED))
        stopped = not diverged and last.get(m.SAMPLES_SEEN, 0) < self.budget_samples
        tags = {m.TAG_DIVERGED: str(diverged).lower(), m.TAG_STOPPED_EARLY: str(stopped).lower()}
        self._writer.submit(self._write_end, trial.trial_id, dict(trial.config), "FINISHED", tags)

    def on_trial_error(self, iteration, trials, trial, **info):
        tags = {m.TAG_ERROR: error_summary(trial)}
        self._writer.submit(self._write_end, trial.trial_id, dict(trial.config), "FAILED", tags)

    def on_experiment_end(self, trials, **info):
        self.close("KILLED")

    def close(self, status: str = "KILLED") -> None:
        """Write everything queued, then mark every trial run still open with ``status``."""
        self._writer.submit(self._write_close, status)
        self._writer.flush()
