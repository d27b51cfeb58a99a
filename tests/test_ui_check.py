"""The MLflow UI checked in a real browser: headless Chromium finds the smoke sweep's parent
run and its child runs, the answer table in the parent's description, the lr*(B) plot and the
trials' chart view. Skipped where Chromium is not installed, unless SAMPLEWISE_REQUIRE_BROWSER
is set (CI sets it after installing Chromium: there a missing browser fails the run)."""

import json
import os

import pytest

from services.cli import main as cli
from services.ops.ui_check import browser_paths
from tests.conftest import SWEEPS

REQUIRED = bool(os.environ.get("SAMPLEWISE_REQUIRE_BROWSER"))

pytestmark = [
    pytest.mark.integration,  # real Ray, MLflow and processes: `make test-fast` skips these
    pytest.mark.skipif(
        browser_paths() is None and not REQUIRED,
        reason="Chromium and chromedriver are not installed; `make browser-deps` installs Debian's chromium and "
        "chromium-driver",
    ),
]

PNG = b"\x89PNG\r\n\x1a\n"


def test_ui_shows_the_answer_the_plot_and_the_children(smoke_sweep, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the UI server's log goes to .samplewise/logs here
    assert browser_paths() is not None, "SAMPLEWISE_REQUIRE_BROWSER is set but Chromium or chromedriver is missing"
    work, client = smoke_sweep
    shots = tmp_path / "shots"
    code = cli.main(
        ["ui-check", str(SWEEPS / "smoke.yaml"), "--tracking-uri", client.tracking_uri, "--out", str(shots)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    doc = json.loads((work / "exports" / "smoke.json").read_text())
    formulas = [c["formula"] for c in doc["constants"] if c["formula"]]
    assert formulas
    assert "with 4 of its 4 child runs" in out
    assert f"the answer table ({len(formulas)} formulas), the lr*(B) plot" in out
    for name in ("runs.png", "answer.png", "lr_star.png", "charts.png"):
        assert (shots / name).read_bytes()[:8] == PNG, name


def test_ui_check_fails_when_the_parent_does_not_show_the_answer(smoke_sweep, tmp_path, capsys, monkeypatch):
    """The description the check looks for, removed from the parent: the check must fail."""
    monkeypatch.chdir(tmp_path)
    assert browser_paths() is not None, "SAMPLEWISE_REQUIRE_BROWSER is set but Chromium or chromedriver is missing"
    work, client = smoke_sweep
    parent = json.loads((work / "exports" / "smoke.json").read_text())["parent_run_id"]
    description = client.get_run(parent).data.tags["mlflow.note.content"]
    client.set_tag(parent, "mlflow.note.content", "nothing here")
    try:
        code = cli.main(
            ["ui-check", str(SWEEPS / "smoke.yaml"), "--tracking-uri", client.tracking_uri, "--out", str(tmp_path)]
        )
    finally:
        client.set_tag(parent, "mlflow.note.content", description)
    err = capsys.readouterr().err
    assert code != 0
    assert "shows no answer table in the description" in err
    assert (tmp_path / "failed.png").exists()
