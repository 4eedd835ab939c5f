"""One writer per run folder: an advisory lock held for the life of a run.

Invariant: while a :class:`RunLock` on a folder is held, no other :class:`RunLock` on it can
be taken; a second ``bilevel train``, ``--resume`` or ``evaluate`` on the folder is refused
with one line naming the holder's PID. The lock is ``flock`` on ``.bilevel.lock`` inside the
folder, so the kernel drops it when its process ends in any way: a ``kill -9`` leaves no stale
lock (the file may stay, with a dead PID in it; the next run takes it over). The file holds
``"<pid> <command>"`` of the holder, for the message only. Where ``fcntl`` is missing
(Windows) nothing is locked.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with RunLock(folder, "train"):
    ...     RunLock(folder, "evaluate").__enter__()
    Traceback (most recent call last):
    ...
    ValueError: ... is in use by another bilevel process (PID ..., bilevel train); ...
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here
    fcntl = None

__all__ = ["LOCK_FILE", "RunLock"]

LOCK_FILE = ".bilevel.lock"


class RunLock:
    """Context manager: hold the run folder's lock (``ValueError`` when another process does)."""

    def __init__(self, run_dir: str | os.PathLike, command: str):
        self.path = Path(run_dir) / LOCK_FILE
        self.command = command
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        if fcntl is None:
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise ValueError(f"{self.path.parent}: cannot create the run's lock file {LOCK_FILE} "
                                 f"({exc.strerror}); choose a writable run folder") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # held by another process
                holder = os.read(fd, 200).decode("utf-8", "replace").split()
                os.close(fd)
                pid, command = (holder[0], " ".join(holder[1:]) or "?") if holder else ("?", "?")
                raise ValueError(f"{self.path.parent} is in use by another bilevel process (PID {pid}, bilevel "
                                 f"{command}); two writers would mix their checkpoints and logs: wait for it to end "
                                 f"or stop it (kill {pid}), or choose another run folder") from None
            except OSError as exc:  # a file system without locks (NFS without lockd: ENOLCK, EOPNOTSUPP)
                os.close(fd)
                warnings.warn(f"{self.path.parent}: its file system cannot lock ({exc.strerror}); the run goes on "
                              "unlocked, so make sure no other process writes this folder", RuntimeWarning,
                              stacklevel=2)
                return self
            # The holder before us may have unlinked the file between our open and our flock: then
            # we hold a lock on a name nobody else sees. Take the lock on the file the path names.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {self.command}\n".encode())
        except OSError as exc:  # a full disk: release the lock rather than hold it for the process's life
            os.close(fd)
            raise ValueError(f"{self.path.parent}: cannot write the run's lock file {LOCK_FILE} ({exc.strerror})") \
                from None
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            try:
                self.path.unlink(missing_ok=True)  # while still holding it: see __enter__
            except OSError:
                pass
            os.close(self._fd)  # releases the lock
            self._fd = None
