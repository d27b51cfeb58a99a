"""``import samplewise``: the names users' code needs, and an export read back in a training
script with the same numbers and warnings as ``samplewise lr``."""

import json
import subprocess
import sys
import warnings

import pytest

import samplewise
from services.errors import ExportError
from tests.conftest import ROOT
from tests.test_cli import _export, run_cli


def test_every_public_name_resolves_and_nothing_else_does():
    for name in samplewise.__all__:
        assert getattr(samplewise, name) is not None, name
    assert {"Workload", "TrialContext", "Batches", "load_export", "Export"} <= set(samplewise.__all__)
    with pytest.raises(AttributeError, match="no attribute 'train'"):
        samplewise.train  # noqa: B018


def test_import_samplewise_and_read_an_export_without_ray_mlflow_or_torch(tmp_path):
    """A training script that only needs the LR does not pay for the sweep machinery."""
    path = _export(tmp_path)
    code = (
        "import sys, samplewise\n"
        f"print(samplewise.load_export({str(path)!r}).lr(batch_size=128, optimizer='sgd'))\n"
        "print(sorted(m for m in ('ray', 'mlflow', 'torch', 'optuna') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    lr, loaded = out.stdout.splitlines()
    assert float(lr) == pytest.approx(0.128)
    assert loaded == "[]"


def test_lr_matches_the_cli_and_warns_with_its_text(tmp_path):
    path = _export(tmp_path)
    export = samplewise.load_export(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lr = export.lr(batch_size=1024, optimizer="adam", reduction="mean")
    cli = run_cli("lr", path, "--batch-size", 1024, "--optimizer", "adam", "--value-only", cwd=tmp_path)
    assert lr == pytest.approx(float(cli.stdout), rel=1e-5)
    assert [f"samplewise: warning: {w.message}" for w in caught] == cli.stderr.splitlines()
    assert all(issubclass(w.category, samplewise.ExtrapolationWarning) for w in caught) and caught
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inside the swept range: no warning
        assert export.lr(batch_size=64, optimizer="sgd") == pytest.approx(0.064)
    assert export.constant("adam")["formula"] == "lr = 0.0001 * batch_size**0.5"


def test_bad_lookups_raise_export_error_naming_the_problem(tmp_path):
    export = samplewise.load_export(_export(tmp_path))
    with pytest.raises(samplewise.ExportError, match="ambiguous"):
        export.lr(batch_size=64)
    with pytest.raises(samplewise.ExportError, match="no constant for adamw"):
        export.lr(batch_size=64, optimizer="adamw")
    with pytest.raises(samplewise.ExportError, match="must be >= 1, got 0"):
        export.lr(batch_size=0, optimizer="sgd")
    (tmp_path / "bad.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(ExportError, match="not a samplewise export"):
        samplewise.load_export(tmp_path / "bad.json")
