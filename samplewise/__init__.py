"""samplewise's Python surface: what a user's code needs.

- Bringing a model: :class:`Workload` (model, data, a per-sample loss; samplewise's loop trains it),
  the loss helpers :func:`per_sample_cross_entropy` and :func:`all_items`, and :class:`Batches`
  (batches made by a function of their indices).
- Bringing a training loop: :class:`TrialContext` (the optimizer from the tied rule, the loss
  reduction, reporting), and :class:`ContractError`, raised when a loop breaks its contract.
- Using the answer: :func:`load_export` (an :class:`Export`; ``.lr(batch_size=..., optimizer=...,
  reduction=...)``), warning with :class:`ExtrapolationWarning` where the evidence does not reach.

Names load on first use, so ``import samplewise`` in a training script costs little.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "Workload": "services.training.workloads",
    "per_sample_cross_entropy": "services.training.workloads",
    "all_items": "services.training.workloads",
    "Batches": "services.training.data",
    "TrialContext": "services.training.context",
    "ContractError": "services.training.context",
    "Export": "services.results.lookup",
    "ExtrapolationWarning": "services.results.lookup",
    "load_export": "services.results.lookup",
    "ExportError": "services.errors",
}

__all__ = [
    "Batches",
    "ContractError",
    "Export",
    "ExportError",
    "ExtrapolationWarning",
    "TrialContext",
    "Workload",
    "all_items",
    "load_export",
    "per_sample_cross_entropy",
]
assert sorted(_WHERE) == __all__

if TYPE_CHECKING:
    from services.errors import ExportError
    from services.results.lookup import Export, ExtrapolationWarning, load_export
    from services.training.context import ContractError, TrialContext
    from services.training.data import Batches
    from services.training.workloads import Workload, all_items, per_sample_cross_entropy


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'samplewise' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
