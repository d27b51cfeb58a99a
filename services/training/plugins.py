"""Importing the user's code a spec names (``package.module:function``), for workloads and loops."""

from __future__ import annotations

import importlib
import inspect
import typing
from typing import Any, Callable

from services.spec import SpecError, cut


def import_function(field: str, ref: str) -> tuple[Callable, dict[str, Any]]:
    """The function ``package.module:function`` names, with its resolved type hints. Importing
    its module runs that module's code, like running a Python file; callers accept only
    functions annotated as what they expect, so a spec cannot call an arbitrary callable
    (``os:system``)."""
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise SpecError(f"{field}: cannot import {cut(module_name)} ({cut(str(err), 120)})") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise SpecError(f"{field}: {cut(module_name)} has no function {cut(attr)}")
    try:
        hints = typing.get_type_hints(fn) if inspect.isfunction(fn) else {}
    except Exception:  # noqa: BLE001 - annotations that do not resolve are not the ones asked for
        hints = {}
    return fn, hints
