"""The gradient noise scale estimator against an exact computation on a linear model."""

import torch

from services.training.noise import NoiseScale, grad_sq_norm
from services.training.workloads import Workload


def _linear_workload(n=4096, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, 1, generator=g) + 0.5 * torch.randn(n, 1, generator=g)
    mse = lambda out, t: (out - t).pow(2).sum(dim=1)  # noqa: E731
    return Workload(lambda: torch.nn.Linear(d, 1), x, y, x[:64], y[:64], mse, classification=False)


def test_b_simple_matches_the_exact_per_sample_gradient_statistics():
    torch.manual_seed(0)
    w = _linear_workload()
    model = w.model_fn()
    # exact: per-sample gradients over the whole training set
    per_sample = []
    for i in range(w.n_train):
        grads = torch.autograd.grad(
            w.loss_fn(model(w.x_train[i : i + 1]), w.y_train[i : i + 1]).sum(), list(model.parameters())
        )
        per_sample.append(torch.cat([g.flatten() for g in grads]))
    G = torch.stack(per_sample)
    mean = G.mean(0)
    exact = ((G - mean).pow(2).sum(1).mean() / mean.pow(2).sum()).item()
    estimator = NoiseScale(small=32, large=1024, repeats=8, decay=0.9)
    estimates = [estimator.measure(model, w) for _ in range(60)]
    assert estimates[-1] is not None
    assert 0.5 * exact < estimates[-1] < 2.0 * exact


def test_measuring_leaves_grads_and_data_order_alone():
    w = _linear_workload(n=512)
    model = w.model_fn()
    assert all(p.grad is None for p in model.parameters())
    state = torch.random.get_rng_state()
    NoiseScale(small=8, large=128).measure(model, w)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(state, torch.random.get_rng_state())
    assert grad_sq_norm(model, w.x_train, w.y_train, w.loss_fn).item() > 0
