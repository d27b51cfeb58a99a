"""A workload's data, read by index: in-memory tensors, a map-style torch ``Dataset``, or a
function that returns the batch for given indices.

A batch is ``(inputs, targets)``. Inputs are a tensor, or a dict of tensors that the model gets
as keyword arguments (``model(**inputs)``); targets are what the workload's loss takes. Only
the batch being trained on is gathered and moved to the device: a pass over the data is a
random order of indices, never a copy of the training set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

__all__ = ["Batches", "ItemMask", "Split", "count", "forward", "rows", "rows_of", "summed_loss", "to_device", "wide"]


@dataclass(frozen=True)
class Batches:
    """Data given as a function: ``fn(indices)`` returns the batch ``(inputs, targets)`` of
    those samples (``indices`` a 1-d CPU tensor of int64, each in ``range(n)``)."""

    n: int
    fn: Callable[[torch.Tensor], tuple[Any, Any]]


Source = Union[tuple[torch.Tensor, torch.Tensor], Dataset, Batches]
ItemMask = Optional[Callable[[Any], torch.Tensor]]
"""``Workload.items``: targets -> the mask of the items a per-item loss counts."""


def wide(losses: torch.Tensor) -> torch.Tensor:
    """Losses summed in at least float32 (a float16 / bfloat16 loss is widened first)."""
    return losses.to(torch.promote_types(losses.dtype, torch.float32))


def summed_loss(loss_fn, outputs: Any, targets: Any, items: ItemMask = None) -> torch.Tensor:
    """The sum of a batch's per-sample losses, or of its per-item losses that ``items`` masks in."""
    losses = wide(loss_fn(outputs, targets))
    if items is None:
        return losses.sum()
    return torch.where(items(targets), losses, 0.0).sum()


def count(targets: Any, items: ItemMask = None) -> Any:
    """The samples of a batch (an int), or the items ``items`` masks in (a 0-d tensor, no sync)."""
    if items is None:
        return rows_of(targets)
    return items(targets).sum()


def rows_of(value: Any) -> int:
    """The number of samples in a batch's inputs or targets."""
    if isinstance(value, Mapping):
        return rows_of(next(iter(value.values())))
    return int(value.shape[0]) if isinstance(value, torch.Tensor) else len(value)


def rows(value: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of a batch's inputs or targets (tensors, dicts of them)."""
    if isinstance(value, Mapping):
        return {k: rows(v, start, stop) for k, v in value.items()}
    return value[start:stop]


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` (a tensor, or dicts / lists / tuples of them) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def forward(model: nn.Module, inputs: Any) -> Any:
    """The model on a batch's inputs: keyword arguments for a dict, else one argument."""
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


class Split:
    """One split of a workload's data (train, validation or test)."""

    def __init__(self, source: Source):
        self.source = source
        if isinstance(source, Batches):
            self.n = int(source.n)
        elif isinstance(source, tuple):
            x, y = source
            if len(x) != len(y):
                raise ValueError(f"inputs and targets differ in length: {len(x)} and {len(y)}")
            self.n = int(len(y))
        else:
            self.n = len(source)  # type: ignore[arg-type]  # a map-style Dataset has __len__

    def __len__(self) -> int:
        return self.n

    def batch(self, idx: torch.Tensor, device: torch.device) -> tuple[Any, Any]:
        """The samples ``idx`` (1-d int64) as one batch on ``device``."""
        source = self.source
        if isinstance(source, tuple):
            x, y = source
            if x.device == device == y.device:  # the usual case: tensors already on the device
                return x[idx], y[idx]
            where = idx.to(x.device)
            return to_device(x[where], device), to_device(y[where], device)
        if isinstance(source, Batches):
            return to_device(source.fn(idx), device)
        items = idx.tolist()
        getitems = getattr(source, "__getitems__", None)  # a Dataset that reads many at once
        samples = getitems(items) if getitems is not None else [source[i] for i in items]
        inputs, targets = default_collate(samples)
        return to_device(inputs, device), to_device(targets, device)

    def chunks(self, size: int, device: torch.device) -> Iterator[tuple[Any, Any]]:
        """The whole split in order, ``size`` samples at a time (evaluation)."""
        for start in range(0, self.n, size):
            yield self.batch(torch.arange(start, min(start + size, self.n)), device)
