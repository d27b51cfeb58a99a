"""Trial packs: K members that share batch size, optimizer, reduction and schedule, and differ
in LR per sample (and seed), trained in lockstep as one stacked model with ``torch.func``.

Small proxy models leave most of a core (or a GPU) idle per step; a pack does K members' work
in one batched forward (``vmap``) and one backward, so per-member throughput grows
with K. Each member keeps its own init (its seed), its own data order (a generator seeded as
a single trial's is), its own optimizer state, its own reports and its own divergence, so a
member trains what the same configuration trains alone (``tests/test_pack.py``: equal losses,
rel 1e-5 in float32).

The members' LRs differ; the other settings do not (they depend on the batch size and the
rule, which the pack shares). One torch optimizer steps the stacked parameters at lr = 1, and
each member's change is then scaled by its own LR: for SGD, momentum, Adam and AdamW, coupled
or decoupled weight decay, a step's change is linear in the LR while the optimizer's state is
not touched by it, so this is each member's own update.

A member that diverges, or whose ``report`` asks it to stop, leaves the pack: the stacked
parameters and optimizer state are cut down to the members still training, so a stopped
member costs nothing more. Models ``vmap`` cannot run (BatchNorm in training mode,
data-dependent control flow) and settings the pack does not cover (micro-batches, fp16/bf16,
per-item losses, Dataset sources) train their members one after another instead
(:func:`train_members`, which says why once). The gradient noise scale is measured per member,
each from its own estimator, with vectorized gradients.
"""

from __future__ import annotations

import copy
import logging
import math
import resource
import time
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from search_spaces.scaling import TrialHParams
from services import metrics as m
from services.training.data import summed_loss
from services.training.noise import NoiseScale, noise_window
from services.training.optim import apply_settings, make_optimizer
from services.training.packable import budget_refusal, workload_refusal
from services.training.stacked import cut, mlp_forward, mlp_layers, stacked_losses
from services.training.workloads import Workload

log = logging.getLogger(__name__)

MemberReport = Callable[[int, dict], Optional[bool]]
"""``report(member, metrics)``: a member's metrics at a report; True stops that member."""

SHARED = (
    "batch_size",
    "reduction",
    "optimizer",
    "rule",
    "k",
    "schedule",
    "weight_decay",
    "decoupled_decay",
    "momentum",
    "eps",
)
"""What a pack's members share: everything but the LR (per sample) and the seed."""


def unpackable(workload: Workload, members: Sequence[TrialHParams], budget) -> Optional[str]:
    """Why these members cannot train as one pack, or None when they can (the workload itself
    is checked by :func:`services.training.packable.workload_refusal`)."""
    for name in SHARED:
        values = {getattr(hp, name) for hp in members}
        if len(values) > 1:
            return f"members differ in {name} ({', '.join(sorted(map(str, values)))})"
    return budget_refusal(budget, members[0].schedule)


Point = Callable[[int, Callable[[], dict]], None]
"""``point(samples_seen, state)``: called once the members have reported at a point;
``state()`` builds what :func:`train_pack` continues from (``restored``)."""


def train_members(
    workload: Workload,
    members: Sequence[TrialHParams],
    budget,
    report: MemberReport,
    device: str = "cpu",
    *,
    point: Optional[Point] = None,
    restored: Optional[dict] = None,
) -> list[dict]:
    """Train ``members`` as a pack when they can be (:func:`train_pack`), else one after
    another with the built-in loop; returns each member's last metrics."""
    reason = unpackable(workload, members, budget) or workload_refusal(workload)
    if reason is None:
        return train_pack(workload, members, budget, report, device, point=point, restored=restored)
    log.warning("training %d members one after another: %s", len(members), reason)
    return _one_after_another(workload, members, budget, report, device, point, (restored or {}).get(SEQUENTIAL))


SEQUENTIAL = "one_after_another"
"""Key of the state of members trained one after another: ``{"last": the last metrics of the
members done, "current": the checkpoint of the member training (None: the next starts)}``."""


def _one_after_another(workload, members, budget, report, device, point, restored: Optional[dict]) -> list[dict]:
    """The members trained one at a time by the built-in loop; at each point the state to
    continue from is the members done and the training member's own checkpoint."""
    from services.training.train import context_for, train_workload

    last: list[dict] = list(restored["last"]) if restored else []
    current = restored["current"] if restored else None
    for i in range(len(last), len(members)):
        relay = _relay(report, i)

        def member_report(metrics: dict, state: Any, relay=relay) -> Optional[bool]:
            stop = relay(metrics, state)
            if point is not None:
                ended = stop is True or m.ended(metrics, budget.total_samples)
                done = {"last": last + [metrics], "current": None} if ended else {"last": list(last), "current": state}
                point(metrics[m.SAMPLES_SEEN], lambda: {SEQUENTIAL: done})
            return stop

        ctx = context_for(members[i], budget, member_report, workload.n_train, current, device)
        current = None
        last.append(train_workload(ctx, workload, budget))
    return last


