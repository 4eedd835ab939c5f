"""``metrics.jsonl``: one JSON record per training iteration and per validation.

Invariant on resume: the log holds exactly the records of the iterations the checkpoint
covers (``iteration <= checkpoint iteration``), so a resumed run's log equals an uninterrupted
run's, line for line (timings aside). A line cut short by a kill is dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data.common import atomic_write_text

__all__ = ["MetricsLog", "stats_record"]


class MetricsLog:
    """Append-only JSON-lines log; ``keep_until=k`` keeps the records of iterations ``<= k``
    (a resume), ``None`` starts an empty log."""

    def __init__(self, path: Path, keep_until: int | None = None):
        self.path = Path(path)
        if keep_until is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            atomic_write_text("".join(line + "\n" for line in self._records_until(keep_until)), self.path)
        self._file = open(self.path, "a", buffering=1)  # line-buffered: `tail -f` sees each iteration

    def _records_until(self, iteration: int) -> list[str]:
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the tail of a killed write
                continue
            if record["iteration"] <= iteration:
                kept.append(line)
        return kept

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        """Hand the records to the OS (before a checkpoint, which must not cover unwritten records)."""
        self._file.flush()

    def close(self) -> None:
        self._file.close()

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
