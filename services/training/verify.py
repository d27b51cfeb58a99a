"""Equivalence checks: paired short trainings from the same init and data order.

Each row trains two models that the rules say are identical (or, for the controls, that
must differ) and reports the max relative parameter difference against a tolerance. The
equivalent pairs are built with :func:`search_spaces.scaling.derive`, so a wrong rule there
fails a row. Training runs in float64 so rounding stays far below the tolerance.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from search_spaces.scaling import TrialHParams, derive
from services.training.optim import make_optimizer
from services.training.train import train_step
from services.training.workloads import Workload, digits_mlp

TOLERANCE = 1e-6
"""Max relative parameter difference for 'equivalent'; float64 rounding is ~1e-13."""
LARGE_EPS = 1e-3
"""Adam eps large enough to matter, so a missing eps rescale shows."""


@dataclass(frozen=True)
class Row:
    name: str
    expect_equal: bool
    max_rel_diff: float
    tolerance: float = TOLERANCE

    @property
    def observed_equal(self) -> bool:
        return self.max_rel_diff <= self.tolerance

    @property
    def passed(self) -> bool:
        return self.observed_equal == self.expect_equal


def max_relative_difference(workload: Workload, a: TrialHParams, b: TrialHParams, steps: int, seed: int = 0) -> float:
    """Train a and b from one init on one data order; max over tensors of max|a-b| / max|a|."""
    torch.manual_seed(seed)
    model_a = workload.model_fn().double()
    model_b = copy.deepcopy(model_a)
    opt_a, opt_b = make_optimizer(model_a, a), make_optimizer(model_b, b)
    train = workload.train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    bs = a.batch_size
    for step in range(steps):
        x, y = train.batch(order[(step * bs) % (len(train) - bs) :][:bs], torch.device("cpu"))
        x = x.double() if isinstance(x, torch.Tensor) and torch.is_floating_point(x) else x
        train_step(model_a, opt_a, x, y, workload.loss_fn, a, items=workload.items)
        train_step(model_b, opt_b, x, y, workload.loss_fn, b, items=workload.items)
    return max(
        ((pa - pb).abs().max() / pa.abs().max().clamp_min(1e-300)).item()
        for pa, pb in zip(model_a.parameters(), model_b.parameters())
    )


def pairs(batch_size: int) -> list[tuple[str, bool, TrialHParams, TrialHParams]]:
    """(name, expect_equal, a, b) for every check."""
    B = batch_size

    def both(**kw) -> tuple[TrialHParams, TrialHParams]:
        return derive(batch_size=B, reduction="sum", **kw), derive(batch_size=B, reduction="mean", **kw)

    sgd_sum, sgd_mean = both(optimizer="sgd", lr_per_sample=2e-3)
    mom_sum, mom_mean = both(optimizer="momentum", lr_per_sample=5e-4)
    adam_sum, adam_mean = both(optimizer="adam", lr_per_sample=1e-4, eps=LARGE_EPS / B)
    l2_sum, l2_mean = both(optimizer="sgd", lr_per_sample=2e-3, weight_decay=0.05)
    adamw_sum, adamw_mean = both(optimizer="adamw", lr_per_sample=1e-4, eps=LARGE_EPS / B, weight_decay=0.05)
    dsgd_sum, dsgd_mean = both(optimizer="sgd", lr_per_sample=2e-3, weight_decay=0.05, decoupled_decay=True)
    ref = max(1, B // 4)  # the rules below move betas, eps and decay from a batch size 4x smaller
    tied = dict(lr_per_sample=1e-4, eps=LARGE_EPS / B, weight_decay=0.05, reference_batch_size=ref)
    sde_sum, sde_mean = both(optimizer="adam", rule="sde", betas=(0.8, 0.95), **tied)
    half_sum, half_mean = both(optimizer="adamw", rule="sqrt_halflife", decay_tie="timescale", **tied)
    same = dataclasses.replace
    return [
        (f"SGD  sum(eta) vs mean(B*eta), B={B}", True, sgd_sum, sgd_mean),
        (f"momentum SGD  sum(eta) vs mean(B*eta), B={B}", True, mom_sum, mom_mean),
        (f"Adam  sum(eps={LARGE_EPS:g}) vs mean(eps/B)", True, adam_sum, adam_mean),
        ("SGD coupled L2  sum(lambda*B) vs mean(lambda)", True, l2_sum, l2_mean),
        ("AdamW  sum vs mean (decoupled decay, eps*B)", True, adamw_sum, adamw_mean),
        ("SGD decoupled decay  sum(lambda*B) vs mean(lambda)", True, dsgd_sum, dsgd_mean),
        (f"Adam rule sde  sum vs mean, B={B} = 4 x B_ref", True, sde_sum, sde_mean),
        ("AdamW sqrt_halflife + decay timescale  sum vs mean", True, half_sum, half_mean),
        # controls: what the rules forbid must differ, or the check could not fail
        ("control: SGD  sum(B*eta) vs mean(B*eta)", False, same(sgd_sum, lr=sgd_mean.lr), sgd_mean),
        (
            f"control: Adam  sum(eps={LARGE_EPS:g}) vs mean(eps={LARGE_EPS:g})",
            False,
            adam_sum,
            same(adam_mean, eps=adam_sum.eps),
        ),
        (
            "control: SGD coupled L2  sum(lambda) vs mean(lambda)",
            False,
            same(l2_sum, weight_decay=l2_mean.weight_decay),
            l2_mean,
        ),
        (
            "control: SGD decoupled decay  sum(lambda) vs mean(lambda)",
            False,
            same(dsgd_sum, weight_decay=dsgd_mean.weight_decay),
            dsgd_mean,
        ),
        ("control: Adam sde  betas at B vs betas at B_ref", False, sde_mean, same(sde_mean, beta1=0.8, beta2=0.95)),
    ]


def verify(batch_size: int = 24, steps: int = 10, workload: Optional[Workload] = None) -> list[Row]:
    workload = workload or digits_mlp(hidden=32)
    return [
        Row(name, expect, max_relative_difference(workload, a, b, steps)) for name, expect, a, b in pairs(batch_size)
    ]


def format_rows(rows: list[Row]) -> str:
    width = max(len(r.name) for r in rows)
    lines = [f"{'check':<{width}}  {'expected':<10} {'max rel diff':>12}  {'tolerance':>9}  result", "-" * (width + 48)]
    for r in rows:
        expected = "equal" if r.expect_equal else "different"
        lines.append(
            f"{r.name:<{width}}  {expected:<10} {r.max_rel_diff:>12.2e}  {r.tolerance:>9.0e}  "
            f"{'pass' if r.passed else 'FAIL'}"
        )
    failed = sum(not r.passed for r in rows)
    lines.append(f"verify: {len(rows) - failed} passed, {failed} failed")
    return "\n".join(lines)
