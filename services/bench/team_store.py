"""Bench 6: a team's tracking store: ``export`` and ``status`` over 100,000+ runs, through an
MLflow server on SQLite and on PostgreSQL (the cluster of ``make up BACKEND=postgres``).

The store is generated straight into MLflow's tables (SQLAlchemy Core, thousands of rows a
statement): 100 sweeps of history, one of them submitted four times, as a team's store looks
after months. What is timed is what a user waits for: ``samplewise export`` of the newest
submission of that sweep and ``samplewise status`` while it runs, both through the server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from search_spaces.scaling import derive
from services import metrics as m
from services.bench.report import Result

SWEEP = "team_large"
BATCH_SIZES = (16, 32, 64, 128, 256)
HISTORY = 6
"""val/loss points a trial's curve has (its last one also its final value)."""


def _layout(quick: bool) -> tuple[int, int, int]:
    """(submissions of the timed sweep, trials a submission, other sweeps of 1,000 trials):
    4 x 5,000 + 80 x 1,000 = 100,000 trial runs."""
    return (2, 50, 2) if quick else (4, 5_000, 80)


def _spec(trials: int):
    from services.spec import parse_spec

    return parse_spec(
        {
            "name": SWEEP,
            "workload": {"name": "digits_mlp"},
            "searcher": {"kind": "random", "num_trials": trials},
            "space": {
                "batch_sizes": list(BATCH_SIZES),
                "lr_per_sample": {"low": 1e-4, "high": 1e-1},
                "reductions": ["mean", "sum"],
                "optimizers": ["sgd", "adam"],
            },
            "budget": {"epochs": 10},
        }
    )


