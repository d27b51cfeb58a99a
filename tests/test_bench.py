"""make bench-quick as a smoke run: every measurement runs at toy size and reports.

Never a timed assertion: the figures of a quick run on a shared machine mean nothing."""

import pytest

from services.cli import main as cli

pytestmark = pytest.mark.integration  # real Ray, MLflow and processes: `make test-fast` skips these


def test_bench_quick_runs_every_measurement(tmp_path, capsys):
    out = tmp_path / "BENCHMARKS-quick.md"
    assert cli.main(["bench", "--quick", "--out", str(out)]) == 0
    text = out.read_text()
    for name in (
        "training loop vs DataLoader loop",
        "orchestration",
        "search efficiency",
        "tracking overhead",
        "analysis and export over 50 trial runs",
        "peak memory per trial worker",
        "packed members vs one trial's loop",
        "torch.compile of the packed step",
        "quickstart sweep vs its bare packed compute",
        "quickstart in packs vs one configuration per trial",
        "SGD grid in packs vs one configuration per trial",
        "SGD grid with ASHA in packs vs one configuration per trial",
        "quickstart answer at held-out batch sizes",
        "SGD grid answer at held-out batch sizes",
        "quickstart answers with max_concurrent 1 vs 2",
    ):
        assert name in text, name
    assert "ms of driver CPU per trial run" in text  # tracking at both trial lengths
    assert "Machine:" in text and "Command: `make bench-quick`" in text
