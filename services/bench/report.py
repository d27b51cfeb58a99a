"""The bench's results and their BENCHMARKS.md table."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Result:
    name: str
    figure: str
    goal: str
    met: bool | None
    detail: dict[Any, Any] = field(default_factory=dict)


# ---- report ---------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def to_markdown(results: list[Result], command: str, seconds: float, quick: bool) -> str:
    import mlflow
    import optuna
    import ray

    lines = [
        "# Benchmarks" + (" (quick, toy sizes: figures not meaningful)" if quick else ""),
        "",
        f"Command: `{command}` ({seconds / 60:.1f} min). Machine: {machine()}. "
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}. torch {torch.__version__}, ray {ray.__version__}, "
        f"mlflow {mlflow.__version__}, optuna {optuna.__version__}.",
        "",
        "| measurement | figure | goal | met |",
        "|---|---|---|---|",
    ]
    for r in results:
        met = "-" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.name} | {r.figure} | {r.goal} | {met} |")
    lines += ["", "## Details", ""]
    for r in results:
        lines += [f"### {r.name}", "", "```", *(f"{k}: {v}" for k, v in r.detail.items()), "```", ""]
    return "\n".join(lines)
