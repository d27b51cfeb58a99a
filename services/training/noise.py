"""Gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018), measured in a trial.

From squared norms of mean-reduced gradients at two batch sizes b < B' (McCandlish et al. 2018, appendix A.1):

    |G|^2     ~ (B' |G_B'|^2 - b |G_b|^2) / (B' - b)
    tr(Sigma) ~ (|G_b|^2 - |G_B'|^2) / (1/b - 1/B')

Each is averaged with an EMA before taking the ratio. The EMA's time constant is in samples
(``window``, a quarter of the trial's samples by default), so the measured value does not depend on
how often the trial reports: measuring every 300 samples or every 1,200 weighs the same stretch of
training. The extra
gradients use ``torch.autograd.grad`` (optimizer state and ``.grad`` untouched) and their own
random generator, so measuring does not change what the trial trains on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from services.training.data import count, forward, summed_loss
from services.training.workloads import Workload

WINDOW_SHARE = 4
"""The EMA's time constant is the trial's samples over this: a quarter of training (at 18 reports
a trial, the 0.8 per measurement it replaces)."""


def noise_window(budget: Any) -> float:
    """The EMA time constant in samples for a trial of ``budget`` (a ``Budget``)."""
    return max(1.0, budget.total_samples / WINDOW_SHARE)


def grad_sq_norm(model: torch.nn.Module, x: Any, y: Any, loss_fn, items=None) -> torch.Tensor:
    """|grad of the mean per-sample (or, with ``items``, per-item) loss|^2 on (x, y), as a 0-d
    tensor (no host sync)."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(summed_loss(loss_fn, forward(model, x), y, items) / count(y, items), params)
    return torch.stack([g.pow(2).sum() for g in grads]).sum()


@dataclass
class NoiseScale:
    small: int
    large: int
    repeats: int = 2
    """Small batches averaged per measurement (the small-batch norm is the noisier one)."""
    window: Optional[float] = None
    """EMA time constant in samples: a measurement ``d`` samples after the last keeps
    ``exp(-d / window)`` of the average. None: ``decay`` per measurement."""
    decay: float = 0.8
    """EMA decay per measurement when ``window`` is None."""
    seed: int = 0
    _g2: Optional[float] = field(default=None, init=False)
    _at: Optional[int] = field(default=None, init=False)
    _tr: Optional[float] = field(default=None, init=False)
    _gen: Optional[torch.Generator] = field(default=None, init=False)

    def state_dict(self) -> dict:
        gen = self._gen.get_state() if self._gen is not None else None
        return {"g2": self._g2, "tr": self._tr, "at": self._at, "gen": gen}

    def load_state_dict(self, state: dict) -> None:
        self._g2, self._tr, self._at = state["g2"], state["tr"], state.get("at")
        if state["gen"] is not None:
            self._gen = torch.Generator()
            self._gen.set_state(state["gen"])

    def sizes(self, n: int) -> Optional[tuple[int, int]]:
        """The (small, large) batch sizes on a training set of ``n`` samples; None when they meet."""
        small, large = min(self.small, n), min(self.large, n)
        return (small, large) if small < large else None

    def draw(self, n: int, size: int) -> torch.Tensor:
        """The indices of one measuring batch, from the estimator's own generator."""
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(self.seed + 7919)  # apart from the data order
        return torch.randperm(n, generator=self._gen)[:size]

    def keep(self, samples: Optional[int]) -> float:
        """The share of the average a measurement at ``samples`` seen keeps."""
        if self.window is None or samples is None or self._at is None:
            return self.decay
        return math.exp(-max(0, samples - self._at) / self.window)

    def update(
        self, g_small: float, g_large: float, small: int, large: int, samples: Optional[int] = None
    ) -> Optional[float]:
        """Fold one measurement (the mean squared gradient norms at the two batch sizes, taken
        after ``samples`` seen) into the EMA; returns the smoothed B_simple, or None while not
        positive."""
        g2 = (large * g_large - small * g_small) / (large - small)
        tr = (g_small - g_large) / (1.0 / small - 1.0 / large)
        if self._g2 is None or self._tr is None:
            self._g2, self._tr = g2, tr
        else:
            kept = self.keep(samples)
            self._g2 = kept * self._g2 + (1 - kept) * g2
            self._tr = kept * self._tr + (1 - kept) * tr
        self._at = samples
        if self._g2 > 0 and self._tr > 0:
            return self._tr / self._g2
        return None

    def measure(self, model: torch.nn.Module, workload: Workload, samples: Optional[int] = None) -> Optional[float]:
        """One measurement; returns the EMA-smoothed B_simple, or None while not positive."""
        n = workload.n_train
        sizes = self.sizes(n)
        if sizes is None:
            return None
        small, large = sizes
        device = next(iter(model.parameters())).device
        train = workload.train

        def norm(size: int) -> torch.Tensor:
            x, y = train.batch(self.draw(n, size), device)
            return grad_sq_norm(model, x, y, workload.loss_fn, workload.items)

        # the extra forward passes run in train mode: keep BatchNorm's running statistics (and
        # any other buffer) exactly as the trial left them
        saved = {name: buf.clone() for name, buf in model.named_buffers()}
        try:
            g_small = torch.stack([norm(small) for _ in range(self.repeats)]).mean()
            g_large = norm(large)
        finally:
            with torch.no_grad():
                for name, buf in model.named_buffers():
                    buf.copy_(saved[name])
        return self.update(g_small.item(), g_large.item(), small, large, samples)
