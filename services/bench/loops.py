"""Bench 1: samplewise's training loop against a DataLoader loop and the bare step."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from search_spaces.scaling import TrialHParams, derive
from services import metrics as m
from services.bench.report import Result

# ---- 1. training loop vs a DataLoader loop ------------------------------------------------


def _dataloader_loop(workload, hp: TrialHParams, samples: int) -> float:
    """What a user writes: DataLoader over a TensorDataset, mean loss, .item() every step."""
    from torch.utils.data import DataLoader, TensorDataset

    from services.training.optim import make_optimizer

    torch.manual_seed(0)
    model = workload.model_fn()
    optimizer = make_optimizer(model, hp)
    loader = DataLoader(
        TensorDataset(workload.x_train, workload.y_train), batch_size=hp.batch_size, shuffle=True, drop_last=True
    )
    seen, start, total_loss = 0, time.perf_counter(), 0.0
    while seen < samples:
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y, reduction=hp.reduction)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
            seen += len(y)
            if seen >= samples:
                break
    return seen / (time.perf_counter() - start)


def _step_ceiling(workload, hp: TrialHParams, samples: int) -> float:
    """The limit of any eager loop: forward, backward and step on contiguous slices of data
    permuted once, with no metrics, no evaluation and no data handling per step."""
    from services.training.optim import make_optimizer

    torch.manual_seed(0)
    model = workload.model_fn()
    optimizer = make_optimizer(model, hp)
    perm = torch.randperm(workload.n_train)
    x_all, y_all = workload.x_train[perm], workload.y_train[perm]
    bs, n = hp.batch_size, workload.n_train
    seen, pos, start = 0, 0, time.perf_counter()
    while seen < samples:
        if pos + bs > n:
            pos = 0
        loss = torch.nn.functional.cross_entropy(model(x_all[pos : pos + bs]), y_all[pos : pos + bs])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        pos, seen = pos + bs, seen + bs
    return seen / (time.perf_counter() - start)


def _our_loop(workload, hp: TrialHParams, samples: int) -> float:
    from services.training.train import Budget, run_trial

    start = time.perf_counter()
    last = run_trial(workload, hp, Budget(samples, samples), lambda r, s: None)
    return last[m.SAMPLES_SEEN] / (time.perf_counter() - start)


def bench_training_loop(quick: bool) -> Result:
    from services.training.workloads import mnist1d_mlp

    torch.set_num_threads(1)
    workload = mnist1d_mlp(num_samples=2000 if quick else 5000)
    samples = 4_000 if quick else 80_000
    rows = {}
    warm = derive(batch_size=16, reduction="mean", optimizer="sgd", lr_per_sample=1e-3)
    _our_loop(workload, warm, 2_000), _dataloader_loop(workload, warm, 2_000)  # first-call costs, untimed
    for bs in (16, 64, 256):
        hp = derive(batch_size=bs, reduction="mean", optimizer="sgd", lr_per_sample=1e-3)
        runs: dict[str, list[float]] = {"ours": [], "theirs": [], "ceiling": []}
        for _ in range(1 if quick else 3):  # interleaved, so drift on a shared machine hits all three
            runs["ours"].append(_our_loop(workload, hp, samples))
            runs["theirs"].append(_dataloader_loop(workload, hp, samples))
            runs["ceiling"].append(_step_ceiling(workload, hp, samples))
        ours, theirs, ceiling = (statistics.median(runs[k]) for k in ("ours", "theirs", "ceiling"))
        rows[bs] = {
            "samplewise_samples_per_s": round(ours),
            "dataloader_samples_per_s": round(theirs),
            "ratio": round(ours / theirs, 2),
            "ceiling_samples_per_s": round(ceiling),
            "ceiling_vs_dataloader": round(ceiling / theirs, 2),
            "samplewise_of_ceiling": round(ours / ceiling, 2),
        }
    worst = min(r["ratio"] for r in rows.values())
    figure = (
        ", ".join(f"B={b}: {r['ratio']}x" for b, r in rows.items())
        + " (eager-step ceiling: "
        + ", ".join(f"{r['ceiling_vs_dataloader']}x" for r in rows.values())
        + ")"
    )
    return Result("training loop vs DataLoader loop", figure, ">= 3x", worst >= 3, rows)


# ---- 2. trial packs: K members in lockstep vs one eager loop ------------------------------------


def _packed(workload, hp: TrialHParams, k: int, samples: int) -> float:
    """Member-samples per second of a pack of ``k`` members (LRs spread over a factor of 4)."""
    from services.training.pack import train_pack
    from services.training.train import Budget

    members = [
        derive(batch_size=hp.batch_size, reduction=hp.reduction, optimizer=hp.optimizer, lr_per_sample=c, seed=s)
        for s, c in enumerate(hp.lr_per_sample * 4 ** (i / max(k - 1, 1) - 0.5) for i in range(k))
    ]
    start = time.perf_counter()
    last = train_pack(workload, members, Budget(samples, samples), lambda i, r: None)
    return sum(r[m.SAMPLES_SEEN] for r in last) / (time.perf_counter() - start)


def bench_packs(quick: bool) -> Result:
    """Packed training throughput per member against samplewise's own single-trial loop, on the
    digits MLP (64-64-10, B=32, SGD), one thread; goal: >= 4x at K=16."""
    from services.training.workloads import digits_mlp

    torch.set_num_threads(1)
    workload = digits_mlp(hidden=64)
    hp = derive(batch_size=32, reduction="mean", optimizer="sgd", lr_per_sample=1e-3)
    samples = 2_000 if quick else 20_000
    _packed(workload, hp, 2, 500), _our_loop(workload, hp, 500)  # first-call costs, untimed
    sizes = (4, 16) if quick else (4, 16, 64)
    runs: dict[int, list[float]] = {k: [] for k in (1, *sizes)}
    for _ in range(1 if quick else 3):  # interleaved, so drift on a shared machine hits every K
        runs[1].append(_our_loop(workload, hp, samples))
        for k in sizes:
            runs[k].append(_packed(workload, hp, k, samples))
    single = statistics.median(runs[1])
    rows: dict[Any, Any] = {"single_samples_per_s": round(single)}
    for k in sizes:
        packed = statistics.median(runs[k])
        rows[f"K={k}"] = {"member_samples_per_s": round(packed), "vs_single": round(packed / single, 2)}
    at16 = rows["K=16"]["vs_single"]
    figure = ", ".join(f"{k}: {v['vs_single']}x" for k, v in rows.items() if k.startswith("K="))
    return Result("packed members vs one trial's loop", figure, ">= 4x at K=16", at16 >= 4, rows)


def _pack_steps(step, params: dict, optimizer, x, y, k: int, b: int, steps: int) -> float:
    """Seconds for ``steps`` packed SGD steps of ``step`` (the members' summed losses)."""
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (k, b), generator=g)
        optimizer.zero_grad(set_to_none=True)
        step(params, x[idx], y[idx]).sum().backward()
        optimizer.step()
    return time.perf_counter() - start


