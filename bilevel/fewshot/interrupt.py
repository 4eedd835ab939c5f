"""Ctrl-C, SIGTERM or SIGHUP during training: finish the iteration, save a checkpoint, stop cleanly.

Inside :class:`StopRequest`, the first SIGINT (Ctrl-C), SIGTERM (``docker stop``, SLURM
preemption, ``systemd``, ``kill``) or SIGHUP (the terminal closed) only sets ``requested``;
the training loop checks it after each completed iteration, saves a checkpoint of that
iteration and raises :class:`TrainingInterrupted` (a ``KeyboardInterrupt``: the CLI prints
one line and exits with 130 whichever of the three signals it was: "stopped on request, the
checkpoint is saved, resume it"). A second signal of the same kind acts at once, as it
would without us (a second Ctrl-C interrupts, a second SIGTERM terminates: exit 143); the run
then resumes from its last checkpoint. Outside the main thread nothing is installed, and a
signal that is ignored (``nohup`` ignores SIGHUP) stays ignored.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["StopRequest", "TrainingInterrupted", "STOP_SIGNALS"]

# Those the platform has (Windows has no SIGHUP).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving a checkpoint; the message says where.

    Attributes:
        signum: the signal that asked for the stop (``signal.SIGINT`` unless set).
    """

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


class StopRequest:
    """Context manager turning the first SIGINT, SIGTERM or SIGHUP into ``self.requested = True``
    (``self.signum``: which one)."""

    def __init__(self):
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "a signal"

    def _handle(self, signum, frame) -> None:
        if not self.requested:
            self.requested, self.signum = True, signum
        signal.signal(signum, self._previous.pop(signum))  # the same signal again acts at once

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                previous = signal.getsignal(signum)
                if previous is not signal.SIG_IGN:
                    self._previous[signum] = signal.SIG_DFL if previous is None else previous  # None: set outside Python
                    signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
