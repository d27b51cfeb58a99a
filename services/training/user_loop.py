"""A user's own training loop, ``workload.train: package.module:function``: a function
``train(ctx: TrialContext)`` that keeps full control of its loop and reports through ``ctx``
(:mod:`services.training.context`). Tracking, ASHA on samples, export and resume work for it
as for samplewise's own loop.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from services.errors import SpecError
from services.spec import WorkloadSpec, cut
from services.training.context import TrialContext
from services.training.plugins import import_function

LoopFunction = Callable[[TrialContext], Any]


def resolve_loop(spec: WorkloadSpec) -> LoopFunction:
    """The loop ``spec.train`` names: only a Python function whose first parameter is annotated
    ``TrialContext`` is accepted."""
    assert spec.train is not None

    def accept(fn: Callable, hints: dict[str, Any]) -> None:
        try:
            names = list(inspect.signature(fn).parameters)
        except (TypeError, ValueError):  # not a Python function
            names = []
        annotation = hints.get(names[0]) if names else None
        if not (isinstance(annotation, type) and issubclass(annotation, TrialContext)):
            raise SpecError(
                f"workload.train: {cut(spec.train or '')} is not a training loop: give a Python function "
                "`train(ctx: TrialContext)` (samplewise.TrialContext)"
            )

    fn, _ = import_function("workload.train", spec.train, accept)
    return fn
