"""Workloads a user would plug in as package.module:function, for the tests."""

from services.workloads import Workload, digits_mlp


def broken_model(hidden: int = 8) -> Workload:
    """Digits data whose model factory raises inside every trial."""
    base = digits_mlp(hidden=hidden)

    def model_fn():
        raise RuntimeError("boom: model cannot be built")

    return Workload(model_fn, base.x_train, base.y_train, base.x_val, base.y_val, base.loss_fn)


def mean_loss(hidden: int = 8) -> Workload:
    """Digits with the usual mistake: a loss reduced to one number instead of one per sample."""
    from torch.nn import functional as F

    base = digits_mlp(hidden=hidden)
    return Workload(base.model_fn, base.x_train, base.y_train, base.x_val, base.y_val,
                    lambda out, y: F.cross_entropy(out, y))
