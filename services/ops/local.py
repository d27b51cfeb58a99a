"""Local services for ``make up / status / down / logs``: an MLflow tracking server and a Ray
head node, started in the background, bound to 127.0.0.1 unless told otherwise.

``up`` records what it started (pids, addresses, logs) in ``.samplewise/services.json``;
``down`` stops exactly those processes (by process group), nothing else. While they run,
sweeps use them (see :mod:`services.paths`) and are submitted as detached drivers whose
output goes to ``.samplewise/logs/``, so closing the submitting terminal loses nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

from services import paths, processes
from services.errors import ServiceError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _wait(check, what: str, pid: int, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not processes.alive(pid):
            tail = log.read_text()[-400:].strip().splitlines()[-1:] if log.exists() else []
            raise ServiceError(f"{what} exited while starting: {tail[0] if tail else 'see ' + str(log)}")
        if check():
            return
        time.sleep(0.3)
    raise ServiceError(f"{what} did not come up within {timeout_s:.0f} s; see {log}")


def _spawn(cmd: list[str], log: Path, env: Optional[dict] = None, **popen) -> dict:
    """Start ``cmd`` in its own session (so its group can be stopped whole); returns its pid and
    start time, which together identify it. ``popen``: more ``subprocess.Popen`` arguments (the
    user PostgreSQL runs as)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with open(fd, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            **popen,
        )  # own group: down stops all of it
    return {"pid": proc.pid, "start": processes.start_time(proc.pid)}


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
"""The environment samplewise starts MLflow servers and UIs with: no job runner (MLflow 3.x starts
a huey consumer with ten workers and periodic GenAI tasks by default; tracking does not use them)."""


def server_env() -> dict[str, str]:
    return {**os.environ, **MLFLOW_SERVER_ENV}


def ui_command(uri: str, host: str, port: int) -> list[str]:
    """The MLflow UI over a local store (``make ui`` and the browser check)."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]


def serve_ui(uri: str, port: int, timeout_s: float = 90) -> int:
    """Start the MLflow UI for ``uri`` on 127.0.0.1:``port`` in the background; returns its pid
    (stop it with :func:`stop`)."""
    log = paths.state_dir() / "logs" / f"mlflow-ui-{port}.log"
    pid = _spawn(ui_command(uri, "127.0.0.1", port), log, server_env())["pid"]
    try:
        _wait(lambda: _http_ok(f"http://127.0.0.1:{port}/health"), "the MLflow UI", pid, log, timeout_s)
    except ServiceError:
        stop(pid)
        raise
    return pid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bin_path(name: str) -> str:
    """An executable of this environment (ray, mlflow), next to the running Python."""
    return str(Path(sys.executable).with_name(name))


BACKENDS = ("sqlite", "postgres")
"""The MLflow server's stores ``make up`` can run on its own: SQLite (``.samplewise/server/mlflow.db``,
the default) or a PostgreSQL cluster it creates (:mod:`services.ops.postgres`)."""


def choose_backend(backend: Optional[str], store_uri: Optional[str]) -> str:
    """``external`` for a store the user gives (``MLFLOW_BACKEND_STORE_URI``), else ``backend``,
    else PostgreSQL where samplewise created its cluster before, else SQLite."""
    from services.ops import postgres

    if store_uri:
        if backend:
            raise ServiceError(
                f"BACKEND={backend} and MLFLOW_BACKEND_STORE_URI={postgres.redact(store_uri)[:80]} both name a "
                "store: give one"
            )
        return "external"
    if backend is None:
        return "postgres" if postgres.exists() else "sqlite"
    if backend not in BACKENDS:
        raise ServiceError(f"BACKEND={backend[:40]!r} is not one of {', '.join(BACKENDS)}")
    return backend


def _need_driver(store_uri: str) -> None:
    """Fail before starting the server when the database driver ``store_uri`` needs is missing."""
    from sqlalchemy.engine import make_url

    try:
        make_url(store_uri).get_dialect().import_dbapi()
    except ImportError as err:
        hint = " (make up BACKEND=postgres installs it)" if store_uri.startswith("postgresql") else ""
        raise ServiceError(
            f"the MLflow server's store needs a database driver that is not installed ({err}): "
            f"pip install -e '.[postgres]'{hint}"
        ) from None
    except Exception as err:  # noqa: BLE001 - not a database URL SQLAlchemy reads
        raise ServiceError(f"MLFLOW_BACKEND_STORE_URI is not a database URL ({str(err)[:120]})") from None


def _start_postgres(record: dict, port: int, timeout_s: float) -> dict:
    """Create (once) and start samplewise's PostgreSQL cluster unless it runs; its record."""
    from services.ops import postgres

    current = record.get("postgres") or paths.read_services().get("postgres")  # running, else as last recorded
    if isinstance(current, dict) and processes.ours(current):
        return current
    _clear_leftovers(current)
    port = current["port"] if isinstance(current, dict) and "port" in current else port
    postgres.init()
    if not _port_free(postgres.HOST, port):
        raise ServiceError(f"port {postgres.HOST}:{port} is taken; choose another with PG_PORT=...")
    log = paths.state_dir() / "logs" / "postgres.log"
    proc = _spawn(postgres.command(port), log, postgres.pg_env(), **postgres.popen_user())
    record["postgres"] = {
        **proc,
        "address": f"{postgres.HOST}:{port}",
        "host": postgres.HOST,
        "port": port,
        "log": str(log),
        "data": str(postgres.data_dir()),
        "stop_signal": "SIGINT",  # fast shutdown: roll back what is open, keep what was committed
    }
    _save(record)
    _wait(lambda: postgres.ready(port), "PostgreSQL", proc["pid"], log, timeout_s)
    postgres.ensure_database(port)
    return record["postgres"]


