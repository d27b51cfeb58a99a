"""Workloads: what a trial trains. Built-ins and user plug-ins share one interface.

A workload function takes keyword parameters (from the spec's ``workload.params``) and
returns a :class:`Workload`: a model factory, train and validation tensors (and optionally a
held-out test split), and a per-sample loss. Users plug in their own as
``package.module:function``. The sweep selects on the validation split, which the built-ins
carve from their training data; the test split is evaluated once, for an exported best
configuration (:mod:`services.results.holdout`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, NamedTuple, Optional

import pydantic
import torch
from torch import nn

from services.spec import SpecError, WorkloadSpec, cut, short
from services.training.data import Source, Split, forward
from services.training.plugins import import_function


@dataclass(frozen=True)
class Workload:
    """What a trial trains: a model, its data and its loss.

    Data is given as tensors (``x_train``, ``y_train``, ...: the simple case, kept on the
    device) or as sources (``train_set``, ``val_set``, ``test_set``): a map-style torch
    ``Dataset`` whose items are ``(inputs, targets)``, or :class:`~services.training.data.Batches`,
    a function returning the batch for given indices. Inputs may be a tensor or a dict of
    tensors (the model gets them as keyword arguments). Only the batch being trained on is
    gathered and moved to the device.
    """

    model_fn: Callable[[], nn.Module]
    """Builds a fresh model; called after the trial seeds torch, so init is seeded."""
    x_train: Optional[torch.Tensor] = None
    y_train: Optional[torch.Tensor] = None
    x_val: Optional[torch.Tensor] = None
    y_val: Optional[torch.Tensor] = None
    loss_fn: Callable[[Any, Any], torch.Tensor] = None  # type: ignore[assignment]  # required, checked below
    """(outputs, targets) -> one loss per sample (no reduction), or one per item with ``items``."""
    classification: bool = True
    """Report val/accuracy from the argmax of the outputs (regression workloads: False)."""
    x_test: Optional[torch.Tensor] = None
    y_test: Optional[torch.Tensor] = None
    """Held-out test split, never seen by the sweep; None when the workload has none."""
    train_set: Optional[Source] = None
    val_set: Optional[Source] = None
    test_set: Optional[Source] = None
    """The splits as a ``Dataset`` or ``Batches`` (instead of the tensors above)."""
    transform: Optional[Callable[[Any, Any], tuple[Any, Any]]] = None
    """(inputs, targets) -> (inputs, targets), applied to each training batch on the device
    (augmentation); it draws from torch's generator, which the trial seeds."""
    metrics: Optional[Callable[[Any, Any], Mapping[str, torch.Tensor]]] = None
    """(outputs, targets) -> {name: one value per sample}: reported as ``val/<name>``, the mean
    over the validation split (instead of the argmax accuracy)."""
    items: Optional[Callable[[Any], torch.Tensor]] = None
    """Per-item losses (e.g. tokens): targets -> the mask of the items that count, the shape of
    ``loss_fn``'s output. Mean reduction then divides by the items of the whole batch, and the
    reported losses are per item (the ``loss_unit`` param says so). None: per-sample losses."""

    def __post_init__(self) -> None:
        if self.loss_fn is None:
            raise TypeError("Workload: loss_fn is required")
        for name in ("train", "val"):
            if getattr(self, f"{name}_set") is None and getattr(self, f"x_{name}") is None:
                raise TypeError(f"Workload: give x_{name} and y_{name}, or {name}_set")

    @property
    def train(self) -> Split:
        return self._split("train")

    @property
    def val(self) -> Split:
        return self._split("val")

    @property
    def test(self) -> Optional[Split]:
        if self.test_set is None and self.x_test is None:
            return None
        return self._split("test")

    def _split(self, name: str) -> Split:
        source = getattr(self, f"{name}_set")
        if source is None:
            source = (getattr(self, f"x_{name}"), getattr(self, f"y_{name}"))
        return Split(source)

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def loss_unit(self) -> str:
        """What the reported losses are per: "sample", or "item" with per-item losses."""
        return "item" if self.items is not None else "sample"

    def to(self, device: torch.device) -> "Workload":
        """The workload with its tensors on ``device`` (sources are read batch by batch)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)


# The built-in workloads' params, bounded so a spec that asks for no model or no data is refused
# with the field named (workload.params is checked against these annotations, see _check_params)
Width = Annotated[int, pydantic.Field(ge=1, le=100_000)]
"""Units, channels or embedding width."""
Depth = Annotated[int, pydantic.Field(ge=1, le=1_000)]
"""Hidden layers or blocks."""
Seed = Annotated[int, pydantic.Field(ge=0, le=2**32 - 1)]
Fraction = Annotated[float, pydantic.Field(gt=0, lt=1)]
"""A share of the data held out (validation, test): some of it, never all."""
Count = Annotated[int, pydantic.Field(ge=100, le=10_000_000)]
"""Samples or characters to build."""


def all_items(targets: torch.Tensor) -> torch.Tensor:
    """``Workload.items`` for a per-item loss where every item counts (no padding)."""
    return torch.ones_like(targets, dtype=torch.bool)


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


def digits_mlp(
    hidden: Width = 64,
    depth: Depth = 1,
    val_fraction: Fraction = 0.2,
    test_fraction: Fraction = 0.2,
    data_seed: Seed = 0,
) -> Workload:
    """MLP on scikit-learn's 8x8 digits (1,797 images, ships with the package): 60% train,
    20% validation, 20% test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    x_rest, y_rest, x_te, y_te = _split(x, y, test_fraction, data_seed)
    x_tr, y_tr, x_va, y_va = _split(x_rest, y_rest, val_fraction / (1 - test_fraction), data_seed + 1)
    return Workload(
        lambda: _mlp(64, hidden, depth, 10), x_tr, y_tr, x_va, y_va, per_sample_cross_entropy, x_test=x_te, y_test=y_te
    )


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
        return torch.load(path, weights_only=True)
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


