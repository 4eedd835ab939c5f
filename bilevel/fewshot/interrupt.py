"""Ctrl-C during training: finish the iteration, save a checkpoint, stop cleanly.

Inside :class:`StopRequest`, the first SIGINT only sets ``requested``; the training loop
checks it after each completed iteration, saves a checkpoint of that iteration and raises
:class:`TrainingInterrupted` (a ``KeyboardInterrupt``: the CLI prints one line and exits with
130). A second SIGINT interrupts at once, as usual; the run then resumes from its last
checkpoint. Outside the main thread, or where SIGINT is ignored, nothing is installed.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["StopRequest", "TrainingInterrupted"]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C after saving a checkpoint; the message says where."""


class StopRequest:
    """Context manager turning the first SIGINT into ``self.requested = True``."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)  # a second Ctrl-C interrupts at once

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN:
                self._previous = signal.SIG_DFL if previous is None else previous  # None: set outside Python
                signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