def up(
    host: str = "127.0.0.1",
    mlflow_port: int = 5000,
    ray_port: int = 6379,
    num_cpus: Optional[int] = None,
    timeout_s: float = 90,
    backend: Optional[str] = None,
    pg_port: int = 5433,
    store_uri: Optional[str] = None,
) -> dict:
    """Start the MLflow server (on the store :func:`choose_backend` picks), and the Ray head,
    whichever is not already running."""
    from services.ops import postgres

    state = paths.state_dir()
    current = paths.running_services()
    record = dict(current)
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if "mlflow" in current:  # it keeps its store; PostgreSQL under it is started again if it stopped
        chosen = current["mlflow"].get("backend", "sqlite")
        if (backend or store_uri) and choose_backend(backend, store_uri) != chosen:
            raise ServiceError(f"the MLflow server runs on {chosen} ({current['mlflow']['store']}); make down first")
        if chosen == "postgres":
            _start_postgres(record, pg_port, timeout_s)
    else:
        chosen = choose_backend(backend, store_uri)
    if "mlflow" not in current:
        _clear_leftovers(paths.read_services().get("mlflow"))
        if not _port_free(host, mlflow_port):
            raise ServiceError(f"port {host}:{mlflow_port} is taken; choose another with MLFLOW_PORT=...")
        server = state / "server"
        (server / "artifacts").mkdir(parents=True, exist_ok=True)
        log = state / "logs" / "mlflow-server.log"
        env = server_env()
        if chosen == "sqlite":
            uri, shown = f"sqlite:///{server / 'mlflow.db'}", str(server / "mlflow.db")
        else:
            _need_driver(postgres.uri(pg_port) if chosen == "postgres" else store_uri or "")  # before anything starts
            if chosen == "postgres":
                pg = _start_postgres(record, pg_port, timeout_s)
                uri = postgres.uri(pg["port"])
                env.update(postgres.client_env())
            else:
                uri = store_uri or ""
            shown = postgres.redact(uri)
        env["MLFLOW_BACKEND_STORE_URI"] = uri  # read by mlflow server: no password on its command line
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--artifacts-destination",
            str(server / "artifacts"),
            "--host",
            host,
            "--port",
            str(mlflow_port),
            "--workers",
            "2",
        ]
        if host not in LOOPBACK:
            cmd += ["--allowed-hosts", "*", "--cors-allowed-origins", "*"]
        proc = _spawn(cmd, log, env)
        pid = proc["pid"]
        url = f"http://{connect_host}:{mlflow_port}"
        record["mlflow"] = {
            **proc,
            "url": url,
            "host": host,
            "port": mlflow_port,
            "log": str(log),
            "store": shown,
            "backend": chosen,
        }
        _save(record)
        _wait(lambda: _http_ok(f"{url}/health"), "the MLflow server", pid, log, timeout_s)
    if "ray" not in current:
        _clear_leftovers(paths.read_services().get("ray"))
        if not _port_free(host, ray_port):
            raise ServiceError(f"port {host}:{ray_port} is taken; choose another with RAY_PORT=...")
        log = state / "logs" / "ray-head.log"
        cmd = [
            bin_path("ray"),
            "start",
            "--head",
            "--block",
            f"--node-ip-address={connect_host}",
            f"--port={ray_port}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ]
        if num_cpus:
            cmd.append(f"--num-cpus={num_cpus}")
        # Ray 2.60 turns 127.0.0.1 into the machine's address and its servers listen on every
        # interface; token authentication is what keeps other machines out, so require it.
        private_ray_token()
        proc = _spawn(cmd, log, env={**os.environ, "RAY_AUTH_MODE": "token"})
        pid = proc["pid"]
        record["ray"] = {
            **proc,
            "address": f"{connect_host}:{ray_port}",
            "host": host,
            "port": ray_port,
            "log": str(log),
        }
        _save(record)
        _wait(lambda: _tcp_open(connect_host, ray_port), "the Ray head", pid, log, timeout_s)
    return record


def private_ray_token() -> Path:
    """Ray's token (``~/.ray/auth_token``), created readable by its owner only: Ray itself
    writes it 0644, and whoever reads it can submit jobs to the cluster."""
    path = Path.home() / ".ray" / "auth_token"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "w") as f:
            f.write(secrets.token_hex(32))
    os.chmod(path, 0o600)
    return path


