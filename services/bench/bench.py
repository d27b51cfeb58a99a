"""``make bench``: samplewise measured against the limit and against what users would do instead.

Every comparison is a ratio measured side by side in the same run (shared machines are noisy);
absolute figures are reported with the machine they came from. ``quick=True`` runs each
measurement at toy size (the test suite runs it as a smoke test, never as a timed assertion).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from services.bench.adaptive import bench_adaptive
from services.bench.loops import bench_compile, bench_packs, bench_training_loop
from services.bench.packs import bench_limit, bench_packed_grid
from services.bench.report import Result, to_markdown
from services.bench.store import bench_export
from services.bench.sweeps import bench_orchestration, bench_search, bench_tracking
from services.bench.team_store import bench_team_store
from services.bench.transfer import bench_transfer

ONLY = ("adaptive", "store")
"""Parts of the bench ``--only`` runs by themselves (the rest needs the whole run)."""


def run_bench(quick: bool, out: Path, command: str, only: str | None = None) -> list[Result]:
    import ray

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="samplewise-bench-") as tmp:
        store = Path(tmp)
        if only in ONLY:
            results = bench_adaptive(quick, store) if only == "adaptive" else bench_team_store(quick, store)
            out.write_text(to_markdown(results, command, time.perf_counter() - started, quick))
            return results
        results = [bench_training_loop(quick), bench_packs(quick), bench_compile(quick)]
        started_ray = not ray.is_initialized()  # the test session may have one running already
        start = time.perf_counter()
        if started_ray:
            ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
        ray_start_s = time.perf_counter() - start
        try:
            orchestration, memory, long_tracking = bench_orchestration(quick, store)
            if started_ray:
                orchestration.detail["untimed_ray_start_s"] = round(ray_start_s, 1)
            results += [orchestration, bench_search(quick, store), bench_tracking(quick, store, long_tracking)]
            results += bench_limit(quick, store)
            results += [bench_packed_grid(quick, store), bench_packed_grid(quick, store, asha=True)]
            results += bench_transfer(quick, store)
            results += bench_adaptive(quick, store)
        finally:
            if started_ray:
                ray.shutdown()
        results += [bench_export(quick, store), memory]
        results += bench_team_store(quick, store)
    out.write_text(to_markdown(results, command, time.perf_counter() - started, quick))
    return results
