"""Runs a sweep on Ray Tune: searcher, scheduler, resources, tracking and progress."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional

import ray
from ray import tune
from ray.exceptions import RayActorError
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search_spaces.tied import grid_points, tied_space
from services import metrics as m
from services import paths
from services.errors import ResumeError, SweepInterrupted
from services.orchestration import rungs
from services.orchestration.adaptive import AdaptiveSearch
from services.orchestration.packs import PackSearch, sweep_packs
from services.orchestration.progress import INTERRUPTED, InterruptWatch, ProgressPrinter
from services.orchestration.schedulers import GroupedASHA
from services.spec import SweepSpec, check_cpus
from services.tracking import callback as tracking
from services.tracking import store
from services.training import workloads
from services.training.trainable import tune_trainable


@dataclass(frozen=True)
class SweepOutcome:
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    run_dir: str
    num_errors: int


def make_searcher(
    spec: SweepSpec, packs: Optional[list] = None, budget_samples: int = 0, pack_size: int = 1
) -> Searcher:
    """OptunaSearch over the tied define-by-run space; the sampler follows ``searcher.kind``.
    With ``packs`` (:func:`services.orchestration.packs.plan`), a :class:`PackSearch` that
    hands out each pack's members together. The adaptive searcher plans its rounds from what
    the sweep found (:class:`AdaptiveSearch`, packs of up to ``pack_size``); it needs the
    trials' ``budget_samples`` to tell a trial stopped early."""
    import optuna

    if spec.searcher.kind == "adaptive":
        return AdaptiveSearch(spec, budget_samples, pack_size)
    seed = spec.searcher.seed
    if spec.searcher.kind == "tpe":
        # multivariate: model c jointly with optimizer and batch size (SGD's and Adam's c differ
        # by orders of magnitude); constant_liar: concurrent trials (and a pack's members, asked
        # together) do not all ask for the same point.
        # stratified: each cell's c is its own parameter, seen in a tenth or less of the trials;
        # half the budget spread at random lays out every U-curve before TPE refines near the best
        startup = spec.num_trials // 2 if spec.searcher.stratify else max(10, spec.num_trials // 5)
        sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(
            seed=seed,
            multivariate=True,
            constant_liar=spec.searcher.max_concurrent > 1 or bool(packs),
            n_startup_trials=startup,
        )
    elif spec.searcher.kind == "random" or packs:  # a grid's packs fix every value they suggest
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.GridSampler(grid_points(spec.space), seed=seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    mode = "grid" if spec.searcher.kind == "grid" else "stratified" if spec.searcher.stratify else "free"
    space = tied_space(spec.space, seed, mode)
    if packs:
        return PackSearch(space=space, metric=m.OBJECTIVE, mode=m.MODE, sampler=sampler, packs=packs)
    return OptunaSearch(space=space, metric=m.OBJECTIVE, mode=m.MODE, sampler=sampler)


def asha_settings(spec: SweepSpec, budget_samples: int, interval_samples: int) -> dict:
    """ASHA on samples seen, so batch sizes are compared after equal numbers of samples,
    within each cell (see :mod:`services.orchestration.schedulers`)."""
    grace = spec.asha.grace_period_samples or interval_samples
    return {
        "time_attr": m.SAMPLES_SEEN,
        "max_t": budget_samples,
        "grace_period": min(grace, budget_samples),
        "reduction_factor": spec.asha.reduction_factor,
    }


def make_scheduler(spec: SweepSpec, budget_samples: int, interval_samples: int, packed: bool = False):
    """Tune's scheduler: :class:`GroupedASHA` when ASHA is on, FIFO otherwise, and FIFO for a
    sweep of packs, whose ASHA decides per member (:mod:`services.orchestration.rungs`)."""
    if not spec.asha.enabled or packed:
        return FIFOScheduler()
    return GroupedASHA(**asha_settings(spec, budget_samples, interval_samples))


def member_rungs(spec: SweepSpec, packed: bool, budget_samples: int, interval_samples: int):
    """(name, handle) of the per-member ASHA actor a sweep of packs with ASHA on asks, else
    (None, None). The driver holds the handle until the sweep ends."""
    if not (packed and spec.asha.enabled):
        return None, None
    return rungs.start(asha_settings(spec, budget_samples, interval_samples))


def trial_resources(spec: SweepSpec) -> dict[str, float]:
    """CPUs per trial, plus the GPU fraction when the cluster has GPUs; refused when no node of
    the cluster could ever hold a trial."""
    check_cpus(spec, ray.cluster_resources().get("CPU", 0))
    resources = {"cpu": spec.resources.cpus_per_trial}
    if ray.cluster_resources().get("GPU", 0) > 0 and spec.resources.gpus_per_trial > 0:
        resources["gpu"] = spec.resources.gpus_per_trial
    return resources


class KilledForMemory(RayActorError):
    """A trial's worker killed by Ray's memory monitor."""


def _memory_kills_fail_trials() -> None:
    """Make a trial whose worker Ray's memory monitor killed a failed trial, not a driver crash.

    Ray Tune 2.60's actor manager knows two errors from a trial's worker: the actor died, or its
    task raised. The memory monitor's ``OutOfMemoryError`` is neither, and Tune raises
    ``RuntimeError: Caught unexpected exception`` out of ``fit()`` (every resume again). It is
    the actor's death, so it is handed on as one: Tune retries the trial
    (``failures.max_retries``), then marks it FAILED with this reason, and the sweep goes on."""
    from ray.air.execution._internal import actor_manager
    from ray.exceptions import OutOfMemoryError

    manager = actor_manager.RayActorManager
    handle = manager._actor_task_failed
    if getattr(handle, "samplewise", False):
        return

    def handle_memory_kill(self, tracked_actor_task, exception):
        if isinstance(exception, OutOfMemoryError):
            reason = tracking.memory_kill_reason(f"OutOfMemoryError: {exception}")
            exception = KilledForMemory(error_msg=reason or "killed by Ray's memory monitor")
        return handle(self, tracked_actor_task, exception)

    setattr(handle_memory_kill, "samplewise", True)  # noqa: B010 - marks the wrapper as installed
    setattr(manager, "_actor_task_failed", handle_memory_kill)  # noqa: B010 - a private method, wrapped


_reaper = None


def shutdown_ray() -> None:
    """Stop the Ray this driver started (and its reaper, see :mod:`services.orchestration.reaper`)."""
    global _reaper
    ray.shutdown()
    if _reaper is not None:
        _reaper.stop()
        _reaper = None


class _Unhelpful(logging.Filter):
    """Moves Ray's log lines that tell a samplewise user nothing off the terminal and into the
    sweep's quiet log: the notice that the local Ray samplewise starts uses token authentication,
    and Optuna's complaint when a grid runs out."""

    NOISE = ("Token authentication is enabled for this Ray cluster", "`Study.stop` is supposed to be invoked")
    log: Path | None = None  # where the lines go (the latest sweep's); None: dropped

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if paths.verbose() or not any(noise in message for noise in self.NOISE):
            return True
        if _Unhelpful.log is not None:
            try:
                with _Unhelpful.log.open("a") as f:
                    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                    f.write(f"{stamp} {record.levelname} {record.name}: {record.getMessage()}\n")
            except OSError:
                pass
        return False


def quiet_log(name: str) -> Path:
    """The file that takes what :func:`quiet_ray` keeps off the terminal for sweep ``name``."""
    return paths.state_dir() / "logs" / f"{name}-ray.log"


def quiet_ray(name: str = "samplewise") -> None:
    """Keep Ray's and Tune's banners off the terminal: Tune's experiment box and its "View
    detailed results" and TensorBoard hints (its legacy reporter, silent at verbose 0), and the
    log lines :class:`_Unhelpful` names, which go to :func:`quiet_log`. The progress lines and
    the result table are samplewise's. ``--verbose`` (``SAMPLEWISE_VERBOSE=1``) keeps them all."""
    if paths.verbose():
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    log = quiet_log(name)
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        _Unhelpful.log = log
    except OSError:
        _Unhelpful.log = None
    for logger_name in (
        "ray._private.authentication.authentication_token_setup",
        "ray.tune.search.optuna.optuna_search",
    ):
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _Unhelpful) for f in logger.filters):
            logger.addFilter(_Unhelpful())


