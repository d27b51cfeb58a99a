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


def _stream(every: int, total: int = 21_600, window: float | None = 21_600 / 4) -> float:
    """The smoothed B_simple at the end of a trial whose |G|^2 falls 30x over training while
    tr(Sigma) stays, measured every ``every`` samples."""
    estimator = NoiseScale(small=16, large=256, window=window)
    tr, out = 50.0, None
    for samples in range(every, total + 1, every):
        g2 = 1.0 / (1.0 + 29.0 * samples / total)
        out = estimator.update(g2 + tr / 16, g2 + tr / 256, 16, 256, samples)
    assert out is not None
    return out


def test_b_simple_does_not_depend_on_how_often_the_trial_reports():
    # the EMA's time constant is in samples: reporting 4x as often weighs the same stretch (what
    # is left, 15% here, is the coarser stream's lag)
    often, seldom = _stream(300), _stream(1200)
    assert abs(often / seldom - 1) < 0.2, (often, seldom)
    # per measurement (the old way) the same trial measures half again higher when it reports 4x as often
    assert _stream(300, window=None) / _stream(1200, window=None) > 1.4


def test_the_noise_window_survives_a_restore():
    a = NoiseScale(small=16, large=256, window=1000.0)
    a.update(1.5, 1.1, 16, 256, 100)
    b = NoiseScale(small=16, large=256, window=1000.0)
    b.load_state_dict(a.state_dict())
    assert a.update(1.2, 1.05, 16, 256, 600) == b.update(1.2, 1.05, 16, 256, 600)
