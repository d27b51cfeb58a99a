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
the noise-scale measurement, per-item losses) train their members one after another instead
(:func:`train_members`, which says why once).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from search_spaces.scaling import TrialHParams
from services import metrics as m
from services.training.data import summed_loss
from services.training.optim import apply_settings, make_optimizer
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
    """Why these members cannot train as one pack, or None when they can."""
    for name in SHARED:
        values = {getattr(hp, name) for hp in members}
        if len(values) > 1:
            return f"members differ in {name} ({', '.join(sorted(map(str, values)))})"
    if budget.micro_batch or budget.precision != "fp32" or budget.noise_batches:
        return "micro-batches, mixed precision and the noise-scale measurement train one member at a time"
    if workload.transform is not None or workload.metrics is not None or workload.items is not None:
        return "a workload transform, metrics function or per-item loss trains one member at a time"
    if workload.train_set is not None or workload.val_set is not None:
        return "data from a Dataset or batch function trains one member at a time"
    return None


def train_members(
    workload: Workload, members: Sequence[TrialHParams], budget, report: MemberReport, device: str = "cpu"
) -> list[dict]:
    """Train ``members`` as a pack when they can be (:func:`train_pack`), else one after
    another with the built-in loop; returns each member's last metrics."""
    reason = unpackable(workload, members, budget)
    if reason is None:
        try:
            _probe(workload, members[0])
        except Exception as err:  # noqa: BLE001 - vmap's refusals are many types; the fallback is the answer
            reason = f"the model does not run under torch.func.vmap ({type(err).__name__}: {str(err)[:120]})"
    if reason is None:
        return train_pack(workload, members, budget, report, device)
    log.warning("training %d members one after another: %s", len(members), reason)
    from services.training.train import context_for, train_workload

    last = []
    for i, hp in enumerate(members):
        ctx = context_for(hp, budget, _relay(report, i), workload.n_train, None, device)
        last.append(train_workload(ctx, workload, budget))
    return last


def _relay(report: MemberReport, member: int, last: Optional[list[dict]] = None):
    """A context's report callback that hands member ``member``'s metrics to ``report`` (and
    keeps them in ``last``); its answer stops the member."""

    def relay(metrics: dict, state: Any) -> Optional[bool]:
        if last is not None:
            last[member] = metrics
        return report(member, metrics)

    return relay


def _probe(workload: Workload, hp: TrialHParams) -> None:
    """One packed gradient of two members on two samples: raises where vmap cannot run the model."""
    torch.manual_seed(hp.seed)
    models = [workload.model_fn(), workload.model_fn()]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x, y = workload.train.batch(torch.arange(2), torch.device("cpu"))
    xs, ys = torch.stack([x, x]), torch.stack([y, y])

    def loss(p, b, xb, yb):
        return summed_loss(workload.loss_fn, functional_call(base, (p, b), (xb,)), yb, workload.items)

    vmap(loss)(params, buffers, xs, ys).sum().backward()


def train_pack(
    workload: Workload, members: Sequence[TrialHParams], budget, report: MemberReport, device: str = "cpu"
) -> list[dict]:
    """Train ``members`` in lockstep as one stacked model; see the module docstring."""
    from services.training.train import context_for

    dev = torch.device(device)
    data = workload.to(dev)
    x_all, y_all = data.x_train, data.y_train
    assert x_all is not None and y_all is not None
    n, hp0 = data.n_train, members[0]
    models = []
    for hp in members:
        torch.manual_seed(hp.seed)  # each member's init is the one it gets alone
        models.append(data.model_fn().to(dev))
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    del models
    optimizer = make_optimizer(list(params.values()), hp0)
    for group in optimizer.param_groups:
        group["lr"] = 1.0
    last: list[dict] = [{} for _ in members]
    contexts = [context_for(hp, budget, _relay(report, i, last), n, None, device) for i, hp in enumerate(members)]
    orders = [torch.Generator(device="cpu").manual_seed(hp.seed) for hp in members]
    live = list(range(len(members)))  # member indices still training, in stacked order

    def member_loss(p, b, x, y):
        return summed_loss(data.loss_fn, functional_call(base, (p, b), (x,)), y, data.items)

    step = vmap(member_loss)
    evaluate = vmap(member_loss, in_dims=(0, 0, None, None))
    logits = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))

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

    initial, _ = val_metrics()
    # every member has the same n and batch size, so their passes wrap together: one matrix of
    # orders (a row per live member, each drawn from the member's own generator), one position
    perm = torch.empty(len(members), 0, dtype=torch.long, device=dev)
    pos, samples, updates = n, 0, 0
    interval, total_samples = budget.interval_samples, budget.total_samples
    next_report = interval
    running = torch.zeros(len(members), device=dev)
    start_time, interval_samples = time.perf_counter(), 0
    current: Optional[tuple] = None
    lrs: list[torch.Tensor] = []
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
        keep = []
        for slot, i in enumerate(live):
            metrics = {
                m.TRAIN_LOSS: train[slot],
                m.VAL_LOSS: val[slot],
                m.INITIAL_VAL_LOSS: initial[i],
                m.SAMPLES_PER_S: interval_samples / max(elapsed, 1e-9),
            }
            accuracy = acc[slot]
            if accuracy is not None:
                metrics[m.VAL_ACCURACY] = accuracy if math.isfinite(accuracy) else 0.0
            contexts[i].updates = updates  # every member of the pack steps together
            if not contexts[i].report(samples, **metrics):  # budget spent, diverged, or stopped
                keep.append(slot)
        if not keep:
            break
        if len(keep) < len(live):
            live = [live[s] for s in keep]
            perm = perm[torch.tensor(keep, dtype=torch.long, device=dev)]
            params, buffers, optimizer = _cut(params, buffers, optimizer, keep)
        running = torch.zeros(len(members), device=dev)
        start_time, interval_samples = time.perf_counter(), 0
    return last


def _cut(params: dict, buffers: dict, optimizer: torch.optim.Optimizer, keep: list[int]):
    """The stacked parameters, buffers and optimizer state of the members at ``keep`` only."""
    index = torch.tensor(keep, dtype=torch.long)
    new_params = {k: nn.Parameter(v.detach()[index.to(v.device)].clone()) for k, v in params.items()}
    new_buffers = {k: v[index.to(v.device)].clone() for k, v in buffers.items()}
    state = optimizer.state_dict()
    for p in state["state"].values():
        for key, value in p.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                p[key] = value[index.to(value.device)].clone()
    fresh = type(optimizer)(list(new_params.values()), **optimizer.defaults)
    for hook in optimizer._optimizer_step_pre_hooks.values():
        fresh.register_step_pre_hook(hook)
    fresh.load_state_dict(state)
    return new_params, new_buffers, fresh


def packs(members: Sequence[Any], size: int) -> list[list[Any]]:
    """``members`` cut into packs of at most ``size``, in order."""
    return [list(members[i : i + size]) for i in range(0, len(members), size)]
