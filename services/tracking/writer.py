"""Ordered writes on one background thread, for the MLflow tracker (:mod:`services.tracking.callback`)."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time

PERMANENT = (
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST",
    "BAD_REQUEST",
    "INVALID_STATE",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
)
"""MLflow error codes that trying again cannot fix; anything else (a refused connection, a
timeout, a 5xx, a locked SQLite file) is retried."""


def retryable(err: Exception) -> bool:
    return getattr(err, "error_code", None) not in PERMANENT


log = logging.getLogger(__name__)


class Writer:
    """Runs MLflow writes in order on one background thread, so Tune's event loop (and with it
    every trial waiting on its report) never waits on the tracking store.

    Writes may stage data instead of writing it (see :meth:`services.tracking.runs.SweepRuns.result`);
    ``flush_staged`` writes what is staged once it is ``linger_s`` old. Each store write is a
    transaction and, in the driver, holds the GIL that Tune's loop needs, so fast-reporting
    trials get one ``log_batch`` per run per ``linger_s`` rather than one per report.
    """

    RETRY_S = float(os.environ.get("SAMPLEWISE_TRACKING_RETRY_S", 1800))
    """How long a write is retried while the tracking store does not answer (a server restarting,
    a network outage) before it, and every write after it, is given up as lost."""
    BACKOFF_S = (1.0, 30.0)
    """First and longest wait between two tries of a write."""

    def __init__(self, flush_staged=None, linger_s: float = 0.0, describe: str = "MLflow") -> None:
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._flush_staged = flush_staged
        self.linger_s = linger_s
        self.describe = describe
        self.failures = 0
        self.lost = 0
        """Writes given up: the store did not answer for ``RETRY_S``, or refused the write."""
        self.gave_up = False

    def submit(self, fn, *args) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="samplewise-mlflow-writer", daemon=True)
            self._thread.start()
        self._queue.put((fn, args))

    def flush(self) -> None:
        if self._thread is not None:
            self._queue.join()

    def _call(self, fn, *args) -> None:
        """Run one write; while the store does not answer, retry it (the writes queued behind it
        wait, in order) for up to ``RETRY_S``, then give up on it and on every later write."""
        if self.gave_up:
            self.lost += 1
            return
        wait, deadline = self.BACKOFF_S[0], time.monotonic() + self.RETRY_S
        while True:
            try:
                fn(*args)
                if self.failures:
                    log.info("%s answers again; the writes held back are written, the sweep goes on", self.describe)
                    self.failures = 0
                return
            except Exception as err:  # noqa: BLE001 - a write must never kill the sweep
                summary = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}"
                if not retryable(err):
                    self.lost += 1
                    log.warning("%s refused a write (%s); the sweep goes on", self.describe, summary)
                    return
                self.failures += 1
                if self.failures == 1:
                    log.warning(
                        "%s does not answer (%s); holding writes and retrying for up to %g s, the sweep goes on",
                        self.describe,
                        summary,
                        self.RETRY_S,
                    )
                if time.monotonic() + wait > deadline:
                    self.gave_up = True
                    self.lost += 1
                    log.error("%s did not answer for %g s; giving up its writes", self.describe, self.RETRY_S)
                    return
                time.sleep(wait)
                wait = min(2 * wait, self.BACKOFF_S[1])

    def _run(self) -> None:
        deadline = None  # when what is staged must be written
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if deadline is not None and (item is None or time.monotonic() >= deadline):
                self._call(self._flush_staged)
                deadline = None
            if item is None:
                continue
            fn, args = item
            self._call(fn, *args)
            self._queue.task_done()
            if deadline is None and self._flush_staged is not None:
                deadline = time.monotonic() + self.linger_s