def _clear_leftovers(record: dict | None) -> None:
    """Stop what is left of a recorded service whose leader died (it may hold the port)."""
    if isinstance(record, dict) and processes.leftovers(record):
        _stop_group(record["pid"], _first_signal(record))


def _first_signal(record: dict) -> signal.Signals:
    return signal.Signals[record.get("stop_signal", "SIGTERM")]


def _save(record: dict) -> None:
    paths.write_private(paths.services_record(), json.dumps(record, indent=2))


def _stop_group(pid: int, first: signal.Signals = signal.SIGTERM) -> None:
    """Send ``first`` to the leader (SIGTERM: ``ray start --block`` then stops its own children in
    order; SIGINT: PostgreSQL's fast shutdown), then SIGTERM whatever is left of its group
    (MLflow's job consumers), then SIGKILL."""
    steps = (
        (lambda: os.kill(pid, first), 15),
        (lambda: os.killpg(pid, signal.SIGTERM), 5),
        (lambda: os.killpg(pid, signal.SIGKILL), 5),
    )
    for i, (send, wait_s) in enumerate(steps):
        try:
            send()
        except ProcessLookupError:
            pass
        done = (lambda: not processes.alive(pid)) if i == 0 else (lambda: not processes.group_alive(pid))
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not done():
            try:  # reap it if it is our own child (up and down called in one process)
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.1)
        if not processes.group_alive(pid):
            return


def stop(pid: int, first: signal.Signals = signal.SIGTERM) -> None:
    """Stop a process group this module started (``first``: see :func:`_stop_group`)."""
    _stop_group(pid, first)


