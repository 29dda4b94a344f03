"""The client of the inference worker process (`CardiacEnsembleLib.inference.server`).

Why a process and not a thread: inside Slicer, PythonQt keeps the GIL on the main thread while
Qt's event loop idles, so a Python worker thread only moves when a Python slot runs, and a
segmentation crawls. The worker process runs at full speed whatever the main thread does; Cancel
kills it (its whole process group: `PythonSlicer` is a launcher with the real Python as its
child) within a second; a crash or an out-of-memory kill gives one `WorkerError` and touches no
scene; it ends with the module, freeing GPU memory. The next request starts a new one.

No thread on this side: the worker's stdout is a non-blocking pipe, and `WorkerJob.poll()` reads
what has arrived (a QTimer in the panel, on the main thread), never blocking. `WorkerJob.wait()`
blocks (console, tests, batch) in `select`, which releases the GIL while it waits. No MRML, Qt or
torch is imported here.
"""
from __future__ import annotations

import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from CardiacEnsembleLib.core.case import Case, Geometry
from CardiacEnsembleLib.core.progress import Cancelled
from CardiacEnsembleLib.inference.server import (INPUT, MODULE, EnsembleRequest,
                                                 read_cine_result, read_result,
                                                 write_cine_request, write_request)

__all__ = ["EnsembleRequest", "InferenceWorker", "WorkerError", "WorkerJob",
           "WorkerRequestError", "WorkerStatus"]

#: The folder that holds CardiacEnsembleLib: the worker's PYTHONPATH and working folder.
LIB_PARENT = str(Path(__file__).resolve().parents[2])
#: Seconds between SIGTERM and SIGKILL when the worker is stopped.
KILL_GRACE = 0.3
_LOG_TAIL_LINES = 8


class WorkerError(RuntimeError):
    """The worker process failed or stopped unexpectedly; the scene was not changed."""


class WorkerRequestError(ValueError):
    """The worker refused a request (unknown member, missing models, bad device): the
    message says what to fix. The worker stays up."""


@dataclass(frozen=True)
class WorkerStatus:
    """What the panel shows: the job's state and its latest progress report.

    state: starting, loading, running, done, failed or cancelled (the last three: finished).
    """

    state: str
    completed: int  # units of work done (slices x members)
    total: int
    message: str
    seconds: float  # since the job was submitted

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, self.completed / self.total)


def default_python() -> str:
    """Slicer's own Python. Inside the application `sys.executable` is Slicer itself, and the
    launcher puts `PythonSlicer` on PATH: found with `shutil.which`, as Slicer's own
    `slicer.util._executePythonModule` (5.10) does. Elsewhere (PythonSlicer, a venv, CI) it is
    `sys.executable`."""
    try:
        from slicer import app  # noqa: F401  (importable only inside the application)
    except ImportError:
        return sys.executable
    found = shutil.which("PythonSlicer")
    if not found:
        raise WorkerError("PythonSlicer, Slicer's Python, is not on PATH: cannot start the "
                          "inference worker")
    return found


def _parse_line(line: str) -> dict:
    """One stdout line of the worker as an event (anything else is reported as output)."""
    try:
        event = json.loads(line)
    except ValueError:  # not a protocol line: nothing else should reach stdout
        event = None
    return event if isinstance(event, dict) else {"event": "output", "message": line.rstrip()}


