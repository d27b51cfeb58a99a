"""The Ray Tune side of a trial: the function trainable, its checkpoints, and the time limit.

:func:`tune_trainable` runs one trial of a sweep in a Tune worker: samplewise's own loop
(:func:`services.training.train.train_workload`) or the user's ``train(ctx)``
(:mod:`services.training.user_loop`). Both get the same :class:`TrialContext`, which reports
to Tune and checkpoints the state that a retry or ``make resume`` continues from.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import tempfile
import threading
import time
from typing import Callable, Optional, Union

import torch

from search_spaces.scaling import TrialHParams, config_key
from services import metrics as m
from services.training.train import budget_of, context_for, train_workload

log = logging.getLogger(__name__)

STATE_FILE = "trial_state.pt"
TIMED_OUT_FILE = "samplewise_timed_out"
"""Left in a trial's directory when it timed out: a retry of that trial fails at once."""
TIMEOUT_GRACE_S = 5.0
"""How long a timed-out trial's training thread has to stop before its worker process ends."""


class TrialTimeout(RuntimeError):
    """A trial ran past ``failures.trial_timeout_s``."""


@contextlib.contextmanager
def _time_limit(timeout_s: Optional[float], trial_dir: str):
    """Fail the trial with :class:`TrialTimeout` ("timed out after N s") once it has run
    ``timeout_s`` seconds in this attempt. A watchdog thread raises the error in the training
    thread; training stuck in C code (a sleep, a hung collective) does not see it, so after
    ``TIMEOUT_GRACE_S`` the worker process exits. The marker file makes Tune's retries of a
    timed-out trial fail at once instead of hanging again."""
    if not timeout_s:
        yield
        return
    message = f"timed out after {timeout_s:g} s"
    marker = os.path.join(trial_dir, TIMED_OUT_FILE)
    if os.path.exists(marker):
        raise TrialTimeout(message)
    done, target = threading.Event(), threading.get_ident()

    def watchdog() -> None:
        if done.wait(timeout_s):
            return
        with open(marker, "w") as f:
            f.write(message)
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), ctypes.py_object(TrialTimeout))
        if done.wait(TIMEOUT_GRACE_S):
            return
        log.error("trial %s and did not stop; ending its worker process", message)
        os._exit(1)

    threading.Thread(target=watchdog, name="samplewise-trial-timeout", daemon=True).start()
    try:
        yield
    except TrialTimeout:
        raise TrialTimeout(message) from None
    finally:
        done.set()


def tune_trainable(config: dict, spec, replay: Optional[dict] = None, rungs: Optional[str] = None) -> None:
    """The Ray Tune function trainable: one trial of ``spec`` with hyperparameters ``config``.

    ``replay`` (a resumed sweep) maps configurations that a dead driver already trained to the
    end to what they reported: such a trial reports that again, for the searcher and the
    scheduler, instead of training. A trial continued from a checkpoint first reports again
    what it reported before the checkpoint, so the tracker can write whatever the dead driver
    had not (it skips what MLflow already holds).

    ``rungs`` names the sweep's per-member ASHA actor (:mod:`services.orchestration.rungs`)
    when the trial is a pack and ASHA is on; it hears what a replayed pack reported, too.
    """
    from ray import tune

    recorded = _recorded(config, replay or {})
    if recorded:
        if rungs and m.PACK in config:
            _member_rungs(config, spec, rungs, None).replay(recorded, finished=True)
        for result in recorded:
            tune.report(result)
        return
    timeout_s = spec.failures.trial_timeout_s
    with _time_limit(timeout_s, tune.get_context().get_trial_dir()):
        _train(config, spec, rungs)


def _member_rungs(config: dict, spec, name: str, n_train: Optional[int]):
    """The pack's view of the sweep's per-member ASHA (:class:`services.training.rungs.MemberRungs`)."""
    from ray import tune

    from services.training.rungs import MemberRungs

    ids, configs = zip(*m.tracked(tune.get_context().get_trial_id(), config))
    if n_train is None and spec.budget.samples is None:
        from services.training import workloads

        n_train = workloads.survey(spec.workload).n_train
    return MemberRungs.connect(name, ids, configs, budget_of(spec, n_train).total_samples)


