"""The bench's measurements that need no sweep, at toy size, and its report: a smoke run, never
a timed assertion (the figures of a quick run on a shared machine mean nothing).

Every measurement, the sweeps included, runs at toy size with `make bench-quick` (about two
minutes on 2 cores); the sweeps it runs are the runner's own paths, which the integration tests
drive directly."""

import pytest

from services.bench.loops import bench_compile, bench_packs, bench_training_loop
from services.bench.report import to_markdown
from services.bench.store import bench_export

pytestmark = pytest.mark.integration  # real MLflow store: `make test-fast` skips these


def test_the_measurements_without_sweeps_run_and_report(tmp_path):
    results = [bench_training_loop(True), bench_packs(True), bench_compile(True), bench_export(True, tmp_path)]
    text = to_markdown(results, "make bench-quick", 1.0, True)
    for name in (
        "training loop vs DataLoader loop",
        "packed members vs one trial's loop",
        "torch.compile of the packed step",
        "analysis and export over 50 trial runs",
    ):
        assert name in text, name
    assert all(r.met is None or isinstance(r.met, bool) for r in results)
    assert "Machine:" in text and "Command: `make bench-quick`" in text and "toy sizes" in text