def _mnist1d_splits(num_samples: int, data_seed: int, val_fraction: float) -> dict[str, Any]:
    """MNIST-1D's train split cut into train and validation; its test split kept for the test."""
    d = mnist1d_data(num_samples, data_seed)
    x_tr, y_tr, x_va, y_va = _split(d["x"], d["y"], val_fraction, data_seed)
    return dict(x_train=x_tr, y_train=y_tr, x_val=x_va, y_val=y_va, x_test=d["x_test"], y_test=d["y_test"])


def mnist1d_mlp(
    hidden: Width = 100, depth: Depth = 2, num_samples: Count = 5000, data_seed: Seed = 42, val_fraction: Fraction = 0.2
) -> Workload:
    """MLP on MNIST-1D (published test accuracy ~68%); validates on a split of the training data."""
    return Workload(
        lambda: _mlp(40, hidden, depth, 10),
        loss_fn=per_sample_cross_entropy,
        **_mnist1d_splits(num_samples, data_seed, val_fraction),
    )


class _Conv1dNet(nn.Module):
    """The MNIST-1D reference CNN: three conv layers (stride 2) and a linear head."""

    def __init__(self, channels: int = 25, length: int = 40, n_out: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            width = self.net(torch.zeros(1, 1, length)).shape[1]
        self.head = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x.unsqueeze(1)))


def mnist1d_cnn(
    channels: Width = 25, num_samples: Count = 5000, data_seed: Seed = 42, val_fraction: Fraction = 0.2
) -> Workload:
    """1-D CNN on MNIST-1D (published test accuracy ~94%); validates on a split of the training data."""
    return Workload(
        lambda: _Conv1dNet(channels),
        loss_fn=per_sample_cross_entropy,
        **_mnist1d_splits(num_samples, data_seed, val_fraction),
    )


