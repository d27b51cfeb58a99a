import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir
from mlflow.tracking import MlflowClient

from services.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict:
    """The environment of a `samplewise` subprocess: this checkout importable, and a local Ray
    (never the RAY_ADDRESS of the shell that runs the tests)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    env.pop("RAY_ADDRESS", None)
    return env


SWEEPS = ROOT / "sweeps"

# Hypothesis keeps its example database and a constants cache in ./.hypothesis by default; the
# suite writes only to temporary folders (a guard below checks the checkout after the run).
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="samplewise-hypothesis-"))
settings.register_profile("samplewise", database=None)
settings.load_profile("samplewise")


def _checkout_entries() -> set[str]:
    return {p.name for p in ROOT.iterdir()}


def pytest_sessionstart(session):
    session.config.stash[_BEFORE] = _checkout_entries()


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when a test left a new file or folder at the top of the checkout (an
    ``mlruns/``, an MLflow database, exports): tests write only under their temporary folders."""
    before = session.config.stash.get(_BEFORE, None)
    if before is None:
        return
    left = sorted(_checkout_entries() - before)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(f"tests left new entries in the checkout {ROOT}: {', '.join(left)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_BEFORE = pytest.StashKey[set]()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep generated datasets out of the user's cache during tests."""
    os.environ.setdefault("SAMPLEWISE_CACHE", str(tmp_path_factory.mktemp("cache")))
    for name in ("SAMPLEWISE_HOME", "RAY_ADDRESS", "MLFLOW_TRACKING_URI"):  # tests choose their own
        os.environ.pop(name, None)


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray for the whole session, always shut down."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def tracking_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory, ray_session):
    """Run sweeps/smoke.yaml through the CLI, as `make sweep` does, then export it."""
    work = tmp_path_factory.mktemp("smoke")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        assert cli.main(["sweep", str(SWEEPS / "smoke.yaml")]) == 0
        assert cli.main(["export", str(SWEEPS / "smoke.yaml")]) == 0
    return work, MlflowClient(uri)


def spec_dict(**overrides):
    """A small valid spec as a dict; overrides replace top-level sections."""
    base = {
        "name": "t",
        "workload": {"name": "digits_mlp", "params": {"hidden": 16}},
        "searcher": {"kind": "random", "num_trials": 2, "max_concurrent": 2, "seed": 0},
        "space": {
            "batch_sizes": [16, 64],
            "lr_per_sample": {"low": 1e-4, "high": 1e-2},
            "reductions": ["mean", "sum"],
            "optimizers": ["sgd", "adam"],
        },
        "budget": {"epochs": 1},
    }
    base.update(overrides)
    return base
