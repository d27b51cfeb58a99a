"""The sweep spec: one frozen pydantic model, loaded from YAML and validated once.

Everything inward of :func:`load_spec` receives a valid :class:`SweepSpec`; a bad file
raises :class:`SpecError` whose message is one line naming the field path and value.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import Field, ValidationError, model_validator

from search_spaces.schedules import Schedule
from search_spaces.space import MAX_BATCH, MAX_SAMPLES, MAX_SEED, SpaceSpec
from search_spaces.space import FrozenModel as _Frozen
from services.errors import SpecError

MAX_TRIALS = 1_000_000


def _not_json(value: Any, path: str = "") -> Optional[tuple[str, Any]]:
    """(where, the value) of the first part of ``value`` that is not plain JSON, or None."""
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, list):
        return next((w for i, v in enumerate(value) if (w := _not_json(v, f"{path}.{i}")) is not None), None)
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return (path, k)
            w = _not_json(v, f"{path}.{k}")
            if w is not None:
                return w
        return None
    return (path, value)


class WorkloadSpec(_Frozen):
    name: Optional[str] = Field(default=None, min_length=1, max_length=200)
    """A built-in workload (digits_mlp, mnist1d_mlp, mnist1d_cnn) or ``package.module:function``
    returning a ``Workload``: samplewise's training loop trains it."""
    train: Optional[str] = Field(default=None, min_length=3, max_length=200)
    """Instead of ``name``: your own training loop, ``package.module:function``, a function
    ``train(ctx: TrialContext)`` that keeps full control of its model, data and steps and
    reports through ``ctx`` (see services.training.context)."""
    params: dict[str, Any] = {}
    """Keyword arguments of the workload function (model width, data size, ...); for a ``train``
    loop, what it finds in ``ctx.params``. Numbers, strings, booleans, null, and lists or
    mappings of them (they travel as JSON to every trial)."""
    loss_unit: Optional[Literal["sample", "item"]] = None
    """For a ``train`` loop: what its reported losses are per, "sample" (the default) or "item"
    (tokens: a loop whose ``ctx.reduce`` counts items). A workload function says it itself
    (``Workload.items``)."""

    @model_validator(mode="after")
    def _one(self) -> "WorkloadSpec":
        for key, value in self.params.items():
            where = _not_json(value)
            if where is not None:
                path, bad = where
                raise ValueError(
                    f"params.{cut(str(key))}{path}: {short(bad)} is a {type(bad).__name__}; params are numbers, "
                    "strings, booleans, null, or lists and mappings of them"
                )
        if self.loss_unit is not None and self.train is None:
            raise ValueError(
                f"loss_unit: {self.loss_unit!r} is for a workload.train loop; a workload function sets "
                "Workload.items for per-item losses"
            )
        if self.name is None and self.train is None:
            raise ValueError("name: required: a workload, or give workload.train (your own training loop)")
        if self.name is not None and self.train is not None:
            raise ValueError("give name (a workload) or train (your own training loop), not both")
        return self

    @property
    def label(self) -> str:
        """What the sweep trains, as its runs name it: the workload or the loop."""
        return self.name or self.train or ""


class SearcherSpec(_Frozen):
    kind: Literal["tpe", "random", "grid", "adaptive"] = "tpe"
    """TPE models the results; random is the baseline; grid walks every point once; adaptive
    places each round's LRs where lr*(B) is still uncertain (services/orchestration/adaptive.py)."""
    num_trials: Optional[int] = Field(default=None, ge=1, le=MAX_TRIALS)
    """Trials to run. Required for tpe and random; for grid it defaults to the grid size."""
    max_trials: Optional[int] = Field(default=None, ge=1, le=MAX_TRIALS)
    """adaptive: the most configurations it trains (required); it stops sooner once every
    batch size's lr* is known to within ``target_interval``."""
    target_interval: float = Field(default=0.25, gt=0, le=100, allow_inf_nan=False)
    """adaptive: done when every batch size's lr* interval lies within lr*/(1 + t) .. lr*(1 + t)
    (0.25: +-25%, about what a 16-point grid over three decades resolves)."""
    first_round_lrs: int = Field(default=6, ge=3, le=256)
    """adaptive: LRs per batch size in the first round, log-spaced over the whole range, at
    the smallest, the middle and the largest batch size."""
    round_lrs: int = Field(default=4, ge=2, le=256)
    """adaptive: LRs per batch size in each later round, around its predicted lr*."""
    max_concurrent: int = Field(default=2, ge=1, le=10_000)
    """Trials running at once; one per CPU core suits small models."""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    """Seeds the sampler and every trial's init and data order (same seed, same trials)."""
    stratify: bool = True
    """tpe and random: take the cells (batch size x optimizer x reduction x schedule x seed) in
    turn and search only the LR per sample within each, so every batch size gets its share of
    LRs to bracket lr*(B) (the sampler models c per optimizer and batch size). Make
    num_trials a multiple of the cells. False: the sampler also picks the cell, and may
    starve some batch sizes."""


