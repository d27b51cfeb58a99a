"""Batch-size and LR schedules as pure functions."""

import pytest

from search_spaces import derive
from search_spaces.scaling import batch_exponents, noise_scale
from search_spaces.schedules import Schedule, batch_and_lr, plateau_events

N, TOTAL = 32_000, 100_000


def at(kind_and_schedule, samples, history=(), base=16):
    kind, schedule = kind_and_schedule
    return batch_and_lr(schedule, kind, base, N, samples, TOTAL, history)


def sched(kind, **settings):
    return kind, Schedule(**settings)


def test_constant_never_changes():
    s = sched("constant")
    assert at(s, 0) == (16, 1.0) and at(s, TOTAL) == (16, 1.0)


def test_lr_decay_divides_the_lr_at_each_milestone():
    s = sched("lr_decay", factor=5, milestones=(0.5, 0.75, 0.9))
    assert at(s, 49_999) == (16, 1.0)
    assert at(s, 50_000) == (16, pytest.approx(0.2))
    assert at(s, 75_000) == (16, pytest.approx(0.04))
    assert at(s, 95_000) == (16, pytest.approx(0.008))


def test_batch_growth_multiplies_the_batch_and_holds_the_lr():
    s = sched("batch_growth", factor=5, milestones=(0.5, 0.75, 0.9))
    assert at(s, 50_000) == (80, 1.0)
    assert at(s, 75_000) == (400, 1.0)
    assert at(s, 90_000) == (2000, 1.0)  # cap N/10 = 3200 not reached


def test_batch_growth_past_the_cap_falls_back_to_lr_decay():
    s = sched("batch_growth", factor=5, milestones=(0.5, 0.75, 0.9), batch_cap=500)
    assert at(s, 75_000) == (400, 1.0)
    assert at(s, 90_000) == (400, pytest.approx(0.2))  # 2000 > 500: decay the LR instead
    default_cap = sched("batch_growth", factor=5, milestones=(0.5, 0.75, 0.9))
    assert batch_and_lr(default_cap[1], "batch_growth", 16, 4_000, TOTAL, TOTAL)[0] == 400  # cap = N/10 for N = 4,000
    assert batch_and_lr(default_cap[1], "batch_growth", 16, 4_000, TOTAL, TOTAL)[1] == pytest.approx(0.2)


def test_both_lower_the_noise_scale_alike():
    hp = derive(batch_size=16, reduction="mean", optimizer="momentum", lr_per_sample=1e-3)
    decay = sched("lr_decay", factor=5)
    growth = sched("batch_growth", factor=5)
    for samples in (0, 60_000, 80_000, 95_000):
        (b_decay, s_decay), (b_growth, s_growth) = at(decay, samples), at(growth, samples)
        g_decay = noise_scale(hp, hp.settings(b_decay, s_decay)["lr"], b_decay, N)
        g_growth = noise_scale(hp, hp.settings(b_growth, s_growth)["lr"], b_growth, N)
        assert g_decay == pytest.approx(g_growth)


def test_plateau_events_count_stalls_of_patience_evaluations():
    assert plateau_events([1.0, 0.9, 0.8], patience=2) == 0
    assert plateau_events([1.0, 0.9, 0.95, 0.91, 0.92, 0.93], patience=2) == 2
    s = sched("batch_growth", factor=2, patience=2)
    assert at(s, 10, history=[1.0, 1.0, 1.0]) == (32, 1.0)


def test_linear_warmup_scales_every_schedule():
    s = sched("lr_decay", warmup_samples=10_000)
    assert at(s, 2_500)[1] == pytest.approx(0.25)
    assert at(s, 10_000)[1] == pytest.approx(1.0)


def test_optimizer_settings_keep_the_mean_equivalent_update_under_sum():
    for optimizer in ("sgd", "momentum", "adam"):
        mean = derive(batch_size=16, reduction="mean", optimizer=optimizer, lr_per_sample=1e-3, weight_decay=0.01)
        total = derive(batch_size=16, reduction="sum", optimizer=optimizer, lr_per_sample=1e-3, weight_decay=0.01)
        m, s = mean.settings(80, 0.5), total.settings(80, 0.5)
        if optimizer == "adam":
            assert s["lr"] == pytest.approx(m["lr"]) and s["eps"] == pytest.approx(m["eps"] * 80)
        else:
            assert s["lr"] * 80 == pytest.approx(m["lr"])
        assert s["weight_decay"] == pytest.approx(m["weight_decay"] * 80)


def test_unknown_schedule_names_the_field():
    with pytest.raises(ValueError, match="schedule: unknown 'cosine'"):
        batch_and_lr(Schedule(), "cosine", 16, N, 0, TOTAL)
    with pytest.raises(ValueError, match="factor"):
        Schedule(factor=1.0)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "adamw"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("rule", ["linear", "sqrt", "none"])
def test_one_rule_for_the_space_the_schedules_and_the_export(optimizer, reduction, rule):
    """The settings a trial starts with (the space), the settings a schedule gives at another
    batch size, and the exported formula agree for every optimizer, reduction and rule."""
    kw = dict(reduction=reduction, optimizer=optimizer, lr_per_sample=1e-3, rule=rule, weight_decay=0.01, eps=1e-8)
    at16, at80 = derive(batch_size=16, **kw), derive(batch_size=80, **kw)
    grown = at16.settings(80)  # batch_growth holds the base LR; at the same LR scale as B=80's own:
    scale = at80.mean_lr / at16.mean_lr
    assert at16.settings(80, scale) == pytest.approx(
        {"lr": at80.lr, "eps": at80.eps, "weight_decay": at80.weight_decay}
    )
    e = batch_exponents(optimizer, reduction, rule, False)
    assert grown["eps"] == pytest.approx(1e-8 * 80 ** e["eps"])
    assert at80.lr == pytest.approx(1e-3 * 80**at80.k)
    if rule == "none":  # the untied baseline: the raw LR and eps at every batch size
        assert grown["lr"] == at16.lr == at80.lr and grown["eps"] == at16.eps == 1e-8