def bench_compile(quick: bool) -> Result:
    """``torch.compile`` of the packed step against the eager one (the batched-matmul MLP path of
    :mod:`services.training.stacked`), compile time counted: the MNIST-1D MLP (40-100-100-10)
    at K=16, B=8, the SGD grid's smallest batch, where a step is shortest and compiling has
    the most to win. Goal: it pays within one such trial (10 epochs of 3,200 samples at B=8:
    4,000 steps); samplewise packs train eager because it does not."""
    import os
    import tempfile

    from torch import nn

    from services.training.stacked import mlp_forward, mlp_layers, stacked_losses

    torch.set_num_threads(1)
    k, b, steps, trial_steps = 16, 8, (100 if quick else 2_000), 4_000
    model = nn.Sequential(nn.Linear(40, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))
    layers = mlp_layers(model)
    assert layers is not None
    params = {n: nn.Parameter(p.detach().expand(k, *p.shape).clone()) for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(list(params.values()), lr=1e-3)
    x, y = torch.randn(4_000, 40, generator=torch.Generator().manual_seed(0)), torch.arange(4_000) % 10
    loss_fn = nn.CrossEntropyLoss(reduction="none")

    def step(p, xb, yb):
        return stacked_losses(loss_fn, mlp_forward(layers, p, xb), yb)

    _pack_steps(step, params, optimizer, x, y, k, b, 20)  # first-call costs, untimed
    eager = statistics.median(_pack_steps(step, params, optimizer, x, y, k, b, steps) for _ in range(3)) / steps
    with tempfile.TemporaryDirectory(prefix="samplewise-inductor-") as cache:
        saved = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # a cold compile, as a fresh trial worker's
        try:
            torch._dynamo.reset()
            # quick (a smoke run): dynamo traces the step but inductor does not compile it, which
            # alone takes 10-20 s; its figures then say nothing of compiling, as quick figures never do
            compiled = torch.compile(step, dynamic=False, backend="eager" if quick else "inductor")
            compile_s = _pack_steps(compiled, params, optimizer, x, y, k, b, 1)
            _pack_steps(compiled, params, optimizer, x, y, k, b, 20)  # as the eager step had
            fast = statistics.median(_pack_steps(compiled, params, optimizer, x, y, k, b, steps) for _ in range(3))
        finally:
            torch._dynamo.reset()
            if saved is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved
    fast /= steps
    saved_per_step = eager - fast
    pays_after = compile_s / saved_per_step if saved_per_step > 0 else float("inf")
    detail = {
        "eager_ms_per_step": round(eager * 1e3, 3),
        "compiled_ms_per_step": round(fast * 1e3, 3),
        "cold_compile_s": round(compile_s, 1),
        "pays_after_steps": round(pays_after) if pays_after != float("inf") else None,
        "trial_steps": trial_steps,
    }
    figure = (
        ("quick: traced, not compiled; " if quick else "")
        + f"{fast * 1e3:.2f} vs {eager * 1e3:.2f} ms per step; {compile_s:.0f} s to compile, "
        + (f"pays after {pays_after:,.0f} steps" if pays_after != float("inf") else "never pays")
        + f" (a B=8 trial takes {trial_steps:,})"
    )
    pays = pays_after <= trial_steps
    return Result("torch.compile of the packed step", figure, "pays within one trial", pays, detail)
