"""Ordered writes on one background thread, for the MLflow tracker (:mod:`services.tracking`)."""

from __future__ import annotations

import queue
import sys
import threading
import time


class Writer:
    """Runs MLflow writes in order on one background thread, so Tune's event loop (and with it
    every trial waiting on its report) never waits on the tracking store.

    Writes may stage data instead of writing it (see :meth:`services.tracking.MlflowTracker._write_result`);
    ``flush_staged`` writes what is staged once it is ``linger_s`` old. Each store write is a
    transaction and, in the driver, holds the GIL that Tune's loop needs, so fast-reporting
    trials get one ``log_batch`` per run per ``linger_s`` rather than one per report.
    """

    def __init__(self, flush_staged=None, linger_s: float = 0.0) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._flush_staged = flush_staged
        self.linger_s = linger_s
        self.failures = 0

    def submit(self, fn, *args) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="samplewise-mlflow-writer", daemon=True)
            self._thread.start()
        self._queue.put((fn, args))

    def flush(self) -> None:
        if self._thread is not None:
            self._queue.join()

    def _call(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as err:  # a lost write must not kill the sweep; say so once
            self.failures += 1
            if self.failures == 1:
                print(f"samplewise: warning: MLflow write failed ({type(err).__name__}: {err}); "
                      "the sweep goes on", file=sys.stderr)

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
