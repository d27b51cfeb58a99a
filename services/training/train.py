"""Training of one trial: a pure step function and a loop that reports per-sample metrics.

Data stays on the device as tensors. Each pass over the data gathers it once in a seeded
random order, and batches are contiguous views of that copy (it costs one copy of the
training set, and saves two gathers per step); the tail that does not fill a batch is
dropped each pass, so every update sees exactly ``batch_size`` samples. Losses are summed
on the device and read back once per reporting interval, never per step.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from search_spaces.scaling import TrialHParams, noise_scale
from search_spaces.schedules import Schedule, batch_and_lr
from services import metrics as m
from services.training.context import NONFINITE_OBJECTIVE
from services.training.noise import NoiseScale
from services.training.optim import apply_settings, make_optimizer
from services.training.precision import Precision
from services.training.workloads import Workload

FP32 = Precision("fp32")


def _wide(losses: torch.Tensor) -> torch.Tensor:
    """Losses summed in at least float32 (a float16 / bfloat16 loss is widened first)."""
    return losses.to(torch.promote_types(losses.dtype, torch.float32))


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    hp: TrialHParams,
    micro_batch: Optional[int] = None,
    precision: Optional[Precision] = None,
) -> torch.Tensor:
    """One update on the batch (x, y); returns the batch's summed per-sample loss (no sync).

    With ``micro_batch`` smaller than the batch, the gradient is accumulated over micro-batches
    of at most that many samples: each contributes its summed loss, divided by the size of the
    whole batch under mean reduction (never by its own size), so the update is the one of the
    whole batch and only the memory differs. ``precision`` autocasts the forward passes and
    scales the loss for fp16 (:mod:`services.training.precision`).
    """
    precision = precision or FP32
    n = x.shape[0]
    optimizer.zero_grad(set_to_none=True)
    if not micro_batch or micro_batch >= n:
        with precision.autocast():
            total = _wide(loss_fn(model(x), y)).sum()
        precision.backward(total if hp.reduction == "sum" else total / n)
        total = total.detach()
    else:  # normalization (BatchNorm) sees micro-batches: its statistics are theirs
        parts = []
        for start in range(0, n, micro_batch):
            with precision.autocast():
                part = _wide(loss_fn(model(x[start : start + micro_batch]), y[start : start + micro_batch])).sum()
            precision.backward(part if hp.reduction == "sum" else part / n)
            parts.append(part.detach())
        total = torch.stack(parts).sum()
    precision.step(optimizer)
    return total


@torch.inference_mode()
def evaluate_split(
    model: nn.Module,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    loss_fn,
    classification: bool,
    chunk: int = 8192,
    precision: Optional[Precision] = None,
) -> tuple[float, Optional[float]]:
    """(per-sample loss, accuracy or None for regression) of ``model`` on one split."""
    model.eval()
    total = torch.zeros((), device=x_all.device)
    correct = torch.zeros((), device=x_all.device)
    n = x_all.shape[0]
    for start in range(0, n, chunk):
        x, y = x_all[start : start + chunk], y_all[start : start + chunk]
        with (precision or FP32).autocast():
            out = model(x)
            total += _wide(loss_fn(out, y)).sum()
        if classification:
            correct += (out.argmax(dim=1) == y).sum()
    model.train()
    return (total / n).item(), ((correct / n).item() if classification else None)


def evaluate(
    model: nn.Module, workload: Workload, precision: Optional[Precision] = None
) -> tuple[float, Optional[float]]:
    """(per-sample loss, accuracy or None) on the validation set."""
    return evaluate_split(
        model, workload.x_val, workload.y_val, workload.loss_fn, workload.classification, precision=precision
    )


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
    """Everything needed to continue a trial exactly where it reported: what a checkpoint holds.

    Plain values and tensors only, so a checkpoint loads with ``torch.load(weights_only=True)``
    (see :meth:`as_dict` / :meth:`from_dict`)."""

    samples: int
    """Training samples seen."""
    updates: int
    """Optimizer steps taken."""
    val_history: list[float]
    """Validation loss at every report so far (the plateau schedules read it)."""
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    order: torch.Tensor
    """State of the generator that draws each pass's data order."""
    perm: torch.Tensor
    """This pass's data order, and ``pos`` the place in it."""
    pos: int
    initial_loss: float
    """Val loss before the first update (the divergence threshold is a multiple of it)."""
    noise: Optional[dict[str, Any]] = None
    """The gradient-noise estimator's EMA and generator, when it runs."""
    scaler: Optional[dict[str, Any]] = None
    """The fp16 gradient scaler's scale and counters."""

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrialState":
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


