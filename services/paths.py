"""Where samplewise keeps things on the embedded defaults, each overridable by environment.

- ``MLFLOW_TRACKING_URI``: tracking store (default: the server ``make up`` started, else
  ``sqlite:///<project>/mlflow.db``).
- ``RAY_ADDRESS``: a running Ray cluster (default: the head ``make up`` started, else start a
  local one with ``ray.init``).
- ``SAMPLEWISE_STORAGE``: Ray Tune ``storage_path`` (default ``<project>/.samplewise/ray_results``);
  on a multi-node cluster this must be shared storage (e.g. ``s3://bucket/path``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from services import processes


def project_dir() -> Path:
    return Path(os.environ.get("SAMPLEWISE_HOME") or os.getcwd()).resolve()


def verbose() -> bool:
    """``--verbose`` (``SAMPLEWISE_VERBOSE=1``): Ray's and Tune's own banners and hints on the terminal."""
    return os.environ.get("SAMPLEWISE_VERBOSE", "") not in ("", "0")


def state_dir() -> Path:
    return project_dir() / ".samplewise"


def write_private(path: Path, text: str) -> None:
    """Write ``path`` atomically, readable by its owner only (0600): state files name ports,
    pids, logs and passwords of the user's services."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def services_record() -> Path:
    """Where ``make up`` records what it started (pids, start times, addresses, logs)."""
    return state_dir() / "services.json"


def read_services() -> dict:
    """The record of ``make up``, as written (its processes may have ended since)."""
    try:
        return json.loads(services_record().read_text())
    except (OSError, ValueError):
        return {}


def running_services() -> dict:
    """The recorded services whose processes still run: {'mlflow': {...}, 'ray': {...}}."""
    return {name: svc for name, svc in read_services().items() if isinstance(svc, dict) and processes.ours(svc)}


def _local_service(name: str) -> dict | None:
    return running_services().get(name)


def ray_needs_token(address: str | None) -> bool:
    """Whether ``address`` is the Ray head ``make up`` started: it requires Ray's token auth."""
    head = _local_service("ray")
    return head is not None and address == head["address"]


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the server `make up` started, else the local SQLite file."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    server = _local_service("mlflow")
    return server["url"] if server else f"sqlite:///{project_dir() / 'mlflow.db'}"


def ray_address() -> str | None:
    """$RAY_ADDRESS, else the Ray head `make up` started, else None (start a local Ray)."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    head = _local_service("ray")
    return head["address"] if head else None


def storage_path() -> str:
    return os.environ.get("SAMPLEWISE_STORAGE") or str(state_dir() / "ray_results")


def exports_dir() -> Path:
    return project_dir() / "exports"


def artifact_location(uri: str, experiment: str) -> str | None:
    """For a local SQLite store, keep artifacts in ``mlartifacts/`` beside the database file.

    Remote servers choose their own artifact root (None).
    """
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    if not db.is_absolute():
        db = project_dir() / db
    return (db.parent / "mlartifacts" / experiment).as_uri()
