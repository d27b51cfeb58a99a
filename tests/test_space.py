"""The tied search space and the scaling rules, checked with optuna.trial.FixedTrial."""

import itertools
import math

import optuna
import pytest

from search_spaces import derive, grid_points, lr_exponent, suggest
from services.errors import SpecError
from services.spec import parse_spec
from tests.conftest import spec_dict

OPTIMIZERS = ["sgd", "momentum", "adam", "adamw"]
REDUCTIONS = ["mean", "sum"]
RULES = ["linear", "sqrt", "none"]


def expected(optimizer, reduction, rule, c, B, eps=1e-8, wd=0.01, decoupled=False):
    k = {"linear": 1.0, "sqrt": 0.5, "none": 0.0}[rule]
    adaptive = optimizer in ("adam", "adamw")
    tied_sum = reduction == "sum" and rule != "none"
    lr = c * B**k / (B if tied_sum and not adaptive else 1)
    decoupled = decoupled or optimizer == "adamw"
    return {
        "lr": lr,
        "eps": eps * B if tied_sum and adaptive else eps,
        "weight_decay": wd * B if tied_sum and not decoupled else wd,
    }


@pytest.mark.parametrize("optimizer,reduction,rule", list(itertools.product(OPTIMIZERS, REDUCTIONS, RULES)))
def test_fixed_trial_derives_every_optimizer_reduction_rule(optimizer, reduction, rule):
    spec = parse_spec(
        spec_dict(
            space={
                "batch_sizes": [32, 128],
                "lr_per_sample": {"low": 1e-5, "high": 1e-1},
                "reductions": REDUCTIONS,
                "optimizers": OPTIMIZERS,
                "rules": {optimizer: rule},
                "weight_decay": {"value": 0.01, "mode": "decoupled" if optimizer == "adamw" else "coupled"},
            }
        )
    )
    trial = optuna.trial.FixedTrial(
        {"batch_size": 128, "reduction": reduction, "optimizer": optimizer, f"lr_per_sample_{optimizer}": 2e-3}
    )
    config = suggest(trial, spec.space, seed=7)
    want = expected(optimizer, reduction, rule, 2e-3, 128)
    assert config["lr"] == pytest.approx(want["lr"], rel=1e-12)
    assert config["eps"] == pytest.approx(want["eps"], rel=1e-12)
    assert config["weight_decay"] == pytest.approx(want["weight_decay"], rel=1e-12)
    assert config["rule"] == rule
    assert config["lr_per_sample"] == 2e-3 and config["batch_size"] == 128 and config["seed"] == 7
    # the exported k reproduces the optimizer LR: lr = c * B**k
    assert 2e-3 * 128 ** config["k"] == pytest.approx(config["lr"], rel=1e-12)


def test_default_rules_linear_for_sgd_sqrt_for_adam():
    assert lr_exponent("sgd", "mean", "linear") == 1.0
    assert lr_exponent("sgd", "sum", "linear") == 0.0  # sum: the LR is batch-size agnostic
    assert derive(batch_size=64, reduction="mean", optimizer="adam", lr_per_sample=1e-4).lr == pytest.approx(8e-4)
    assert derive(batch_size=64, reduction="mean", optimizer="momentum", lr_per_sample=1e-3).lr == pytest.approx(0.064)


def test_sgd_mean_and_sum_get_the_same_per_sample_step():
    for B in (1, 8, 256):
        mean = derive(batch_size=B, reduction="mean", optimizer="sgd", lr_per_sample=3e-3)
        total = derive(batch_size=B, reduction="sum", optimizer="sgd", lr_per_sample=3e-3)
        assert mean.lr / B == pytest.approx(total.lr)


def test_decoupled_decay_under_sum_follows_the_optimizer_lr():
    """p *= 1 - lr * wd: SGD's LR under a tied sum is the mean one over B, so its decay is B
    times larger to decay alike (``samplewise verify`` trains both); Adam's LR does not move."""
    sgd = derive(
        batch_size=64, reduction="sum", optimizer="sgd", lr_per_sample=1e-3, weight_decay=1e-2, decoupled_decay=True
    )
    assert sgd.weight_decay == pytest.approx(1e-2 * 64) and sgd.decoupled_decay
    adam = derive(
        batch_size=64, reduction="sum", optimizer="adam", lr_per_sample=1e-3, weight_decay=1e-2, decoupled_decay=True
    )
    assert adam.weight_decay == 1e-2


