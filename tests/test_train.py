"""The training step and loop: exact SGD equivalence, per-sample losses, divergence, seeding."""

import copy
import math

import pytest
import torch
from torch import nn

from search_spaces import derive
from services import metrics as m
from services.training.optim import make_optimizer
from services.training.train import Budget, run_trial, train_step
from services.training.workloads import digits_mlp, per_sample_cross_entropy


@pytest.fixture(scope="module")
def workload():
    return digits_mlp(hidden=32)


def _train_pair(workload, hp_a, hp_b, steps=8):
    torch.manual_seed(0)
    model_a = workload.model_fn().double()
    model_b = copy.deepcopy(model_a)
    opt_a, opt_b = make_optimizer(model_a, hp_a), make_optimizer(model_b, hp_b)
    x, y = workload.x_train.double(), workload.y_train
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    B = hp_a.batch_size
    for step in range(steps):
        idx = order[step * B : (step + 1) * B]
        train_step(model_a, opt_a, x[idx], y[idx], workload.loss_fn, hp_a)
        train_step(model_b, opt_b, x[idx], y[idx], workload.loss_fn, hp_b)
    return max((pa - pb).abs().max().item() for pa, pb in zip(model_a.parameters(), model_b.parameters()))


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_sgd_sum_eta_equals_sgd_mean_B_eta(workload, optimizer):
    B, eta = 32, 2e-3
    hp_sum = derive(batch_size=B, reduction="sum", optimizer=optimizer, lr_per_sample=eta)
    hp_mean = derive(batch_size=B, reduction="mean", optimizer=optimizer, lr_per_sample=eta)
    assert hp_sum.lr == pytest.approx(eta) and hp_mean.lr == pytest.approx(B * eta)
    assert _train_pair(workload, hp_sum, hp_mean) <= 1e-6


def test_mismatched_lr_is_not_equivalent(workload):
    """The check can fail: sum with the mean's LR takes B-times larger steps."""
    hp_mean = derive(batch_size=32, reduction="mean", optimizer="sgd", lr_per_sample=2e-3)
    hp_wrong = derive(batch_size=32, reduction="sum", optimizer="sgd", lr_per_sample=2e-3, rule="none")
    hp_wrong = hp_wrong.__class__(**{**hp_wrong.as_config(), "lr": hp_mean.lr})
    assert _train_pair(workload, hp_wrong, hp_mean) > 1e-3


def test_adam_sum_with_scaled_eps_and_coupled_decay_equals_mean(workload):
    kw = dict(batch_size=16, optimizer="adam", lr_per_sample=1e-3, weight_decay=1e-2, eps=1e-6)
    hp_sum, hp_mean = derive(reduction="sum", **kw), derive(reduction="mean", **kw)
    assert hp_sum.eps == pytest.approx(16e-6) and hp_sum.weight_decay == pytest.approx(0.16)
    assert _train_pair(workload, hp_sum, hp_mean) <= 1e-6


def test_loss_is_reported_per_sample_whatever_the_reduction(workload):
    """One step at lr=0 leaves the model alone; sum and mean report the same per-sample loss."""
    losses = {}
    for reduction in ("mean", "sum"):
        torch.manual_seed(0)
        model = workload.model_fn()
        hp = derive(batch_size=64, reduction=reduction, optimizer="sgd", lr_per_sample=1e-12)
        opt = make_optimizer(model, hp)
        total = train_step(model, opt, workload.x_train[:64], workload.y_train[:64], workload.loss_fn, hp)
        losses[reduction] = total.item() / 64
    direct = torch.nn.functional.cross_entropy(model(workload.x_train[:64]), workload.y_train[:64]).item()
    assert losses["mean"] == pytest.approx(losses["sum"], rel=1e-6)
    assert losses["mean"] == pytest.approx(direct, rel=1e-4)


def test_run_trial_reports_contract_metrics_at_sample_counts(workload):
    reports = []
    hp = derive(batch_size=64, reduction="sum", optimizer="sgd", lr_per_sample=1e-3)
    budget = Budget(total_samples=3 * workload.n_train, interval_samples=workload.n_train, noise_batches=(32, 256))
    run_trial(workload, hp, budget, lambda r, s: reports.append(r))
    assert len(reports) == 3
    assert set(m.REPORTED) <= set(reports[0])
    assert all(r[m.B_SIMPLE] > 0 for r in reports)
    # a report at the first step that reaches each multiple of n_train samples: ceil(k * n_train / 64)
    n = workload.n_train
    assert n == 1078  # digits: 60% of 1,797 images train
    assert [r[m.UPDATES] for r in reports] == [math.ceil(k * n / 64) for k in (1, 2, 3)] == [17, 34, 51]
    assert all(r[m.SAMPLES_SEEN] == r[m.UPDATES] * 64 for r in reports)
    assert reports[-1][m.VAL_LOSS] < reports[0][m.VAL_LOSS]
    assert reports[-1][m.DIVERGED] == 0.0


def test_diverging_trial_stops_early_with_a_finite_objective(workload):
    reports = []
    hp = derive(batch_size=16, reduction="mean", optimizer="sgd", lr_per_sample=50.0)
    run_trial(
        workload,
        hp,
        Budget(total_samples=10 * workload.n_train, interval_samples=workload.n_train),
        lambda r, s: reports.append(r),
    )
    assert reports[-1][m.DIVERGED] == 1.0
    assert len(reports) < 10
    assert math.isfinite(reports[-1][m.VAL_LOSS]) and math.isfinite(reports[-1][m.TRAIN_LOSS])


