"""Workloads: what a trial trains. Built-ins and user plug-ins share one interface.

A workload function takes keyword parameters (from the spec's ``workload.params``) and
returns a :class:`Workload`: a model factory, train and validation tensors, and a
per-sample loss. Users plug in their own as ``package.module:function``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from services.spec import SpecError, WorkloadSpec


@dataclass(frozen=True)
class Workload:
    model_fn: Callable[[], nn.Module]
    """Builds a fresh model; called after the trial seeds torch, so init is seeded."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    """(outputs, targets) -> one loss per sample (no reduction)."""
    classification: bool = True
    """Report val/accuracy from the argmax of the outputs."""

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    def to(self, device: torch.device) -> "Workload":
        return Workload(
            self.model_fn,
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_val.to(device),
            self.y_val.to(device),
            self.loss_fn,
            self.classification,
        )


def per_sample_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(outputs, targets, reduction="none")


def _mlp(n_in: int, hidden: int, depth: int, n_out: int) -> nn.Module:
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def _split(x, y, val_fraction: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    n_val = int(round(len(y) * val_fraction))
    val, train = perm[:n_val], perm[n_val:]
    return x[train], y[train], x[val], y[val]


def digits_mlp(hidden: int = 64, depth: int = 1, val_fraction: float = 0.2, data_seed: int = 0) -> Workload:
    """MLP on scikit-learn's 8x8 digits (1,797 images, ships with the package)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    x_tr, y_tr, x_va, y_va = _split(x, y, val_fraction, data_seed)
    return Workload(lambda: _mlp(64, hidden, depth, 10), x_tr, y_tr, x_va, y_va, per_sample_cross_entropy)


def _cache_dir() -> Path:
    root = os.environ.get("SAMPLEWISE_CACHE") or Path.home() / ".cache" / "samplewise"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def mnist1d_data(num_samples: int = 5000, data_seed: int = 42) -> dict[str, torch.Tensor]:
    """MNIST-1D generated locally with ``mnist1d.make_dataset`` (never downloaded), cached.

    Returns train (80%) and test (20%) tensors: x of shape (n, 40), y class labels.
    """
    path = _cache_dir() / f"mnist1d_n{num_samples}_s{data_seed}.pt"
    if path.exists():
        return torch.load(path)
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = data_seed
    raw = make_dataset(args)
    data = {
        "x": torch.tensor(raw["x"], dtype=torch.float32),
        "y": torch.tensor(raw["y"], dtype=torch.long),
        "x_test": torch.tensor(raw["x_test"], dtype=torch.float32),
        "y_test": torch.tensor(raw["y_test"], dtype=torch.long),
    }
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(data, tmp)
    tmp.replace(path)  # atomic: concurrent trials never read a half-written file
    return data


def mnist1d_mlp(hidden: int = 100, depth: int = 2, num_samples: int = 5000, data_seed: int = 42) -> Workload:
    """MLP on MNIST-1D (published test accuracy ~68%); validates on the test split."""
    d = mnist1d_data(num_samples, data_seed)
    return Workload(lambda: _mlp(40, hidden, depth, 10), d["x"], d["y"], d["x_test"], d["y_test"],
                    per_sample_cross_entropy)


class _Conv1dNet(nn.Module):
    """The MNIST-1D reference CNN: three conv layers (stride 2) and a linear head."""

    def __init__(self, channels: int = 25, length: int = 40, n_out: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            width = self.net(torch.zeros(1, 1, length)).shape[1]
        self.head = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x.unsqueeze(1)))


def mnist1d_cnn(channels: int = 25, num_samples: int = 5000, data_seed: int = 42) -> Workload:
    """1-D CNN on MNIST-1D (published test accuracy ~94%); validates on the test split."""
    d = mnist1d_data(num_samples, data_seed)
    return Workload(lambda: _Conv1dNet(channels), d["x"], d["y"], d["x_test"], d["y_test"],
                    per_sample_cross_entropy)


BUILTIN: dict[str, Callable[..., Workload]] = {
    "digits_mlp": digits_mlp,
    "mnist1d_mlp": mnist1d_mlp,
    "mnist1d_cnn": mnist1d_cnn,
}


def resolve(spec: WorkloadSpec) -> Callable[..., Workload]:
    """The workload function of ``spec``, checked against its params; no data is built."""
    if spec.name in BUILTIN:
        fn = BUILTIN[spec.name]
    elif ":" in spec.name:
        module_name, _, attr = spec.name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise SpecError(f"workload.name: cannot import {module_name!r} ({err})") from None
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise SpecError(f"workload.name: {module_name!r} has no function {attr!r}")
    else:
        raise SpecError(
            f"workload.name: unknown workload {spec.name!r}; built-ins are {sorted(BUILTIN)}"
            " or give package.module:function"
        )
    try:
        inspect.signature(fn).bind(**spec.params)
    except TypeError as err:
        raise SpecError(f"workload.params: {err} (got {spec.params!r})") from None
    return fn


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, params_json: str) -> Workload:
    return resolve(WorkloadSpec(name=name, params=json.loads(params_json)))(**json.loads(params_json))


def load(spec: WorkloadSpec, device: torch.device | str = "cpu") -> Workload:
    """Build (once per process, so reused Tune actors skip it) and move to ``device``."""
    workload = _load_cached(spec.name, json.dumps(spec.params, sort_keys=True))
    return workload.to(torch.device(device))