def _insert_trials(engine, experiment_id: str, parent: str, trials: int, seed: int) -> None:
    """``trials`` FINISHED child runs of ``parent``: params, tags, a val/loss curve, latest metrics."""
    import numpy as np
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag

    rng = np.random.default_rng(seed)
    now = int(time.time() * 1000)
    budget = 14_370
    runs, tags, params, metrics, latest = [], [], [], [], []
    for i in range(trials):
        run_id = uuid.uuid4().hex
        bs = BATCH_SIZES[i % 5]
        opt, red = ("sgd", "adam")[i // 5 % 2], ("mean", "sum")[i // 10 % 2]
        c = float(10 ** rng.uniform(-4, -1))
        hp = derive(batch_size=bs, reduction=red, optimizer=opt, lr_per_sample=c)
        final = 0.1 + (np.log10(c) + 2.5) ** 2 + 0.05 * float(rng.random())
        runs.append(
            {
                "run_uuid": run_id,
                "name": f"t{i}",
                "source_type": "LOCAL",
                "source_name": "",
                "entry_point_name": "",
                "user_id": "bench",
                "status": "FINISHED",
                "start_time": now,
                "end_time": now + 1000,
                "source_version": "",
                "lifecycle_stage": "active",
                "artifact_uri": "",
                "experiment_id": int(experiment_id),
            }
        )
        for key, value in (
            ("mlflow.parentRunId", parent),
            ("mlflow.runName", f"t{i}"),
            (m.TAG_ROLE, "trial"),
            (m.TAG_TRIAL_ID, f"t{i}"),
            (m.TAG_DIVERGED, "false"),
            (m.TAG_STOPPED_EARLY, "false"),
        ):
            tags.append({"key": key, "value": value, "run_uuid": run_id})
        for key, value in hp.as_config().items():
            if key in m.PARAMS:
                params.append({"key": key, "value": str(value), "run_uuid": run_id})
        steps = [budget * (j + 1) // HISTORY for j in range(HISTORY)]
        curve = [final + 2.0 * (HISTORY - 1 - j) / HISTORY for j in range(HISTORY)]
        points = [(m.VAL_LOSS, s, v) for s, v in zip(steps, curve)]
        points += [(m.SAMPLES_SEEN, budget, budget), (m.VAL_ACCURACY, budget, 1 - final / 5)]
        for key, step, value in points:
            metrics.append(
                {"key": key, "value": value, "timestamp": now, "step": step, "is_nan": False, "run_uuid": run_id}
            )
        for key, step, value in points[HISTORY - 1 :]:
            latest.append(
                {"key": key, "value": value, "timestamp": now, "step": step, "is_nan": False, "run_uuid": run_id}
            )
    with engine.begin() as conn:
        for model, rows in ((SqlRun, runs), (SqlTag, tags), (SqlParam, params), (SqlMetric, metrics)):
            for i in range(0, len(rows), 20_000):
                conn.execute(model.__table__.insert(), rows[i : i + 20_000])
        for i in range(0, len(latest), 20_000):
            conn.execute(SqlLatestMetric.__table__.insert(), latest[i : i + 20_000])


def generate(uri: str, quick: bool) -> tuple[str, int, int]:
    """Fill the empty store at ``uri``; returns (the timed sweep's newest parent run, its trials,
    trial runs in the store)."""
    from mlflow.store.db.utils import create_sqlalchemy_engine
    from mlflow.tracking import MlflowClient

    from services.tracking.store import ensure_experiment, start_parent_run

    submissions, trials, others = _layout(quick)
    client = MlflowClient(uri)
    engine = create_sqlalchemy_engine(uri)
    spec = _spec(trials)
    total = 0
    try:
        for k in range(others):
            other = spec.model_copy(update={"name": f"history_{k:03d}"})
            experiment = ensure_experiment(client, other.name)
            parent = start_parent_run(client, experiment, other, "")
            _insert_trials(engine, experiment, parent, 1_000 if not quick else 20, seed=k)
            client.set_terminated(parent, "FINISHED")
            total += 1_000 if not quick else 20
        experiment = ensure_experiment(client, SWEEP)
        for k in range(submissions):
            parent = start_parent_run(client, experiment, spec, "")
            client.set_tag(parent, m.TAG_BUDGET_SAMPLES, "14370")
            _insert_trials(engine, experiment, parent, trials, seed=1000 + k)
            total += trials
            if k < submissions - 1:
                client.set_terminated(parent, "FINISHED")
    finally:
        engine.dispose()
    return parent, trials, total


def _server(uri: str, home: Path, env: dict) -> tuple[int, str]:
    from services.ops import local

    port = local.free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--artifacts-destination", str(home / "artifacts")]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    log = home / "mlflow-server.log"
    pid = local._spawn(cmd, log, {**local.server_env(), **env, "MLFLOW_BACKEND_STORE_URI": uri})["pid"]
    url = f"http://127.0.0.1:{port}"
    local._wait(lambda: local._http_ok(f"{url}/health"), "the MLflow server", pid, log, 120)
    return pid, url


def _status_s(home: Path, url: str, trials: int) -> tuple[float, str]:
    """``samplewise status`` with the timed sweep in progress (this process stands for its driver)."""
    from services import paths, processes

    log_path = home / "driver.log"
    record = {
        "pid": os.getpid(),
        "start": processes.start_time(os.getpid()),
        "sweep": SWEEP,
        "num_trials": trials,
        "command": "sweep",
        "spec": "",
        "log": str(log_path),
        "started": time.time(),
        "tracking_uri": url,
    }
    paths.write_private(home / ".samplewise" / "sweeps" / f"{SWEEP}.json", json.dumps(record))
    with open(log_path, "w") as log:  # the driver's progress lines, one per trial that ended
        for i in range(trials):
            line = "sgd      mean B=64    c=2.69e-03 lr=1.72e-01  val 1.9570  done (14370 samples)"
            log.write(f"[{i + 1:>3}/{trials}] {line}\n")
    env = {**os.environ, "SAMPLEWISE_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "status"], env=env, capture_output=True, text=True, timeout=600
    )
    took = time.perf_counter() - start
    line = next((ln.strip() for ln in done.stdout.splitlines() if SWEEP in ln), done.stdout + done.stderr)
    return took, line


EXPORT_GOAL_S, STATUS_GOAL_S = 30.0, 5.0
"""What a user waits for over a 100,000-run store: the export of a 5,000-trial submission within
half a minute, ``status`` within 5 s (the 3 s it allows the server to answer, and its start)."""


def _measure(backend: str, uri: str, home: Path, env: dict, quick: bool) -> list[Result]:
    from services.ops import local
    from services.results.export import export_sweep

    os.environ.update(env)
    start = time.perf_counter()
    parent, trials, total = generate(uri, quick)
    generate_s = time.perf_counter() - start
    pid, url = _server(uri, home, env)
    try:
        start = time.perf_counter()
        export_sweep(SWEEP, url, home / "exports", parent, holdout=False)
        export_s = time.perf_counter() - start
        status_s, line = _status_s(home, url, trials)
    finally:
        local.stop(pid)
    exported = json.loads((home / "exports" / f"{SWEEP}.json").read_text())
    swept = {tuple(g["batch_sizes_swept"]) for g in exported["constants"]}
    assert swept == {BATCH_SIZES}, f"the export saw batch sizes {swept}"
    assert f"{trials}/{trials} ended ({trials} done)" in line and "does not answer" not in line, line
    detail = {"runs": total, "trials": trials, "generate_s": round(generate_s, 1), "status": line[:120]}
    quick_goal = None if quick else True
    return [
        Result(
            f"{backend}: export of a {trials:,}-trial sweep through the server, {total:,} runs in the store",
            f"{export_s:.1f} s",
            f"<= {EXPORT_GOAL_S:.0f} s",
            export_s <= EXPORT_GOAL_S if quick_goal else None,
            {**detail, "export_s": round(export_s, 2)},
        ),
        Result(
            f"{backend}: make status with that sweep in progress",
            f"{status_s:.1f} s",
            f"<= {STATUS_GOAL_S:.0f} s",
            status_s <= STATUS_GOAL_S if quick_goal else None,
            {**detail, "status_s": round(status_s, 2)},
        ),
    ]


def bench_team_store(quick: bool, store: Path) -> list[Result]:
    """The export and status rows on SQLite, then on a PostgreSQL cluster of samplewise's own."""
    from services import paths
    from services.ops import local, postgres

    home = store / "team-sqlite"
    (home / ".samplewise").mkdir(parents=True)
    results = _measure("SQLite", f"sqlite:///{home / 'mlflow.db'}", home, {}, quick)
    home = store / "team-postgres"
    home.mkdir()
    for folder in (store, home):
        os.chmod(folder, 0o711)  # run as root, the cluster's own user must reach its folder
    saved = os.environ.get("SAMPLEWISE_HOME")
    os.environ["SAMPLEWISE_HOME"] = str(home)
    try:
        port = local.free_port()
        up = local._start_postgres({}, port, timeout_s=120)
        try:
            results += _measure("PostgreSQL", postgres.uri(port), home, postgres.client_env(), quick)
        finally:
            local.stop(up["pid"], signal.SIGINT)
            paths.services_record().unlink(missing_ok=True)
    finally:
        if saved is None:
            os.environ.pop("SAMPLEWISE_HOME", None)
        else:
            os.environ["SAMPLEWISE_HOME"] = saved
        os.environ.pop("PGPASSFILE", None)
    return results
