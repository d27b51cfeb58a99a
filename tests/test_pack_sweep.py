"""A sweep whose trials are packs, end to end on real Ray Tune, Optuna, torch and MLflow: every
member is its own MLflow run holding what the same configuration trains alone, its own
progress line, and the export reads them as it reads single trials."""

import pytest
from mlflow.tracking import MlflowClient

from search_spaces.scaling import TrialHParams
from services import metrics as m
from services.cli import main as cli
from services.orchestration.runner import run_sweep
from services.spec import parse_spec
from services.training import workloads
from services.training.train import budget_of, run_trial
from tests.conftest import spec_dict

pytestmark = pytest.mark.integration  # real Ray, MLflow and processes: `make test-fast` skips these

SPEC = spec_dict(
    name="packed",
    searcher={"kind": "grid", "max_concurrent": 2, "seed": 0},
    space={
        "batch_sizes": [32, 128],
        "lr_per_sample": {"low": 1e-3, "high": 3.0, "grid_points": 4},  # c = 3 at B=32 diverges
        "reductions": ["mean"],
        "optimizers": ["sgd"],
    },
    budget={"epochs": 2},
    asha={"enabled": False},
    failures={"checkpoint_every_s": 0},  # a checkpoint of the pack at every point
)


@pytest.fixture(scope="module")
def packed_sweep(tmp_path_factory, ray_session):
    work = tmp_path_factory.mktemp("packed")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    spec = parse_spec(SPEC)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        lines: list[str] = []

        class Stream:
            def write(self, text):
                lines.extend(text.splitlines())

            def flush(self):
                pass

        outcome = run_sweep(spec, tracking_uri=uri, stream=Stream())
    return spec, outcome, MlflowClient(uri), lines, work


def test_each_member_is_its_own_run_holding_what_it_trains_alone(packed_sweep):
    spec, outcome, client, lines, _ = packed_sweep
    assert outcome.num_errors == 0
    assert "packs of up to 4 (2 Tune trials for 8 configurations)" in lines[0]
    children = client.search_runs([outcome.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'trial'")
    assert len(children) == 8 and len({c.data.tags[m.TAG_TRIAL_ID] for c in children}) == 8
    assert {c.info.status for c in children} == {"FINISHED"}
    workload = workloads.load(spec.workload, "cpu")
    budget = budget_of(spec, workload.n_train)
    diverged = 0
    for child in children:
        hp = TrialHParams.from_params(child.data.params)
        alone: list[dict] = []
        run_trial(workload, hp, budget, lambda r, s, alone=alone: alone.append(r))
        history = client.get_metric_history(child.info.run_id, m.VAL_LOSS)
        assert [p.step for p in history] == [r[m.SAMPLES_SEEN] for r in alone]
        assert [p.value for p in history] == pytest.approx([r[m.VAL_LOSS] for r in alone], rel=1e-4)
        assert child.data.tags[m.TAG_DIVERGED] == str(bool(alone[-1][m.DIVERGED])).lower()
        assert child.data.tags[m.TAG_STOPPED_EARLY] == "false"
        diverged += bool(alone[-1][m.DIVERGED])
        if not alone[-1][m.DIVERGED]:
            assert child.data.metrics[m.B_SIMPLE] == pytest.approx(alone[-1][m.B_SIMPLE], rel=1e-3)
    assert diverged >= 1  # a member left its pack early, and its run says so


def test_each_member_gets_a_progress_line_and_the_export_reads_the_runs(packed_sweep, monkeypatch):
    spec, outcome, _, lines, work = packed_sweep
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) == 8 and progress[-1].startswith("[  8/8]")
    assert sum("diverged" in line for line in progress) >= 1
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", outcome.tracking_uri)
    spec_path = work / "packed.yaml"
    import yaml

    spec_path.write_text(yaml.safe_dump(SPEC))
    assert cli.main(["export", str(spec_path)]) == 0
    assert (work / "exports" / "packed.json").exists()
