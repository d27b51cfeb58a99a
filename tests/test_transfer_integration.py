"""The transfer check end to end: a tiny grid sweep, then its answer trained at a held-out
batch size through real Ray Tune and a SQLite MLflow store, nested under the sweep's parent."""

import json

import pytest
import yaml
from mlflow.tracking import MlflowClient

from services import metrics as m
from services.cli import main as cli
from tests.conftest import spec_dict

pytestmark = pytest.mark.integration


def test_transfer_trains_the_answer_at_a_held_out_batch_size(tmp_path, ray_session, monkeypatch, capsys):
    spec = spec_dict(
        name="transfer_smoke",
        searcher={"kind": "grid", "max_concurrent": 2, "seed": 0},
        space={
            "batch_sizes": [16, 64],
            "lr_per_sample": {"low": 1e-3, "high": 1e-1, "grid_points": 2},
            "reductions": ["mean", "sum"],
            "optimizers": ["sgd"],
        },
        asha={"enabled": False},
        noise={"enabled": False},
        transfer={"enabled": True, "batch_sizes": [32], "extend": 0, "seeds": [0, 1]},
    )
    path = tmp_path / "transfer_smoke.yaml"
    path.write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert cli.main(["sweep", str(path)]) == 0  # the sweep, then the check (transfer.enabled)
    out = capsys.readouterr().out
    assert "transfer check of transfer_smoke" in out and "sgd/mean+sum" in out

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("transfer_smoke")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get(m.TAG_ROLE) == "parent"]
    (check,) = [r for r in runs if r.data.tags.get(m.TAG_ROLE) == "transfer"]
    assert check.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert check.data.tags[m.TAG_TRANSFER_BATCH] == "32"
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == check.info.run_id]
    assert len(trials) == 3 * 2 and {r.data.params["batch_size"] for r in trials} == {"32"}
    answered = json.loads(check.data.tags[m.TAG_TRANSFER_ANSWERS])["sgd/mean+sum"]
    lrs = sorted(float(r.data.params["lr"]) for r in trials if r.data.params["seed"] == "0")
    assert lrs == pytest.approx([answered / 2, answered, answered * 2], rel=1e-6)  # mean: lr is the mean one

    assert cli.main(["export", str(path), "--no-test"]) == 0
    doc = json.loads((tmp_path / "exports" / "transfer_smoke.json").read_text())
    assert "&id" not in (tmp_path / "exports" / "transfer_smoke.yaml").read_text()  # no YAML anchors
    for const in doc["constants"]:
        assert const["trials"]["total"] == 2 * 2 * 2  # batch sizes x LRs x reductions: the check's are not
        (row,) = const["transfer"]["checks"]
        assert row["batch_size"] == 32 and row["seeds"] == 2 and row["regret"] is not None
        assert set(row["val_loss_per_factor"]) == {"0.5", "1", "2"}
    capsys.readouterr()

    # run again: the check of this answer is done, so nothing is trained twice
    assert cli.main(["transfer", str(path)]) == 0
    assert "transfer check: 6 trials" in capsys.readouterr().out
    again = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'transfer'")
    assert len(again) == 1

    assert (
        cli.main(["lr", str(tmp_path / "exports" / "transfer_smoke.json"), "--batch-size", "32", "--reduction", "mean"])
        == 0
    )
    assert "transfer check at B = 32 (nearest)" in capsys.readouterr().out