def charlm_gpt(
    block_size: Width = 64,
    n_layer: Depth = 2,
    n_head: Depth = 4,
    n_embd: Width = 64,
    corpus_chars: Count = 300_000,
    val_fraction: Fraction = 0.1,
) -> Workload:
    """A character-level GPT (:mod:`services.training.charlm`) on Python's own standard-library
    source, built locally: one loss per token (``items``; every window holds ``block_size``)."""
    from services.training import charlm

    text = charlm.corpus(corpus_chars)
    vocab = {ch: i for i, ch in enumerate(sorted(set(text)))}
    split = int(len(text) * (1 - val_fraction))
    x_train, y_train = charlm.windows(text[:split], vocab, block_size)
    x_val, y_val = charlm.windows(text[split:], vocab, block_size)
    return Workload(
        lambda: charlm.CharGPT(len(vocab), block_size, n_layer, n_head, n_embd),
        x_train,
        y_train,
        x_val,
        y_val,
        loss_fn=charlm.token_losses,
        classification=False,
        items=all_items,
    )


BUILTIN: dict[str, Callable[..., Workload]] = {
    "digits_mlp": digits_mlp,
    "mnist1d_mlp": mnist1d_mlp,
    "mnist1d_cnn": mnist1d_cnn,
    "charlm_gpt": charlm_gpt,
}


def _workload_function(name: str) -> Callable[..., Workload]:
    """A user's workload function: only a Python function annotated ``-> Workload``."""

    def accept(fn: Callable, hints: dict[str, Any]) -> None:
        returns = hints.get("return")
        if not (isinstance(returns, type) and issubclass(returns, Workload)):
            raise SpecError(
                f"workload.name: {cut(name)} is not a workload function: give a Python function "
                "annotated `-> Workload` (samplewise.Workload)"
            )

    fn, _ = import_function("workload.name", name, accept)
    return fn


def _check_params(fn: Callable[..., Workload], params: dict) -> None:
    """``params`` against ``fn``'s signature and annotations, so a wrong name or type fails here,
    with the field named, rather than in every trial."""
    try:
        signature = inspect.signature(fn, eval_str=True)
    except Exception:  # noqa: BLE001 - unresolvable annotations: check the names only
        signature = inspect.signature(fn)
    fields: dict[str, Any] = {}
    extra: Literal["allow", "forbid"] = "forbid"
    for p in signature.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            extra = "allow"
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            annotation = Any if p.annotation is p.empty or isinstance(p.annotation, str) else p.annotation
            fields[p.name] = (annotation, ... if p.default is p.empty else p.default)
    try:
        model = pydantic.create_model(f"{fn.__name__}_params", __config__=pydantic.ConfigDict(extra=extra), **fields)
        model.model_validate(params)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = "unexpected parameter" if first["type"] == "extra_forbidden" else first["msg"]
        raise SpecError(
            f"workload.params.{cut(where)}: {cut(msg, 100)} (got {short(first.get('input'))}; "
            f"{fn.__name__} takes {cut(', '.join(fields) or 'no parameters', 100)})"
        ) from None
    except pydantic.errors.PydanticUserError:  # annotations pydantic cannot check: names only
        try:
            signature.bind(**params)
        except TypeError as err:
            raise SpecError(f"workload.params: {cut(str(err), 120)}") from None


def resolve(spec: WorkloadSpec) -> Callable[..., Workload]:
    """The workload function of ``spec``, checked against its params; no data is built."""
    if spec.name is None:
        raise SpecError("workload.name: a workload.train loop has no Workload to build")
    if spec.name in BUILTIN:
        fn = BUILTIN[spec.name]
    elif ":" in spec.name:
        fn = _workload_function(spec.name)
    else:
        raise SpecError(
            f"workload.name: unknown workload {short(spec.name)}; built-ins are {sorted(BUILTIN)}"
            " or give package.module:function"
        )
    _check_params(fn, spec.params)
    return fn


def build(spec: WorkloadSpec) -> Workload | None:
    """Build ``spec``'s workload in this process, as the driver does before any trial: a
    function that raises, or returns anything but a :class:`Workload`, is a bad spec. A
    ``workload.train`` loop is resolved and checked, not run (None).

    Not cached: the driver counts the training samples and drops it; each trial's worker
    builds its own (:func:`load`). A workload that returns a lazy ``Dataset`` costs the
    driver what constructing it costs, plus 2 samples read for :func:`check`."""
    if spec.train is not None:
        from services.training.user_loop import resolve_loop

        resolve_loop(spec)
        return None
    try:
        workload = _build(spec.label, json.dumps(spec.params, sort_keys=True))
    except SpecError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's function failed: say where, in one line
        summary = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        raise SpecError(f"workload: {cut(spec.label)}(**workload.params) raised {cut(summary, 150)}") from None
    check(workload)
    return workload


