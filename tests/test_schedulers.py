"""GroupedASHA runs Ray's ASHA per cell (optimizer x reduction x schedule x batch size)."""

from types import SimpleNamespace

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from services import metrics as m
from services.orchestration.schedulers import GroupedASHA


def _trial(i, optimizer, batch_size=32):
    return SimpleNamespace(
        trial_id=f"t{i}",
        config={"optimizer": optimizer, "reduction": "mean", "schedule": "constant", "batch_size": batch_size},
    )


def _rung_results(scheduler, trials_losses):
    actions = {}
    for trial, _ in trials_losses:
        scheduler.on_trial_add(None, trial)
    for trial, loss in trials_losses:
        actions[trial.trial_id] = scheduler.on_trial_result(None, trial, {m.SAMPLES_SEEN: 100, m.VAL_LOSS: loss})
    return actions


def _kwargs():
    return dict(
        time_attr=m.SAMPLES_SEEN, metric=m.VAL_LOSS, mode="min", max_t=900, grace_period=100, reduction_factor=3
    )


def test_plain_asha_stops_the_slow_optimizer_but_grouped_does_not():
    fast = [(_trial(i, "adam"), 0.1 + 0.01 * i) for i in range(6)]
    slow = [(_trial(10, "sgd"), 0.9)]
    plain = _rung_results(ASHAScheduler(**_kwargs()), fast + slow)
    grouped = _rung_results(GroupedASHA(**_kwargs()), fast + slow)
    assert plain["t10"] == TrialScheduler.STOP
    assert grouped["t10"] == TrialScheduler.CONTINUE


def test_grouped_asha_still_stops_within_a_group():
    trials = [(_trial(i, "sgd"), 0.1 * (i + 1)) for i in range(6)]
    actions = _rung_results(GroupedASHA(**_kwargs()), trials)
    assert actions["t0"] == TrialScheduler.CONTINUE
    assert actions["t5"] == TrialScheduler.STOP


def test_a_large_batch_size_is_not_stopped_by_small_ones():
    """Small batches take more updates per sample and lead early: they must not stop B=512."""
    small = [(_trial(i, "sgd", 16), 0.1 + 0.01 * i) for i in range(6)]
    large = [(_trial(10, "sgd", 512), 0.9)]
    plain = _rung_results(ASHAScheduler(**_kwargs()), small + large)
    grouped = _rung_results(GroupedASHA(**_kwargs()), small + large)
    assert plain["t10"] == TrialScheduler.STOP
    assert grouped["t10"] == TrialScheduler.CONTINUE
