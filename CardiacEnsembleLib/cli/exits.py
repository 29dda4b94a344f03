"""How the command line ends when something outside the command stops it: SIGTERM, a closed
stdout, an operating-system error. Used by `main` only: the Slicer worker and the inference
server keep their own signal handling and exits.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator

#: `cmd | head` closed our stdout: the status a shell gives any tool that SIGPIPE stops (128 + 13),
#: so `set -o pipefail` scripts see `cardiac-ensemble info | head` as they see `cat x | head`;
#: not 2 (it is not the user's mistake) and not 0 (the output was cut short).
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
#: Stopped by SIGTERM (128 + 15), as a shell reports a process that signal ends.
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM as an exception. A KeyboardInterrupt, so that `except Exception` (a batch that
    isolates a failed study, a worker's error report) never swallows it, and so that every
    `finally` runs on the way out, as for Ctrl-C: no temporary file is left behind."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises `Terminated`; the previous handler comes back after.

    Only on the main thread (the only one Python delivers signals to, and the only one that may
    set a handler); elsewhere a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(f"stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def quiet_broken_pipe() -> int:
    """Stop writing to a stdout the reader closed, without a word (the Python documentation's
    recipe): point stdout at /dev/null, so the interpreter's last flush at exit cannot raise
    again and print "Exception ignored ... BrokenPipeError"."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # a stdout without a file descriptor
        pass
    return EXIT_BROKEN_PIPE


def error_line(error: BaseException) -> str:
    """One line for the user: `<file>: <reason>` for an operating-system error that names its
    file (disk full, permission denied, name too long), the message itself otherwise."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        name = error.filename
        return f"{os.fsdecode(name) if isinstance(name, (str, bytes)) else name}: " \
               f"{error.strerror}"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)
