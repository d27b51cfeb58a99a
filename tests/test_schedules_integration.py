"""Schedules through real Ray Tune and MLflow: batch growth is visible in MLflow, compare reports it."""

import json

import pytest
from mlflow.tracking import MlflowClient

from services import metrics as m
from services.cli import main as cli
from services.spec import parse_spec
from tests.conftest import spec_dict

pytestmark = pytest.mark.integration  # real Ray, MLflow and processes: `make test-fast` skips these


def test_schedules_show_in_mlflow_and_compare(tmp_path, ray_session, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = spec_dict(
        name="schedules",
        searcher={"kind": "grid", "max_concurrent": 2, "seed": 0},
        space={
            "batch_sizes": [16],
            "lr_per_sample": {"low": 2e-3, "high": 2e-3, "grid_points": 1},
            "reductions": ["mean"],
            "optimizers": ["momentum"],
            "schedules": ["constant", "lr_decay", "batch_growth"],
            "seeds": [0, 1],
        },
        schedule={"factor": 2, "milestones": [0.5]},
        budget={"epochs": 4},
        asha={"enabled": False},
    )
    parse_spec(spec)
    import yaml

    (tmp_path / "schedules.yaml").write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cli.main(["sweep", "schedules.yaml", "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("schedules")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'trial'")
    assert len(runs) == 6 and {r.data.params["schedule"] for r in runs} == {"constant", "lr_decay", "batch_growth"}
    for run in runs:
        sizes = [
            p.value for p in sorted(client.get_metric_history(run.info.run_id, m.BATCH_SIZE), key=lambda p: p.step)
        ]
        lrs = [p.value for p in sorted(client.get_metric_history(run.info.run_id, m.LR), key=lambda p: p.step)]
        schedule = run.data.params["schedule"]
        assert sizes[0] == 16 and sizes[-1] == (32 if schedule == "batch_growth" else 16), (schedule, sizes)
        assert (lrs[-1] < lrs[0]) == (schedule == "lr_decay"), (schedule, lrs)
        assert client.get_metric_history(run.info.run_id, m.NOISE_G)
    capsys.readouterr()
    assert cli.main(["compare", "schedules.yaml", "--tracking-uri", uri]) == 0
    table = capsys.readouterr().out
    assert all(s in table for s in ("constant", "lr_decay", "batch_growth"))
    doc = json.loads((tmp_path / "exports" / "schedules-compare.json").read_text())
    rows = {r["schedule"]: r for r in doc["rows"]}
    assert all(r["seeds"] == 2 for r in rows.values())
    assert rows["batch_growth"]["updates_mean"] < rows["lr_decay"]["updates_mean"]
    assert {a.path for a in client.list_artifacts(doc["parent_run_id"], "compare")} == {
        "compare/schedules-compare.json",
        "compare/schedules-compare.png",
    }