class _EventPipe:
    """The worker's stdout as events, read without a thread: the pipe is non-blocking, and
    `get_nowait` / `get` read what has arrived on the caller's thread (the panel's QTimer, or
    the console's `wait`). Why no reader thread: inside Slicer, PythonQt holds the GIL on the
    main thread, so a Python thread only moves when the main thread runs Python anyway."""

    def __init__(self, stream) -> None:
        self._fd = stream.fileno()
        self._stream = stream  # kept open until the end is read
        os.set_blocking(self._fd, False)
        self._partial = b""
        self._events: list[dict] = []
        self._ended = False

    def _read_available(self) -> None:
        while not self._ended:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            except OSError:  # the pipe broke with the process
                chunk = b""
            if not chunk:
                if self._partial:
                    self._events.append(_parse_line(self._partial.decode("utf-8", "replace")))
                self._events.append({"event": "exit"})
                self._ended = True
                self._stream.close()
                return
            *lines, self._partial = (self._partial + chunk).split(b"\n")
            self._events += [_parse_line(line.decode("utf-8", "replace")) for line in lines
                             if line.strip()]

    def get_nowait(self) -> dict:
        self._read_available()
        if not self._events:
            raise queue.Empty
        return self._events.pop(0)

    def get(self, timeout: float) -> dict:
        """The next event, waiting at most `timeout` seconds (the GIL released meanwhile)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                if os.name == "nt":  # select() takes sockets only there
                    time.sleep(min(left, 0.02))
                else:
                    select.select([self._fd], [], [], left)


class _Process:
    """One worker process, its stdout events and its log file."""

    def __init__(self, python: str, threads: int, folder: Path, env: Optional[dict]) -> None:
        self.log_path = folder / f"worker-{time.strftime('%H%M%S')}-{id(self):x}.log"
        environment = dict(os.environ if env is None else env)
        environment["PYTHONPATH"] = os.pathsep.join(
            p for p in (LIB_PARENT, environment.get("PYTHONPATH", "")) if p)
        command = [python, "-m", MODULE] + (["--threads", str(threads)] if threads else [])
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                cwd=LIB_PARENT, env=environment, bufsize=0, **_new_process_group())
        self.events = _EventPipe(self.popen.stdout)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, folder: Path) -> None:
        self.popen.stdin.write((json.dumps({"request": str(folder)}) + "\n").encode("utf-8"))
        self.popen.stdin.flush()

    def kill(self) -> None:
        """End the worker and its children: SIGTERM to its group, SIGKILL after a grace."""
        if self.alive:
            _signal_group(self.popen, signal.SIGTERM)
            try:
                self.popen.wait(KILL_GRACE)
            except subprocess.TimeoutExpired:
                _signal_group(self.popen, getattr(signal, "SIGKILL", signal.SIGTERM))
                self.popen.wait()
        self.close()

    def stop(self) -> None:
        """Ask the idle worker to end (stdin closed), killing it if it does not."""
        try:
            self.popen.stdin.close()
            self.popen.wait(2.0)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def close(self) -> None:
        """Close our end of stdin; stdout is closed when its end is read (`_EventPipe`)."""
        try:
            self.popen.stdin.close()
        except OSError:  # the pipe broke with the process: nothing left to flush
            pass

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-_LOG_TAIL_LINES:])


def _new_process_group() -> dict:
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP
                | getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {"start_new_session": True}


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    if os.name == "nt":  # the launcher's child too: taskkill walks the tree
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(popen.pid)],
                       capture_output=True, check=False)
        return
    try:
        os.killpg(popen.pid, sig)  # start_new_session: the group id is the worker's pid
    except ProcessLookupError:
        pass


def _exit_message(code: Optional[int]) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = (" (out of memory, or killed by another program)" if name == "SIGKILL"
               else "")
        return f"exit code {code}, {name}{why}"
    return f"exit code {code}"


class InferenceWorker:
    """A worker process that keeps the ensemble loaded; one job at a time.

    `python` defaults to Slicer's own Python (`default_python`); `threads` sets torch's CPU
    threads in the worker (0: torch's default). The process starts with the first request and
    again after a cancel, a crash or a change of device (a new process frees GPU memory).
    """

    def __init__(self, python: Optional[str] = None, *, threads: int = 0,
                 env: Optional[dict] = None) -> None:
        self.python = python or default_python()
        self.threads = threads
        self.env = env
        self._folder = Path(tempfile.mkdtemp(prefix="CardiacEnsemble-worker-"))
        self._process: Optional[_Process] = None
        self._live: list[_Process] = []  # what the finalizer ends if close() is never called
        self._finalizer = weakref.finalize(self, _release, self._live, self._folder)
        self._device: Optional[str] = None
        self._job: Optional[WorkerJob] = None
        self._count = 0

    @property
    def pid(self) -> Optional[int]:
        """The worker's process id while it runs, else None."""
        return self._process.popen.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.alive

    def submit(self, case: Case, request: EnsembleRequest) -> "WorkerJob":
        """Send `case` to the worker (started, or restarted for another device, as needed);
        the job's `result()` is a `Prediction`."""
        return self._submit(request, f"segment {case.name}",
                            lambda folder: write_request(folder, case, request),
                            lambda folder: read_result(folder, case.geometry))

    def submit_cine(self, cine, geometry: Geometry, request: EnsembleRequest, *,
                    name: str = "cine") -> "WorkerJob":
        """Send every frame of a (T, Z, Y, X) cine to the worker; the job's `result()` is an
        `inference.cine.CineSegmentation` (labels per frame and the volume-time curve)."""
        return self._submit(request, f"segment {name}",
                            lambda folder: write_cine_request(folder, cine, geometry, name,
                                                              request),
                            lambda folder: read_cine_result(folder, geometry))

    def _submit(self, request: EnsembleRequest, name: str, write: Callable[[Path], Path],
                read: Callable[[Path], tuple]) -> "WorkerJob":
        if self._job is not None and not self._job.poll().finished:
            raise RuntimeError("a segmentation is already running; wait for it or cancel it")
        if self.running and request.device != self._device:
            self.stop()
        if not self.running:
            self._discard_process()
            self._process = _Process(self.python, self.threads, self._folder, self.env)
            self._live.append(self._process)
            self._device = request.device
        self._count += 1
        folder = write(self._folder / f"request-{self._count:04d}")
        self._job = WorkerJob(self, self._process, folder, name, read)
        try:
            self._process.send(folder)
        except OSError:  # it died before reading the request: the job reports how
            pass
        return self._job

    def stop(self) -> None:
        """End the worker (module cleanup, device change); a running job becomes cancelled."""
        if self._job is not None:
            self._job.cancel()
        if self._process is not None:
            self._process.stop()
            self._forget(self._process)

    def close(self) -> None:
        """Stop, and remove the temporary folder (also done when the client is collected)."""
        self.stop()
        self._finalizer()

    def _discard_process(self) -> None:
        if self._process is not None:
            self._kill(self._process)

    def _kill(self, process: "_Process") -> None:
        process.kill()
        self._forget(process)

    def _forget(self, process: "_Process") -> None:
        if process in self._live:
            self._live.remove(process)
        if self._process is process:
            self._process = None


def _release(processes: list, folder: Path) -> None:
    """End the worker processes a client left running, and remove its folder."""
    for process in list(processes):
        process.kill()
    processes.clear()
    shutil.rmtree(folder, ignore_errors=True)


class WorkerJob:
    """One request to the worker: `poll()` (never blocks), `wait()`, `cancel()`, `result()`.

    `reports` keeps every progress report in order; `info` is what the worker said about
    itself with the result (e.g. `ensemble_reused`, `loads`, `load_seconds`).
    """

    def __init__(self, worker: InferenceWorker, process: _Process, folder: Path, name: str,
                 read: Callable[[Path], tuple]) -> None:
        self._worker, self._process, self.folder, self.name = worker, process, folder, name
        self._read = read  # result folder -> (the result, the worker's info)
        self.reports: list[tuple[int, int, str]] = []
        self.info: dict = {}
        self._started = time.perf_counter()
        self._state, self._progress = "starting", (0, 0, "starting the inference worker")
        self._error: Optional[BaseException] = None
        self._result_folder: Optional[Path] = None
        self._result = None

    # --- status --------------------------------------------------------------------------

    def poll(self) -> WorkerStatus:
        """The latest status, after handling every event that has arrived (non-blocking)."""
        while not self._finished:
            try:
                event = self._process.events.get_nowait()
            except queue.Empty:
                break
            self._handle(event)
        return self._status()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the job ends (True) or `timeout` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._finished:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            try:
                event = self._process.events.get(timeout=0.5 if left is None else min(left, 0.5))
            except queue.Empty:
                continue
            self._handle(event)
        return True

    @property
    def done(self) -> bool:
        return self.poll().finished

    @property
    def _finished(self) -> bool:
        return self._state in ("done", "failed", "cancelled")

    def _status(self) -> WorkerStatus:
        completed, total, message = self._progress
        return WorkerStatus(self._state, completed, total, message,
                            time.perf_counter() - self._started)

    def _handle(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "loading":
            self._state, self._progress = "loading", (0, 0, str(event.get("message", "")))
        elif kind == "progress":
            report = (int(event["done"]), int(event["total"]), str(event.get("message", "")))
            self.reports.append(report)
            self._state, self._progress = "running", report
        elif kind == "done":
            self._result_folder = Path(event["result"])
            self._state = "done"
        elif kind == "error":
            error = WorkerRequestError if event.get("kind") == INPUT else WorkerError
            prefix = "" if error is WorkerRequestError else "the inference worker failed: "
            self._fail(error(prefix + str(event.get("message", "unknown error"))))
        elif kind == "exit":
            self._crashed()

    def _crashed(self) -> None:
        try:
            code = self._process.popen.wait(5.0)
        except subprocess.TimeoutExpired:
            code = None
        tail = self._process.log_tail()
        self._worker._kill(self._process)
        self._fail(WorkerError(
            f"the inference worker stopped unexpectedly ({_exit_message(code)}); the scene "
            f"was not changed, and the next segmentation starts a new worker. Its log: "
            f"{self._process.log_path}" + (f"\n{tail}" if tail else "")))

    def _fail(self, error: BaseException) -> None:
        self._error, self._state = error, "failed"
        self._progress = (*self._progress[:2], str(error).splitlines()[0])

    # --- actions -------------------------------------------------------------------------

    def cancel(self) -> None:
        """Kill the worker now (its group: SIGTERM, SIGKILL after a grace); `result()` then
        raises `Cancelled`. The next request starts a new worker."""
        if self._finished:
            return
        self._worker._kill(self._process)
        self._state, self._progress = "cancelled", (*self._progress[:2], "cancelled")
        self._error = Cancelled("cancelled by the user")

    def result(self):
        """The worker's answer (a `Prediction`, or a `CineSegmentation` for a cine); raises
        `Cancelled`, `WorkerError` or `WorkerRequestError`. The request's files are removed
        once read."""
        if not self.poll().finished:
            raise RuntimeError(f"{self.name}: still running; wait() or poll() first")
        if self._error is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise self._error
        if self._result is None:
            try:
                self._result, self.info = self._read(self._result_folder)
            finally:
                shutil.rmtree(self.folder, ignore_errors=True)
        return self._result


class SceneJob:
    """What the panel and the console hold while a `WorkerJob` runs: `poll()` for the panel's
    timer, `wait()` for the console, `cancel()` kills the worker. Subclasses read their input
    before submitting `self.work`, and add `finish()` to put the result into the scene."""

    work: WorkerJob

    def poll(self) -> WorkerStatus:
        return self.work.poll()

    @property
    def done(self) -> bool:
        return self.work.done

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self.work.wait(timeout)

    def cancel(self) -> None:
        self.work.cancel()
