"""Reserved metric, param and tag names: the public contract users see in Tune and MLflow.

Defined once here; the hyperparameter names are the fields of ``TrialHParams``. Losses are
per sample whatever the reduction (per item for a per-item loss: see ``TAG_LOSS_UNIT``), and
MLflow steps are samples seen, so runs of different batch sizes overlay.
"""

from typing import Any, Mapping

from search_spaces.scaling import PARAM_NAMES

TRAIN_LOSS = "train/loss_per_sample"
"""Mean per-sample training loss over the samples of the last reporting interval."""
VAL_LOSS = "val/loss_per_sample"
"""Mean per-sample loss on the validation set: the sweep objective (minimized)."""
VAL_ACCURACY = "val/accuracy"
"""Fraction of validation samples classified correctly (classification workloads only)."""
INITIAL_VAL_LOSS = "val/initial_loss_per_sample"
"""Val loss per sample before the first update: tells a trial that learned from one at chance."""
TEST_LOSS = "test/loss_per_sample"
TEST_ACCURACY = "test/accuracy"
"""Held-out test metrics, evaluated once, for an exported best configuration only (by a rerun
of that configuration): the sweep selects on the validation split and never sees these."""
SAMPLES_SEEN = "samples_seen"
"""Training samples consumed so far: ASHA's time attribute and MLflow's step."""
UPDATES = "updates"
"""Optimizer steps taken so far."""
LR = "lr"
"""The optimizer learning rate in effect."""
DIVERGED = "diverged"
"""1.0 once a trial stopped because its loss blew up, else 0.0."""
SAMPLES_PER_S = "perf/samples_per_s"
"""Training throughput of the last interval (samples per second of training)."""
BATCH_SIZE = "batch_size"
"""The batch size in effect (it changes under the batch_growth schedule)."""
NOISE_G = "noise/g"
"""SGD noise scale g = lr * N / (B * (1 - m)) with the mean-equivalent LR (Smith et al. 2018)."""
MAX_RSS_MB = "perf/max_rss_mb"
"""Peak resident memory of the process running the trial (MiB)."""
B_SIMPLE = "noise/b_simple"
"""EMA-smoothed gradient noise scale tr(Sigma)/|G|^2 (McCandlish et al. 2018), in samples."""

REPLAYED = "replayed"
"""1.0 on the results of a resumed sweep's trial that a dead driver had already trained to the
end: replayed from MLflow to Tune's searcher and scheduler, not trained again or logged twice."""

PACK = "pack"
"""Config key of a trial pack (one Tune trial that trains several configurations as one
vectorized model): the list of its members' configurations."""
MEMBERS = "members"
"""Result key of a pack's report: ``{member index as text: that member's metrics}``, for the
members that reported at this point. The pack's own ``val/loss_per_sample`` and
``samples_seen`` (what Tune requires of every result) are the best and the largest of them."""


def members_of(config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The configurations a Tune trial trains: a pack's members, or the trial's own config."""
    return list(config[PACK]) if PACK in config else [config]


def member_id(trial_id: str, member: int) -> str:
    """The trial id a pack's member is tracked by (its MLflow run's ``samplewise.trial_id``)."""
    return f"{trial_id}-m{member}"


def tracked(trial_id: str, config: Mapping[str, Any]) -> list[tuple[str, dict]]:
    """(tracked id, configuration) of what a Tune trial trains: its pack's members, or itself."""
    if PACK not in config:
        return [(trial_id, dict(config))]
    return [(member_id(trial_id, j), dict(c)) for j, c in enumerate(config[PACK])]


STOPPED = "stopped"
"""1.0 on the last result of a pack member that ASHA stopped (it left its pack, which goes on;
a single trial is stopped by Tune instead). A flag of the result, not a logged metric."""


def ended(result: Mapping[str, Any], budget_samples: int) -> bool:
    """Whether a pack member's result is its last: it diverged, spent its budget or was stopped
    by ASHA (it left the pack, which goes on)."""
    return bool(result.get(DIVERGED)) or bool(result.get(STOPPED)) or result.get(SAMPLES_SEEN, 0) >= budget_samples


NODE_ID = "node_id"
"""The Ray node a trial ran on (reported with each result; a tag in MLflow, not a metric)."""


def stopped_early(last_result: Mapping[str, Any], budget_samples: int) -> bool:
    """Whether a trial that ended without error was stopped by ASHA: its last result neither
    diverged nor reached the sample budget."""
    return not last_result.get(DIVERGED) and last_result.get(SAMPLES_SEEN, 0) < budget_samples


