"""The local SQLite store under concurrency and damage: real MLflow, real processes."""

import os
import sqlite3
import subprocess
import sys

import pytest
import yaml

from services.cli import main as cli
from tests.conftest import ROOT, spec_dict

pytestmark = pytest.mark.integration  # real Ray, MLflow and processes: `make test-fast` skips these

OPEN_AND_WRITE = """
import sys
from services.tracking import store
client = store.client_for(sys.argv[1], create=True)
store.ensure_experiment(client, "exp-" + sys.argv[2])
"""


def _processes(code, uri, n):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, uri, str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(n)
    ]
    return [(p.wait(timeout=120), p.stdout.read()) for p in procs]


def test_processes_creating_a_new_store_at_once_all_succeed(tmp_path):
    """Without the lock, MLflow's migrations race: 'table _alembic_tmp_... already exists',
    'duplicate column name'. Two brand-new stores, four processes each."""
    from mlflow.tracking import MlflowClient

    for attempt in range(2):
        uri = f"sqlite:///{tmp_path / f'store{attempt}.db'}"
        results = _processes(OPEN_AND_WRITE, uri, 4)
        assert all(status == 0 for status, _ in results), [out[-600:] for status, out in results if status]
        assert len(MlflowClient(uri).search_experiments()) == 5  # Default and one per process


def test_two_sweeps_started_at_once_on_a_new_store(tmp_path):
    spec = spec_dict(
        searcher={"kind": "random", "num_trials": 1, "max_concurrent": 1, "seed": 0},
        budget={"epochs": 1},
        noise={"enabled": False},
    )
    for name in ("one", "two"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**spec, "name": name}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("RAY_ADDRESS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "sweep", f"{name}.yaml"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("one", "two")
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stdout.read()[-2000:]


def test_a_half_migrated_store_is_repaired_or_reported(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    MlflowClient(uri).search_experiments()  # a good store
    with sqlite3.connect(db) as conn:  # what a migration cut short leaves behind
        conn.execute("CREATE TABLE _alembic_tmp_metrics (x INTEGER)")
    results = _processes(OPEN_AND_WRITE, uri, 1)
    assert results[0][0] == 0, results[0][1][-600:]
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert not any(t.startswith("_alembic_tmp_") for t in tables)
        # a migration that can never complete: the store says which version it is at, wrongly
        conn.execute("UPDATE alembic_version SET version_num = 'not-a-revision'")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec_dict(name="broken_store")))
    capsys.readouterr()
    assert cli.main(["sweep", "s.yaml", "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be created or migrated" in err[0] and "mv " in err[0], err


@pytest.mark.parametrize("command", ["export", "compare", "ui-check"])
def test_reading_a_sweep_that_never_ran_creates_no_store(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec_dict(name="never")))
    assert cli.main([command, "s.yaml", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    assert "run a sweep first" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()