@pytest.mark.parametrize(
    "bad",
    [
        dict(optimizer="rmsprop"),
        dict(reduction="max"),
        dict(rule="cubic"),
        dict(batch_size=0),
        dict(lr_per_sample=0.0),
        dict(lr_per_sample=math.nan),
    ],
)
def test_derive_names_the_bad_value(bad):
    args = dict(batch_size=8, reduction="mean", optimizer="sgd", lr_per_sample=1e-3) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        derive(**args)


def test_grid_points_cover_the_range_log_spaced():
    spec = parse_spec(
        spec_dict(
            searcher={"kind": "grid"},
            space={
                "batch_sizes": [8, 16],
                "lr_per_sample": {"low": 1e-4, "high": 1e-2, "grid_points": 3},
                "reductions": ["mean"],
                "optimizers": ["sgd"],
            },
        )
    )
    grid = grid_points(spec.space)
    assert grid["lr_step"] == [0, 1, 2]
    assert spec.num_trials == 6
    config = suggest(
        optuna.trial.FixedTrial({"batch_size": 8, "reduction": "mean", "optimizer": "sgd", "lr_step": 1}),
        spec.space,
        0,
        mode="grid",
    )
    assert config["lr_per_sample"] == pytest.approx(1e-3)


def test_per_optimizer_ranges_each_optimizer_searched_in_its_own():
    spec = parse_spec(
        spec_dict(
            searcher={"kind": "grid"},
            space={
                "batch_sizes": [8],
                "reductions": ["mean"],
                "optimizers": ["sgd", "adam"],
                "lr_per_sample": {
                    "sgd": {"low": 1e-3, "high": 1e-1, "grid_points": 3},
                    "adam": {"low": 1e-5, "high": 1e-3, "grid_points": 3},
                },
            },
        )
    )
    for optimizer, want in (("sgd", [1e-3, 1e-2, 1e-1]), ("adam", [1e-5, 1e-4, 1e-3])):
        got = [
            suggest(
                optuna.trial.FixedTrial({"batch_size": 8, "reduction": "mean", "optimizer": optimizer, "lr_step": i}),
                spec.space,
                0,
                mode="grid",
            )["lr_per_sample"]
            for i in range(3)
        ]
        assert got == pytest.approx(want)
    assert spec.num_trials == 6
    with pytest.raises(SpecError, match="space.lr_per_sample: no range for optimizer adam"):
        parse_spec(
            spec_dict(
                space={
                    "batch_sizes": [8],
                    "optimizers": ["sgd", "adam"],
                    "lr_per_sample": {"sgd": {"low": 1e-3, "high": 1e-1}},
                }
            )
        )
    with pytest.raises(SpecError, match="same grid_points"):
        parse_spec(
            spec_dict(
                searcher={"kind": "grid"},
                space={
                    "batch_sizes": [8],
                    "optimizers": ["sgd", "adam"],
                    "lr_per_sample": {
                        "sgd": {"low": 1e-3, "high": 1e-1, "grid_points": 3},
                        "adam": {"low": 1e-5, "high": 1e-3, "grid_points": 4},
                    },
                },
            )
        )


def test_stratified_space_gives_every_cell_its_turn():
    spec = parse_spec(
        spec_dict(
            space={
                "batch_sizes": [16, 64, 256],
                "reductions": ["mean", "sum"],
                "optimizers": ["sgd", "adam"],
                "lr_per_sample": {"sgd": {"low": 1e-3, "high": 1e-1}, "adam": {"low": 1e-5, "high": 1e-3}},
            }
        )
    )
    seen = []
    for number in range(24):  # two rounds of the 12 cells
        opt, batch = ["sgd", "adam"][(number // 6) % 2], [16, 64, 256][number % 3]
        config = suggest(
            optuna.trial.FixedTrial({f"lr_per_sample_{opt}_b{batch}": 1e-3}, number=number),
            spec.space,
            0,
            mode="stratified",
        )
        seen.append((config["batch_size"], config["optimizer"], config["reduction"]))
    assert len(set(seen[:12])) == 12 and seen[:12] == seen[12:]
    assert [s[0] for s in seen[:3]] == [16, 64, 256]  # batch size varies fastest


def test_space_is_pure_same_trial_same_config():
    spec = parse_spec(spec_dict())
    params = {"batch_size": 64, "reduction": "sum", "optimizer": "adam", "lr_per_sample_adam": 5e-4}
    a = suggest(optuna.trial.FixedTrial(params), spec.space, 0)
    b = suggest(optuna.trial.FixedTrial(params), spec.space, 0)
    assert a == b
