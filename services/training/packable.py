"""Whether a workload's configurations can train as one trial pack (:mod:`services.training.pack`).

Checked twice: once by the sweep's driver, on the workload it builds to check the spec
(:func:`services.training.workloads.survey`), to choose the pack size; and in the trial, where
members that cannot be packed train one after another.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch.func import functional_call, stack_module_state, vmap

from services.training.data import summed_loss


def workload_refusal(workload: Any) -> Optional[str]:
    """Why ``workload`` (a ``Workload``) trains one member at a time, or None when it packs:
    what the pack's loop does not cover, then whether ``torch.func.vmap`` runs its model."""
    if workload.transform is not None or workload.metrics is not None or workload.items is not None:
        return "a workload transform, metrics function or per-item loss trains one member at a time"
    if workload.train_set is not None or workload.val_set is not None:
        return "data from a Dataset or batch function trains one member at a time"
    try:
        _probe(workload)
    except Exception as err:  # noqa: BLE001 - vmap's refusals are many types; the fallback is the answer
        return f"the model does not run under torch.func.vmap ({type(err).__name__}: {str(err)[:120]})"
    return None


def budget_refusal(budget: Any, schedule: str = "constant") -> Optional[str]:
    """Why a trial's ``Budget`` (and its ``schedule`` kind) trains one member at a time, or None."""
    if budget.micro_batch or budget.precision != "fp32":
        return "micro-batches and mixed precision train one member at a time"
    if schedule != "constant" and budget.schedule.patience is not None:
        return "a schedule that follows each member's own plateaus trains one member at a time"
    return None


def n_params(workload: Any) -> int:
    """Parameters of one member's model."""
    return sum(p.numel() for p in workload.model_fn().parameters())


def _probe(workload: Any) -> None:
    """One packed gradient of two members on two samples: raises where vmap cannot run the model."""
    models = [workload.model_fn(), workload.model_fn()]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x, y = workload.train.batch(torch.arange(2), torch.device("cpu"))
    xs, ys = torch.stack([x, x]), torch.stack([y, y])

    def loss(p, b, xb, yb):
        return summed_loss(workload.loss_fn, functional_call(base, (p, b), (xb,)), yb, workload.items)

    vmap(loss)(params, buffers, xs, ys).sum().backward()