def init_ray(address: str | None, name: str = "samplewise") -> bool:
    """Connect to ``address`` or start a local Ray for sweep ``name``; returns whether this call started it."""
    quiet_ray(name)
    _memory_kills_fail_trials()
    if ray.is_initialized():
        return False
    if paths.ray_needs_token(address):
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # the head `make up` started requires it
    global _reaper
    if address is None:  # our own local Ray: stopped whole even if this driver is killed outright
        from services.orchestration.reaper import Reaper

        _reaper = Reaper()
    ray.init(
        # "local": a fresh Ray of our own, never a cluster some `ray start` left on this machine
        address=address or "local",
        include_dashboard=False if address is None else None,
        logging_level=logging.WARNING,
        configure_logging=True,
    )
    return True


def _snapshot_period(spec: SweepSpec) -> None:
    # read by Tune when the tuner starts; a value the user exported wins
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", f"{spec.failures.snapshot_every_s:g}")


def make_trainable(spec: SweepSpec, replay: dict | None = None, rungs: str | None = None):
    """The Tune trainable of ``spec``: the same for a new sweep and a resumed one (which also
    passes what the dead driver's finished trials reported, see :func:`tune_trainable`), with
    the name of the per-member ASHA actor when the sweep has one (:func:`member_rungs`)."""
    trainable = tune.with_parameters(tune_trainable, spec=spec, replay=replay, rungs=rungs)
    return tune.with_resources(trainable, trial_resources(spec))