class Facts(NamedTuple):
    """What the driver keeps of a workload it built and checked."""

    n_train: Optional[int]
    """Training samples; None for a ``workload.train`` loop, whose budget is in samples."""
    loss_unit: str
    """What its losses are per: "sample", or "item" (``Workload.items`` or the spec's loss_unit)."""
    n_params: Optional[int] = None
    """Parameters of its model (None for a ``workload.train`` loop)."""
    pack_refusal: Optional[str] = None
    """Why its configurations cannot train as trial packs (:mod:`services.training.packable`)."""


def survey(spec: WorkloadSpec) -> Facts:
    """Build and check ``spec``'s workload (:func:`build`), and keep only its :class:`Facts`:
    the driver builds it once per process and never holds its data."""
    key = (spec.label, json.dumps(spec.params, sort_keys=True), spec.train is not None, spec.loss_unit)
    if key not in _FACTS:
        workload = build(spec)
        if workload is None:
            _FACTS[key] = Facts(None, spec.loss_unit or "sample")
        else:
            from services.training import packable

            _FACTS[key] = Facts(
                workload.n_train,
                workload.loss_unit,
                packable.n_params(workload),
                packable.workload_refusal(workload),
            )
    return _FACTS[key]


_FACTS: dict[tuple, Facts] = {}


def _build(name: str, params_json: str) -> Workload:
    workload = resolve(WorkloadSpec(name=name, params=json.loads(params_json)))(**json.loads(params_json))
    if not isinstance(workload, Workload):
        raise SpecError(f"workload: {cut(name)} returned {type(workload).__name__}, not a Workload")
    return workload


_load_cached = functools.lru_cache(maxsize=4)(_build)


def check(workload: Workload, source: str = "workload") -> None:
    """Run the model and loss on 2 training samples, so a workload that would fail in every
    trial fails once, up front. The loss must be one value per sample (``F.mse_loss`` with its
    default mean reduction is the usual mistake: it would train with wrong per-sample
    numbers), or with ``items`` one value per item, the shape of the items' mask."""
    try:
        torch.manual_seed(0)
        inputs, targets = workload.train.batch(torch.arange(min(2, workload.n_train)), torch.device("cpu"))
        with torch.no_grad():
            out = workload.loss_fn(forward(workload.model_fn(), inputs), targets)
            mask = workload.items(targets) if workload.items is not None else None
    except Exception as err:  # noqa: BLE001 - it would fail in every trial: say so once, up front
        summary = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        raise SpecError(f"{source}: the model and loss fail on 2 training samples: {cut(summary, 150)}") from None
    shape = tuple(getattr(out, "shape", ()))
    n = min(2, workload.n_train)
    if mask is not None:
        if tuple(getattr(mask, "shape", ())) != shape or not shape or shape[0] != n:
            raise SpecError(
                f"{source}.items: the mask must have the shape of loss_fn's per-item losses, "
                f"{shape} for {n} samples; got {tuple(getattr(mask, 'shape', ()))}"
            )
    elif len(shape) != 1 or shape[0] != n:
        raise SpecError(
            f"{source}.loss_fn: must return one loss per sample (reduction='none'), "
            f"shape ({n},) for {n} samples; got shape {shape} (per-item losses: set Workload.items)"
        )


def load(spec: WorkloadSpec, device: torch.device | str = "cpu") -> Workload:
    """Build (once per process, so reused Tune actors skip it) and move to ``device``."""
    if spec.name is None:
        raise SpecError("workload.name: a workload.train loop has no Workload to load")
    workload = _load_cached(spec.name, json.dumps(spec.params, sort_keys=True))
    return workload.to(torch.device(device))