def down(driver_grace_s: float = 60.0) -> list[str]:
    """Stop the detached sweep drivers (as Ctrl-C would: their sweeps stay resumable), then what
    ``up`` recorded, each by its whole process group, identified by pid and start time: a
    process that merely reuses a recorded pid is left alone. Returns what was stopped."""
    stopped = [
        f"sweep {s['sweep']} (pid {s['pid']})" for s in sweeps(active_only=True) if stop_driver(s, driver_grace_s)
    ]
    recorded = paths.read_services()
    for name in sorted(recorded, key=lambda name: name == "postgres"):  # the database after its clients
        svc = recorded[name]
        if not isinstance(svc, dict):
            continue
        if processes.ours(svc):
            _stop_group(svc["pid"], _first_signal(svc))
            stopped.append(f"{name} (pid {svc['pid']})")
        elif processes.leftovers(svc):
            _stop_group(svc["pid"], _first_signal(svc))
            stopped.append(f"{name} (what was left of pid {svc['pid']}'s group)")
    paths.services_record().unlink(missing_ok=True)
    return stopped


def stop_driver(record: dict, grace_s: float) -> bool:
    """SIGTERM a detached driver (it stops like Ctrl-C: Tune saves its state, the parent run is
    marked KILLED, ``make resume`` continues); SIGKILL its group if it has not ended in
    ``grace_s``, and mark its sweep's parent run KILLED itself."""
    if not processes.ours(record):
        return False
    os.kill(record["pid"], signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and processes.alive(record["pid"]):
        time.sleep(0.2)
    if processes.alive(record["pid"]):
        _stop_group(record["pid"])
        try:
            from services.results import records
            from services.tracking import store

            client = store.client_for(record["tracking_uri"])
            parent = records.find_parent_run(client, record["sweep"])
            if parent.info.status == "RUNNING":
                client.set_terminated(parent.info.run_id, status="KILLED")
        except Exception:  # noqa: BLE001 - the run stays RUNNING; make resume still continues it
            pass
    return True


# ---- detached sweep drivers -------------------------------------------------------------


def _sweeps_dir() -> Path:
    return paths.state_dir() / "sweeps"


def submit_detached(command: str, spec_path: str, sweep: str, num_trials: int, services: dict) -> dict:
    """Start ``samplewise <command> <spec> --foreground`` in its own session, against the services."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log = paths.state_dir() / "logs" / f"{sweep}-{stamp}.log"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": services["mlflow"]["url"],
        "RAY_ADDRESS": services["ray"]["address"],
        "RAY_AUTH_MODE": "token",
    }
    proc = _spawn([sys.executable, "-m", "services.cli.main", command, spec_path, "--foreground"], log, env)
    record = {
        **proc,
        "sweep": sweep,
        "num_trials": num_trials,
        "command": command,
        "spec": spec_path,
        "log": str(log),
        "started": time.time(),
        "tracking_uri": env["MLFLOW_TRACKING_URI"],
    }
    paths.write_private(_sweeps_dir() / f"{sweep}-{stamp}.json", json.dumps(record, indent=2))
    return record


def sweeps(active_only: bool = False) -> list[dict]:
    """Detached sweep drivers, newest first, each with ``alive``."""
    out = []
    for path in sorted(_sweeps_dir().glob("*.json"), reverse=True):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        record["alive"] = processes.ours(record)
        if record["alive"] or not active_only:
            out.append(record)
    return sorted(out, key=lambda r: r["started"], reverse=True)


def follow(log: Path, pid: int, out=sys.stdout, poll_s: float = 0.5) -> None:
    """Print ``log`` and keep printing what is appended until process ``pid`` ends."""
    with open(log, errors="replace") as f:
        while True:
            chunk = f.read()
            if chunk:
                out.write(chunk)
                out.flush()
            elif not processes.alive(pid):
                out.write(f.read())
                return
            else:
                time.sleep(poll_s)
