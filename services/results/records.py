"""A sweep read back from MLflow: its newest (or a given) submission, its trials as records, the
spec it ran with, and the learning curves of the best trials."""

from __future__ import annotations

import contextlib
import gc
import logging
from typing import TYPE_CHECKING, Optional

import yaml

from search_spaces.scaling import TrialHParams
from services import metrics as m
from services.errors import ExportError, SpecError, TrackingError
from services.results.analysis import GroupSummary, TrialRecord
from services.tracking.store import child_runs

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)


def find_parent_run(client: "MlflowClient", sweep: str, parent_run_id: Optional[str] = None) -> "Run":
    """The given parent run, or the newest submission of sweep ``sweep``."""
    if parent_run_id:
        return client.get_run(parent_run_id)
    try:
        experiment = client.get_experiment_by_name(sweep)
    except Exception as err:
        raise TrackingError(f"MLflow tracking store {client.tracking_uri} is not usable: {err}") from None
    if experiment is None:
        raise ExportError(f"sweep {sweep!r}: no such experiment in {client.tracking_uri}; run the sweep first")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{m.TAG_ROLE}` = 'parent'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise ExportError(f"sweep {sweep!r}: no submissions in {client.tracking_uri}")
    return runs[0]


def _record(run: "Run") -> TrialRecord:
    """A trial run as a record; ValueError if its hyperparameters were never written."""
    mt, tags = run.data.metrics, run.data.tags
    return TrialRecord(
        run_id=run.info.run_id,
        trial_id=tags.get(m.TAG_TRIAL_ID, ""),
        status=run.info.status,
        hp=TrialHParams.from_params(run.data.params),
        val_loss=mt.get(m.VAL_LOSS),
        val_accuracy=mt.get(m.VAL_ACCURACY),
        samples_seen=int(mt.get(m.SAMPLES_SEEN, 0)),
        diverged=tags.get(m.TAG_DIVERGED) == "true" or bool(mt.get(m.DIVERGED)),
        stopped_early=tags.get(m.TAG_STOPPED_EARLY) == "true",
        b_simple=mt.get(m.B_SIMPLE),
        error=tags.get(m.TAG_ERROR),
        updates=int(mt.get(m.UPDATES, 0)),
        wall_s=(run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None,
        initial_loss=mt.get(m.INITIAL_VAL_LOSS),
        test_loss=mt.get(m.TEST_LOSS),
        test_accuracy=mt.get(m.TEST_ACCURACY),
    )


SEARCH_PAGE = 50_000
"""Runs per search_runs call: MLflow's largest page. One page of 10,000 runs reads about 12%
faster than ten pages of 1,000 (each page re-runs the query with an offset)."""


@contextlib.contextmanager
def _gc_paused():
    """Pause Python's cyclic garbage collector for a bulk read. MLflow's SQL store builds about
    23 SQLAlchemy objects per run; with the collector on, its passes re-scan every live one
    over and over, which took more than half of reading 10,000 runs (8 s against 3 s)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_records(client: "MlflowClient", parent: "Run") -> list[TrialRecord]:
    """Every trial (child run) of a sweep submission."""
    with _gc_paused():
        runs = child_runs(client, parent.info.experiment_id, parent.info.run_id, SEARCH_PAGE)
        records, unreadable = [], []
        for run in runs:
            if run.data.tags.get(m.TAG_ROLE, "trial") != "trial":  # a transfer check nested here
                continue
            try:
                records.append(_record(run))
            except ValueError as err:  # a run whose params a killed writer never wrote
                unreadable.append(f"{run.info.run_id} ({err})")
    if unreadable:
        log.warning("%d trial runs without their hyperparameters left out: %s", len(unreadable), unreadable[0])
    return records


def transfer_runs(client: "MlflowClient", parent: "Run") -> list[tuple[int, dict, list[TrialRecord]]]:
    """The transfer checks nested under a sweep submission: per check run, (held-out batch
    size, {group name: answered mean-equivalent lr}, its trials)."""
    import json

    out = []
    for run in child_runs(client, parent.info.experiment_id, parent.info.run_id, role="transfer"):
        try:
            answers = json.loads(run.data.tags.get(m.TAG_TRANSFER_ANSWERS, "{}"))
            batch_size = int(run.data.tags.get(m.TAG_TRANSFER_BATCH, "0"))
        except ValueError:  # a check run by something else: not ours to read
            continue
        out.append((batch_size, answers, load_records(client, run)))
    return out


def read_transfers(client: "MlflowClient", parent: "Run", groups: list[GroupSummary], tolerance: float) -> list:
    """The transfer checks run under ``parent`` for the groups' current answers, scored
    (:func:`services.results.transfer.collect`)."""
    from services.results.transfer import collect

    return collect(groups, transfer_runs(client, parent), tolerance)


def sweep_spec(client: "MlflowClient", parent: "Run"):
    """The spec the sweep ran with (its parent run's ``spec.yaml``), or None if unreadable."""
    import os
    import tempfile

    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file: no bar
    from services.spec import parse_spec

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(parent.info.run_id, "spec.yaml", tmp)
            with open(path) as f:
                return parse_spec(yaml.safe_load(f), "spec.yaml")
    except (OSError, SpecError, yaml.YAMLError, MlflowException):  # an old or foreign run: no spec
        return None


def best_histories(client: "MlflowClient", groups: list[GroupSummary], records: list[TrialRecord]):
    """Val-loss curves (samples seen, loss) of the best trial per group x batch size, keyed by
    (group name, batch size)."""
    curves = {}
    for g in groups:
        for b in g.per_batch:
            if b.run_id:
                history = client.get_metric_history(b.run_id, m.VAL_LOSS)
                curves[(g.name, b.batch_size)] = sorted((p.step, p.value) for p in history)
    return curves


BULK_RUNS = 500
"""Runs per bulk metric-history query (a SQL ``IN`` list that SQLite takes at once)."""

SERVER_BULK_RUNS, SERVER_BULK_POINTS = 100, 25_000
"""The most runs, and points, one bulk history request to an MLflow server returns (its
``metrics/get-history-bulk`` endpoint, the one its UI charts use)."""


def _server_histories(store, run_ids: list[str], key: str, out: dict) -> bool:
    """Fill ``out`` through an MLflow server's bulk history endpoint, 100 runs a request (5,000
    runs: 50 requests, not 5,000); False where the server has no such endpoint."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.rest_utils import http_request

    endpoint = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
    for i in range(0, len(run_ids), SERVER_BULK_RUNS):
        chunk = run_ids[i : i + SERVER_BULK_RUNS]
        params = {"run_id": chunk, "metric_key": key, "max_results": SERVER_BULK_POINTS}
        response = http_request(store.get_host_creds(), endpoint, "GET", params=params)
        if response.status_code == 404:
            return False
        if response.status_code != 200:
            raise MlflowException(f"{endpoint} answered HTTP {response.status_code}: {response.text[:200]}")
        points = response.json().get("metrics", [])
        if len(points) >= SERVER_BULK_POINTS:  # cut at the cap: these runs one by one
            for run_id in chunk:
                out[run_id] = [(p.step, p.value) for p in store.get_metric_history(run_id, key)]
            continue
        for point in points:
            out[point["run_id"]].append((int(point.get("step", 0)), float(point["value"])))
    return True


def metric_histories(
    client: "MlflowClient", run_ids: list[str], key: str = m.VAL_LOSS
) -> dict[str, list[tuple[float, float]]]:
    """Each run's points (step, value) of metric ``key``: one query per :data:`BULK_RUNS` runs
    on a SQL store, one request per :data:`SERVER_BULK_RUNS` runs through a tracking server
    (one per run where the server has no bulk endpoint)."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    bulk = getattr(store, "get_metric_history_bulk", None)
    out: dict[str, list[tuple[float, float]]] = {run_id: [] for run_id in run_ids}
    if bulk is None:
        if hasattr(store, "get_host_creds") and _server_histories(store, run_ids, key, out):
            return out
        for run_id in run_ids:
            out[run_id] = [(p.step, p.value) for p in client.get_metric_history(run_id, key)]
        return out
    for i in range(0, len(run_ids), BULK_RUNS):
        chunk = run_ids[i : i + BULK_RUNS]
        for row in bulk(chunk, key, max_results=None):
            out[row.run_id].append((row.step, row.value))
    return out


def loss_curves(client: "MlflowClient", records: list[TrialRecord]) -> dict[str, list[tuple[float, float]]]:
    """Val-loss curves (samples seen, loss) of every usable trial, keyed by run id, starting at
    (0, the loss before the first update) where the trial logged it."""
    usable = {r.run_id: r for r in records if r.usable}
    curves = {}
    with _gc_paused():
        histories = metric_histories(client, sorted(usable))
    for run_id, r in usable.items():
        points = sorted(histories[run_id])
        if r.initial_loss is not None and (not points or points[0][0] > 0):
            points.insert(0, (0, r.initial_loss))
        if points:
            curves[run_id] = [(float(x), float(y)) for x, y in points]
    return curves
