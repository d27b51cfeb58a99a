"""A sweep whose trials are packs, end to end on real Ray Tune, Optuna, torch and MLflow: every
member is its own MLflow run holding what the same configuration trains alone, its own
progress line, and the export reads them as it reads single trials."""

import pytest
from mlflow.tracking import MlflowClient

from search_spaces.scaling import TrialHParams
from services import metrics as m
from services.cli import main as cli
from services.orchestration.runner import run_sweep
from services.orchestration.schedulers import GroupedASHA
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


def _sweep(spec_dict: dict, work) -> tuple:
    """Run ``spec_dict`` in ``work`` with its own MLflow store: (outcome, client, output lines)."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    lines: list[str] = []

    class Stream:
        def write(self, text):
            lines.extend(text.splitlines())

        def flush(self):
            pass

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        outcome = run_sweep(parse_spec(spec_dict), tracking_uri=uri, stream=Stream())
    return outcome, MlflowClient(uri), lines


@pytest.fixture(scope="module")
def packed_sweep(tmp_path_factory, ray_session):
    work = tmp_path_factory.mktemp("packed")
    return (parse_spec(SPEC), *_sweep(SPEC, work), work)


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


ASHA_SPEC = spec_dict(
    name="packed-asha",
    searcher={"kind": "grid", "max_concurrent": 2, "seed": 0},
    space={
        "batch_sizes": [32, 128],
        "lr_per_sample": {"low": 1e-4, "high": 3e-2, "grid_points": 4},
        "reductions": ["mean"],
        "optimizers": ["sgd"],
    },
    budget={"samples": 4000, "report_every_samples": 300},  # reports fall between the rungs 600, 1200, 2400
    asha={"enabled": True, "grace_period_samples": 600, "reduction_factor": 2},
)


@pytest.fixture(scope="module")
def asha_sweep(tmp_path_factory, ray_session):
    return _sweep(ASHA_SPEC, tmp_path_factory.mktemp("packed-asha"))


def test_asha_stops_members_of_a_pack_one_by_one_where_it_stops_trials(asha_sweep):
    from ray.tune.schedulers import TrialScheduler

    from services.orchestration.rungs import _Member
    from services.orchestration.runner import asha_settings

    outcome, client, lines = asha_sweep
    spec = parse_spec(ASHA_SPEC)
    assert outcome.num_errors == 0
    assert "ASHA on, packs of up to 4 (2 Tune trials for 8 configurations)" in lines[0]
    children = client.search_runs([outcome.experiment_id], filter_string=f"tags.`{m.TAG_ROLE}` = 'trial'")
    assert len(children) == 8 and {c.info.status for c in children} == {"FINISHED"}
    runs = {}
    for child in children:
        pack, _, j = child.data.tags[m.TAG_TRIAL_ID].rpartition("-m")
        val = client.get_metric_history(child.info.run_id, m.VAL_LOSS)
        diverged = {p.step: p.value for p in client.get_metric_history(child.info.run_id, m.DIVERGED)}
        results = [{m.SAMPLES_SEEN: p.step, m.VAL_LOSS: p.value, m.DIVERGED: diverged[p.step]} for p in val]
        runs[(pack, int(j))] = (child, results)

    # Ray's ASHA, each member a trial of its own, fed the logged results in the pack's order:
    # point by point, members in pack order (each pack is one cell: the cells' rungs are apart)
    asha = GroupedASHA(metric=m.OBJECTIVE, mode=m.MODE, **asha_settings(spec, 4000, 300))
    expected = {}
    for pack in sorted({p for p, _ in runs}):
        members = sorted(j for p, j in runs if p == pack)
        trials = {j: _Member(f"{pack}-m{j}", dict(runs[(pack, j)][0].data.params)) for j in members}
        for trial in trials.values():
            asha.on_trial_add(None, trial)
        steps = sorted({r[m.SAMPLES_SEEN] for j in members for r in runs[(pack, j)][1]})
        for step in steps:
            for j in members:
                result = next((r for r in runs[(pack, j)][1] if r[m.SAMPLES_SEEN] == step), None)
                if result is None or (pack, j) in expected:
                    continue
                stop = asha.on_trial_result(None, trials[j], result) == TrialScheduler.STOP
                last = m.ended(result, 4000)
                if stop or last:
                    asha.on_trial_complete(None, trials[j], result)
                    expected[(pack, j)] = (stop and not last, step)
    got = {
        key: (child.data.tags[m.TAG_STOPPED_EARLY] == "true", results[-1][m.SAMPLES_SEEN])
        for key, (child, results) in runs.items()
    }
    assert got == expected
    assert any(stop for stop, _ in got.values()) and any(s == 4000 for _, s in got.values())
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) == 8 and sum("stopped by ASHA" in line for line in progress) == sum(
        stop for stop, _ in got.values()
    )
    # a stopped member's curve is what its configuration trains alone, up to its stop
    workload = workloads.load(spec.workload, "cpu")
    budget = budget_of(spec, workload.n_train)
    for child, results in runs.values():
        alone: list[dict] = []
        run_trial(workload, TrialHParams.from_params(child.data.params), budget, lambda r, s, a=alone: a.append(r))
        assert [r[m.SAMPLES_SEEN] for r in results] == [r[m.SAMPLES_SEEN] for r in alone[: len(results)]]
        # rel 1e-3: 13 points of a high-LR curve drift apart in rounding (batched matmuls)
        assert [r[m.VAL_LOSS] for r in results] == pytest.approx(
            [r[m.VAL_LOSS] for r in alone[: len(results)]], rel=1e-3
        )