DEFAULT_MAX_REPORTS = 20
"""Reports per trial at most, unless ``report_every_samples`` asks for more: enough points
for a learning curve and for ASHA's rungs."""


class BudgetSpec(_Frozen):
    epochs: Optional[float] = Field(default=None, gt=0, allow_inf_nan=False, le=1e6)
    """Training length per trial in passes over the training set (or give samples)."""
    samples: Optional[int] = Field(default=None, ge=1, le=MAX_SAMPLES)
    """Training length per trial in samples; counts samples, never steps."""
    report_every_samples: Optional[int] = Field(default=None, ge=1, le=MAX_SAMPLES)
    """Samples between evaluations; default one epoch, or budget / 20 for trials of more than
    20 epochs. Each report is an evaluation and a round trip through the Tune driver (about
    10 ms on 2 busy cores), so on small datasets per-epoch reports cost more than they show."""
    divergence_factor: float = Field(default=5.0, gt=1, allow_inf_nan=False, le=1e12)
    """A trial whose loss exceeds this multiple of its initial loss is stopped as diverged."""

    @model_validator(mode="after")
    def _one(self) -> "BudgetSpec":
        if (self.epochs is None) == (self.samples is None):
            raise ValueError("give exactly one of epochs or samples")
        return self

    def total_samples(self, n_train: int) -> int:
        if self.samples is not None:
            return self.samples
        assert self.epochs is not None  # the validator requires one of the two
        return math.ceil(self.epochs * n_train)

    def interval_samples(self, n_train: Optional[int]) -> int:
        """Samples between reports; ``n_train`` None (a user's loop): the budget / 20."""
        if self.report_every_samples:
            return self.report_every_samples
        if n_train is None:
            return math.ceil(self.total_samples(0) / DEFAULT_MAX_REPORTS)
        return max(n_train, math.ceil(self.total_samples(n_train) / DEFAULT_MAX_REPORTS))


class AshaSpec(_Frozen):
    enabled: bool = True
    grace_period_samples: Optional[int] = Field(default=None, ge=1, le=MAX_SAMPLES)
    """Samples every trial trains before it can be stopped; default one report interval."""
    reduction_factor: float = Field(default=3.0, gt=1, allow_inf_nan=False, le=1000)


class NoiseSpec(_Frozen):
    enabled: bool = True
    """Measure the gradient noise scale B_simple once per report (``noise/b_simple``)."""
    small_batch: int = Field(default=32, ge=1, le=MAX_BATCH)
    large_batch: int = Field(default=256, ge=2, le=MAX_BATCH)
    """The two batch sizes of the estimator; 2 x 32 + 256 samples of gradients per report."""

    @model_validator(mode="after")
    def _ordered(self) -> "NoiseSpec":
        if self.small_batch >= self.large_batch:
            raise ValueError(f"small_batch: {self.small_batch} must be below large_batch {self.large_batch}")
        return self


class FailureSpec(_Frozen):
    max_retries: int = Field(default=1, ge=0, le=100)
    """Times a trial that raised is retried (from its last checkpoint) before it is FAILED."""
    checkpoint_every_s: float = Field(default=30.0, ge=0, allow_inf_nan=False, le=1e7)
    """A trial checkpoints at a report once this long has passed since its last checkpoint
    (0: every report). Shorter trials rerun from the start after a crash: seeded, so on CPU
    they reproduce the losses already logged."""
    snapshot_every_s: float = Field(default=5.0, gt=0, allow_inf_nan=False, le=1e7)
    """How often Tune saves the experiment state that ``make resume`` restores: trials that
    finished since the last snapshot are run again after a crash."""

    trial_timeout_s: Optional[float] = Field(default=None, gt=0, le=1e7, allow_inf_nan=False)
    """Longest one attempt of a trial may run; past it the trial is FAILED with "timed out after
    N s" and not retried (its worker process ends if the training does not stop). None: no limit."""


