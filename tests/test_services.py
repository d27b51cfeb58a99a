"""make up / status / sweep / logs / down with real servers, and a two-node Ray cluster.

The tests share one `up` and run in file order; the last one takes the services down.

Everything binds to loopback on free ports under a temporary SAMPLEWISE_HOME; every
process the test starts is stopped by its pid, so nothing outlives the test.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from services import metrics as m
from tests.conftest import ROOT

pytestmark = pytest.mark.integration  # real Ray, MLflow and processes: `make test-fast` skips these

SPEC = {
    "name": "twonode",
    "workload": {"name": "digits_mlp", "params": {"hidden": 32}},
    "searcher": {"kind": "random", "num_trials": 6, "max_concurrent": 2, "seed": 0},
    "space": {
        "batch_sizes": [16, 32],
        "lr_per_sample": {"low": 1e-3, "high": 1e-2},
        "reductions": ["mean"],
        "optimizers": ["sgd"],
    },
    "budget": {"epochs": 4},
    "asha": {"enabled": False},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args, home, timeout=300, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAMPLEWISE_HOME": str(home), **(env_extra or {})}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *map(str, args)],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _alive(pid):
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


@pytest.fixture(scope="module")
def services_up(tmp_path_factory):
    """One `up` for the module; the last test takes it down (and the fixture makes sure)."""
    tmp_path = tmp_path_factory.mktemp("home")
    mlflow_port, ray_port = free_port(), free_port()
    started = cli("up", "--mlflow-port", mlflow_port, "--ray-port", ray_port, "--num-cpus", 1, home=tmp_path)
    record = json.loads((tmp_path / ".samplewise" / "services.json").read_text()) if started.returncode == 0 else {}
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield tmp_path, record
    finally:
        cli("down", home=tmp_path)
        for svc in record.values():
            if _alive(svc["pid"]):
                os.killpg(svc["pid"], signal.SIGKILL)


def test_up_binds_loopback_and_status_shows_it(services_up):
    home, record = services_up
    assert record["mlflow"]["url"].startswith("http://127.0.0.1:")
    for private in (home / ".samplewise" / "services.json", Path.home() / ".ray" / "auth_token"):
        assert oct(os.stat(private).st_mode & 0o777) == "0o600", private
    status = cli("status", home=home)
    assert status.returncode == 0
    assert f"MLflow server  running  {record['mlflow']['url']}" in status.stdout
    assert f"Ray head       running  {record['ray']['address']}" in status.stdout
    assert "sweeps in progress: none" in status.stdout
    # a second up starts nothing new
    again = cli("up", "--mlflow-port", record["mlflow"]["port"], "--ray-port", record["ray"]["port"], home=home)
    assert again.returncode == 0 and str(record["mlflow"]["pid"]) in again.stdout


def test_sweep_while_up_is_detached_and_lands_on_both_nodes(services_up):
    home, record = services_up
    (home / "twonode.yaml").write_text(yaml.safe_dump(SPEC))
    worker = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "ray") if (ROOT / ".venv" / "bin" / "ray").exists() else "ray",
            "start",
            f"--address={record['ray']['address']}",
            "--block",
            "--num-cpus=1",
            "--disable-usage-stats",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "RAY_AUTH_MODE": "token"},
    )
    try:
        time.sleep(8)  # the worker node registers with the head
        swept = cli("sweep", "twonode.yaml", home=home)
        assert swept.returncode == 0, swept.stdout[-3000:] + swept.stderr[-3000:]
        assert "detached driver pid" in swept.stdout and "6 trials: 6 completed" in swept.stdout
        logs = cli("logs", "twonode.yaml", "--no-follow", home=home)
        assert logs.returncode == 0 and "6 trials: 6 completed" in logs.stdout
        client = MlflowClient(record["mlflow"]["url"])
        experiment = client.get_experiment_by_name("twonode")
        children = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'trial'")
        nodes = {c.data.tags[m.TAG_NODE_ID] for c in children}
        assert len(children) == 6 and len(nodes) == 2, nodes
        print(f"trials ran on Ray nodes {sorted(nodes)}")
        assert "sweeps in progress: none" in cli("status", home=home).stdout
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)


def _sweep_in_background(home, name, spec):
    (home / f"{name}.yaml").write_text(yaml.safe_dump({**spec, "name": name}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAMPLEWISE_HOME": str(home)}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "sweep", f"{name}.yaml"],
        cwd=home,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_for_children(client, name, count, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'trial'")
            if len(runs) >= count:
                return experiment, runs
        time.sleep(0.5)
    pytest.fail(f"sweep {name} did not start {count} trials")


OUTAGE = {
    **SPEC,
    "searcher": {"kind": "random", "num_trials": 3, "max_concurrent": 1, "seed": 0},
    "budget": {"epochs": 30, "report_every_samples": 2000},
    "noise": {"enabled": False},
}


def test_an_mlflow_outage_mid_sweep_loses_nothing_and_status_answers_fast(services_up):
    home, record = services_up
    client = MlflowClient(record["mlflow"]["url"])
    sweep = _sweep_in_background(home, "outage", OUTAGE)
    try:
        _wait_for_children(client, "outage", 1)
        os.killpg(record["mlflow"]["pid"], signal.SIGKILL)  # the server, leader and workers, gone
        start = time.monotonic()
        status = cli("status", home=home, timeout=60)
        assert time.monotonic() - start < 20, "status waited on the dead server"
        assert "outage" in status.stdout and "does not answer" in status.stdout, status.stdout
        time.sleep(max(0.0, 12 - (time.monotonic() - start)))
        again = cli("up", "--mlflow-port", record["mlflow"]["port"], "--ray-port", record["ray"]["port"], home=home)
        assert again.returncode == 0, again.stdout + again.stderr
        out, _ = sweep.communicate(timeout=300)
        assert sweep.returncode == 0, out[-3000:]
        assert "does not answer" in out and "answers again" in out, out[-3000:]
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    record.update(json.loads((home / ".samplewise" / "services.json").read_text()))
    experiment = client.get_experiment_by_name("outage")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'trial'")
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    budget = 30 * 1078
    for run in runs:
        steps = [p.step for p in client.get_metric_history(run.info.run_id, m.VAL_LOSS)]
        batch = int(run.data.params["batch_size"])
        assert steps[-1] >= budget and len(steps) == len(set(steps)) >= budget // 2000 - 1, (batch, steps)


def test_down_stops_exactly_what_up_started(services_up, ray_session):
    home, record = services_up
    long_sweep = {**OUTAGE, "budget": {"epochs": 2000}}
    sweep = _sweep_in_background(home, "long", long_sweep)
    _wait_for_children(MlflowClient(record["mlflow"]["url"]), "long", 1)
    stopped = cli("down", home=home)
    assert stopped.returncode == 0 and "stopped sweep long" in stopped.stdout, stopped.stdout + stopped.stderr
    assert "mlflow" in stopped.stdout and "ray" in stopped.stdout
    assert sweep.wait(timeout=60) != 0  # the submitting terminal sees the sweep stop
    # the driver stopped like Ctrl-C: its sweep is marked KILLED, resumable, not left RUNNING
    store = MlflowClient(f"sqlite:///{home / '.samplewise' / 'server' / 'mlflow.db'}")
    experiment = store.get_experiment_by_name("long")
    parent = store.search_runs([experiment.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'parent'")[0]
    assert parent.info.status == "KILLED"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(s["pid"]) for s in record.values()):
        time.sleep(0.2)
    assert not any(_alive(s["pid"]) for s in record.values())
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", record["mlflow"]["port"])) != 0
    # the test session's own Ray, which up did not start, still works
    assert ray_session.get(ray_session.remote(lambda: 41 + 1).remote()) == 42
    assert "not started" in cli("status", home=home).stdout


def test_down_and_status_leave_a_process_that_reuses_a_recorded_pid_alone(tmp_path):
    """The recorded MLflow pid now belongs to another program (same pid, later start): status
    must not report it as the server and down must not stop it."""
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        state = tmp_path / ".samplewise"
        state.mkdir()
        (state / "services.json").write_text(
            json.dumps(
                {
                    "mlflow": {
                        "pid": stranger.pid,
                        "start": "1",
                        "url": "http://127.0.0.1:9",
                        "host": "127.0.0.1",
                        "port": 9,
                        "log": str(state / "x.log"),
                        "store": str(state / "x.db"),
                    }
                }
            )
        )
        status = cli("status", home=tmp_path)
        assert "MLflow server  running" not in status.stdout, status.stdout
        down = cli("down", home=tmp_path)
        assert down.returncode == 0 and "nothing was running" in down.stdout, down.stdout
        assert _alive(stranger.pid)
    finally:
        stranger.kill()
        stranger.wait()


def test_down_stops_the_group_of_a_leader_that_died(tmp_path, monkeypatch):
    """MLflow's leader killed, its workers still hold the port: status says so, down stops them."""
    from services import processes
    from services.ops import local

    monkeypatch.setenv("SAMPLEWISE_HOME", str(tmp_path))
    proc = local._spawn(["sh", "-c", "sleep 300 & sleep 300 & wait"], tmp_path / "group.log")
    local._save(
        {
            "mlflow": {
                **proc,
                "url": "http://127.0.0.1:9",
                "host": "127.0.0.1",
                "port": 9,
                "log": str(tmp_path / "group.log"),
                "store": str(tmp_path / "x.db"),
            }
        }
    )
    time.sleep(0.5)
    workers = processes.group_alive(proc["pid"])
    assert len(workers) == 3
    os.kill(proc["pid"], signal.SIGKILL)
    os.waitpid(proc["pid"], 0)
    status = cli("status", home=tmp_path)
    assert "MLflow server  broken" in status.stdout and "2 processes" in status.stdout, status.stdout
    assert oct(os.stat(tmp_path / ".samplewise" / "services.json").st_mode & 0o777) == "0o600"
    down = cli("down", home=tmp_path)
    assert down.returncode == 0 and "what was left" in down.stdout, down.stdout
    assert not processes.group_alive(proc["pid"])
