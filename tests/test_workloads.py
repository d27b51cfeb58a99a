"""Workload contracts: per-sample losses, held-out splits, regression without accuracy."""

import pytest
import torch
from torch import nn

from search_spaces.scaling import derive
from services import metrics as m
from services.errors import SpecError
from services.training.noise import NoiseScale
from services.training.train import Budget, run_trial
from services.training.workloads import Workload, check, digits_mlp, mnist1d_mlp


def test_a_loss_that_is_not_per_sample_is_rejected_naming_loss_fn():
    base = digits_mlp(hidden=8)
    mean_loss = Workload(
        base.model_fn,
        base.x_train,
        base.y_train,
        base.x_val,
        base.y_val,
        lambda out, y: nn.functional.cross_entropy(out, y),
    )  # the usual mistake
    with pytest.raises(SpecError, match=r"workload.loss_fn: must return one loss per sample.*got shape \(\)"):
        check(mean_loss)
    check(base)  # the built-in passes


def test_built_ins_validate_on_a_split_carved_from_training_and_keep_a_test_split():
    d = digits_mlp(hidden=8)
    assert len(d.x_train) + len(d.x_val) + len(d.x_test) == 1797
    assert len(d.x_val) == pytest.approx(0.2 * 1797, abs=2) and len(d.x_test) == pytest.approx(0.2 * 1797, abs=2)
    rows = lambda x: {tuple(r.tolist()) for r in x}  # noqa: E731
    assert not rows(d.x_val) & rows(d.x_test)
    w = mnist1d_mlp(num_samples=1000)
    assert len(w.x_val) == 160 and len(w.x_train) == 640 and len(w.x_test) == 200


def test_a_regression_reports_no_accuracy():
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = x.sum(dim=1, keepdim=True)
    reg = Workload(
        lambda: nn.Linear(3, 1),
        x[:48],
        y[:48],
        x[48:],
        y[48:],
        lambda out, t: ((out - t) ** 2).sum(dim=1),
        classification=False,
    )
    check(reg)
    hp = derive(batch_size=8, reduction="mean", optimizer="sgd", lr_per_sample=1e-3)
    reports = []
    run_trial(reg, hp, Budget(total_samples=96, interval_samples=48), lambda metrics, state: reports.append(metrics))
    assert reports and all(m.VAL_ACCURACY not in r for r in reports)
    assert all(r[m.INITIAL_VAL_LOSS] == reports[0][m.INITIAL_VAL_LOSS] for r in reports)


def test_measuring_the_noise_scale_leaves_batchnorm_statistics_alone():
    base = digits_mlp(hidden=8)
    bn = Workload(
        lambda: nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10)),
        base.x_train,
        base.y_train,
        base.x_val,
        base.y_val,
        base.loss_fn,
    )
    torch.manual_seed(0)
    model = bn.model_fn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    NoiseScale(16, 64).measure(model, bn)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_char_level_gpt_builds_locally_and_learns():
    import math

    import torch

    from search_spaces import derive
    from services.training.optim import make_optimizer
    from services.training.train import evaluate, train_step
    from services.training.workloads import charlm_gpt, check

    w = charlm_gpt(corpus_chars=40_000, n_layer=1)
    check(w)  # one loss per sample: the mean over its window's tokens
    assert w.x_train.shape[1] == 64 and torch.equal(w.x_train[0, 1:], w.y_train[0, :-1])  # next characters
    torch.manual_seed(0)
    model = w.model_fn()
    before, _ = evaluate(model, w)
    vocab = model.head.out_features
    assert abs(before - math.log(vocab)) < 0.5  # at chance, per token
    hp = derive(batch_size=32, reduction="mean", optimizer="adamw", lr_per_sample=5e-4, weight_decay=0.1)
    opt = make_optimizer(model, hp)
    for i in range(45):
        j = i % (w.n_train // 32)
        train_step(model, opt, w.x_train[j * 32 : (j + 1) * 32], w.y_train[j * 32 : (j + 1) * 32], w.loss_fn, hp)
    assert evaluate(model, w)[0] < before - 0.5
