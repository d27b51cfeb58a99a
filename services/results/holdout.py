"""The held-out test split, evaluated once, for an exported best configuration.

The sweep selects on the validation split. For each exported group's best trial, this reruns
that configuration in this process (same seed, same budget, same thread count, so on CPU the
same losses), evaluates the final model once on the workload's test split, and logs
``test/loss_per_sample`` and ``test/accuracy`` on the trial's run. A later export reads them
back instead of evaluating again. The rerun's final validation loss is compared with the one
the sweep logged, so a rerun that did not reproduce the trial says so.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from services import metrics as m

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from services.results.analysis import TrialRecord
    from services.spec import SweepSpec

REPRODUCED_RTOL = 1e-3
"""The rerun reproduced the trial when its final val loss is within this relative difference."""


@dataclass(frozen=True)
class TestResult:
    loss: float
    accuracy: Optional[float]
    rerun_val_loss: float
    reproduced: bool


def rerun_and_test(spec: "SweepSpec", record: "TrialRecord") -> Optional[TestResult]:
    """Retrain ``record``'s configuration and evaluate it on the test split; None without one."""
    import torch

    from services.training import workloads
    from services.training.train import budget_of, evaluate_split, run_trial

    if spec.workload.train is not None:  # a user's loop owns its data: no test split samplewise can see
        return None
    workload = workloads.load(spec.workload)
    test = workload.test
    if test is None:
        return None
    hp = record.hp
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_trial)))  # the trial's own: same sums
    final: dict = {}
    try:
        last = run_trial(
            workload,
            hp,
            budget_of(spec, workload.n_train),
            lambda metrics, state: final.update(model={k: v.clone() for k, v in state["loop"]["model"].items()}),
        )
        torch.manual_seed(hp.seed)
        model = workload.model_fn()
        model.load_state_dict(final["model"])
        values = evaluate_split(model, workload, test)
        loss, acc = values["loss"], values.get("accuracy")
    finally:
        torch.set_num_threads(threads)
    rerun = float(last[m.VAL_LOSS])
    reproduced = record.val_loss is not None and math.isclose(rerun, record.val_loss, rel_tol=REPRODUCED_RTOL)
    return TestResult(loss, acc, rerun, reproduced)


def test_best(client: "MlflowClient", spec: "SweepSpec", best: "TrialRecord") -> Optional[dict]:
    """The test metrics of ``best``: read from its run, else evaluated once and logged there."""
    from mlflow.entities import Metric, RunTag

    if best.test_loss is not None:
        return {"test_loss_per_sample": best.test_loss, "test_accuracy": best.test_accuracy}
    result = rerun_and_test(spec, best)
    if result is None:
        return None
    now = int(time.time() * 1000)
    metrics = [Metric(m.TEST_LOSS, result.loss, now, best.samples_seen)]
    if result.accuracy is not None:
        metrics.append(Metric(m.TEST_ACCURACY, result.accuracy, now, best.samples_seen))
    tags = [
        RunTag(
            m.TAG_TEST_RERUN,
            f"val loss {result.rerun_val_loss:.6g} "
            f"({'reproduced' if result.reproduced else 'NOT reproduced'}: logged {best.val_loss:.6g})",
        )
    ]
    client.log_batch(best.run_id, metrics=metrics, tags=tags)
    return {
        "test_loss_per_sample": result.loss,
        "test_accuracy": result.accuracy,
        "rerun_val_loss": result.rerun_val_loss,
        "rerun_reproduced": result.reproduced,
    }
