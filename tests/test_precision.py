"""Mixed precision (resources.precision): bf16 autocast, fp16 with a gradient scaler, on CPU."""

import math

import pytest
import torch

from search_spaces import derive
from services import metrics as m
from services.spec import parse_spec
from services.training.precision import Precision
from services.training.train import Budget, run_trial
from services.training.workloads import digits_mlp


@pytest.fixture(scope="module")
def workload():
    return digits_mlp(hidden=32)


def _run(workload, precision, reduction="mean", batch_size=32, lr_per_sample=1e-3):
    hp = derive(batch_size=batch_size, reduction=reduction, optimizer="momentum", lr_per_sample=lr_per_sample)
    budget = Budget(total_samples=3 * workload.n_train, interval_samples=workload.n_train, precision=precision)
    reports, states = [], []
    run_trial(workload, hp, budget, lambda r, s: (reports.append(r), states.append(s)))
    return reports, states


def test_bf16_trains_and_is_not_fp32(workload):
    full, _ = _run(workload, "fp32")
    half, _ = _run(workload, "bf16")
    assert all(math.isfinite(r[m.VAL_LOSS]) and r[m.DIVERGED] == 0.0 for r in half)
    assert half[-1][m.VAL_LOSS] < 0.5 * half[0][m.INITIAL_VAL_LOSS]  # it learned
    assert half[-1][m.VAL_LOSS] != full[-1][m.VAL_LOSS]  # autocast did run
    assert half[-1][m.VAL_LOSS] == pytest.approx(full[-1][m.VAL_LOSS], rel=0.2)


def test_fp16_under_sum_reduction_scales_its_way_past_overflow(workload):
    # a summed loss over 512 samples: scaled by 65536, its float16 gradients overflow; the
    # scaler skips those steps and lowers its scale until they fit
    reports, states = _run(workload, "fp16", reduction="sum", batch_size=512, lr_per_sample=3e-4)
    assert all(math.isfinite(r[m.VAL_LOSS]) and r[m.DIVERGED] == 0.0 for r in reports)
    assert reports[-1][m.VAL_LOSS] < reports[0][m.INITIAL_VAL_LOSS]
    scaler = states[-1]["context"]["scaler"]  # the checkpoint keeps the scaler beside the loop's state
    assert scaler is not None and scaler["scale"] < 65536.0


def test_a_scaler_state_comes_back_after_a_restart():
    a, b = Precision("fp16"), Precision("fp16")
    a.scaler.scale(torch.ones(()))  # the scaler starts its scale on first use
    a.scaler.update(new_scale=128.0)
    b.load_state_dict(a.state_dict())
    assert b.state_dict()["scale"] == 128.0 and Precision("bf16").state_dict() is None


def test_an_unknown_precision_names_the_field():
    from services.errors import SpecError

    spec = {
        "name": "p",
        "workload": {"name": "digits_mlp"},
        "searcher": {"kind": "random", "num_trials": 1},
        "space": {"batch_sizes": [16], "lr_per_sample": {"low": 1e-3, "high": 1e-2}},
        "budget": {"epochs": 1},
        "resources": {"precision": "fp8"},
    }
    with pytest.raises(SpecError, match="resources.precision"):
        parse_spec(spec)
