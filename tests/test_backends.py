"""Choosing the MLflow server's store for make up, and make status's progress from a driver's log
(no server started: tests/test_postgres.py runs the real one)."""

import pytest

from services.cli.local import _progress
from services.errors import ServiceError
from services.ops import local, postgres


def test_the_store_is_the_users_uri_else_the_backend_asked_for_else_the_cluster_made_before(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPLEWISE_HOME", str(tmp_path))
    assert local.choose_backend(None, None) == "sqlite"
    assert local.choose_backend("postgres", None) == "postgres"
    assert local.choose_backend(None, "postgresql://u@db/mlflow") == "external"
    (tmp_path / ".samplewise" / "postgres" / "data").mkdir(parents=True)
    (tmp_path / ".samplewise" / "postgres" / "data" / "PG_VERSION").write_text("15\n")
    assert local.choose_backend(None, None) == "postgres"  # make down, make up: the same runs
    assert local.choose_backend("sqlite", None) == "sqlite"
    with pytest.raises(ServiceError, match="both name a store"):
        local.choose_backend("postgres", "postgresql://u:secret@db/mlflow")
    with pytest.raises(ServiceError, match="BACKEND='mongo' is not one of sqlite, postgres"):
        local.choose_backend("mongo", None)


def test_a_password_is_never_printed():
    shown = postgres.redact("postgresql://alice:s3cret@db.example:5432/mlflow")
    assert "s3cret" not in shown and shown.startswith("postgresql://alice:***@db.example:5432/mlflow")
    assert postgres.redact("alice:s3cret@db") == "(not a database URL)"


def test_a_missing_database_driver_is_named_before_anything_starts():
    with pytest.raises(ServiceError, match="driver that is not installed.*pip install"):
        local._need_driver("mysql+mysqldb://u@db/mlflow")  # MySQLdb is not a dependency
    with pytest.raises(ServiceError, match="not a database URL"):
        local._need_driver("nonsense")
    local._need_driver("postgresql://u@db/mlflow")  # the extra's psycopg, installed by make test


def test_status_reads_a_sweeps_progress_from_its_drivers_log(tmp_path):
    log = tmp_path / "driver.log"
    assert _progress(str(log)) == "progress unknown (no log)"
    log.write_text("Ray starting\n")
    assert _progress(str(log)) == "starting"
    log.write_text(
        "[  1/5] sgd      mean B=64    c=2.69e-03 lr=1.72e-01  val 1.9570  acc 0.644  done (2176 samples)\n"
        "(pid=1) a worker's line\n"
        "[  2/5] adam     sum  B=16    c=1.61e-03 lr=1.61e-03  val 2.1442  stopped by ASHA at 1000 samples\n"
        "[  3/5] sgd      sum  B=16    c=1.61e-03 lr=1.61e-03    diverged\n"
        "[  4/5] sgd      mean B=32    c=1.00e-03 lr=3.20e-02    FAILED: RuntimeError: boom\n"
        "[  5/5] sgd      mean B=32    c=2.00e-03 lr=6.40e-02  val 1.0000  done (2176 samples)\n"
    )
    assert _progress(str(log)) == "5/5 ended (2 done, 1 stopped, 1 diverged, 1 failed)"
