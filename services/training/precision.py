"""Mixed precision for a trial: ``fp32`` (none), ``bf16`` (autocast), ``fp16`` (autocast and a
gradient scaler).

Autocast runs the model's matmuls and convolutions in the low-precision type and keeps losses,
reductions and softmax in float32, so per-sample losses and their sum (the ``sum`` reduction
included) are float32 sums. Under fp16 the gradients are float16 and a large summed loss could
overflow them: the gradient scaler multiplies the loss before ``backward`` and skips a step
whose gradients hold inf/NaN, lowering its scale until they fit. bf16 has float32's range and
needs no scaler. CUDA when the trial has a GPU; on CPU torch autocasts too (slower than float32
on most CPUs: it is there so the same spec runs anywhere).
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal, Optional

import torch

PrecisionKind = Literal["fp32", "bf16", "fp16"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """How one trial computes: ``autocast()`` around forward passes and losses, ``backward(loss)``
    and ``step(optimizer)`` in place of ``loss.backward()`` and ``optimizer.step()``."""

    def __init__(self, kind: str = "fp32", device: str | torch.device = "cpu"):
        if kind not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision: unknown {kind!r}, expected fp32, bf16 or fp16")
        self.kind = kind
        self.device_type = torch.device(device).type
        self.scaler: Optional[torch.amp.GradScaler] = torch.amp.GradScaler(self.device_type) if kind == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.kind == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=DTYPES[self.kind])

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)  # skipped when the scaled gradients hold inf/NaN
        self.scaler.update()

    def state_dict(self) -> Optional[dict[str, Any]]:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: Optional[dict[str, Any]]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