def run_trial(
    workload: Workload,
    hp: TrialHParams,
    budget: Budget,
    report: Callable[[dict, TrialState], None],
    resume: Optional[TrialState] = None,
) -> dict:
    """Train one trial, calling ``report(metrics, state)`` each interval; returns the last metrics.

    The loop counts samples: it reports each time ``interval_samples`` more have been seen
    (a last stub shorter than half an interval joins the final report), and asks the schedule
    for the batch size and LR before every step, so a batch_growth trial changes its batch
    size at the sample count its milestones name.

    ``state`` is everything needed to continue after that report (model, optimizer, data
    order, schedule history, noise-scale EMA); passing it back as ``resume`` continues the
    trial exactly where it reported, so a resumed trial logs no sample count twice. It holds
    live tensors: serialize or copy it before ``report`` returns.

    A trial whose loss turns NaN/inf or exceeds ``divergence_factor`` times its initial
    validation loss stops at that report with ``diverged = 1`` and a finite objective (the
    divergence threshold), so searchers and schedulers rank it last without crashing.
    """
    torch.manual_seed(hp.seed)
    device = workload.x_train.device
    model = workload.model_fn().to(device)
    optimizer = make_optimizer(model, hp, fused=budget.precision != "fp16")
    order = torch.Generator(device="cpu").manual_seed(hp.seed)
    n, total = workload.n_train, budget.total_samples
    schedule = budget.schedule
    noise = NoiseScale(*budget.noise_batches, seed=hp.seed) if budget.noise_batches else None
    precision = Precision(budget.precision, device)

    perm = torch.empty(0, dtype=torch.long, device=device)
    pos, samples, updates, history = n, 0, 0, []  # pos = n forces a fresh permutation first
    if resume is None:
        initial_loss, _ = evaluate(model, workload, precision)
    else:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        order.set_state(resume.order)
        perm, pos = resume.perm.to(device), resume.pos
        samples, updates, history = resume.samples, resume.updates, list(resume.val_history)
        initial_loss = resume.initial_loss
        if noise is not None and resume.noise:
            noise.load_state_dict(resume.noise)
        precision.load_state_dict(resume.scaler)
    # a model whose loss is NaN/inf before any update diverges at its first report, finitely
    threshold = (
        budget.divergence_factor * max(initial_loss, 1e-12) if math.isfinite(initial_loss) else NONFINITE_OBJECTIVE
    )
    next_report = (samples // budget.interval_samples + 1) * budget.interval_samples

    # a constant schedule without warmup never changes: ask it once, not on every step
    static = hp.schedule == "constant" and not schedule.warmup_samples
    current = None
    xs = ys = xs_perm = None
    running = torch.zeros((), device=device)
    interval_start, interval_samples = time.perf_counter(), 0
    last: dict = {}
    while samples < total:
        if current is None or not static:
            bs, scale = batch_and_lr(schedule, hp.schedule, hp.batch_size, n, samples, total, history)
            bs = min(bs, n)
        if (bs, scale) != current:
            apply_settings(optimizer, hp, hp.settings(bs, scale))
            current = (bs, scale)
        if pos + bs > n:
            perm = torch.randperm(n, generator=order).to(device)
            pos = 0
        if xs is None or xs_perm is not perm:  # the pass's data in its order: batches are views
            xs, ys, xs_perm = workload.x_train[perm], workload.y_train[perm], perm
        assert xs is not None and ys is not None
        running += train_step(
            model,
            optimizer,
            xs[pos : pos + bs],
            ys[pos : pos + bs],
            workload.loss_fn,
            hp,
            budget.micro_batch,
            precision,
        )
        pos += bs
        samples, updates, interval_samples = samples + bs, updates + 1, interval_samples + bs
        # Report every interval; a stub shorter than half an interval joins the final report.
        if samples < total and (samples < next_report or total - samples < budget.interval_samples / 2):
            continue
        next_report = (samples // budget.interval_samples + 1) * budget.interval_samples
        elapsed = time.perf_counter() - interval_start
        train_loss = running.item() / interval_samples
        val_loss, val_acc = evaluate(model, workload, precision)
        diverged = not (math.isfinite(train_loss) and math.isfinite(val_loss)) or max(train_loss, val_loss) > threshold
        history.append(val_loss)
        last = {
            m.TRAIN_LOSS: train_loss if math.isfinite(train_loss) else threshold,
            m.VAL_LOSS: threshold if diverged else val_loss,
            m.INITIAL_VAL_LOSS: initial_loss,
            m.SAMPLES_SEEN: samples,
            m.UPDATES: updates,
            m.LR: optimizer.param_groups[0]["lr"],
            m.BATCH_SIZE: bs,
            m.NOISE_G: noise_scale(hp, optimizer.param_groups[0]["lr"], bs, n),
            m.DIVERGED: float(diverged),
            m.SAMPLES_PER_S: interval_samples / max(elapsed, 1e-9),
            m.MAX_RSS_MB: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        if val_acc is not None:  # classification only: a regression reports no accuracy
            last[m.VAL_ACCURACY] = val_acc if math.isfinite(val_acc) else 0.0
        b_simple = noise.measure(model, workload) if noise and not diverged else None
        if b_simple is not None:
            last[m.B_SIMPLE] = b_simple
        state = TrialState(
            samples=samples,
            updates=updates,
            val_history=list(history),
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            order=order.get_state(),
            perm=perm.cpu(),
            pos=pos,
            initial_loss=initial_loss,
            noise=noise.state_dict() if noise else None,
            scaler=precision.state_dict(),
        )
        report(last, state)
        if diverged:
            break
        running.zero_()
        interval_start, interval_samples = time.perf_counter(), 0
    return last


def budget_of(spec, n_train: int) -> Budget:
    """The spec's budget, reporting interval, noise-scale and schedule settings for one trial."""
    return Budget(
        total_samples=spec.budget.total_samples(n_train),
        interval_samples=spec.budget.interval_samples(n_train),
        divergence_factor=spec.budget.divergence_factor,
        noise_batches=(spec.noise.small_batch, spec.noise.large_batch) if spec.noise.enabled else None,
        schedule=spec.schedule,
        micro_batch=spec.resources.max_micro_batch,
        precision=spec.resources.precision,
    )
