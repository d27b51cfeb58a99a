"""Workloads a user would plug in as package.module:function, for the tests."""

from samplewise import TrialContext, Workload  # the public surface, as a user's module imports it
from services.training.workloads import digits_mlp


def broken_model(hidden: int = 8) -> Workload:
    """Digits whose model passes the check before the sweep (one forward pass without gradients)
    and raises in every trial's first training step."""
    import torch
    from torch import nn

    base = digits_mlp(hidden=hidden)

    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = base.model_fn()

        def forward(self, x):
            if torch.is_grad_enabled():
                raise RuntimeError("boom: model fails in training")
            return self.inner(x)

    return Workload(Broken, base.x_train, base.y_train, base.x_val, base.y_val, base.loss_fn)


def mean_loss(hidden: int = 8) -> Workload:
    """Digits with the usual mistake: a loss reduced to one number instead of one per sample."""
    from torch.nn import functional as F

    base = digits_mlp(hidden=hidden)
    return Workload(
        base.model_fn, base.x_train, base.y_train, base.x_val, base.y_val, lambda out, y: F.cross_entropy(out, y)
    )


def hangs(hidden: int = 8, after_calls: int = 20, in_c: bool = True) -> Workload:
    """Digits whose model hangs on its ``after_calls``-th forward pass: in a C call (``time.sleep``)
    that no Python exception can interrupt, or in a pure-Python loop."""
    import time

    from torch import nn

    base = digits_mlp(hidden=hidden)

    class Hanging(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.calls = base.model_fn(), 0

        def forward(self, x):
            self.calls += 1
            while self.calls > after_calls:
                if in_c:
                    time.sleep(3600)
            return self.inner(x)

    return Workload(Hanging, base.x_train, base.y_train, base.x_val, base.y_val, base.loss_fn)


def nan_at_init(hidden: int = 8) -> Workload:
    """Digits with a model whose outputs are NaN from the start."""
    import torch

    base = digits_mlp(hidden=hidden)

    def model_fn():
        model = base.model_fn()
        with torch.no_grad():
            model[0].weight.fill_(float("nan"))
        return model

    return Workload(model_fn, base.x_train, base.y_train, base.x_val, base.y_val, base.loss_fn)


def typed(hidden: int = 8, depth: int = 1) -> Workload:
    """digits_mlp under another name: a plug-in with typed parameters."""
    return digits_mlp(hidden=hidden, depth=depth)


def unannotated(hidden=8):
    """A plug-in without the `-> Workload` annotation."""
    return digits_mlp(hidden=hidden)


def memory_hog(hidden: int = 8, gib: float = 4.0) -> Workload:
    """Digits whose model, once training starts, holds ``gib`` GiB more on every forward pass
    (touched, so it is resident): Ray's memory monitor kills the trial's worker."""
    import torch
    from torch import nn

    base = digits_mlp(hidden=hidden)
    held = []

    class Hog(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = base.model_fn()

        def forward(self, x):
            if torch.is_grad_enabled():
                held.append(torch.ones(int(gib * 2**30) // 4))
            return self.inner(x)

    return Workload(Hog, base.x_train, base.y_train, base.x_val, base.y_val, base.loss_fn)


def loop_without_objective(ctx: TrialContext) -> None:
    """A user's loop that breaks the contract: it reports no val_loss."""
    ctx.report(10, train_loss=1.0)


def unannotated_loop(ctx) -> None:
    """Not a training loop samplewise accepts: its parameter is not annotated TrialContext."""
