"""The PostgreSQL cluster of ``make up BACKEND=postgres``: created and owned by samplewise under
``.samplewise/postgres/``, the MLflow server's backend store.

- ``data/``: the cluster (``initdb``), with one role, ``samplewise``, whose password is random and
  kept in ``.samplewise/pgpass`` (0600, libpq's password-file format; the MLflow server reads it
  through ``PGPASSFILE``, so no password is on a command line).
- It listens on 127.0.0.1 at a port of its own and on a Unix socket inside ``.samplewise/postgres/``
  (0700); every login, local or TCP, needs the password (``scram-sha-256``): other users of this
  machine cannot read or change the runs, other machines cannot reach it at all.
- ``initdb`` and ``postgres`` refuse to run as root: run as root (CI, containers), the cluster
  runs as the unprivileged ``postgres`` system user (``SAMPLEWISE_PG_USER``), which then owns
  ``.samplewise/postgres/``.

The server process (the postmaster) is recorded and stopped like the other services of
:mod:`services.ops.local`; stopping it is PostgreSQL's fast shutdown (SIGINT: open transactions
roll back, what was committed stays).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
from pathlib import Path

from services import paths
from services.errors import ServiceError

ROLE = "samplewise"
DATABASE = "mlflow"
HOST = "127.0.0.1"


def bin_dir() -> Path:
    """Where PostgreSQL's server programs are: ``SAMPLEWISE_PG_BIN``, else the newest
    ``/usr/lib/postgresql/<version>/bin`` (Debian's layout), else ``initdb`` on the PATH."""
    if os.environ.get("SAMPLEWISE_PG_BIN"):
        return Path(os.environ["SAMPLEWISE_PG_BIN"])
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise ServiceError(
        "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on the PATH): install it "
        "(Debian: apt-get install postgresql) or set SAMPLEWISE_PG_BIN to its bin folder"
    )


def home() -> Path:
    return paths.state_dir() / "postgres"


def data_dir() -> Path:
    return home() / "data"


def socket_dir() -> Path:
    return home() / "socket"


def passfile() -> Path:
    return paths.state_dir() / "pgpass"


def exists() -> bool:
    """Whether samplewise has created its cluster here (``make up`` then uses it by default)."""
    return (data_dir() / "PG_VERSION").exists()


def run_as() -> pwd.struct_passwd | None:
    """The unprivileged user the cluster runs as when samplewise runs as root, else None."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("SAMPLEWISE_PG_USER", "postgres")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ServiceError(
            f"running as root, the PostgreSQL cluster needs an unprivileged user to run as, and user {name!r} "
            "does not exist: create it or name one with SAMPLEWISE_PG_USER"
        ) from None


def popen_user() -> dict:
    """``subprocess`` arguments that run a PostgreSQL program as :func:`run_as`'s user."""
    user = run_as()
    return {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _own(path: Path) -> None:
    user = run_as()
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


def _run(cmd: list[str], what: str, env: dict | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, **popen_user())
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise ServiceError(f"{what} failed: {lines[-1][:300] if lines else 'exit status ' + str(done.returncode)}")


def pg_env() -> dict[str, str]:
    """The environment a PostgreSQL program runs in: C locale (the cluster's), nothing of the
    caller's PG* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return {**env, "LC_ALL": "C", "LANG": "C"}


def init() -> bool:
    """Create the cluster, its role and its password file, unless it exists; True if created."""
    if exists():
        return False
    user = run_as()
    home().mkdir(parents=True, exist_ok=True)
    os.chmod(home(), 0o700)
    _own(home())
    if user is not None:  # the user must reach the folder: every folder above it searchable
        probe = subprocess.run(["test", "-w", str(home())], **popen_user())
        if probe.returncode != 0:
            raise ServiceError(
                f"user {user.pw_name!r} (the cluster runs as it, not as root) cannot reach {home()}: a folder "
                "above it is closed to other users; run samplewise from a folder others can enter"
            )
    password = secrets.token_urlsafe(24)
    pwfile = home() / "initdb-password"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w") as f:
        f.write(password + "\n")
    _own(pwfile)
    try:
        _run(
            [
                str(bin_dir() / "initdb"),
                "--pgdata",
                str(data_dir()),
                "--username",
                ROLE,
                "--pwfile",
                str(pwfile),
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--no-locale",
            ],
            "initdb",
            pg_env(),
        )
    except ServiceError:
        shutil.rmtree(data_dir(), ignore_errors=True)  # a cluster cut short: the next up starts over
        raise
    finally:
        pwfile.unlink(missing_ok=True)
    paths.write_private(passfile(), f"*:*:*:{ROLE}:{password}\n")  # any of its ports: the port is up's choice
    return True


def command(port: int) -> list[str]:
    """The postmaster: loopback TCP at ``port`` and a Unix socket only its user can open."""
    socket_dir().mkdir(exist_ok=True)
    os.chmod(socket_dir(), 0o700)
    _own(socket_dir())
    settings = {
        "listen_addresses": HOST,
        "port": str(port),
        "unix_socket_directories": str(socket_dir()),
        "unix_socket_permissions": "0700",
        # many sweep drivers and a server with several workers: MLflow pools 5+10 per process
        "max_connections": "200",
    }
    cmd = [str(bin_dir() / "postgres"), "-D", str(data_dir())]
    for key, value in settings.items():
        cmd += ["-c", f"{key}={value}"]
    return cmd


def client_env() -> dict[str, str]:
    """What a libpq client (the MLflow server, psql) needs to log in: the password file."""
    return {"PGPASSFILE": str(passfile())}


def uri(port: int) -> str:
    """The SQLAlchemy URI of the cluster's MLflow database (no password: libpq reads it from
    :func:`passfile`)."""
    return f"postgresql://{ROLE}@{HOST}:{port}/{DATABASE}"


def ready(port: int) -> bool:
    """Whether the cluster accepts logins at ``port`` (``pg_isready``)."""
    done = subprocess.run(
        [str(bin_dir() / "pg_isready"), "-q", "-h", HOST, "-p", str(port), "-U", ROLE, "-d", "postgres"],
        env=pg_env(),
        capture_output=True,
    )
    return done.returncode == 0


def ensure_database(port: int) -> None:
    """Create the MLflow database unless it exists."""
    env = {**pg_env(), **client_env()}
    psql = [str(bin_dir() / "psql"), "-X", "-q", "-t", "-A", "-h", HOST, "-p", str(port), "-U", ROLE, "-d", "postgres"]
    found = subprocess.run(
        psql + ["-c", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
        env=env,
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise ServiceError(f"PostgreSQL at {HOST}:{port} refused samplewise's login: {found.stderr.strip()[:300]}")
    if found.stdout.strip() != "1":
        created = subprocess.run(psql + ["-c", f"CREATE DATABASE {DATABASE}"], env=env, capture_output=True, text=True)
        if created.returncode != 0:
            raise ServiceError(f"creating database {DATABASE!r} failed: {created.stderr.strip()[:300]}")


def redact(store_uri: str) -> str:
    """``store_uri`` without its password, fit to print and record."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(store_uri).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: show its scheme at most
        return store_uri.split("://", 1)[0] + "://..." if "://" in store_uri else "(not a database URL)"
