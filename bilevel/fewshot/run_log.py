"""``metrics.jsonl``: one JSON record per training iteration and per validation.

Invariants:

- on resume the log holds exactly the records of the iterations the checkpoint covers
  (``iteration <= checkpoint iteration``), so a resumed run's log equals an uninterrupted
  run's, line for line (timings aside). A line cut short by a kill is dropped; a line that is
  valid JSON but no record (``42``, ``[1, 2]``, a string ``iteration``) is refused, naming it;
- every record is appended with one ``write`` of the whole line and, should that fail (a full
  disk), the file is cut back to its previous length: the log never holds half a line, and the
  failure is one :class:`~bilevel.fewshot.run_folder.RunFolderError` line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..data.common import atomic_write_text
from .run_folder import RunFolderError, writing

__all__ = ["MetricsLog", "stats_record"]


class MetricsLog:
    """Append-only JSON-lines log; ``keep_until=k`` keeps the records of iterations ``<= k``
    (a resume), ``None`` starts an empty log."""

    def __init__(self, path: Path, keep_until: int | None = None):
        self.path = Path(path)
        with writing(self.path):
            if keep_until is None:
                self.path.unlink(missing_ok=True)
            elif self.path.exists():
                atomic_write_text("".join(line + "\n" for line in self._records_until(keep_until)), self.path)
            # unbuffered, appending: each record reaches the OS (and `tail -f`) as one write
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size

    def _records_until(self, iteration: int) -> list[str]:
        kept = []
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the tail of a killed write
                continue
            at = record.get("iteration") if isinstance(record, dict) else None
            if not isinstance(at, int) or isinstance(at, bool):
                raise RunFolderError(f"{self.path}, line {number}: {line[:60]!r} is not a metrics record (a JSON "
                                     "object with an integer 'iteration'); the log was edited or damaged: remove "
                                     "that line (or restore the file), then resume")
            if at <= iteration:
                kept.append(line)
        return kept

    def write(self, record: dict) -> None:
        data = (json.dumps(record) + "\n").encode()
        with writing(self.path):
            try:
                done = 0
                while done < len(data):  # a short write is followed by the error that explains it
                    done += os.write(self._fd, data[done:])
            except BaseException:
                try:
                    os.ftruncate(self._fd, self._size)  # no half line, whatever stopped the write
                except OSError:
                    pass
                raise
        self._size += len(data)

    def flush(self) -> None:
        """Records are handed to the OS as they are written (kept for the checkpoint's call site,
        which must not cover records still in a buffer)."""

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stats_record(stats: dict) -> dict:
    """A backend's per-task diagnostics for the log, whatever their keys: ``stats_<key>`` is
    the mean over tasks (a fraction for flags such as ``converged``), and the inner
    stationarity ``||grad G(phi)||`` is also kept per task. ``task_loss`` is left out (the
    record's ``loss`` is its mean)."""
    record = {}
    for key, value in stats.items():
        if key == "task_loss":
            continue
        value = torch.as_tensor(value)
        record[f"stats_{key}"] = float(value.double().mean())
        if key == "inner_grad_norm":
            record["inner_grad_norm_per_task"] = [round(float(v), 6) for v in value.flatten()]
    return record