def _recorded(config: dict, replay: dict) -> Optional[list[dict]]:
    """What a dead driver's finished trial (or every member of a pack) reported, or None."""
    histories: list[list[dict]] = []
    for member in m.members_of(config):
        history = replay.get(config_key(member))
        if not history:
            return None
        histories.append(history)
    if m.PACK not in config:
        return histories[0]
    return [
        pack_result({str(j): h[i] for j, h in enumerate(histories) if i < len(h)})
        for i in range(max(len(h) for h in histories))
    ]


def pack_result(members: dict[str, dict]) -> dict:
    """One Tune result of a pack: the members that reported at this point (``metrics.MEMBERS``),
    with the best objective and the most samples among them (every result must carry both)."""
    return {
        m.MEMBERS: members,
        m.OBJECTIVE: min(r[m.OBJECTIVE] for r in members.values()),
        m.SAMPLES_SEEN: max(r[m.SAMPLES_SEEN] for r in members.values()),
        m.DIVERGED: float(all(r.get(m.DIVERGED) for r in members.values())),
    }


def _train(config: dict, spec, rungs: Optional[str] = None) -> None:
    import ray
    from ray import tune

    threads = max(1, int(spec.resources.cpus_per_trial))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    checkpoint = tune.get_checkpoint()
    saved: Optional[dict] = None
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            # tensors and plain values only: a checkpoint on shared storage cannot run code when loaded
            saved = torch.load(os.path.join(path, STATE_FILE), map_location=device, weights_only=True)
    reported: list[dict] = list((saved or {}).pop("reported", []))
    for result in reported:
        tune.report(result)

    node_id = ray.get_runtime_context().get_node_id()
    last_checkpoint = time.monotonic()

    def report(metrics: dict, state: Union[dict, Callable[[], dict]]) -> None:
        """Report ``metrics`` to Tune, with a checkpoint of ``state`` when one is due: a resumed or
        retried trial continues from its last checkpoint. ``state`` may be a function that builds
        it (called only when a checkpoint is due; an empty state is not checkpointed)."""
        nonlocal last_checkpoint
        metrics = {**metrics, m.NODE_ID: node_id}
        reported.append(metrics)
        due = time.monotonic() - last_checkpoint >= spec.failures.checkpoint_every_s
        values = (state() if callable(state) else state) if due else None
        if not values:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as path:
            torch.save({**values, "reported": reported}, os.path.join(path, STATE_FILE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(path))
        last_checkpoint = time.monotonic()

    if m.PACK in config:
        _train_pack(config, spec, device, saved, report, rungs, reported)
        return
    hp = TrialHParams.from_config(config)
    if spec.workload.train is not None:  # the user's own loop
        from services.training.user_loop import resolve_loop

        ctx = context_for(hp, budget_of(spec, None), report, None, saved, device, spec.workload.params)
        resolve_loop(spec.workload)(ctx)
        return
    from services.training import workloads

    workload = workloads.load(spec.workload, device)
    budget = budget_of(spec, workload.n_train)
    ctx = context_for(hp, budget, report, workload.n_train, saved, device, spec.workload.params)
    train_workload(ctx, workload, budget)


def _train_pack(
    config: dict, spec, device: str, saved: Optional[dict], report, rungs: Optional[str], reported: list[dict]
) -> None:
    """A pack's trial: its members trained as one vectorized model
    (:func:`services.training.pack.train_members`); one Tune result per report point, holding
    what each member reported there, and a checkpoint of the whole pack. With ``rungs``, ASHA
    decides per member: a member it stops leaves the pack (its last result says so)."""
    from services.training import workloads
    from services.training.pack import train_members

    members = [TrialHParams.from_config(c) for c in config[m.PACK]]
    workload = workloads.load(spec.workload, device)
    asha = _member_rungs(config, spec, rungs, workload.n_train) if rungs else None
    if asha is not None:
        asha.replay(reported)  # what the pack reported before its checkpoint
    pending: dict[str, dict] = {}

    def member_report(member: int, metrics: dict) -> bool:
        stop = asha is not None and asha.stops(member, metrics)
        pending[str(member)] = {**metrics, m.STOPPED: 1.0} if stop else metrics
        return stop

    def point(samples: int, state) -> None:
        result = pack_result(dict(pending))
        pending.clear()
        report(result, lambda: {"pack": values} if (values := state()) else {})

    restored = (saved or {}).get("pack")
    train_members(
        workload, members, budget_of(spec, workload.n_train), member_report, device, point=point, restored=restored
    )
