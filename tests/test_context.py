"""The training-loop contract (TrialContext): the reduction over a whole accumulated batch,
per-item normalization, the report checks, the schedule and the restored state."""

import math

import pytest
import torch
from torch import nn

from search_spaces.scaling import derive
from search_spaces.schedules import Schedule
from services import metrics as m
from services.training.context import ContractError, TrialContext, reduce_losses
from services.training.optim import make_optimizer


def ctx_for(reports, total=1000, **kw):
    hp = derive(
        batch_size=kw.pop("batch_size", 32),
        reduction=kw.pop("reduction", "mean"),
        optimizer="sgd",
        lr_per_sample=1e-3,
        **kw,
    )
    return TrialContext(hp, total_samples=total, interval_samples=100, report=lambda r, s: reports.append((r, s)))


def _token_batch(seed=0):
    """8 sequences of 1..12 tokens (padded to 12), with their mask."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([1, 12, 3, 7, 12, 2, 5, 9])
    x = torch.randn(8, 12, 6, dtype=torch.float64, generator=g)
    y = torch.randint(0, 4, (8, 12), generator=g)
    mask = torch.arange(12)[None, :] < lengths[:, None]
    return x, y, mask


def _grad(model, x, y, mask, reduction, micro, naive=False):
    model.zero_grad()
    tokens = mask.sum()
    for start in range(0, x.shape[0], micro):
        xs, ys, ms = x[start : start + micro], y[start : start + micro], mask[start : start + micro]
        per_token = nn.functional.cross_entropy(model(xs).transpose(1, 2), ys, reduction="none") * ms
        count = ms.sum() if naive else tokens  # naive: each micro-batch averaged over its own tokens
        reduce_losses(per_token, reduction, count).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_accumulated_micro_batches_give_the_full_batch_gradient_with_variable_token_counts(reduction):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    x, y, mask = _token_batch()
    full = _grad(model, x, y, mask, reduction, micro=8)
    for micro in (1, 2, 4):
        assert torch.allclose(_grad(model, x, y, mask, reduction, micro), full, rtol=1e-12, atol=1e-15)
    if reduction == "mean":  # averaging per micro-batch (the well-known accumulation bug) is not the same
        assert not torch.allclose(_grad(model, x, y, mask, reduction, micro=2, naive=True) / 4, full, rtol=1e-3)


def test_reduce_needs_a_positive_count():
    with pytest.raises(ContractError, match="count must be a positive"):
        reduce_losses(torch.ones(3), "mean", count=0)


def test_report_adds_what_the_sweep_needs_and_stops_at_the_budget():
    reports = []
    ctx = ctx_for(reports, total=200)
    assert ctx.report(0, val_loss=2.0) is False
    assert ctx.report(100, val_loss=torch.tensor(1.5), train_loss=1.6, state={"w": torch.ones(2)}) is False
    assert ctx.report(200, val_loss=1.2) is True
    first, (second, checkpoint) = reports[0][0], reports[1]
    assert first[m.INITIAL_VAL_LOSS] == 2.0 and first[m.SAMPLES_SEEN] == 0 and first[m.DIVERGED] == 0.0
    assert second[m.VAL_LOSS] == 1.5 and second[m.TRAIN_LOSS] == 1.6 and second[m.BATCH_SIZE] == 32
    assert checkpoint["loop"]["w"].tolist() == [1.0, 1.0] and checkpoint["context"]["samples_seen"] == 100


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda c: c.report(10, train_loss=1.0), "val_loss is required"),
        (lambda c: c.report(10, val_loss="low"), "val_loss must be a number"),
        (lambda c: c.report(10, val_loss=1.0, accuracy=0.5), "unknown metric 'accuracy'"),
        (lambda c: c.report(10.5, val_loss=1.0), "samples_seen must be a count"),
        (lambda c: c.report(-1, val_loss=1.0), "samples_seen must be a count"),
        (lambda c: (c.report(10, val_loss=1.0), c.report(10, val_loss=1.0)), "must increase .* got 10 after 10"),
    ],
)
def test_a_broken_contract_is_one_clear_error(call, match):
    with pytest.raises(ContractError, match=match):
        call(ctx_for([]))


def test_a_diverging_loop_is_stopped_with_a_finite_objective():
    reports = []
    ctx = ctx_for(reports)
    ctx.report(0, val_loss=2.0)
    assert ctx.report(100, val_loss=float("nan")) is True
    last = reports[-1][0]
    assert last[m.DIVERGED] == 1.0 and math.isfinite(last[m.VAL_LOSS]) and last[m.VAL_LOSS] == pytest.approx(10.0)


def test_the_optimizer_follows_the_rule_and_the_schedule_and_counts_updates():
    reports = []
    hp = derive(batch_size=32, reduction="mean", optimizer="momentum", lr_per_sample=1e-3, schedule="lr_decay")
    ctx = TrialContext(
        hp,
        total_samples=1000,
        interval_samples=100,
        report=lambda r, s: reports.append(r),
        schedule=Schedule(factor=10, milestones=(0.5,)),
    )
    p = nn.Parameter(torch.ones(3))
    opt = ctx.optimizer([p])
    assert opt.param_groups[0]["lr"] == pytest.approx(hp.lr) == pytest.approx(32e-3)
    for samples in (0, 32, 64):
        assert ctx.batch_size(samples) == 32
        p.grad = torch.ones(3)
        opt.step()
    ctx.batch_size(500)  # the milestone: lr / 10
    assert opt.param_groups[0]["lr"] == pytest.approx(hp.lr / 10)
    ctx.report(96, val_loss=1.0)
    assert reports[-1][m.UPDATES] == 3 and reports[-1][m.LR] == pytest.approx(hp.lr / 10)


def test_a_restored_context_continues_where_its_checkpoint_was_taken():
    reports = []
    ctx = ctx_for(reports)
    ctx.report(0, val_loss=2.0)
    ctx.report(100, val_loss=1.0, state={"step": 7})
    again = TrialContext(
        ctx.hp, total_samples=1000, interval_samples=100, report=lambda r, s: None, restored=reports[-1][1]
    )
    assert again.restored == {"step": 7} and again.initial_loss == 2.0
    with pytest.raises(ContractError, match="must increase"):
        again.report(100, val_loss=1.0)


def test_decoupled_decay_of_sgd_is_applied_at_every_step():
    hp = derive(
        batch_size=10, reduction="mean", optimizer="sgd", lr_per_sample=0.01, weight_decay=0.5, decoupled_decay=True
    )
    p = nn.Parameter(torch.ones(3))
    opt = make_optimizer([p], hp)
    p.grad = torch.zeros(3)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((3,), 1 - hp.lr * 0.5))
