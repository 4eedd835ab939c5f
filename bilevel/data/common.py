"""Helpers shared by the data loaders: the error type, folders, atomic writes."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import Any

import torch

__all__ = ["DataError", "resolve_data_root", "user_cache_dir"]


class DataError(RuntimeError):
    """A data set is missing, incomplete or corrupt on disk.

    Raised (never ``assert``-ed) by the loaders with a message that names the file, what is
    wrong with it, and how to fix it. It subclasses ``RuntimeError``: the arguments were fine,
    the files they point to are not.
    """


def user_cache_dir() -> Path:
    """Return the per-user cache folder: ``$XDG_CACHE_HOME/bilevel``, else ``~/.cache/bilevel``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "bilevel"


def resolve_data_root(data_root: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder that holds the data sets.

    In order: ``data_root`` when given, else ``$BILEVEL_DATA`` when set and non-empty, else the
    user cache folder (``$XDG_CACHE_HOME/bilevel`` or ``~/.cache/bilevel``). The folder need not
    exist. Omniglot lives in ``<root>/omniglot/`` (the archives directly in ``<root>`` are
    accepted too).
    """
    if data_root is not None:
        return Path(data_root).expanduser()
    env = os.environ.get("BILEVEL_DATA")
    if env:
        return Path(env).expanduser()
    return user_cache_dir()


def dir_is_writable(path: Path) -> bool:
    """True when ``path`` is a folder we may write into.

    Besides ``os.access`` this honours the permission bits: a folder with no write bit at all
    (``chmod a-w``, like the shared read-only data folder) counts as read-only even for root,
    who would otherwise be allowed to write there.
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    if not stat.S_ISDIR(mode) or not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        return False
    return os.access(path, os.W_OK | os.X_OK)


def temp_path_beside(dest: Path) -> Path:
    """A fresh hidden file name in ``dest``'s folder (opened with ``"xb"``, so the umask applies)."""
    return dest.parent / f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def atomic_torch_save(obj: Any, dest: str | os.PathLike[str]) -> None:
    """``torch.save`` to a fresh temporary file beside ``dest``, then ``os.replace`` it into place.

    Invariant: ``dest`` is always either its previous complete content or the new complete
    content, never a partial file, even if the process is killed mid-write. The temporary
    file has a unique name in ``dest``'s folder (same file system, so the rename is atomic), is
    flushed and ``fsync``-ed before the rename, and is removed on any error, which propagates.
    """
    _atomic_write(dest, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, dest: str | os.PathLike[str]) -> None:
    """Write ``text`` (UTF-8) to ``dest`` with the guarantees of :func:`atomic_torch_save`."""
    data = text.encode("utf-8")
    _atomic_write(dest, lambda f: f.write(data))


def _atomic_write(dest: str | os.PathLike[str], write) -> None:
    dest = Path(dest)
    tmp = temp_path_beside(dest)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(dest.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform can open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
