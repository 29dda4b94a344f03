"""Run one long call (an ensemble prediction) on a worker thread that a UI can poll and cancel.

Why a thread and a poll, not callbacks into the UI: Qt (and MRML) objects may only be touched
from the main thread. The worker only computes; it stores its progress and its result here, and
the main thread reads them (Slicer: a QTimer; console and tests: `wait`). torch releases the GIL
inside its kernels, so the GUI stays responsive while the networks run.

Cancel is cooperative: `cancel()` sets the `CancelToken` the inference loop checks between
batches, so the work stops within one batch and the job ends with `Cancelled`.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from CardiacEnsembleLib.core.progress import CancelToken, Cancelled, Progress


@dataclass(frozen=True)
class JobStatus:
    """A snapshot the main thread can show: finished or not, and the latest progress report."""

    done: bool
    completed: int  # units of work done (e.g. slices x members)
    total: int
    message: str
    seconds: float  # since the job started

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, self.completed / self.total)


class BackgroundJob:
    """`work(progress, cancel)` on a daemon thread; its result or exception kept for `result()`.

    `work` must accept the package's `progress(done, total, message)` callback and a
    `CancelToken`, and must not touch Qt or MRML objects.
    """

    def __init__(self, work: Callable[[Progress, CancelToken], Any], name: str = "job") -> None:
        self.name = name
        self.cancel_token = CancelToken()
        self._work = work
        self._lock = threading.Lock()
        self._progress = (0, 0, "starting")
        self._result: Any = None
        self._error: Optional[BaseException] = None
        self._finished = threading.Event()
        self._started_at = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name=f"CardiacEnsemble-{name}",
                                        daemon=True)
        self._thread.start()

    def _report(self, done: int, total: int, message: str = "") -> None:
        with self._lock:
            self._progress = (int(done), int(total), str(message))

    def _run(self) -> None:
        try:
            self._result = self._work(self._report, self.cancel_token)
        except BaseException as error:  # handed to the main thread by result(), never lost
            self._error = error
        finally:
            self._finished.set()

    def cancel(self) -> None:
        """Ask the work to stop at its next check; `result()` then raises `Cancelled`."""
        self.cancel_token.cancel()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def status(self) -> JobStatus:
        with self._lock:
            completed, total, message = self._progress
        return JobStatus(self.done, completed, total, message,
                         time.perf_counter() - self._started_at)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the work ends (True) or `timeout` seconds pass (False)."""
        return self._finished.wait(timeout)

    def result(self) -> Any:
        """The work's return value; re-raises its exception (`Cancelled` after a cancel)."""
        if not self.done:
            raise RuntimeError(f"{self.name}: still running; wait() or poll status() first")
        if self._error is not None:
            raise self._error
        if self.cancel_token.cancelled:
            # cancelled after the last check: the result is complete but was not wanted
            raise Cancelled("cancelled by the user")
        return self._result