def check_complete(results, spec: SweepSpec, spec_path: str, trials: Optional[int] = None) -> None:
    """Raise :class:`SweepInterrupted` unless every trial (``trials`` Tune trials, default the
    spec's; an adaptive search: every trial it proposed, as it ends when its rule says) ended:
    on Ctrl-C, Tune saves its state and ``fit()`` returns as if the sweep were done."""
    ended = results.num_terminated + results.num_errors
    total = len(results) if spec.searcher.kind == "adaptive" else trials or spec.num_trials
    if INTERRUPTED.is_set() or ended < total:
        # after an interrupt Tune counts the trials it stopped as ended: say how far only when that is known
        done = (
            ""
            if INTERRUPTED.is_set()
            else f" with {ended} of {total} {'Tune trials (packs)' if trials else 'trials'} done"
        )
        raise SweepInterrupted(
            f"sweep {spec.name} interrupted{done}; continue it with: make resume SWEEP={spec_path or '<spec>'}"
        )


@contextlib.contextmanager
def _submission(finish):
    """``finish("FINISHED")`` when the block completes, ``finish("KILLED")`` when the driver is
    interrupted or fails on the way (the trials' runs and the parent run are never left RUNNING)."""
    try:
        yield
    except BaseException:
        finish("KILLED")
        raise
    finish("FINISHED")


def run_sweep(
    spec: SweepSpec,
    *,
    spec_path: str = "",
    tracking_uri: str | None = None,
    ray_address: str | None = None,
    storage_path: str | None = None,
    stream: IO[str] | None = None,
    track: bool = True,
    parent_tags: dict[str, str] | None = None,
) -> SweepOutcome:
    """Run every trial of ``spec`` and track it in MLflow; returns where the results are.

    ``track=False`` runs the same sweep without MLflow (``make bench`` measures what tracking costs).
    ``parent_tags`` go on the parent run when it is created (a transfer check nests its run
    under the sweep's, see :mod:`services.orchestration.transfer`).
    """
    stream = stream or sys.stdout
    uri = tracking_uri or paths.tracking_uri()
    if track:
        store.check_store(uri)
    # a bad workload fails here, before anything starts; a user's loop (None): budget in samples
    facts = workloads.survey(spec.workload)
    n_train = facts.n_train
    budget_samples = spec.budget.total_samples(n_train or 0)
    packs, packing, size = sweep_packs(spec, facts)
    tune_trials = len(packs) if packs else spec.num_trials  # adaptive: at most; it says when it is done
    run_name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = storage_path or paths.storage_path()
    tracker = None
    if track:  # opens the store on its own thread while Ray and the trial actors start
        tracker = tracking.MlflowTracker(
            uri,
            spec,
            budget_samples,
            spec_path=spec_path,
            parent_tags={
                m.TAG_BUDGET_SAMPLES: str(budget_samples),
                m.TAG_RAY_RUN: f"{storage}/{run_name}",
                m.TAG_LOSS_UNIT: facts.loss_unit,
                **({m.TAG_N_TRAIN: str(n_train)} if n_train else {}),
                **(parent_tags or {}),
            },
        )
    started = False
    try:
        with _submission(tracker.finish if tracker else lambda status: None):
            started = init_ray(ray_address if ray_address is not None else paths.ray_address(), spec.name)
            stream.write(
                f"sweep {spec.name}: {'at most ' if spec.searcher.kind == 'adaptive' else ''}{spec.num_trials} "
                f"trials of {spec.workload.label}, "
                f"{spec.searcher.kind} search, ASHA {'on' if spec.asha.enabled else 'off'}, {packing}; "
                + (f"MLflow {uri}\n" if track else "MLflow off\n")
            )
            stream.flush()
            _snapshot_period(spec)
            INTERRUPTED.clear()
            interval = spec.budget.interval_samples(n_train)
            rungs_name, _rungs_actor = member_rungs(spec, size > 1, budget_samples, interval)
            tuner = tune.Tuner(
                make_trainable(spec, rungs=rungs_name),
                tune_config=tune.TuneConfig(
                    metric=m.OBJECTIVE,
                    mode=m.MODE,
                    search_alg=make_searcher(spec, packs, budget_samples, size),
                    scheduler=make_scheduler(spec, budget_samples, interval, packed=size > 1),
                    num_samples=tune_trials,
                    max_concurrent_trials=spec.searcher.max_concurrent,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=run_name,
                    storage_path=storage,
                    callbacks=[
                        c
                        for c in (tracker, ProgressPrinter(spec.num_trials, budget_samples, stream), InterruptWatch())
                        if c
                    ],
                    failure_config=tune.FailureConfig(max_failures=spec.failures.max_retries),
                    verbose=1 if paths.verbose() else 0,  # 1: Tune's own status tables too
                ),
            )
            results = tuner.fit()
            check_complete(results, spec, spec_path, len(packs) if packs else None)
    except Exception:
        if tracker is not None and tracker.error is not None:
            raise tracker.error from None  # the store never opened: that, not what it caused
        raise
    finally:
        if started:
            shutdown_ray()
    return SweepOutcome(
        (tracker.parent_run_id or "") if tracker else "",
        (tracker.experiment_id or "") if tracker else "",
        uri,
        f"{storage}/{run_name}",
        results.num_errors,
    )


