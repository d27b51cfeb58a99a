"""The MLflow UI checked in a real browser: headless Chromium finds the smoke sweep's parent
run and its child runs (skipped where Chromium is not installed)."""

import pytest

from services.cli import main as cli
from services.ops.ui_check import browser_paths
from tests.conftest import SWEEPS

pytestmark = [
    pytest.mark.integration,  # real Ray, MLflow and processes: `make test-fast` skips these
    pytest.mark.skipif(
        browser_paths() is None,
        reason="Chromium and chromedriver are not installed; `make browser-deps` installs Debian's chromium and "
        "chromium-driver",
    ),
]


def test_ui_shows_the_parent_run_and_its_children(smoke_sweep, tmp_path, capsys):
    work, client = smoke_sweep
    shot = tmp_path / "ui-check.png"
    code = cli.main(["ui-check", str(SWEEPS / "smoke.yaml"), "--tracking-uri", client.tracking_uri, "--out", str(shot)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "with 4 of its 4 child runs" in out
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
