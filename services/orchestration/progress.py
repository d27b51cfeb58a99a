"""The Tune driver's own callbacks besides tracking: a progress line per finished
configuration, and noting an interrupt of ``fit()``."""

from __future__ import annotations

import signal
import sys
import threading
from typing import IO

from ray import tune

from search_spaces.scaling import TrialHParams
from services import metrics as m
from services.tracking import callback as tracking


class ProgressPrinter(tune.Callback):
    """One line per finished configuration (a pack's members each get their own, as each
    ends), so a user sees the sweep move."""

    def __init__(self, total: int, budget_samples: int, stream: IO[str]):
        self.total, self.budget_samples, self.stream, self.done = total, budget_samples, stream, 0
        self._printed: set[str] = set()
        self._last: dict[str, dict] = {}  # a pack member -> its last result

    def __getstate__(self):  # Tune pickles its callbacks with the experiment; streams do not pickle
        return {**self.__dict__, "stream": None}

    def _line(self, trials, trial, member: str, config: dict, r: dict, outcome: str) -> None:
        if member in self._printed:
            return
        self._printed.add(member)
        # counted from Tune's own trial states, so a resumed sweep counts on from where it was
        self.done = sum(
            len(ids) if t is not trial and t.status in ("TERMINATED", "ERROR") else len(self._printed.intersection(ids))
            for t in trials
            for ids in [[i for i, _ in m.tracked(t.trial_id, t.config)]]
        )
        hp = TrialHParams.from_config(config)
        loss, acc = r.get(m.VAL_LOSS), r.get(m.VAL_ACCURACY)
        metrics_text = (f"val {loss:.4f}" + (f"  acc {acc:.3f}" if acc is not None else "")) if loss is not None else ""
        stream = self.stream or sys.stdout
        stream.write(
            f"[{self.done:>3}/{self.total}] {hp.optimizer:<8} {hp.reduction:<4} "
            f"B={hp.batch_size:<5} c={hp.lr_per_sample:.2e} lr={hp.lr:.2e}  "
            f"{metrics_text}  {outcome}\n"
        )
        stream.flush()

    def _outcome(self, r: dict) -> str:
        samples = int(r.get(m.SAMPLES_SEEN, 0))  # a float when replayed from MLflow
        if r.get(m.DIVERGED):
            return "diverged"
        if m.stopped_early(r, self.budget_samples):
            return f"stopped by ASHA at {samples} samples"
        return f"done ({samples} samples)"

    def on_trial_result(self, iteration, trials, trial, result, **info):
        members = dict(m.tracked(trial.trial_id, trial.config))
        for j, r in (result.get(m.MEMBERS) or {}).items():
            member = m.member_id(trial.trial_id, int(j))
            self._last[member] = r
            if m.ended(r, self.budget_samples):  # it left the pack
                self._line(trials, trial, member, members[member], r, self._outcome(r))

    def on_trial_complete(self, iteration, trials, trial, **info):
        for member, config in m.tracked(trial.trial_id, trial.config):
            r = (trial.last_result or {}) if member == trial.trial_id else self._last.pop(member, {})
            self._line(trials, trial, member, config, r, self._outcome(r))

    def on_trial_error(self, iteration, trials, trial, **info):
        for member, config in m.tracked(trial.trial_id, trial.config):
            r = (trial.last_result or {}) if member == trial.trial_id else self._last.pop(member, {})
            self._line(trials, trial, member, config, r, f"FAILED: {tracking.error_summary(trial)}")


INTERRUPTED = threading.Event()
"""Set when Ctrl-C (or SIGTERM, which the CLI hands on as one) reached Tune during ``fit()``."""


class InterruptWatch(tune.Callback):
    """Notes an interrupt of ``fit()``. Tune then saves its state, stops the running trials and
    marks them terminated, as it marks finished ones: when every trial of the sweep was
    already created (a sweep of few trials, or of packs), the counts alone cannot tell an
    interrupted sweep from a finished one."""

    def on_step_begin(self, iteration, trials, **info):
        previous = signal.getsignal(signal.SIGINT)  # Tune's own, installed when fit() started
        if getattr(previous, "samplewise", False) or threading.current_thread() is not threading.main_thread():
            return

        def noted(sig, frame):
            INTERRUPTED.set()
            if callable(previous):
                previous(sig, frame)

        setattr(noted, "samplewise", True)  # noqa: B010 - marks the wrapper as installed
        signal.signal(signal.SIGINT, noted)
