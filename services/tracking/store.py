"""The MLflow store: opening it (a local SQLite file created under a lock), and the queries
every part of samplewise shares (a sweep's child runs, a configuration's identity). No Ray
here; MLflow is imported lazily.
"""

from __future__ import annotations

import fcntl
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from search_spaces.scaling import config_key
from services import metrics as m
from services.errors import ExportError, TrackingError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from services.spec import SweepSpec

PARENT_TAG = "mlflow.parentRunId"

SUPERSEDED_WHY = (
    "trained by a driver that died before Ray Tune recorded the trial; the resumed sweep "
    "did not ask for this configuration again"
)


def client_for(tracking_uri: str, create: bool = False) -> "MlflowClient":
    """A client of ``tracking_uri``. A local SQLite store is created (``create``) or must exist,
    and is made ready under a file lock first (see :func:`prepare_sqlite`)."""
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        prepare_sqlite(tracking_uri, create)
    return MlflowClient(tracking_uri=tracking_uri)


_prepared: set[str] = set()


def prepare_sqlite(uri: str, create: bool) -> None:
    """Create, or check, the SQLite store at ``uri`` while holding an exclusive lock on
    ``<db>.lock``, once per process: two drivers started at once on a new store must not both
    run MLflow's migrations (they race and can leave it half-migrated). A store whose schema is
    behind (an older MLflow, or a migration cut short) is migrated under the lock; one that
    cannot be is reported with what to do. Leftover ``_alembic_tmp_*`` tables of a migration
    cut short are dropped first (alembic copies a table into one, then renames it back)."""
    if uri in _prepared:
        return
    db = Path(uri.removeprefix("sqlite:///"))
    if not db.exists() and not create:
        raise ExportError(f"no MLflow store at {db}: run a sweep first (or give --tracking-uri)")
    try:
        if create:  # a new SAMPLEWISE_HOME (or --tracking-uri's folder) is made, as a first run expects
            db.parent.mkdir(parents=True, exist_ok=True)
        lock = open(db.with_name(db.name + ".lock"), "a")
    except OSError as err:
        raise TrackingError(f"MLflow tracking store {uri} is not usable: {err}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        import sqlalchemy
        from mlflow.store.db import utils as db_utils

        engine = sqlalchemy.create_engine(uri)
        quiet = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
        levels = [logger.level for logger in quiet]
        for logger in quiet:  # "Creating initial MLflow database tables...": not news to a user
            logger.setLevel(logging.WARNING)
        try:
            with engine.begin() as conn:
                for table in sqlalchemy.inspect(conn).get_table_names():
                    if table.startswith("_alembic_tmp_"):
                        conn.execute(sqlalchemy.text(f'DROP TABLE "{table}"'))
            if not db_utils._all_tables_exist(engine):
                db_utils._initialize_tables(engine)
            elif db_utils._get_schema_version(engine) != db_utils._get_latest_schema_revision():
                db_utils._upgrade_db(engine)
        except Exception as err:  # noqa: BLE001 - any failure here leaves the store unusable
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise TrackingError(
                f"MLflow tracking store {uri} cannot be created or migrated ({first[:150]}); move it aside "
                f"(mv {db} {db}.broken) and run again, or repair it with: mlflow db upgrade {uri}"
            ) from None
        finally:
            engine.dispose()
            for logger, level in zip(quiet, levels):
                logger.setLevel(level)
    _prepared.add(uri)


def check_store(uri: str, timeout_s: float = 5.0, create: bool = True) -> None:
    """Fail fast, naming the URI, when a tracking server does not answer its health check, or
    a local store cannot be created or migrated (before Ray starts)."""
    if uri.startswith("sqlite:///"):
        prepare_sqlite(uri, create)
        return
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


def ensure_experiment(client: "MlflowClient", name: str) -> str:
    """The id of experiment ``name``, created if missing (one experiment per sweep name).

    On a local SQLite store its artifacts go to ``mlartifacts/`` beside the database (MLflow's own
    default is ``./mlruns`` in whatever folder the process runs in); a server picks its own root.
    """
    from services import paths

    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        return client.create_experiment(name, artifact_location=paths.artifact_location(client.tracking_uri, name))
    except Exception as err:  # any store failure: unreachable server, bad URI, locked file
        summary = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrackingError(f"MLflow tracking store {client.tracking_uri} is not usable: {summary}") from None


def child_runs(
    client: "MlflowClient", experiment_id: str, parent_run_id: str, page_size: int = 1000, role: str | None = None
) -> list:
    """Every child run of ``parent_run_id`` (with ``role``: only those of that role), all pages of
    ``page_size`` runs."""
    runs: list = []
    token = None
    where = f"tags.`{PARENT_TAG}` = '{parent_run_id}'" + (f" and tags.`{m.TAG_ROLE}` = '{role}'" if role else "")
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=where,
            max_results=page_size,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def recorded_results(client: "MlflowClient", experiment_id: str, parent_run_id: str) -> dict[tuple, list[dict]]:
    """What each FINISHED child run reported, by configuration: enough for Tune's searcher and
    scheduler to learn a trial again without training it (objective and samples seen at every
    report, then the run's last values of every metric)."""
    out: dict[tuple, list[dict]] = {}
    for run in child_runs(client, experiment_id, parent_run_id):
        if run.info.status != "FINISHED" or run.data.tags.get(m.TAG_SUPERSEDED):
            continue
        final = {k: v for k, v in run.data.metrics.items() if m.is_reported(k)}
        history = sorted((p.step, p.value) for p in client.get_metric_history(run.info.run_id, m.OBJECTIVE))
        results = [{m.SAMPLES_SEEN: step, m.OBJECTIVE: value, m.DIVERGED: 0.0} for step, value in history[:-1]]
        out.setdefault(config_key(run.data.params), results + [{**final, m.REPLAYED: 1.0}])
    return out


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    elif value is not None:  # an unset option is no param (not the text "None")
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)


def start_parent_run(
    client: "MlflowClient", experiment_id: str, spec: "SweepSpec", spec_path: str, tags: dict[str, str] | None = None
) -> str:
    """Create the parent run of a sweep submission, with the spec as params and artifact.
    ``tags`` are set when the run is created (a transfer check's: role ``transfer``, nested
    under the sweep's parent run), so no search ever sees it with the default role."""
    from mlflow.entities import Param

    run = client.create_run(
        experiment_id,
        run_name=(tags or {}).get(m.TAG_RUN_NAME, spec.name),
        tags={m.TAG_SWEEP: spec.name, m.TAG_ROLE: "parent", m.TAG_SPEC_PATH: spec_path, **(tags or {})},
    )
    flat: dict[str, str] = {}
    _flatten("", spec.model_dump(mode="json", exclude={"description"}), flat)
    params = [Param(k, v[:6000]) for k, v in sorted(flat.items())]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    client.log_dict(run.info.run_id, spec.model_dump(mode="json"), "spec.yaml")
    return run.info.run_id