def resume_sweep(
    spec: SweepSpec,
    *,
    spec_path: str = "",
    tracking_uri: str | None = None,
    ray_address: str | None = None,
    stream: IO[str] | None = None,
) -> SweepOutcome:
    """Continue the newest submission of ``spec`` whose driver died, with ``Tuner.restore``.

    Finished trials are kept, unfinished ones continue from their last checkpoint, and the
    searcher goes on to the spec's trial count. The same MLflow parent run is reused and each
    trial keeps its one child run (the tracker adopts the runs the dead driver created).
    """
    from services.errors import ExportError
    from services.results.records import find_parent_run

    stream = stream or sys.stdout
    uri = tracking_uri or paths.tracking_uri()
    store.check_store(uri, create=False)
    client = store.client_for(uri)
    try:
        parent = find_parent_run(client, spec.name)
    except ExportError as err:
        raise ResumeError(str(err).replace("run the sweep first", "nothing to resume")) from None
    path = parent.data.tags.get(m.TAG_RAY_RUN)
    if parent.info.status == "FINISHED":
        raise ResumeError(
            f"sweep {spec.name!r}: its newest submission ({parent.info.run_id}) finished; nothing to resume"
        )
    if not path or not tune.Tuner.can_restore(path):
        raise ResumeError(f"sweep {spec.name!r}: no Ray Tune state to restore at {path}")
    started = init_ray(ray_address if ray_address is not None else paths.ray_address(), spec.name)
    try:
        stream.write(f"resuming sweep {spec.name} from {path} (MLflow parent run {parent.info.run_id})\n")
        stream.flush()
        replay = store.recorded_results(client, parent.info.experiment_id, parent.info.run_id)
        client.update_run(parent.info.run_id, status="RUNNING")
        _snapshot_period(spec)
        INTERRUPTED.clear()
        with _submission(lambda status: client.set_terminated(parent.info.run_id, status=status)):
            facts = workloads.survey(spec.workload)
            packs, _, size = sweep_packs(spec, facts)
            budget_samples = spec.budget.total_samples(facts.n_train or 0)
            interval = spec.budget.interval_samples(facts.n_train)
            rungs_name, _rungs_actor = member_rungs(spec, size > 1, budget_samples, interval)
            tuner = tune.Tuner.restore(
                path, trainable=make_trainable(spec, replay, rungs_name), resume_unfinished=True, resume_errored=True
            )
            results = tuner.fit()
            check_complete(results, spec, spec_path, len(packs) if packs else None)
        return SweepOutcome(parent.info.run_id, parent.info.experiment_id, uri, path, results.num_errors)
    finally:
        if started:
            shutdown_ray()
