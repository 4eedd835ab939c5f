"""Child processes that stop with their parent: the signals a scheduler sends are forwarded.

``docker stop``, SLURM preemption and systemd send SIGTERM (a closed terminal SIGHUP) to the
parent only. A parent that dies of it leaves its children training, orphaned, and writing into
run folders nobody watches. :class:`Children` keeps the live children of ``bilevel compare``;
inside :meth:`Children.forwarding` a SIGTERM or SIGHUP is passed on to every live child (each
trainer saves its checkpoint and exits, see :mod:`.interrupt`), no new child starts, and the
parent exits with 130 once the children are done: the trainer's code for "stopped on request,
checkpoint saved" (a parent killed outright would give ``128 + signum``). Invariant: after a forwarded
signal, :meth:`start` refuses, so no run begins after the parent was told to stop.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Children", "FORWARDED_SIGNALS", "STOPPED_ON_REQUEST", "StopRequested"]

FORWARDED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
STOPPED_ON_REQUEST = 130  # as `bilevel train` after Ctrl-C, SIGTERM or SIGHUP: checkpoints saved


class StopRequested(RuntimeError):
    """A child was not started: the parent received a stop signal."""


class Children:
    """The live child processes of one parent, and the stop signal it received (``None``)."""

    def __init__(self) -> None:
        self._live: set = set()
        self._lock = threading.Lock()
        self.stop_signal: int | None = None

    def start(self, process) -> None:
        """Start ``process`` (a ``multiprocessing.Process``) and track it; refused after a stop signal."""
        with self._lock:
            if self.stop_signal is not None:
                raise StopRequested(f"not started: stopped by {signal.Signals(self.stop_signal).name}")
            process.start()
            self._live.add(process)

    def finished(self, process) -> None:
        with self._lock:
            self._live.discard(process)

    def _forward(self, signum, frame) -> None:
        with self._lock:
            self.stop_signal = signum
            live = [p for p in self._live if p.pid is not None]
        for p in live:
            try:
                os.kill(p.pid, signum)
            except ProcessLookupError:  # it ended meanwhile
                pass
        print(f"bilevel: {signal.Signals(signum).name}: passed on to {len(live)} running job(s); waiting for them to "
              "save and stop", file=sys.stderr, flush=True)

    @contextmanager
    def forwarding(self) -> Iterator["Children"]:
        """Forward SIGTERM and SIGHUP to the live children while inside (main thread only;
        elsewhere the signals keep their handlers). On leaving after a forwarded signal, exit
        with :data:`STOPPED_ON_REQUEST` (130)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        # A signal ignored by whoever started us (`nohup`: SIGHUP) stays ignored, as the children's.
        previous = {s: signal.signal(s, self._forward) for s in FORWARDED_SIGNALS
                    if signal.getsignal(s) is not signal.SIG_IGN}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if self.stop_signal is not None:
            raise SystemExit(STOPPED_ON_REQUEST)
