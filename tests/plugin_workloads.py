"""Workloads a user would plug in as package.module:function, for the tests."""

from services.workloads import Workload, digits_mlp


def broken_model(hidden: int = 8) -> Workload:
    """Digits data whose model factory raises inside every trial."""
    base = digits_mlp(hidden=hidden)

    def model_fn():
        raise RuntimeError("boom: model cannot be built")

    return Workload(model_fn, base.x_train, base.y_train, base.x_val, base.y_val, base.loss_fn)
