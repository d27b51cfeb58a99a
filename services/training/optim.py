"""The trial's torch optimizer, built from its hyperparameters, and the settings a schedule gives it.

Decoupled weight decay for SGD and Adam (``p *= 1 - lr * wd`` before each step, as AdamW does
it) is a pre-step hook of the optimizer, so every loop that steps it (samplewise's and a
user's own) gets it.
"""

from __future__ import annotations

from typing import Any, Iterable, Union

import torch
from torch import nn

from search_spaces.scaling import TrialHParams

__all__ = ["apply_settings", "make_optimizer"]


def make_optimizer(
    model_or_params: Union[nn.Module, Iterable[torch.Tensor], Iterable[dict]], hp: TrialHParams, fused: bool = True
) -> torch.optim.Optimizer:
    """The torch optimizer of ``hp`` over a model's parameters (or given parameters / groups).

    It uses torch's fused kernel (one call updates every parameter) where torch has one for
    these parameters, else its default: on small models the per-parameter Python loop of the
    default implementation is a large part of each step. ``fused=False`` never uses it: with
    fp16's gradient scaler, torch 2.13's fused SGD on CPU turned the loss NaN after the first
    unskipped step, where the default implementation trains.
    """
    params: list[Any] = list(
        model_or_params.parameters() if isinstance(model_or_params, nn.Module) else model_or_params
    )
    coupled_wd = 0.0 if hp.decoupled_decay else hp.weight_decay
    cls: type[torch.optim.Optimizer]
    kwargs: dict[str, Any]
    if hp.optimizer in ("sgd", "momentum"):
        cls, kwargs = torch.optim.SGD, dict(lr=hp.lr, momentum=hp.momentum, weight_decay=coupled_wd)
    elif hp.optimizer == "adam":
        cls, kwargs = torch.optim.Adam, dict(lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=hp.eps, weight_decay=coupled_wd)
    elif hp.optimizer == "adamw":
        cls, kwargs = (
            torch.optim.AdamW,
            dict(lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=hp.eps, weight_decay=hp.weight_decay),
        )
    else:
        raise ValueError(f"optimizer: unknown {hp.optimizer!r}")
    try:
        optimizer = cls(params, fused=True, **kwargs) if fused else cls(params, **kwargs)
    except RuntimeError:  # no fused kernel for these parameters' device or dtype
        optimizer = cls(params, **kwargs)
    if hp.decoupled_decay and hp.weight_decay and hp.optimizer != "adamw":
        optimizer.register_step_pre_hook(_decoupled_decay(hp.weight_decay))
    return optimizer


def _decoupled_decay(weight_decay: float):
    def decay(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        with torch.no_grad():
            for group in optimizer.param_groups:
                torch._foreach_mul_(group["params"], 1.0 - group["lr"] * weight_decay)

    return decay


def apply_settings(optimizer: torch.optim.Optimizer, hp: TrialHParams, settings: dict[str, float]) -> None:
    """Set a schedule's lr (and eps, coupled weight decay) on every param group of ``optimizer``."""
    if hp.decoupled_decay and hp.optimizer != "adamw":
        settings = {k: v for k, v in settings.items() if k != "weight_decay"}  # the pre-step hook decays
    for group in optimizer.param_groups:
        group.update({k: v for k, v in settings.items() if k in group})
