"""Cancellation shared by every long job; no torch, no Slicer, so any layer can import it."""
from __future__ import annotations

import threading
from typing import Callable

#: progress(done, total, message): how every long job reports.
Progress = Callable[[int, int, str], None]


class Cancelled(Exception):
    """The user cancelled; partial results are discarded, nothing is written."""


class CancelToken:
    """Thread-safe flag a UI (or Ctrl-C handler) sets and long loops check between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")