class ResourcesSpec(_Frozen):
    cpus_per_trial: float = Field(default=1.0, gt=0, allow_inf_nan=False, le=4096)
    gpus_per_trial: float = Field(default=0.25, ge=0, le=1, allow_inf_nan=False)
    """GPU fraction per trial, used only when the Ray cluster has GPUs."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """fp32; bf16: autocast (float32's range, no scaler); fp16: autocast and a gradient scaler
    (steps whose scaled gradients overflow are skipped and the scale lowered; sum reduction
    included). On CUDA when the trial has a GPU; on CPU too, where it is rarely faster."""
    pack_size: Optional[int] = Field(default=None, ge=1, le=4096)
    """Configurations one trial trains together as a vectorized pack: same cell, LRs per sample
    that differ (each still its own MLflow run). None: for grid and random search as many as
    the searcher hands out without changing what it samples (a grid cell's LRs, a cell's
    random trials) and memory holds; for TPE none. 1: one configuration per trial. With TPE,
    K > 1 has TPE propose K LRs at once (half a cell's trials at most, so it learns between
    rounds). Packs need the built-in training loop; with ASHA on, ASHA stops each member on
    its own (a stopped member leaves its pack)."""
    max_micro_batch: Optional[int] = Field(default=None, ge=1, le=MAX_BATCH)
    """Most samples one forward/backward pass holds: a larger batch size runs as several
    micro-batches whose gradients accumulate into one update, the reduction taken over the whole
    batch. None: one pass per batch. Bounds memory, so batch sizes past it can be swept."""


class TransferSpec(_Frozen):
    """The transfer check: the answer tried at batch sizes the sweep never trained
    (:mod:`services.orchestration.transfer`)."""

    enabled: bool = False
    """Run the check right after the sweep (``make sweep``); ``make transfer`` runs it any time."""
    batch_sizes: Optional[list[int]] = Field(default=None, min_length=1, max_length=20)
    """Held-out batch sizes, none of them swept. Default: one octave below the smallest swept,
    the geometric middle of the widest gap between swept ones, and one octave above the largest
    (interpolation and one step of extrapolation at each end)."""
    octaves: int = Field(default=1, ge=1, le=4)
    """The bracket around the answered LR: x 2**-octaves .. x 2**octaves in factors of 2
    (default x1/2, x1, x2)."""
    extend: int = Field(default=2, ge=0, le=4)
    """Rounds that add the next factor of 2 outwards where the bracket's best LR is at its edge,
    so a regret is measured against an optimum, not a bound (default up to x1/8 .. x8)."""
    seeds: list[int] = Field(default=[0, 1], min_length=1, max_length=100)
    """Training seeds: each LR of a bracket is trained once per seed (the regret's interval
    resamples them)."""
    tolerance: float = Field(default=0.05, gt=0, le=10, allow_inf_nan=False)
    """The regret (val loss at the answered LR over the bracket's best, minus 1) within which
    the answer transfers."""
    max_seeds: int = Field(default=4, ge=1, le=100)
    """A check whose regret is above the tolerance but whose interval reaches below it trains
    its bracket on 2 more seeds at a time, up to this many (default 4): seed noise, not the
    answer, can put a neighbour ahead on 2 seeds, and compute goes where the verdict is open."""

    @model_validator(mode="after")
    def _check(self) -> "TransferSpec":
        for field in ("batch_sizes", "seeds"):
            values = getattr(self, field) or []
            if len(set(values)) != len(values):
                raise ValueError(f"{field}: duplicate values in {values}")
        for i, b in enumerate(self.batch_sizes or []):
            if not 1 <= b <= MAX_BATCH:
                raise ValueError(f"batch_sizes.{i}: must be between 1 and {MAX_BATCH}, got {b}")
        for i, seed in enumerate(self.seeds):
            if not 0 <= seed <= MAX_SEED - 100:
                raise ValueError(f"seeds.{i}: must be between 0 and {MAX_SEED - 100}, got {seed}")
        if self.max_seeds < len(self.seeds):
            raise ValueError(f"max_seeds: {self.max_seeds} is below the {len(self.seeds)} seeds given")
        return self


class SweepSpec(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    """Names the MLflow experiment, the Ray run directory and the export file."""
    description: str = Field(default="", max_length=10_000)
    workload: WorkloadSpec
    searcher: SearcherSpec = SearcherSpec()
    space: SpaceSpec
    budget: BudgetSpec
    asha: AshaSpec = AshaSpec()
    schedule: Schedule = Schedule()
    noise: NoiseSpec = NoiseSpec()
    failures: FailureSpec = FailureSpec()
    resources: ResourcesSpec = ResourcesSpec()
    transfer: TransferSpec = TransferSpec()

    @model_validator(mode="after")
    def _trials(self) -> "SweepSpec":
        swept = set(self.space.batch_sizes) & set(self.transfer.batch_sizes or [])
        if swept:
            raise ValueError(f"transfer.batch_sizes: {min(swept)} is swept; the check holds batch sizes out")
        if self.workload.train is not None and self.budget.epochs is not None:
            raise ValueError(
                "budget.epochs: a workload.train loop owns its data, so samplewise cannot count its epochs; "
                "give budget.samples"
            )
        if self.searcher.kind == "grid":
            counts = {o: self.space.lr_range(o).count for o in self.space.optimizers}
            if len(set(counts.values())) > 1:
                raise ValueError(
                    f"space.lr_per_sample: a grid search needs the same grid_points for every optimizer, got {counts}"
                )
            size = self.space.grid_size()
            if size > MAX_TRIALS:
                raise ValueError(f"space: a grid of {size} points; at most {MAX_TRIALS} trials")
            if self.searcher.num_trials is not None and self.searcher.num_trials > size:
                raise ValueError(f"searcher.num_trials: {self.searcher.num_trials} exceeds the grid's {size} points")
        elif self.searcher.kind == "adaptive":
            if self.searcher.num_trials is not None:
                raise ValueError(
                    f"searcher.num_trials: {self.searcher.num_trials}; the adaptive searcher takes max_trials"
                )
            if self.searcher.max_trials is None:
                raise ValueError("searcher.max_trials: required for the adaptive searcher")
        elif self.searcher.num_trials is None:
            raise ValueError(f"searcher.num_trials: required for the {self.searcher.kind} searcher")
        if self.searcher.kind != "adaptive" and self.searcher.max_trials is not None:
            raise ValueError(
                f"searcher.max_trials: {self.searcher.max_trials} is for the adaptive searcher; "
                f"{self.searcher.kind} takes num_trials"
            )
        return self

    @property
    def num_trials(self) -> int:
        """Trials the sweep runs (adaptive: at most; it may stop sooner)."""
        if self.searcher.max_trials is not None:
            return self.searcher.max_trials
        if self.searcher.num_trials is not None:
            return self.searcher.num_trials
        return self.space.grid_size()


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    path = ".".join(str(p) for p in first["loc"] if p not in ("range", "per_optimizer"))  # union tags
    msg = first["msg"].removeprefix("Value error, ")
    inner = re.match(r"([A-Za-z_][\w.]*): (.*)", msg)
    if inner:  # a model validator naming a field below its own path
        path, msg = ".".join(p for p in (path, inner.group(1)) if p), inner.group(2)
    value = first.get("input")
    text = f"{path}: {msg}" if path else msg
    if path and not isinstance(value, dict):
        text += f" (got {short(value)})"
    more = len(err.errors()) - 1
    if more:
        text += f" [and {more} more error{'s' if more > 1 else ''}]"
    return " ".join(text.split())[:300]


def parse_spec(data: Any, source: str = "spec") -> SweepSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(f"{source}: {_one_line(err)}") from None


def check_cpus(spec: SweepSpec, cluster_cpus: float) -> None:
    """A trial that asks for more CPUs than the Ray cluster has would wait forever: refuse it."""
    if spec.resources.cpus_per_trial > cluster_cpus:
        raise SpecError(
            f"resources.cpus_per_trial: {spec.resources.cpus_per_trial:g} is more than the "
            f"{cluster_cpus:g} CPUs of the Ray cluster; no trial could start"
        )


MAX_SPEC_BYTES = 1_000_000
"""A spec is a short file; anything larger is refused before it is parsed."""
MAX_YAML_NODES = 100_000
"""Values in a spec once YAML aliases are expanded (a real spec has a few hundred): an alias
bomb is refused before it is built, in bounded memory and time."""


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses duplicate keys (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {short(key)}", key_node.start_mark)
            seen[key] = True
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root) -> int:
    """Nodes in the document once aliases are expanded, counted without expanding them."""
    sizes: dict[int, int] = {}
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = (
            [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else list(node.value)
            if isinstance(node, yaml.SequenceNode)
            else []
        )
        if children_done:
            sizes[id(node)] = min(1 + sum(sizes.get(id(c), 0) for c in children), 10 * MAX_YAML_NODES)
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes.get(id(root), 0)


def cut(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters, for one-line errors."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters."""
    return cut(repr(value), limit)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a YAML sweep spec; raise :class:`SpecError` on any problem."""
    path = Path(path)
    try:
        with path.open("rb") as f:  # bounded: a device or a pipe reports no size of its own
            raw = f.read(MAX_SPEC_BYTES + 1)
        if len(raw) > MAX_SPEC_BYTES:
            raise SpecError(f"{path}: more than {MAX_SPEC_BYTES} bytes; a spec is at most {MAX_SPEC_BYTES} bytes")
        text = raw.decode()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"{path}: cannot read spec: {cut(str(err), 120)}") from None
    try:
        loader = _SpecLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None and _expanded_size(node) > MAX_YAML_NODES:
                raise SpecError(
                    f"{path}: more than {MAX_YAML_NODES} values once YAML aliases are expanded "
                    "(an alias bomb?); write the values out"
                )
            data = None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise SpecError(f"{path}:{where} invalid YAML: {cut(str(problem), 120)}") from None
    return parse_spec(data, str(path))
