"""What a training loop gets from samplewise: :class:`TrialContext`, the one contract between a
trial's loop (samplewise's own or a user's ``train(ctx)``) and the sweep.

The loop keeps full control of its model, data and steps. The context gives it

- the trial's hyperparameters (``ctx.hp``: batch size, reduction, optimizer, LR per sample and
  the derived lr / eps / weight decay);
- ``ctx.optimizer(params)``: the torch optimizer the tied rule asks for, whose settings the
  schedule then changes (``ctx.batch_size(samples_seen)``);
- ``ctx.reduce(per_item_losses, count=...)``: the trial's reduction over the whole batch, so
  that accumulated micro-batches make the update of the whole batch;
- ``ctx.report(samples_seen, val_loss=..., state=...)``: checks the contract, adds what the
  sweep needs (divergence, LR, batch size, updates), and says whether to stop;
- ``ctx.restored``: the state the loop passed to its last checkpointed report, after a crash or
  a retry (None on a fresh start).
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Callable, Iterable, Mapping, Optional

import torch

from search_spaces.scaling import TrialHParams, noise_scale
from search_spaces.schedules import Schedule, batch_and_lr
from services import metrics as m
from services.spec import short
from services.training.optim import apply_settings, make_optimizer
from services.training.precision import Precision

NONFINITE_OBJECTIVE = 1e30
"""The objective reported for a trial whose loss was NaN/inf from the start: finite, and worse
than any real loss, so searchers and schedulers rank it last."""

ALIASES: Mapping[str, str] = {
    "train_loss": m.TRAIN_LOSS,
    "val_loss": m.VAL_LOSS,
    "val_accuracy": m.VAL_ACCURACY,
    "samples_per_s": m.SAMPLES_PER_S,
    "initial_val_loss": m.INITIAL_VAL_LOSS,
}
"""Keyword names a loop may report by, for the reserved metric names that Python cannot spell."""

LOOP_METRICS = frozenset(
    {m.TRAIN_LOSS, m.VAL_LOSS, m.VAL_ACCURACY, m.SAMPLES_PER_S, m.B_SIMPLE, m.MAX_RSS_MB, m.INITIAL_VAL_LOSS}
)
"""What a loop reports itself (and any ``val/<name>`` of its own); the context adds samples
seen, updates, LR, batch size, noise scale and the divergence flag, and the initial loss when
the loop does not report it (then the first report's val loss)."""


class ContractError(ValueError):
    """A training loop broke the reporting contract; the trial fails with this one line."""


def reduce_losses(losses: torch.Tensor, reduction: str, count: Optional[float] = None) -> torch.Tensor:
    """The trial's reduction of per-item losses over a whole batch.

    ``losses`` holds one loss per item (sample or token) of the batch, or of one micro-batch
    of it (masked items zero or left out). ``count`` is the number of items in the *whole*
    batch, every micro-batch included (default: ``losses.numel()``, the batch is this one
    tensor). Under ``mean`` the sum is divided by ``count``, never by the micro-batch's own
    size, so the gradients of the micro-batches add up to the whole batch's; under ``sum``
    the sum is the loss.
    """
    total = losses.sum()
    if reduction == "sum":
        return total
    n = losses.numel() if count is None else count
    if not n or n <= 0:
        raise ContractError(f"reduce: count must be a positive number of items, got {short(count)}")
    return total / n


class TrialContext:
    """One trial's side of the contract; see the module docstring."""

    def __init__(
        self,
        hp: TrialHParams,
        *,
        total_samples: int,
        interval_samples: int,
        report: Callable[[dict, Any], Optional[bool]],
        schedule: Optional[Schedule] = None,
        n_train: Optional[int] = None,
        divergence_factor: float = 5.0,
        restored: Optional[dict] = None,
        device: str = "cpu",
        params: Optional[Mapping[str, Any]] = None,
        precision: str = "fp32",
    ):
        self.hp = hp
        self.params: Mapping[str, Any] = dict(params or {})
        """The spec's ``workload.params``: the loop's own settings (model width, data size, ...)."""
        self.total_samples = total_samples
        """The sample budget of the trial: train until ``samples_seen`` reaches it."""
        self.interval_samples = interval_samples
        """Samples between two reports: each report is an evaluation and a round trip to Tune."""
        self.device = device
        """Where the trial should train: "cuda" when Ray gave it a GPU, else "cpu"."""
        self.precision = Precision(precision, device)
        """The spec's ``resources.precision``: ``with ctx.precision.autocast():`` around the forward
        pass, ``ctx.precision.backward(loss)`` and ``ctx.precision.step(optimizer)`` (fp16 scales
        the loss and skips overflowing steps)."""
        self.divergence_factor = divergence_factor
        self._schedule, self._n_train = schedule or Schedule(), n_train
        self._static = hp.schedule == "constant" and not self._schedule.warmup_samples
        self._report = report
        self._optimizers: list[torch.optim.Optimizer] = []
        self._current: Optional[tuple[int, float]] = None
        self._batch = hp.batch_size
        own = dict((restored or {}).get("context") or {})
        self.restored: Any = (restored or {}).get("loop")
        """What the loop passed as ``state`` to its last checkpointed report; None on a fresh start."""
        self.samples_seen: int = int(own.get("samples_seen", -1))
        self.updates: int = int(own.get("updates", 0))
        self.initial_loss: Optional[float] = own.get("initial_loss")
        self.val_history: list[float] = list(own.get("val_history", []))
        self.precision.load_state_dict(own.get("scaler"))
        self.last_reported: dict[str, float] = {}
        """The metrics of the last report, as the sweep received them."""

    # -- for the loop -------------------------------------------------------------------------

    def optimizer(self, params: Iterable) -> torch.optim.Optimizer:
        """The trial's optimizer over ``params`` (a model's parameters or param groups); its
        steps are counted, and the schedule's LR is applied to it."""
        optimizer = make_optimizer(params, self.hp, fused=self.precision.scaler is None)
        optimizer.register_step_post_hook(self._count_update)
        self._optimizers.append(optimizer)
        if self._current is not None:
            apply_settings(optimizer, self.hp, self.hp.settings(*self._current))
        return optimizer

    def _count_update(self, optimizer, args, kwargs) -> None:
        if optimizer is self._optimizers[0]:
            self.updates += 1

    def batch_size(self, samples_seen: int) -> int:
        """The batch size the schedule wants after ``samples_seen`` samples (at most the
        training set when the loop gave its size); the LR it wants at that point is set on the
        context's optimizers."""
        if self._static and self._current is not None:  # constant, no warmup: never changes
            return self._batch
        batch, scale = batch_and_lr(
            self._schedule,
            self.hp.schedule,
            self.hp.batch_size,
            self._n_train or self.total_samples,
            samples_seen,
            self.total_samples,
            self.val_history,
        )
        if self._n_train:
            batch = min(batch, self._n_train)
        if (batch, scale) != self._current:
            for optimizer in self._optimizers:
                apply_settings(optimizer, self.hp, self.hp.settings(batch, scale))
            self._current = (batch, scale)
        self._batch = batch
        return batch

    @property
    def settings(self) -> dict[str, float]:
        """The optimizer settings (lr, eps, weight decay) the schedule wants now."""
        return self.hp.settings(*(self._current or (self.hp.batch_size, 1.0)))

    @property
    def lr(self) -> float:
        """The LR the schedule wants now."""
        return self.settings["lr"]

    def reduce(self, losses: torch.Tensor, count: Optional[float] = None) -> torch.Tensor:
        """:func:`reduce_losses` with the trial's reduction."""
        return reduce_losses(losses, self.hp.reduction, count)

    def report(self, samples_seen: int, *, state: Any = None, **metrics: float) -> bool:
        """Report the loop's metrics after ``samples_seen`` training samples; returns True when
        the trial should stop (its budget is spent, or it diverged).

        ``val_loss`` (the objective, per sample or per item) is required; ``train_loss``,
        ``val_accuracy`` and the reserved names of :mod:`services.metrics` are optional.
        ``state`` is what the loop needs to continue from this point (tensors and plain
        values): it comes back as ``ctx.restored`` if the trial restarts from this report.
        """
        values = self._check(samples_seen, metrics)
        val = values[m.VAL_LOSS]
        if self.initial_loss is None:  # the first report: the scale divergence is judged on
            first = values.get(m.INITIAL_VAL_LOSS, val)
            self.initial_loss = first if math.isfinite(first) else math.inf
        threshold = self.divergence_threshold()
        diverged = self.diverged(val, values.get(m.TRAIN_LOSS, val))
        self.samples_seen = samples_seen
        self.val_history.append(val)
        lr = self._optimizers[0].param_groups[0]["lr"] if self._optimizers else self.lr
        out = {
            **values,
            m.VAL_LOSS: threshold if diverged else val,
            m.INITIAL_VAL_LOSS: self.initial_loss if math.isfinite(self.initial_loss) else NONFINITE_OBJECTIVE,
            m.SAMPLES_SEEN: samples_seen,
            m.UPDATES: self.updates,
            m.LR: lr,
            m.BATCH_SIZE: self._batch,
            m.DIVERGED: float(diverged),
        }
        if self._n_train:
            out[m.NOISE_G] = noise_scale(self.hp, lr, self._batch, self._n_train)
        if m.TRAIN_LOSS in values and not math.isfinite(values[m.TRAIN_LOSS]):
            out[m.TRAIN_LOSS] = threshold
        checkpoint = {
            "context": {
                "samples_seen": samples_seen,
                "updates": self.updates,
                "initial_loss": self.initial_loss,
                "val_history": list(self.val_history),
                "scaler": self.precision.state_dict(),
            },
            "loop": state,
        }
        self.last_reported = out
        asked = self._report(out, checkpoint)  # exactly True: whoever runs the trial stops it here
        return asked is True or diverged or samples_seen >= self.total_samples

    def divergence_threshold(self) -> float:
        """The loss past which the trial diverged: ``divergence_factor`` times the initial val
        loss (the first report's, when the loop did not report one)."""
        if self.initial_loss is None or not math.isfinite(self.initial_loss):
            return NONFINITE_OBJECTIVE
        return self.divergence_factor * max(self.initial_loss, 1e-12)

    def diverged(self, val_loss: float, train_loss: Optional[float] = None) -> bool:
        """Whether these losses are NaN/inf or past :meth:`divergence_threshold`."""
        train = val_loss if train_loss is None else train_loss
        if not (math.isfinite(val_loss) and math.isfinite(train)):
            return True
        return max(val_loss, train) > self.divergence_threshold()

    def _check(self, samples_seen: Any, metrics: Mapping[str, Any]) -> dict[str, float]:
        if isinstance(samples_seen, bool) or not isinstance(samples_seen, Integral) or samples_seen < 0:
            raise ContractError(
                f"report: samples_seen must be a count of samples (an int >= 0), got {short(samples_seen)}"
            )
        if self.samples_seen >= self.total_samples:
            raise ContractError(
                f"report: the budget of {self.total_samples} samples was spent at the last report "
                f"({self.samples_seen}); stop when report returns True"
            )
        if samples_seen <= self.samples_seen:
            raise ContractError(
                f"report: samples_seen must increase from one report to the next, got {samples_seen} "
                f"after {self.samples_seen}"
            )
        values: dict[str, float] = {}
        for name, value in metrics.items():
            key = ALIASES.get(name, name)
            if key not in LOOP_METRICS and not m.is_workload_metric(key):
                known = ", ".join(sorted(ALIASES))
                raise ContractError(
                    f"report: unknown metric {short(name)}; report {known}, a name of services.metrics or val/<name>"
                )
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, Real):
                raise ContractError(f"report: {name} must be a number, got {short(value)}")
            values[key] = float(value)
        if m.VAL_LOSS not in values:
            raise ContractError("report: val_loss is required (the sweep's objective, a loss per sample or per item)")
        return values
