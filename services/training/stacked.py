"""Operations on a stack of K members' parameters (:mod:`services.training.pack`): the
batched-matmul forward of an MLP, the members' losses, and cutting the stack down to the
members still training."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Identity)
"""Layers that act on each value alone: the same on a stack of members as on one."""


def mlp_layers(model: nn.Module) -> Optional[list[tuple[str, Any]]]:
    """``model``'s layers when it is an ``nn.Sequential`` of ``nn.Linear`` layers and
    elementwise activations (a stack of members then runs as one batched matmul per layer);
    None for any other model (it runs under vmap)."""
    if type(model) is not nn.Sequential:
        return None
    layers: list[tuple[str, Any]] = []
    for name, layer in model.named_children():
        if type(layer) is nn.Linear:
            layers.append(("linear", name))
        elif type(layer) in ELEMENTWISE:
            layers.append(("elementwise", layer))
        else:
            return None
    return layers


def mlp_forward(layers: list[tuple[str, Any]], params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The stacked members' outputs ``(K, B, out)`` for inputs ``x`` ``(K, B, in)``."""
    for kind, layer in layers:
        if kind == "elementwise":
            x = layer(x)
            continue
        weight, bias = params[f"{layer}.weight"], params.get(f"{layer}.bias")
        x = (
            torch.bmm(x, weight.transpose(1, 2))
            if bias is None
            else torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
        )
    return x


def stacked_losses(loss_fn, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each member's summed per-sample loss ``(K,)``: the members' rows are one batch to
    ``loss_fn`` (its losses are per sample, so each row's loss is its own)."""
    k, b = outputs.shape[:2]
    losses = loss_fn(outputs.reshape(k * b, *outputs.shape[2:]), y.reshape(k * b, *y.shape[2:]))
    return losses.reshape(k, b).sum(dim=1)


def cut(params: dict, buffers: dict, optimizer: torch.optim.Optimizer, keep: list[int]):
    """The stacked parameters, buffers and optimizer state of the members at ``keep`` only."""
    index = torch.tensor(keep, dtype=torch.long)
    new_params = {k: nn.Parameter(v.detach()[index.to(v.device)].clone()) for k, v in params.items()}
    new_buffers = {k: v[index.to(v.device)].clone() for k, v in buffers.items()}
    state = optimizer.state_dict()
    for p in state["state"].values():
        for key, value in p.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                p[key] = value[index.to(value.device)].clone()
    fresh = type(optimizer)(list(new_params.values()), **optimizer.defaults)
    for hook in optimizer._optimizer_step_pre_hooks.values():
        fresh.register_step_pre_hook(hook)
    fresh.load_state_dict(state)
    return new_params, new_buffers, fresh