def test_same_seed_same_losses_on_cpu(workload):
    hp = derive(batch_size=32, reduction="mean", optimizer="adam", lr_per_sample=2e-4, seed=3)
    budget = Budget(total_samples=workload.n_train, interval_samples=workload.n_train // 2)
    a, b = [], []
    run_trial(workload, hp, budget, lambda r, s: a.append(r))
    run_trial(workload, hp, budget, lambda r, s: b.append(r))
    assert [r[m.VAL_LOSS] for r in a] == [r[m.VAL_LOSS] for r in b]


def test_resuming_from_a_report_state_continues_exactly(workload):
    hp = derive(batch_size=32, reduction="mean", optimizer="momentum", lr_per_sample=1e-3, seed=5)
    budget = Budget(total_samples=3 * workload.n_train, interval_samples=workload.n_train, noise_batches=(32, 256))
    straight, states = [], []
    run_trial(workload, hp, budget, lambda r, s: (straight.append(r), states.append(copy.deepcopy(s))))
    resumed = []
    run_trial(workload, hp, budget, lambda r, s: resumed.append(r), resume=states[0])
    assert [r[m.SAMPLES_SEEN] for r in resumed] == [r[m.SAMPLES_SEEN] for r in straight[1:]]
    assert [r[m.VAL_LOSS] for r in resumed] == [r[m.VAL_LOSS] for r in straight[1:]]
    assert [r[m.B_SIMPLE] for r in resumed] == [r[m.B_SIMPLE] for r in straight[1:]]


def test_batch_growth_trial_grows_its_batch_and_takes_fewer_updates(workload):
    from search_spaces.schedules import Schedule

    budget = dict(
        total_samples=8 * workload.n_train,
        interval_samples=workload.n_train,
        schedule=Schedule(factor=2, milestones=(0.5, 0.75), batch_cap=200),
    )
    runs = {}
    for kind in ("constant", "lr_decay", "batch_growth"):
        hp = derive(batch_size=32, reduction="mean", optimizer="momentum", lr_per_sample=1e-3, schedule=kind)
        reports = []
        run_trial(workload, hp, Budget(**budget), lambda r, s, reports=reports: reports.append(r))
        runs[kind] = reports
    growth, decay = runs["batch_growth"], runs["lr_decay"]
    assert [r[m.BATCH_SIZE] for r in growth] == [32, 32, 32, 32, 64, 64, 128, 128]
    assert all(r[m.BATCH_SIZE] == 32 for r in decay)
    assert decay[-1][m.LR] == pytest.approx(0.032 / 4) and growth[-1][m.LR] == pytest.approx(0.032)
    assert growth[-1][m.NOISE_G] == pytest.approx(decay[-1][m.NOISE_G])  # both lower g fourfold
    assert growth[-1][m.UPDATES] < decay[-1][m.UPDATES] == runs["constant"][-1][m.UPDATES]
    assert abs(growth[-1][m.SAMPLES_SEEN] - decay[-1][m.SAMPLES_SEEN]) < 128  # equal sample budgets


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "adamw"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_accumulated_micro_batches_make_the_update_of_the_whole_batch(optimizer, reduction):
    """In float64, steps at B=256 equal steps of 4 accumulated micro-batches of 64."""
    torch.manual_seed(0)
    x, y = torch.randn(256 * 3, 20, dtype=torch.float64), torch.randint(0, 5, (256 * 3,))
    make = lambda: nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 5)).double()  # noqa: E731
    hp = derive(batch_size=256, reduction=reduction, optimizer=optimizer, lr_per_sample=1e-4, weight_decay=1e-3)
    torch.manual_seed(1)
    whole, parts = make(), make()
    parts.load_state_dict(whole.state_dict())
    opt_whole, opt_parts = make_optimizer(whole, hp), make_optimizer(parts, hp)
    for i in range(3):
        xb, yb = x[i * 256 : (i + 1) * 256], y[i * 256 : (i + 1) * 256]
        a = train_step(whole, opt_whole, xb, yb, per_sample_cross_entropy, hp)
        b = train_step(parts, opt_parts, xb, yb, per_sample_cross_entropy, hp, micro_batch=64)
        assert b.item() == pytest.approx(a.item(), rel=1e-12)
    for p, q in zip(whole.parameters(), parts.parameters()):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-13)
    if reduction == "mean" and optimizer in ("sgd", "momentum"):  # the check can fail: averaging each
        # micro-batch by its own size and summing (the gradient-accumulation normalization bug) differs
        state = whole.state_dict()
        wrong, right = (
            _micro_mean_update(make, state, x[:256], y[:256], hp),
            _one_update(make, state, x[:256], y[:256], hp),
        )
        assert not torch.allclose(wrong, right, rtol=1e-3)


def _one_update(make, state, x, y, hp):
    model = make()
    model.load_state_dict(state)
    train_step(model, make_optimizer(model, hp), x, y, per_sample_cross_entropy, hp)
    return torch.cat([p.flatten() for p in model.parameters()])


def _micro_mean_update(make, state, x, y, hp):
    """What a loop that averages each micro-batch by its own size and sums those would do."""
    model = make()
    model.load_state_dict(state)
    opt = make_optimizer(model, hp)
    opt.zero_grad()
    for start in range(0, x.shape[0], 64):
        per = per_sample_cross_entropy(model(x[start : start + 64]), y[start : start + 64])
        per.mean().backward()
    opt.step()
    return torch.cat([p.flatten() for p in model.parameters()])
