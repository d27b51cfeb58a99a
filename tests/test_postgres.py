"""make up BACKEND=postgres with a real PostgreSQL: the cluster samplewise owns, sweeps on the
MLflow server over it, several drivers at once, the database stopped mid-sweep, a killed driver
resumed, and down.

The tests share one `up` and run in file order on one pytest-xdist worker (group
``postgres``); the last one takes the services down. Run as root (CI), the cluster runs as the
``postgres`` system user, so the home is a folder that user can enter.
"""

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from search_spaces.scaling import config_key
from services import metrics as m
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("postgres")]

N_TRAIN = 1078  # digits_mlp's training split
SPEC = {
    "workload": {"name": "digits_mlp", "params": {"hidden": 16}},
    "searcher": {"kind": "random", "num_trials": 3, "max_concurrent": 1, "seed": 0},
    "space": {
        "batch_sizes": [32, 64],
        "lr_per_sample": {"low": 1e-3, "high": 1e-2},
        "reductions": ["mean"],
        "optimizers": ["sgd"],
    },
    "budget": {"epochs": 3, "report_every_samples": 400},
    "asha": {"enabled": False},
    "noise": {"enabled": False},
    "resources": {"pack_size": 1},  # one Tune trial per configuration: its result.json is that run's record
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAMPLEWISE_HOME": str(home)}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_BACKEND_STORE_URI"):
        env.pop(key, None)
    return env


