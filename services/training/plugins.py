"""Importing the user's code a spec names (``package.module:function``), for workloads and loops."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import sys
import typing
from typing import Any, Callable

from services.spec import SpecError, cut


def import_function(
    field: str, ref: str, accept: Callable[[Callable, dict[str, Any]], None] | None = None
) -> tuple[Callable, dict[str, Any]]:
    """The function ``package.module:function`` names, with its resolved type hints. Importing
    its module runs that module's code, like running a Python file; callers accept only
    functions annotated as what they expect, so a spec cannot call an arbitrary callable
    (``os:system``): ``accept(fn, hints)`` raises when ``fn`` is not one. What the module prints
    while it imports is shown only once ``fn`` is accepted, so a bad spec ends in one line."""
    module_name, _, attr = ref.partition(":")
    printed = io.StringIO()
    try:  # what the module prints while it imports is held, so a failed import ends in one line
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise SpecError(f"{field}: cannot import {cut(module_name)} ({cut(str(err), 120)})") from None
    except Exception as err:  # noqa: BLE001 - the module's own code failed: that is the spec's error
        raise SpecError(
            f"{field}: importing {cut(module_name)} raised {type(err).__name__}: {cut(str(err), 100)}"
        ) from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise SpecError(f"{field}: {cut(module_name)} has no function {cut(attr)}")
    try:
        hints = typing.get_type_hints(fn) if inspect.isfunction(fn) else {}
    except Exception:  # noqa: BLE001 - annotations that do not resolve are not the ones asked for
        hints = {}
    if accept is not None:
        accept(fn, hints)  # raises SpecError when ``fn`` is not what the field takes
    sys.stderr.write(printed.getvalue())  # accepted: the module's own output, as it printed it
    return fn, hints