OBJECTIVE = VAL_LOSS
MODE = "min"

REPORTED = (
    TRAIN_LOSS,
    VAL_LOSS,
    VAL_ACCURACY,
    INITIAL_VAL_LOSS,
    SAMPLES_SEEN,
    UPDATES,
    LR,
    BATCH_SIZE,
    NOISE_G,
    DIVERGED,
    SAMPLES_PER_S,
    MAX_RSS_MB,
    B_SIMPLE,
)
"""Every metric a trial reports; the tracker logs these, a workload's own ``val/<name>``
metrics (:func:`is_workload_metric`), and nothing Tune adds."""

WORKLOAD_METRIC_PREFIX = "val/"
"""A workload's own validation metrics (``Workload.metrics``, or a loop's report) are named
``val/<name>``: the mean of a per-sample value over the validation split."""


def is_workload_metric(name: str) -> bool:
    """A workload's own ``val/<name>`` metric: one plain name after the prefix."""
    rest = name[len(WORKLOAD_METRIC_PREFIX) :]
    return name.startswith(WORKLOAD_METRIC_PREFIX) and rest.replace("_", "").isalnum() and len(rest) <= 64


def is_reported(name: str) -> bool:
    """Whether the tracker logs a result's ``name``: a reserved metric or a workload's own."""
    return name in REPORTED or is_workload_metric(name)


PARAMS = PARAM_NAMES + ("workload",)
"""Params of each trial's MLflow run: the hyperparameters (their one schema is
:class:`search_spaces.scaling.TrialHParams`) and the workload."""

# The answer on the sweep's parent run (services/results/summary.py): metrics named
# ``answer/<optimizer>_<reduction>[_<schedule>]/<name>``, step 0, rewritten by each export.
ANSWER_PREFIX = "answer/"
ANSWER_LR_PER_SAMPLE = "lr_per_sample"  # the answer's LR per sample c (at the rule's k)
ANSWER_LOO_REGRET = "loo_regret"  # mean regret predicting each swept batch size from the others
ANSWER_TRANSFER_REGRET = "transfer_regret_max"  # largest regret at the held-out batch sizes checked


def answer_metric(group: str, name: str) -> str:
    return f"{ANSWER_PREFIX}{group}/{name}"


# Tags on MLflow runs.
TAG_SWEEP = "samplewise.sweep"
TAG_ROLE = "samplewise.role"  # "parent", "trial", or "transfer" (a transfer check's parent run)
TAG_TRANSFER_OF = "samplewise.transfer_of"  # a transfer check's parent: the sweep parent run it checks
TAG_TRANSFER_BATCH = "samplewise.transfer_batch_size"  # the held-out batch size it trains
TAG_TRANSFER_ANSWERS = "samplewise.transfer_answers"  # JSON: group name -> answered (mean-equivalent) lr there
TAG_RUN_NAME = "mlflow.runName"
TAG_TRIAL_ID = "samplewise.trial_id"
TAG_DIVERGED = "samplewise.diverged"
TAG_STOPPED_EARLY = "samplewise.stopped_early"
TAG_ERROR = "samplewise.error"
TAG_SPEC_PATH = "samplewise.spec"
TAG_BUDGET_SAMPLES = "samplewise.budget_samples"
TAG_LOSS_UNIT = "samplewise.loss_unit"
"""On the parent run: what every loss of the sweep is per, "sample" or "item" (a per-item loss,
e.g. tokens: the ``*_per_sample`` metrics then hold losses per item)."""
TAG_N_TRAIN = "samplewise.n_train"
"""On the parent run: training samples of the workload (one epoch), for timescales in epochs."""
TAG_NODE_ID = "samplewise.node_id"
TAG_RAY_RUN = "samplewise.ray_run"
TAG_SUPERSEDED = "samplewise.superseded"
"""On a KILLED run that a dead driver finished but the resumed sweep did not ask for again: why."""
TAG_ANSWER = "samplewise.answer"  # on the parent run, ``.<group>``: the answer's formula
TAG_TRANSFER_VERDICT = "samplewise.transfer_verdict"  # on the parent run, ``.<group>``: the transfer check's verdict
TAG_TEST_RERUN = "samplewise.test_rerun"
"""On a best trial whose test split was evaluated: the rerun's val loss and whether it matched."""