def cli(*args, home, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *map(str, args)],
        cwd=home,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _sweep_in_background(home, name, **changes):
    (home / f"{name}.yaml").write_text(yaml.safe_dump({**SPEC, **changes, "name": name}))
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "sweep", f"{name}.yaml"],
        cwd=home,
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="session")
def pg_up():
    """One `up --backend postgres` for these tests, in a home the cluster's user can enter (for
    the session: pytest-xdist runs the group's tests on one worker, but may run other modules'
    tests between them, which would end a module-scoped fixture)."""
    home = Path(tempfile.mkdtemp(prefix="samplewise-pg-"))
    os.chmod(home, 0o711)  # mkdtemp makes it 0700: the postgres user could not reach its cluster
    ports = {"--mlflow-port": free_port(), "--ray-port": free_port(), "--pg-port": free_port()}
    started = cli("up", "--backend", "postgres", "--num-cpus", 2, *[x for kv in ports.items() for x in kv], home=home)
    record = json.loads((home / ".samplewise" / "services.json").read_text()) if started.returncode == 0 else {}
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield home, record
    finally:
        cli("down", home=home)
        for svc in record.values():  # as last recorded (the tests update it when they restart one)
            if _alive(svc["pid"]):
                os.killpg(svc["pid"], signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


def _db_client(home, record):
    """A client of the PostgreSQL database itself (not the server): what is really stored."""
    os.environ["PGPASSFILE"] = str(home / ".samplewise" / "pgpass")
    return MlflowClient(f"postgresql://samplewise@127.0.0.1:{record['postgres']['port']}/mlflow")


def _trials(client, name):
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'trial'")
    parents = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'parent'")
    return runs, parents


def _tune_reports(home, name):
    """What each trial reported, by Tune's trial id, from Tune's own record (``result.json``)."""
    out = {}
    for path in (home / ".samplewise" / "ray_results").glob(f"{name}-*/*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out.setdefault(rows[0]["trial_id"], []).extend(rows)
    return out


def _check_sweep(home, client, name, num_trials):
    """One FINISHED run per configuration, nothing RUNNING, each run's params those Tune trained, and
    each run's metric history exactly what Tune recorded the trial reporting: no point lost, none twice.
    Returns (runs, metric points)."""
    runs, parents = _trials(client, name)
    assert [p.info.status for p in parents] == ["FINISHED"], (name, [p.info.status for p in parents])
    assert len(runs) == num_trials and all(r.info.status == "FINISHED" for r in runs), (name, len(runs))
    assert len({config_key(r.data.params) for r in runs}) == num_trials, f"{name}: a configuration twice"
    reports = _tune_reports(home, name)
    points = 0
    for run in runs:
        rows = reports[run.data.tags[m.TAG_TRIAL_ID]]
        assert config_key(run.data.params) == config_key({k: str(v) for k, v in rows[0]["config"].items()})
        for key in (m.VAL_LOSS, m.TRAIN_LOSS, m.VAL_ACCURACY):
            stored = sorted((p.step, p.value) for p in client.get_metric_history(run.info.run_id, key))
            reported = sorted((r[m.SAMPLES_SEEN], r[key]) for r in rows if key in r)
            assert [x for x, _ in stored] == [x for x, _ in reported], (name, run.info.run_name, key)
            assert [y for _, y in stored] == pytest.approx([y for _, y in reported], rel=1e-6)
            points += len(stored)
        # and the run reached its budget: no report of the trial's own lost before Tune saw it
        assert reported[-1][0] >= math.ceil(SPEC["budget"]["epochs"] * N_TRAIN)
    return len(runs), points


def test_up_on_postgres_owns_a_loopback_cluster_that_needs_a_password(pg_up):
    import psycopg

    home, record = pg_up
    pg = record["postgres"]
    assert record["mlflow"]["backend"] == "postgres" and record["mlflow"]["store"].startswith("postgresql://")
    assert Path(pg["data"]) == home / ".samplewise" / "postgres" / "data"
    data = os.stat(pg["data"])
    assert oct(data.st_mode & 0o777) == "0o700"
    if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to the unprivileged user
        import pwd

        assert pwd.getpwuid(data.st_uid).pw_name == "postgres"
        assert os.stat(f"/proc/{pg['pid']}").st_uid == data.st_uid
    assert oct(os.stat(home / ".samplewise" / "pgpass").st_mode & 0o777) == "0o600"
    with open(f"/proc/{record['mlflow']['pid']}/cmdline") as f:
        assert "postgresql" not in f.read()  # the store URI is passed in the environment
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(host="127.0.0.1", port=pg["port"], user="samplewise", dbname="mlflow", password="guess")
    status = cli("status", home=home)
    assert f"PostgreSQL     running  127.0.0.1:{pg['port']}" in status.stdout, status.stdout
    assert f"MLflow server  running  {record['mlflow']['url']}" in status.stdout


def test_four_sweep_drivers_at_once_lose_nothing_and_write_nothing_twice(pg_up):
    home, record = pg_up
    names = [f"team{i}" for i in range(4)]
    drivers = [
        _sweep_in_background(home, name, searcher={**SPEC["searcher"], "seed": i}) for i, name in enumerate(names)
    ]
    try:
        outputs = [d.communicate(timeout=400)[0] for d in drivers]
    finally:
        for d in drivers:
            if d.poll() is None:
                os.killpg(d.pid, signal.SIGKILL)
    for name, d, out in zip(names, drivers, outputs):
        assert d.returncode == 0 and "3 trials: 3 completed" in out, (name, out[-2000:])
    client = _db_client(home, record)
    totals = [_check_sweep(home, client, name, 3) for name in names]
    print(f"4 concurrent drivers: {sum(r for r, _ in totals)} runs, {sum(p for _, p in totals)} metric points, 0 lost")
    # the curves the export reads through the server, 100 runs a request, are the stored ones
    from services.results.records import metric_histories

    ids = [r.info.run_id for name in names for r in _trials(client, name)[0]]
    through_server = metric_histories(MlflowClient(record["mlflow"]["url"]), ids)
    stored = {i: sorted((p.step, p.value) for p in client.get_metric_history(i, m.VAL_LOSS)) for i in ids}
    assert {i: sorted(points) for i, points in through_server.items()} == stored
    for name in names:  # each export, through the server, names each batch size's best run in the database
        done = cli("export", "--no-test", f"{name}.yaml", home=home)
        assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]
        exported = json.loads((home / "exports" / f"{name}.json").read_text())
        runs, _ = _trials(client, name)
        assert exported["tracking_uri"] == record["mlflow"]["url"]
        for group in exported["constants"]:
            assert group["trials"]["total"] == 3
            for entry in group["per_batch_size"]:
                at_b = [r for r in runs if int(r.data.params["batch_size"]) == entry["batch_size"]]
                best = min(at_b, key=lambda r: r.data.metrics[m.VAL_LOSS])
                assert entry["run_id"] == best.info.run_id and entry["trials"] == len(at_b)


def test_postgres_stopped_mid_sweep_for_22_s_loses_nothing(pg_up):
    home, record = pg_up
    client = MlflowClient(record["mlflow"]["url"])
    pg = record["postgres"]
    sweep = _sweep_in_background(home, "outage", budget={"epochs": 20, "report_every_samples": 1000})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            experiment = client.get_experiment_by_name("outage")
            if experiment and client.search_runs([experiment.experiment_id], f"tags.`{m.TAG_ROLE}` = 'trial'"):
                break
            time.sleep(0.5)
        os.kill(pg["pid"], signal.SIGINT)  # PostgreSQL's fast shutdown: every connection cut
        stopped_at = time.monotonic()
        while _alive(pg["pid"]) and time.monotonic() - stopped_at < 15:
            time.sleep(0.1)
        assert not _alive(pg["pid"])
        status = cli("status", home=home, timeout=60)
        assert "PostgreSQL     stopped" in status.stdout and "outage" in status.stdout, status.stdout
        time.sleep(max(0.0, 22 - (time.monotonic() - stopped_at)))
        again = cli("up", home=home)  # starts what stopped (PostgreSQL, at its port); the rest runs on
        assert again.returncode == 0, again.stdout + again.stderr
        down_s = time.monotonic() - stopped_at
        out, _ = sweep.communicate(timeout=400)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    assert sweep.returncode == 0, out[-3000:]
    assert "does not answer" in out and "answers again" in out, out[-3000:]
    record.update(json.loads((home / ".samplewise" / "services.json").read_text()))
    assert record["postgres"]["port"] == pg["port"] and record["postgres"]["pid"] != pg["pid"]
    runs, points = _check_sweep(home, _db_client(home, record), "outage", 3)
    print(f"PostgreSQL down {down_s:.0f} s mid-sweep: {runs} runs, {points} metric points, 0 lost")


def test_a_killed_driver_resumes_to_one_finished_run_per_configuration(pg_up):
    home, record = pg_up
    client = MlflowClient(record["mlflow"]["url"])
    name, trials = "killed", 4
    # trials of about 1 s on an idle machine (3 epochs take 0.03 s): killed at the first FINISHED
    # run, the driver is inside the next trial, not already past the whole sweep
    sweep = _sweep_in_background(
        home,
        name,
        searcher={**SPEC["searcher"], "num_trials": trials},
        budget={"epochs": 120, "report_every_samples": 16000},
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            experiment = client.get_experiment_by_name(name)
            runs = (
                client.search_runs([experiment.experiment_id], f"tags.`{m.TAG_ROLE}` = 'trial'") if experiment else []
            )
            if any(r.info.status == "FINISHED" for r in runs):
                break
            time.sleep(0.3)
        records = sorted((home / ".samplewise" / "sweeps").glob(f"{name}-*.json"))
        detached = json.loads(records[-1].read_text())
        os.killpg(detached["pid"], signal.SIGKILL)  # the detached driver and its group, at once
    finally:
        sweep.communicate(timeout=60)
    before = client.search_runs([experiment.experiment_id], f"tags.`{m.TAG_ROLE}` = 'trial'")
    finished_before = {r.info.run_id: r.info.end_time for r in before if r.info.status == "FINISHED"}
    assert 0 < len(finished_before) < trials
    print(f"killed with trial runs {sorted(r.info.status for r in before)}")
    resumed = cli("resume", f"{name}.yaml", home=home, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    runs, parents = _trials(client, name)
    assert [p.info.status for p in parents] == ["FINISHED"]  # the same submission, continued
    # the run the kill cut short is KILLED, nothing is left RUNNING, and each configuration has one
    # FINISHED run: those that finished before the kill kept, the others trained once
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs), [r.info.status for r in runs]
    done = [r for r in runs if r.info.status == "FINISHED"]
    seen = [(r.info.run_name, r.info.status, r.data.tags.get(m.TAG_SUPERSEDED, "")[:20]) for r in runs]
    assert len(done) == trials and len({config_key(r.data.params) for r in done}) == trials, (
        seen,
        resumed.stdout[-1500:],
    )
    assert {r.info.run_id: r.info.end_time for r in done if r.info.run_id in finished_before} == finished_before


def test_down_stops_postgres_last_and_up_finds_the_runs_again(pg_up):
    home, record = pg_up
    client = MlflowClient(record["mlflow"]["url"])
    before = {
        r.info.run_id: r.info.status for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
    }
    if not before:  # run by itself: something to find again
        (home / "kept.yaml").write_text(yaml.safe_dump({**SPEC, "name": "kept"}))
        swept = cli("sweep", "kept.yaml", home=home)
        assert swept.returncode == 0, swept.stdout[-2000:] + swept.stderr[-2000:]
        before = {r.info.run_id: r.info.status for r in _trials(client, "kept")[0] + _trials(client, "kept")[1]}
    stopped = cli("down", home=home)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert stopped.stdout.rstrip().endswith(f"postgres (pid {record['postgres']['pid']})"), stopped.stdout
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(s["pid"]) for s in record.values()):
        time.sleep(0.2)
    assert not any(_alive(s["pid"]) for s in record.values())
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", record["postgres"]["port"])) != 0
    again = cli("up", "--mlflow-port", record["mlflow"]["port"], "--ray-port", record["ray"]["port"], home=home)
    assert again.returncode == 0 and "PostgreSQL" in again.stdout, (
        again.stdout + again.stderr
    )  # its cluster, by default
    record.update(json.loads((home / ".samplewise" / "services.json").read_text()))
    client = MlflowClient(record["mlflow"]["url"])
    after = {
        r.info.run_id: r.info.status for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
    }
    assert after == before and len(after) >= 4
