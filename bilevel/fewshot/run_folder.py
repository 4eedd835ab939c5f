"""The files of a run folder: which ones make a run, starting over, leftovers, write failures.

Invariants:

- a folder **holds a run** when it has a checkpoint, a summary or an evaluation; training into
  it again needs ``resume=True`` or ``overwrite=True`` (:func:`claim_for_new_run`), and an
  overwrite removes every file of the old run, so nothing stale stays beside the new one;
- the temporary files of an atomic write that a kill left behind
  (``.checkpoint.pt.<pid>.<hex>.tmp``) are removed when the next run starts in the folder
  (:func:`remove_leftover_temp_files`; called under the folder's lock, so no live writer owns them);
- a failed write (a full disk, a read-only mount) is one :class:`RunFolderError` naming the file
  and saying that what was written before is intact (:func:`writing`).

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> holds_run(folder)
    False
    >>> _ = (folder / "checkpoint.pt").write_bytes(b"")
    >>> claim_for_new_run(folder, overwrite=False)
    Traceback (most recent call last):
    ...
    ValueError: ... already holds a run (checkpoint.pt); continue it with `bilevel train --resume ...`, or pass --overwrite ...
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .checkpoint import CHECKPOINT, CheckpointError

__all__ = ["RunFolderError", "RUN_FILES", "run_files", "holds_run", "claim_for_new_run",
           "remove_leftover_temp_files", "writing", "json_text"]

RUN_FILES = ("config.json", "metrics.jsonl", CHECKPOINT, "summary.json")  # and evaluation-<split>.json
_RESULTS = (CHECKPOINT, "summary.json")
_TEMP = re.compile(r"^\.(.+)\.\d+\.[0-9a-f]+\.tmp$")  # data.common.temp_path_beside's names


class RunFolderError(CheckpointError):
    """A file of a run folder cannot be written (a full disk) or is damaged (``metrics.jsonl``).

    A :class:`~bilevel.fewshot.checkpoint.CheckpointError`, so the command line reports it in
    one line with exit status 2, as it does a damaged checkpoint.
    """


def run_files(run_dir: Path) -> list[Path]:
    """The files of the run in ``run_dir`` that exist (``evaluation-*.json`` included)."""
    run_dir = Path(run_dir)
    found = [run_dir / name for name in RUN_FILES if (run_dir / name).exists()]
    return found + sorted(run_dir.glob("evaluation-*.json"))


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` has a run's results: a checkpoint, a summary or an evaluation.
    (``config.json`` and ``metrics.jsonl`` alone are a run killed before its first checkpoint:
    nothing to resume, and a new run replaces them.)"""
    run_dir = Path(run_dir)
    return any((run_dir / name).exists() for name in _RESULTS) or any(run_dir.glob("evaluation-*.json"))


def claim_for_new_run(run_dir: Path, overwrite: bool) -> None:
    """Make ``run_dir`` ready for a new run: refuse (``ValueError``) when it holds one, unless
    ``overwrite``; then remove the old run's files."""
    run_dir = Path(run_dir)
    if holds_run(run_dir) and not overwrite:
        found = ", ".join(p.name for p in run_files(run_dir) if p.name not in ("config.json", "metrics.jsonl"))
        raise ValueError(f"{run_dir} already holds a run ({found}); continue it with `bilevel train --resume "
                         f"{run_dir}`, or pass --overwrite to replace it (its files are deleted), or choose "
                         "another --out")
    for path in run_files(run_dir):
        with writing(path, "remove"):
            path.unlink(missing_ok=True)


def remove_leftover_temp_files(run_dir: Path) -> list[Path]:
    """Remove the temporary files that killed atomic writes left in ``run_dir``; returns them."""
    removed = []
    for path in Path(run_dir).iterdir():
        match = _TEMP.match(path.name)
        if match and (match.group(1) in RUN_FILES or match.group(1).startswith("evaluation-")):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def _reason(exc: BaseException) -> str:
    """The ``strerror`` of the first ``OSError`` in ``exc``'s chain (torch wraps it in a
    ``RuntimeError``), else ``exc``'s first line."""
    for seen in _chain(exc):
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _is_write_failure(exc: BaseException) -> bool:
    if any(isinstance(seen, OSError) for seen in _chain(exc)):
        return True
    return isinstance(exc, RuntimeError) and "write" in str(exc).lower()  # torch's "file write failed"


@contextlib.contextmanager
def writing(path: Path, what: str = "write") -> Iterator[None]:
    """Turn a failed write of ``path`` (``OSError``, or torch's ``RuntimeError`` around one)
    into one :class:`RunFolderError` line; the caller's write must leave the previous content
    intact (an atomic replace, or an append truncated back)."""
    try:
        yield
    except RunFolderError:
        raise
    except (OSError, RuntimeError) as exc:
        if not _is_write_failure(exc):
            raise
        full = any(getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) for e in _chain(exc))
        fix = "free some space, then resume with `bilevel train --resume " + str(Path(path).parent) + "`" if full \
            else "check the folder's permissions and file system"
        raise RunFolderError(f"cannot {what} {path} ({_reason(exc)}); what was written before is intact: "
                             f"{fix}") from None


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def json_text(value: Any) -> str:
    """``value`` as strict JSON (indented, one trailing newline): a NaN or infinite float is
    written as ``null``, never as the bare ``NaN`` that JSON readers refuse."""
    return json.dumps(_finite_or_none(value), indent=2, allow_nan=False) + "\n"
