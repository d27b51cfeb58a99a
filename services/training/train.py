"""samplewise's own training loop: a pure step function, and the loop, which is one
implementation of ``train(ctx)`` (:mod:`services.training.context`), the contract a user's own
loop follows too.

Each pass over the data is a seeded random order of indices; a step gathers only its batch
(:mod:`services.training.data`), so memory holds one batch, never a copy of the training set.
The tail that does not fill a batch is dropped each pass, so every update sees exactly
``batch_size`` samples. Losses are summed on the device and read back once per reporting
interval, never per step.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from search_spaces.scaling import TrialHParams
from search_spaces.schedules import Schedule
from services import metrics as m
from services.training.context import TrialContext
from services.training.data import ItemMask, Split, count, forward, rows, rows_of, summed_loss, wide
from services.training.noise import NoiseScale, noise_window
from services.training.precision import Precision
from services.training.workloads import Workload

FP32 = Precision("fp32")


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Any,
    y: Any,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    hp: TrialHParams,
    micro_batch: Optional[int] = None,
    precision: Optional[Precision] = None,
    items: ItemMask = None,
) -> torch.Tensor:
    """One update on the batch (x, y); returns the batch's summed loss (no sync).

    With ``micro_batch`` smaller than the batch, the gradient is accumulated over micro-batches
    of at most that many samples: each contributes its summed loss, divided by the count of the
    whole batch under mean reduction (never by its own), so the update is the one of the whole
    batch and only the memory differs. The count is the batch's samples, or with ``items`` (a
    per-item loss) the items its mask lets in. ``precision`` autocasts the forward passes and
    scales the loss for fp16 (:mod:`services.training.precision`).
    """
    precision = precision or FP32
    n = rows_of(y)
    denominator = count(y, items)
    optimizer.zero_grad(set_to_none=True)
    if not micro_batch or micro_batch >= n:
        with precision.autocast():
            total = summed_loss(loss_fn, forward(model, x), y, items)
        precision.backward(total if hp.reduction == "sum" else total / denominator)
        total = total.detach()
    else:  # normalization (BatchNorm) sees micro-batches: its statistics are theirs
        parts = []
        for start in range(0, n, micro_batch):
            xm, ym = rows(x, start, start + micro_batch), rows(y, start, start + micro_batch)
            with precision.autocast():
                part = summed_loss(loss_fn, forward(model, xm), ym, items)
            precision.backward(part if hp.reduction == "sum" else part / denominator)
            parts.append(part.detach())
        total = torch.stack(parts).sum()
    precision.step(optimizer)
    return total


@torch.inference_mode()
def evaluate_split(
    model: nn.Module,
    workload: Workload,
    split: Split,
    precision: Optional[Precision] = None,
    chunk: int = 8192,
) -> dict[str, float]:
    """``model`` on one split: ``{"loss": per sample or per item, "accuracy": ...}`` (accuracy for
    classification workloads without a ``metrics`` function), plus the workload's own metrics
    by name (each the mean over the split's samples)."""
    model.eval()
    device = next(iter(model.parameters())).device
    total = torch.zeros((), device=device)
    items = torch.zeros((), device=device)
    sums: dict[str, torch.Tensor] = {}
    for x, y in split.chunks(chunk, device):
        with (precision or FP32).autocast():
            out = forward(model, x)
            total += summed_loss(workload.loss_fn, out, y, workload.items)
        items += count(y, workload.items)
        if workload.metrics is not None:
            for name, values in workload.metrics(out, y).items():
                sums[name] = sums.get(name, 0) + wide(values).sum()
        elif workload.classification:
            sums["accuracy"] = sums.get("accuracy", 0) + (out.argmax(dim=1) == y).sum()
    model.train()
    n = max(len(split), 1)
    return {"loss": (total / items).item(), **{name: (v / n).item() for name, v in sums.items()}}


def evaluate(
    model: nn.Module, workload: Workload, precision: Optional[Precision] = None
) -> tuple[float, Optional[float]]:
    """(loss, accuracy or None) on the validation set."""
    values = evaluate_split(model, workload, workload.val, precision)
    return values["loss"], values.get("accuracy")


@dataclass(frozen=True)
class Budget:
    """How long a trial trains and how often it reports, in samples."""

    total_samples: int
    interval_samples: int
    divergence_factor: float = 5.0
    noise_batches: Optional[tuple[int, int]] = None
    """(small, large) batch sizes for the gradient noise scale; None skips it."""
    schedule: Schedule = Schedule()
    """Batch-size / LR schedule; its kind is the trial's own (``hp.schedule``)."""
    micro_batch: Optional[int] = None
    """Largest micro-batch of one forward/backward pass; larger batches accumulate gradients."""
    precision: str = "fp32"
    """fp32, bf16 or fp16 (:mod:`services.training.precision`)."""


@dataclass
class TrialState:
    """What the built-in loop needs to continue exactly where it reported, beside what the
    context keeps itself (samples seen, updates, the loss history, the fp16 scaler).

    Plain values and tensors only, so a checkpoint loads with ``torch.load(weights_only=True)``
    (see :meth:`as_dict` / :meth:`from_dict`)."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    order: torch.Tensor
    """State of the generator that draws each pass's data order."""
    perm: torch.Tensor
    """This pass's data order, and ``pos`` the place in it."""
    pos: int
    noise: Optional[dict[str, Any]] = None
    """The gradient-noise estimator's EMA and generator, when it runs."""
    rng: Optional[torch.Tensor] = None
    """torch's CPU generator (a workload's ``transform`` draws from it)."""

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrialState":
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


def context_for(
    hp: TrialHParams,
    budget: Budget,
    report: Callable[[dict, Any], Optional[bool]],
    n_train: Optional[int],
    restored: Optional[dict] = None,
    device: str = "cpu",
    params: Optional[Mapping[str, Any]] = None,
) -> TrialContext:
    """The trial's :class:`TrialContext` for ``budget``: the same for the built-in loop and a
    user's (which has no ``n_train``: the schedule's epochs are then the sample budget's)."""
    return TrialContext(
        hp,
        total_samples=budget.total_samples,
        interval_samples=budget.interval_samples,
        report=report,
        schedule=budget.schedule,
        n_train=n_train,
        divergence_factor=budget.divergence_factor,
        restored=restored,
        device=device,
        params=params,
        precision=budget.precision,
    )


def run_trial(
    workload: Workload,
    hp: TrialHParams,
    budget: Budget,
    report: Callable[[dict, dict], None],
    resume: Optional[dict] = None,
) -> dict:
    """Train one trial with the built-in loop in this process; returns the last metrics.

    ``report(metrics, checkpoint)`` is called at each report; passing a ``checkpoint`` back as
    ``resume`` continues the trial exactly where it reported. The checkpoint holds live
    tensors: serialize or copy it before ``report`` returns (its model weights are
    ``checkpoint["loop"]["model"]``).
    """
    device = workload.x_train.device if workload.x_train is not None else torch.device("cpu")
    ctx = context_for(hp, budget, report, workload.n_train, resume, str(device))
    return train_workload(ctx, workload, budget)


def train_workload(ctx: TrialContext, workload: Workload, budget: Budget) -> dict:
    """The built-in loop, as ``train(ctx)``: trains ``workload`` and reports through ``ctx``.

    The loop counts samples: it reports each time ``ctx.interval_samples`` more have been seen
    (a last stub shorter than half an interval joins the final report), and asks
    ``ctx.batch_size`` for the batch size (and so the LR) before every step, so a batch_growth
    trial changes its batch size at the sample count its milestones name. It stops when the
    report says so: the budget is spent, or the trial diverged (the context judges it against
    the val loss before the first update, and reports a finite objective).
    """
    hp = ctx.hp
    torch.manual_seed(hp.seed)
    device = torch.device(ctx.device)
    model = workload.model_fn().to(device)
    optimizer = ctx.optimizer(model.parameters())
    precision = ctx.precision
    order = torch.Generator(device="cpu").manual_seed(hp.seed)
    train, n = workload.train, workload.n_train
    on_device = workload.train_set is None  # tensors: the order lives where they do
    noise_batches = budget.noise_batches
    noise = NoiseScale(*noise_batches, window=noise_window(budget), seed=hp.seed) if noise_batches else None

    perm = torch.empty(0, dtype=torch.long)
    pos, samples = n, 0  # pos = n forces a fresh permutation first
    initial: dict[str, float] = {}
    restored = TrialState.from_dict(ctx.restored) if ctx.restored else None
    if restored is None:
        initial[m.INITIAL_VAL_LOSS] = evaluate(model, workload, precision)[0]
    else:
        model.load_state_dict(restored.model)
        optimizer.load_state_dict(restored.optimizer)
        order.set_state(restored.order)
        perm, pos, samples = restored.perm, restored.pos, ctx.samples_seen
        if noise is not None and restored.noise:
            noise.load_state_dict(restored.noise)
        if restored.rng is not None:
            torch.set_rng_state(restored.rng)
    perm = perm.to(device) if on_device else perm
    interval = ctx.interval_samples
    next_report = (samples // interval + 1) * interval

    running = torch.zeros((), device=device)
    running_items: Any = 0  # samples (an int), or items of a per-item loss (a tensor, no sync)
    interval_start, interval_samples = time.perf_counter(), 0
    last: dict = {}
    while samples < ctx.total_samples:
        bs = ctx.batch_size(samples)
        if pos + bs > n:
            perm = torch.randperm(n, generator=order)
            perm = perm.to(device) if on_device else perm
            pos = 0
        x, y = train.batch(perm[pos : pos + bs], device)
        if workload.transform is not None:
            x, y = workload.transform(x, y)
        running += train_step(
            model, optimizer, x, y, workload.loss_fn, hp, budget.micro_batch, precision, workload.items
        )
        running_items += count(y, workload.items)
        pos += bs
        samples, interval_samples = samples + bs, interval_samples + bs
        # Report every interval; a stub shorter than half an interval joins the final report.
        left = ctx.total_samples - samples
        if samples < ctx.total_samples and (samples < next_report or left < interval / 2):
            continue
        next_report = (samples // interval + 1) * interval
        elapsed = time.perf_counter() - interval_start
        values = evaluate_split(model, workload, workload.val, precision)
        metrics = {
            m.TRAIN_LOSS: (running / running_items).item(),
            m.VAL_LOSS: values.pop("loss"),
            m.SAMPLES_PER_S: interval_samples / max(elapsed, 1e-9),
            m.MAX_RSS_MB: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **{f"val/{name}": v if math.isfinite(v) else 0.0 for name, v in values.items()},
            **initial,
        }
        healthy = all(math.isfinite(metrics[k]) for k in (m.TRAIN_LOSS, m.VAL_LOSS))
        b_simple = noise.measure(model, workload, samples) if noise and healthy else None
        if b_simple is not None:
            metrics[m.B_SIMPLE] = b_simple
        state = TrialState(
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            order=order.get_state(),
            perm=perm.cpu(),
            pos=pos,
            noise=noise.state_dict() if noise else None,
            rng=torch.get_rng_state() if workload.transform is not None else None,
        )
        stop = ctx.report(samples, state=state.as_dict(), **metrics)
        last = ctx.last_reported
        if stop:
            break
        running.zero_()
        running_items = 0
        interval_start, interval_samples = time.perf_counter(), 0
    return last


def budget_of(spec, n_train: Optional[int]) -> Budget:
    """The spec's budget, reporting interval, noise-scale and schedule settings for one trial
    (``n_train`` None: a user's loop, whose budget is in samples)."""
    return Budget(
        total_samples=spec.budget.total_samples(n_train or 0),
        interval_samples=spec.budget.interval_samples(n_train),
        divergence_factor=spec.budget.divergence_factor,
        noise_batches=(spec.noise.small_batch, spec.noise.large_batch) if spec.noise.enabled else None,
        schedule=spec.schedule,
        micro_batch=spec.resources.max_micro_batch,
        precision=spec.resources.precision,
    )