def _relay(report: MemberReport, member: int, last: Optional[list[dict]] = None, saved: Optional[list] = None):
    """A context's report callback that hands member ``member``'s metrics to ``report`` (and
    keeps them in ``last``, and the context's own checkpoint in ``saved``); its answer stops
    the member."""

    def relay(metrics: dict, state: Any) -> Optional[bool]:
        if last is not None:
            last[member] = metrics
        if saved is not None:
            saved[member] = state["context"]
        return report(member, metrics)

    return relay


def train_pack(
    workload: Workload,
    members: Sequence[TrialHParams],
    budget,
    report: MemberReport,
    device: str = "cpu",
    *,
    point: Optional[Point] = None,
    restored: Optional[dict] = None,
) -> list[dict]:
    """Train ``members`` in lockstep as one stacked model; see the module docstring.

    After each report point ``point(samples_seen, state)`` is called; ``state()`` passed back
    as ``restored`` continues the pack exactly there (members that left stay out)."""
    from services.training.train import context_for

    dev = torch.device(device)
    data = workload.to(dev)
    x_all, y_all = data.x_train, data.y_train
    assert x_all is not None and y_all is not None
    n, hp0 = data.n_train, members[0]
    saved: list[Optional[dict]] = list(restored["contexts"]) if restored else [None] * len(members)
    last: list[dict] = list(restored["last"]) if restored else [{} for _ in members]
    contexts = [
        context_for(hp, budget, _relay(report, i, last, saved), n, {"context": saved[i]} if saved[i] else None, device)
        for i, hp in enumerate(members)
    ]
    orders = [torch.Generator(device="cpu").manual_seed(hp.seed) for hp in members]
    noise_batches: Optional[tuple[int, int]] = budget.noise_batches
    window = noise_window(budget)
    noises = [NoiseScale(*noise_batches, window=window, seed=hp.seed) for hp in members] if noise_batches else []
    if restored is None:
        models = []
        for hp in members:
            torch.manual_seed(hp.seed)  # each member's init is the one it gets alone
            models.append(data.model_fn().to(dev))
        params, buffers = stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")
        del models
        live = list(range(len(members)))  # member indices still training, in stacked order
    else:
        base = data.model_fn().to("meta")
        params = {k: nn.Parameter(v.to(dev)) for k, v in restored["params"].items()}
        buffers = {k: v.to(dev) for k, v in restored["buffers"].items()}
        live = list(restored["live"])
        for gen, saved_order in zip(orders, restored["orders"]):
            gen.set_state(saved_order)
        for noise, saved_noise in zip(noises, restored["noise"]):
            noise.load_state_dict(saved_noise)
    optimizer = make_optimizer(list(params.values()), hp0)
    for group in optimizer.param_groups:
        group["lr"] = 1.0
    if restored is not None:
        optimizer.load_state_dict(restored["optimizer"])

    def member_loss(p, b, x, y):
        return summed_loss(data.loss_fn, functional_call(base, (p, b), (x,)), y, data.items)

    step = vmap(member_loss)
    evaluate = vmap(member_loss, in_dims=(0, 0, None, None))
    logits = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))
    layers = mlp_layers(base)
    if layers is not None:  # the same maths, one batched matmul per layer (no vmap dispatch)

        def step(p, b, x, y):  # noqa: F811 - the fast path of the same function
            return stacked_losses(data.loss_fn, mlp_forward(layers, p, x), y)

        def evaluate(p, b, x, y):  # noqa: F811
            return step(p, b, x.expand(len(live), *x.shape), y.expand(len(live), *y.shape))

        def logits(p, b, x):  # noqa: F811
            return mlp_forward(layers, p, x.expand(len(live), *x.shape))

    gradient = vmap(torch.func.grad(lambda p, b, x, y: member_loss(p, b, x, y) / len(y)))

    def val_metrics() -> tuple[list[float], list[Optional[float]]]:
        with torch.no_grad():
            total = torch.zeros(len(live), device=dev)
            correct = torch.zeros(len(live), device=dev)
            assert data.x_val is not None and data.y_val is not None
            for start in range(0, len(data.y_val), 8192):
                x, y = data.x_val[start : start + 8192], data.y_val[start : start + 8192]
                total += evaluate(params, buffers, x, y)
                if data.classification:
                    correct += (logits(params, buffers, x).argmax(dim=-1) == y).sum(dim=1)
        count = len(data.y_val)
        losses = (total / count).tolist()
        accs = (correct / count).tolist() if data.classification else [None] * len(live)
        return losses, accs

    def noise_scales(slots: list[int]) -> dict[int, Optional[float]]:
        """B_simple of the members at stacked ``slots``, each drawn from its own estimator as
        it is alone (:meth:`NoiseScale.measure`), the gradients vectorized."""
        sizes = noises[0].sizes(n) if noises and slots else None
        if sizes is None:
            return {}
        small, large = sizes
        index = torch.tensor(slots, dtype=torch.long, device=dev)
        p = {k: v.detach()[index] for k, v in params.items()}
        b = {k: v[index] for k, v in buffers.items()}

        def norms(draws: list[torch.Tensor]) -> torch.Tensor:
            idx = torch.stack(draws).to(dev)
            grads = gradient(p, b, x_all[idx], y_all[idx])
            return sum(g.pow(2).flatten(1).sum(1) for g in grads.values())

        repeats = noises[0].repeats
        draws = [[noises[live[s]].draw(n, size) for size in [small] * repeats + [large]] for s in slots]
        g_small = torch.stack([norms([d[r] for d in draws]) for r in range(repeats)]).mean(0)
        g_large = norms([d[-1] for d in draws])
        return {
            s: noises[live[s]].update(gs, gl, small, large, samples)
            for s, gs, gl in zip(slots, g_small.tolist(), g_large.tolist())
        }

    # every member has the same n and batch size, so their passes wrap together: one matrix of
    # orders (a row per live member, each drawn from the member's own generator), one position
    if restored is None:
        initial, _ = val_metrics()
        perm = torch.empty(len(members), 0, dtype=torch.long, device=dev)
        pos, samples, updates = n, 0, 0
    else:
        initial = list(restored["initial"])
        perm, pos = restored["perm"].to(dev), int(restored["pos"])
        samples, updates = int(restored["samples"]), int(restored["updates"])
    interval, total_samples = budget.interval_samples, budget.total_samples
    next_report = (samples // interval + 1) * interval
    running = torch.zeros(len(members), device=dev)
    start_time, interval_samples = time.perf_counter(), 0
    current: Optional[tuple] = None
    lrs: list[torch.Tensor] = []

    def state() -> dict:
        return {
            "params": {k: v.detach() for k, v in params.items()},
            "buffers": dict(buffers),
            "optimizer": optimizer.state_dict(),
            "live": list(live),
            "orders": [g.get_state() for g in orders],
            "noise": [noise.state_dict() for noise in noises],
            "perm": perm.cpu(),
            "pos": pos,
            "samples": samples,
            "updates": updates,
            "initial": list(initial),
            "contexts": list(saved),
            "last": list(last),
        }

    while live and samples < total_samples:
        bs = contexts[live[0]].batch_size(samples)
        for i in live[1:]:
            contexts[i].batch_size(samples)
        if (bs, contexts[live[0]].lr, tuple(live)) != current:  # the schedule moved, or members left
            apply_settings(optimizer, hp0, {**contexts[live[0]].settings, "lr": 1.0})
            column = torch.tensor([contexts[i].lr for i in live], device=dev)
            lrs = [column.view(-1, *([1] * (p.dim() - 1))) for p in params.values()]
            current = (bs, contexts[live[0]].lr, tuple(live))
        if pos + bs > n:
            perm = torch.stack([torch.randperm(n, generator=orders[i]) for i in live]).to(dev)
            pos = 0
        idx = perm[:, pos : pos + bs]
        pos += bs
        tensors = list(params.values())
        optimizer.zero_grad(set_to_none=True)
        totals = step(params, buffers, x_all[idx], y_all[idx])  # (members,) summed losses
        # the members are independent: the gradient of their sum is each member's own gradient
        (totals.sum() if hp0.reduction == "sum" else totals.sum() / bs).backward()
        before = [p.detach().clone() for p in tensors]
        optimizer.step()
        with torch.no_grad():  # each member's change, at its own LR: old + lr * (stepped - old)
            torch._foreach_sub_(tensors, before)
            torch._foreach_mul_(tensors, lrs)
            torch._foreach_add_(tensors, before)
        updates += 1
        running[: len(live)] += totals.detach()
        samples, interval_samples = samples + bs, interval_samples + bs
        left = total_samples - samples
        if samples < total_samples and (samples < next_report or left < interval / 2):
            continue
        next_report = (samples // interval + 1) * interval
        elapsed = time.perf_counter() - start_time
        val, acc = val_metrics()
        train = (running[: len(live)] / interval_samples).tolist()
        healthy = [s for s in range(len(live)) if math.isfinite(train[s]) and math.isfinite(val[s])]
        b_simple = noise_scales(healthy)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        keep = []
        for slot, i in enumerate(live):
            metrics = {
                m.TRAIN_LOSS: train[slot],
                m.VAL_LOSS: val[slot],
                m.INITIAL_VAL_LOSS: initial[i],
                m.SAMPLES_PER_S: interval_samples / max(elapsed, 1e-9),
                m.MAX_RSS_MB: rss,
            }
            accuracy = acc[slot]
            if accuracy is not None:
                metrics[m.VAL_ACCURACY] = accuracy if math.isfinite(accuracy) else 0.0
            if b_simple.get(slot) is not None:
                metrics[m.B_SIMPLE] = b_simple[slot]
            contexts[i].updates = updates  # every member of the pack steps together
            if not contexts[i].report(samples, **metrics):  # budget spent, diverged, or stopped
                keep.append(slot)
        if len(keep) < len(live):
            live = [live[s] for s in keep]
            if keep:
                perm = perm[torch.tensor(keep, dtype=torch.long, device=dev)]
                params, buffers, optimizer = cut(params, buffers, optimizer, keep)
        if point is not None:
            point(samples, state)
        if not live:
            break
        running = torch.zeros(len(members), device=dev)
        start_time, interval_samples = time.perf_counter(), 0
    return last
