"""Batch-size and LR schedules as pure functions."""

import pytest

from search_spaces import derive
from search_spaces.schedules import Schedule, batch_and_lr, noise_scale, optimizer_settings, plateau_events

N, TOTAL = 32_000, 100_000


def at(schedule, samples, history=(), base=16):
    return batch_and_lr(schedule, base, N, samples, TOTAL, history)


def test_constant_never_changes():
    s = Schedule("constant")
    assert at(s, 0) == (16, 1.0) and at(s, TOTAL) == (16, 1.0)


def test_lr_decay_divides_the_lr_at_each_milestone():
    s = Schedule("lr_decay", factor=5, milestones=(0.5, 0.75, 0.9))
    assert at(s, 49_999) == (16, 1.0)
    assert at(s, 50_000) == (16, pytest.approx(0.2))
    assert at(s, 75_000) == (16, pytest.approx(0.04))
    assert at(s, 95_000) == (16, pytest.approx(0.008))


def test_batch_growth_multiplies_the_batch_and_holds_the_lr():
    s = Schedule("batch_growth", factor=5, milestones=(0.5, 0.75, 0.9))
    assert at(s, 50_000) == (80, 1.0)
    assert at(s, 75_000) == (400, 1.0)
    assert at(s, 90_000) == (2000, 1.0)  # cap N/10 = 3200 not reached


def test_batch_growth_past_the_cap_falls_back_to_lr_decay():
    s = Schedule("batch_growth", factor=5, milestones=(0.5, 0.75, 0.9), batch_cap=500)
    assert at(s, 75_000) == (400, 1.0)
    assert at(s, 90_000) == (400, pytest.approx(0.2))  # 2000 > 500: decay the LR instead
    default_cap = Schedule("batch_growth", factor=5, milestones=(0.5, 0.75, 0.9))
    assert batch_and_lr(default_cap, 16, 4_000, TOTAL, TOTAL)[0] == 400  # cap = N/10 = 400 for N = 4,000
    assert batch_and_lr(default_cap, 16, 4_000, TOTAL, TOTAL)[1] == pytest.approx(0.2)


def test_both_lower_the_noise_scale_alike():
    hp = derive(batch_size=16, reduction="mean", optimizer="momentum", lr_per_sample=1e-3)
    decay = Schedule("lr_decay", factor=5)
    growth = Schedule("batch_growth", factor=5)
    for samples in (0, 60_000, 80_000, 95_000):
        g_decay = noise_scale(hp, *at(decay, samples), N)
        g_growth = noise_scale(hp, *at(growth, samples), N)
        assert g_decay == pytest.approx(g_growth)


def test_plateau_events_count_stalls_of_patience_evaluations():
    assert plateau_events([1.0, 0.9, 0.8], patience=2) == 0
    assert plateau_events([1.0, 0.9, 0.95, 0.91, 0.92, 0.93], patience=2) == 2
    s = Schedule("batch_growth", factor=2, patience=2)
    assert at(s, 10, history=[1.0, 1.0, 1.0]) == (32, 1.0)


def test_linear_warmup_scales_every_schedule():
    s = Schedule("lr_decay", warmup_samples=10_000)
    assert at(s, 2_500)[1] == pytest.approx(0.25)
    assert at(s, 10_000)[1] == pytest.approx(1.0)


def test_optimizer_settings_keep_the_mean_equivalent_update_under_sum():
    for optimizer in ("sgd", "momentum", "adam"):
        mean = derive(batch_size=16, reduction="mean", optimizer=optimizer, lr_per_sample=1e-3, weight_decay=0.01)
        total = derive(batch_size=16, reduction="sum", optimizer=optimizer, lr_per_sample=1e-3, weight_decay=0.01)
        m, s = optimizer_settings(mean, 80, 0.5), optimizer_settings(total, 80, 0.5)
        if optimizer == "adam":
            assert s["lr"] == pytest.approx(m["lr"]) and s["eps"] == pytest.approx(m["eps"] * 80)
        else:
            assert s["lr"] * 80 == pytest.approx(m["lr"])
        assert s["weight_decay"] == pytest.approx(m["weight_decay"] * 80)


def test_unknown_schedule_names_the_field():
    with pytest.raises(ValueError, match="schedule: unknown 'cosine'"):
        Schedule("cosine")
    with pytest.raises(ValueError, match="schedule.factor"):
        Schedule("lr_decay", factor=1.0)
