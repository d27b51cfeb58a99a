"""Bench 5: analysis and export over a large MLflow store."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from search_spaces.scaling import derive
from services import metrics as m
from services.bench.report import Result

# ---- 5. analysis and export over a large store ----------------------------------------------


def bench_export(quick: bool, store: Path) -> Result:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from services.results.export import export_sweep
    from services.spec import parse_spec
    from services.tracking.store import PARENT_TAG, ensure_experiment, start_parent_run

    n = 50 if quick else 10_000
    uri = f"sqlite:///{store / 'export.db'}"
    client = MlflowClient(uri)
    spec = parse_spec(
        {
            "name": "bench_export",
            "workload": {"name": "digits_mlp"},
            "searcher": {"kind": "random", "num_trials": n},
            "space": {
                "batch_sizes": [16, 32, 64, 128, 256],
                "lr_per_sample": {"low": 1e-4, "high": 1e-1},
                "reductions": ["mean", "sum"],
                "optimizers": ["sgd", "adam"],
            },
            "budget": {"epochs": 10},
        }
    )
    experiment = ensure_experiment(client, spec.name)
    parent = start_parent_run(client, experiment, spec, "")
    client.set_tag(parent, m.TAG_BUDGET_SAMPLES, "14370")
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for i in range(n):
        bs = [16, 32, 64, 128, 256][i % 5]
        opt, red = ("sgd", "adam")[i // 5 % 2], ("mean", "sum")[i // 10 % 2]
        c = float(10 ** (-4 + 3 * torch.rand(1, generator=gen).item()))
        hp = derive(batch_size=bs, reduction=red, optimizer=opt, lr_per_sample=c)
        loss = 0.1 + (torch.log10(torch.tensor(c)).item() + 2.5) ** 2 + 0.05 * torch.rand(1, generator=gen).item()
        run = client.create_run(
            experiment, run_name=f"t{i}", tags={PARENT_TAG: parent, m.TAG_ROLE: "trial", m.TAG_TRIAL_ID: f"t{i}"}
        )
        now = int(time.time() * 1000)
        client.log_batch(
            run.info.run_id,
            params=[Param(k, str(v)) for k, v in hp.as_config().items() if k in m.PARAMS],
            metrics=[
                Metric(m.VAL_LOSS, loss, now, 14370),
                Metric(m.SAMPLES_SEEN, 14370, now, 14370),
                Metric(m.VAL_ACCURACY, 1 - loss / 5, now, 14370),
            ],
            tags=[RunTag(m.TAG_DIVERGED, "false"), RunTag(m.TAG_STOPPED_EARLY, "false")],
        )
        client.set_terminated(run.info.run_id, "FINISHED")
    generate = time.perf_counter() - start
    start = time.perf_counter()
    export_sweep(spec.name, uri, store / "exports", parent, holdout=False)
    took = time.perf_counter() - start
    return Result(
        f"analysis and export over {n:,} trial runs",
        f"{took:.1f} s",
        "<= 10 s",
        took <= 10 if not quick else None,
        {"runs": n, "export_s": round(took, 2), "generate_s": round(generate, 1)},
    )
