"""The smoke sweep end to end through real Ray Tune, Optuna, torch and a SQLite MLflow store."""

import json

import pytest
from mlflow.tracking import MlflowClient

from search_spaces.scaling import lr_exponent
from services import metrics as m
from services.cli import main as cli
from services.orchestration.runner import make_searcher
from services.spec import load_spec
from tests.conftest import SWEEPS

pytestmark = pytest.mark.integration  # real Ray, MLflow and processes: `make test-fast` skips these


def test_seeded_searcher_gives_the_same_configs():
    spec = load_spec(SWEEPS / "smoke.yaml")
    first, second = make_searcher(spec), make_searcher(spec)
    a = [first.suggest(f"t{i}") for i in range(4)]
    b = [second.suggest(f"t{i}") for i in range(4)]
    assert a == b
    assert all(c["lr"] == pytest.approx(c["lr_per_sample"] * c["batch_size"] ** c["k"]) for c in a)


def test_parent_and_one_child_per_trial(smoke_sweep):
    _, client = smoke_sweep
    spec = load_spec(SWEEPS / "smoke.yaml")
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(m.TAG_ROLE) == "parent"]
    children = [r for r in runs if r.data.tags.get(m.TAG_ROLE) == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == spec.num_trials
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert len({c.data.tags[m.TAG_TRIAL_ID] for c in children}) == spec.num_trials
    for child in children:
        assert child.info.status == "FINISHED"
        assert {
            "batch_size",
            "lr",
            "lr_per_sample",
            "reduction",
            "optimizer",
            "rule",
            "weight_decay",
            "seed",
            "workload",
        } <= set(child.data.params)
        assert child.data.params["workload"] == "digits_mlp"
        assert {m.TRAIN_LOSS, m.VAL_LOSS, m.VAL_ACCURACY, m.SAMPLES_SEEN, m.UPDATES, m.LR} <= set(child.data.metrics)


def test_metric_steps_are_samples_seen(smoke_sweep):
    _, client = smoke_sweep
    experiment = client.get_experiment_by_name("smoke")
    children = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'trial'")
    for child in children:
        seen = client.get_metric_history(child.info.run_id, m.SAMPLES_SEEN)
        assert seen and all(point.step == int(point.value) for point in seen)
        batch = int(child.data.params["batch_size"])
        assert all(point.value % batch == 0 for point in seen)
        val_steps = [p.step for p in client.get_metric_history(child.info.run_id, m.VAL_LOSS)]
        assert sorted(val_steps) == sorted(p.step for p in seen)
        lrs = client.get_metric_history(child.info.run_id, m.LR)
        assert lrs[0].value == pytest.approx(float(child.data.params["lr"]))


def test_export_holds_the_best_constant_per_group(smoke_sweep):
    work, client = smoke_sweep
    doc = json.loads((work / "exports" / "smoke.json").read_text())
    experiment = client.get_experiment_by_name("smoke")
    children = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'trial'")
    groups = {(c.data.params["optimizer"], c.data.params["reduction"]) for c in children}
    assert {(c["optimizer"], c["reduction"]) for c in doc["constants"]} == groups
    assert doc["sweep"] == "smoke" and doc["objective"] == m.VAL_LOSS
    for const in doc["constants"]:
        pooled = [const["reduction"], *const["pooled_with"]]  # tied rules: mean and sum are one U-curve
        assert sorted(pooled) == ["mean", "sum"]
        members = [
            c
            for c in children
            if c.data.params["optimizer"] == const["optimizer"] and c.data.params["reduction"] in pooled
        ]
        assert const["trials"]["total"] == len(members)
        best = const["best"]
        run = client.get_run(best["run_id"])
        assert float(run.data.params["lr_per_sample"]) == pytest.approx(const["lr_per_sample"])
        if const["trials"]["completed"]:  # the best is the lowest val loss of the trials that completed
            assert best["val_loss_per_sample"] == pytest.approx(
                min(
                    c.data.metrics[m.VAL_LOSS]
                    for c in members
                    if c.data.tags.get(m.TAG_DIVERGED) != "true" and c.data.tags.get(m.TAG_STOPPED_EARLY) != "true"
                )
            )
        assert const["formula"].startswith(f"lr = {const['lr_per_sample']:.6g} * batch_size**")
        assert const["answer"]["source"] == "best trial"  # two batch sizes: nothing to fit
        assert const["rule"]["holds_for"] is None and const["verdict"].startswith("inconclusive")
        if not run.data.tags.get(m.TAG_STOPPED_EARLY) == "true":  # the test split, once, for the best
            assert 0 <= best["test_accuracy"] <= 1 and best["rerun_reproduced"] is True
            assert client.get_run(best["run_id"]).data.metrics[m.TEST_ACCURACY] == best["test_accuracy"]
        for row in const["per_batch_size"]:  # each row's best trial, of either pooled reduction
            k = lr_exponent(const["optimizer"], row["reduction"], const["rule"]["name"])
            assert row["lr"] == pytest.approx(row["lr_per_sample"] * row["batch_size"] ** k)
    artifacts = {a.path for a in client.list_artifacts(doc["parent_run_id"], "export")}
    assert artifacts == {"export/smoke.json", "export/smoke.yaml"}
    assert (work / "exports" / "smoke.yaml").exists()


def test_export_carries_the_evidence_and_the_plots(smoke_sweep):
    work, client = smoke_sweep
    doc = json.loads((work / "exports" / "smoke.json").read_text())
    for const in doc["constants"]:
        assert const["verdict"].split(":")[0] in ("holds", "does not hold", "inconclusive")
        for row in const["lr_star"]:
            assert row["interval"][0] <= row["lr"] <= row["interval"][1]
    plots = {a.path for a in client.list_artifacts(doc["parent_run_id"], "plots")}
    names = ("u_curves", "collapse", "lr_star", "learning_curves")
    assert plots == {f"plots/smoke-{n}.png" for n in names}
    for n in names:
        assert (work / "exports" / f"smoke-{n}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for const in doc["constants"]:  # two batch sizes: no frontier (and no frontier plot), and it says why
        assert const["batch"]["b_crit"] is None and const["batch"]["batch_sizes"] == [16, 64]
        assert const["batch"]["advice"] == "inconclusive: 2 batch sizes with curves (need 3)"
        settings = const["settings"]
        assert settings["rule"] == const["rule"]["name"] and settings["reference_batch_size"] == 16
        if const["optimizer"] == "adam":
            assert settings["per_sample"]["beta2_halflife_samples"] == pytest.approx(16 * 693.1, rel=1e-3)
    assert not (work / "exports" / "smoke-frontier.png").exists()


def test_noise_scale_is_logged_at_samples_seen(smoke_sweep):
    _, client = smoke_sweep
    experiment = client.get_experiment_by_name("smoke")
    children = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'trial'")
    logged = [c for c in children if m.B_SIMPLE in c.data.metrics]
    assert logged
    for child in logged:
        seen = {p.step for p in client.get_metric_history(child.info.run_id, m.SAMPLES_SEEN)}
        history = client.get_metric_history(child.info.run_id, m.B_SIMPLE)
        assert {p.step for p in history} <= seen and all(p.value > 0 for p in history)


def test_lr_lookup_from_the_export(smoke_sweep, capsys):
    work, _ = smoke_sweep
    doc = json.loads((work / "exports" / "smoke.json").read_text())
    const = doc["constants"][0]
    args = [
        "lr",
        str(work / "exports" / "smoke.json"),
        "--batch-size",
        "32",
        "--optimizer",
        const["optimizer"],
        "--reduction",
        const["reduction"],
        "--value-only",
    ]
    assert cli.main(args) == 0
    assert float(capsys.readouterr().out) == pytest.approx(const["lr_per_sample"] * 32 ** const["k"], rel=1e-5)


def test_failing_trials_are_failed_runs_and_the_sweep_finishes(tmp_path, ray_session, monkeypatch, capsys):
    from services.orchestration.runner import run_sweep
    from services.spec import parse_spec
    from tests.conftest import spec_dict

    monkeypatch.chdir(tmp_path)
    spec = parse_spec(spec_dict(name="broken", workload={"name": "tests.plugin_workloads:broken_model"}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_sweep(spec, tracking_uri=uri)
    assert outcome.num_errors == 2
    client = MlflowClient(uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs([outcome.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'trial'")
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FAILED"
        assert "boom: model fails in training" in child.data.tags[m.TAG_ERROR]
    assert capsys.readouterr().out.count("FAILED: ") == 2


def test_an_unusable_store_stops_the_sweep_with_one_line(tmp_path, ray_session, monkeypatch, capsys):
    """The store opens while Tune starts; when it cannot, the sweep stops with the store's error."""
    import yaml

    from tests.conftest import spec_dict

    monkeypatch.chdir(tmp_path)
    (tmp_path / "not_a_dir").write_text("a file where the store's folder should be")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec_dict(name="nostore")))
    uri = f"sqlite:///{tmp_path / 'not_a_dir' / 'mlflow.db'}"
    status = cli.main(["sweep", "s.yaml", "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert status == 1, err
    assert f"MLflow tracking store {uri} is not usable" in err
    assert "Traceback" not in err
