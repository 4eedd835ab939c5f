"""A run's checkpoint: what resuming needs, written atomically, read without running code.

``checkpoint.pt`` holds tensors and plain values only (``int``, ``float``, ``str``, ``bool``,
``None``, and lists, tuples and dicts of them): the network's parameters, the outer
optimizer's state, the task sampler's position (its generator state is a ``uint8`` tensor),
the loop's :class:`Progress` and the resolved configuration. So it loads with
``torch.load(weights_only=True)``, which refuses any other object instead of running the code
a pickle can name; :func:`save_checkpoint` checks this invariant before writing, so a run
never saves a checkpoint that it could not load. A checkpoint is also never written with a
NaN or infinite parameter or optimizer state.

Example:
    >>> import tempfile, torch
    >>> path = Path(tempfile.mkdtemp()) / "checkpoint.pt"
    >>> save_checkpoint(path, {"iteration": 3, "model": {"w": torch.ones(2)}})
    >>> load_checkpoint(path)["iteration"]
    3
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.common import atomic_torch_save
from ..errors import NonFiniteError

__all__ = ["CHECKPOINT", "CheckpointError", "Progress", "Checkpointer", "save_checkpoint", "load_checkpoint"]

CHECKPOINT = "checkpoint.pt"
_PLAIN = (int, float, str, bool, type(None))
_REQUIRED = ("iteration", "model", "optimizer", "sampler", "best_val", "train_seconds", "timed_iterations")


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable, refused as unsafe, or incomplete.

    A ``RuntimeError``, like :class:`~bilevel.data.DataError`: the arguments were fine, the
    file they point to is not.
    """


@dataclass
class Progress:
    """The training loop's counters, saved with every checkpoint.

    Attributes:
        iteration: the last completed meta-iteration (0 before the first).
        best_val: the best validation metric so far (``None`` before the first validation).
        train_seconds, timed_iterations: the time of the timed meta-iterations, summed.
    """

    iteration: int = 0
    best_val: float | None = None
    train_seconds: float = 0.0
    timed_iterations: int = 0

    def add_time(self, seconds: float) -> None:
        self.train_seconds += seconds
        self.timed_iterations += 1


def _check_plain(value: Any, where: str) -> None:
    """Raise ``TypeError`` unless ``value`` is made of tensors and plain values only."""
    if isinstance(value, torch.Tensor) or isinstance(value, _PLAIN):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"save_checkpoint: key {k!r} in {where} is a {type(k).__name__}; "
                                "checkpoint keys are str or int")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"save_checkpoint: {where} is a {type(value).__name__}; a checkpoint holds tensors and "
                    "plain values only (so that it loads with weights_only=True): convert it first")


def _first_nonfinite(value: Any, where: str) -> str | None:
    """The path of the first floating tensor or float holding a NaN or an infinity, if any."""
    if isinstance(value, torch.Tensor):
        return where if value.is_floating_point() and not bool(torch.isfinite(value).all()) else None
    if isinstance(value, float):
        return None if math.isfinite(value) else where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for k, v in items:
        found = _first_nonfinite(v, f"{where}[{k!r}]")
        if found:
            return found
    return None


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` to ``path`` atomically, after checking that it is all tensors and plain
    values (``TypeError`` otherwise) and that the parameters and optimizer state are finite
    (:class:`~bilevel.errors.NonFiniteError` otherwise; nothing is written then)."""
    _check_plain(state, "the checkpoint")
    for key in ("model", "optimizer"):
        bad = _first_nonfinite(state.get(key, {}), key)
        if bad:
            raise NonFiniteError(f"iteration {state.get('iteration')}: {bad} is not finite; refusing to write "
                                 f"{path} (the previous checkpoint, if any, is kept)")
    atomic_torch_save(state, Path(path))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint on the CPU with ``weights_only=True``: no code runs while loading.

    Raises:
        CheckpointError: the file is missing, is not a checkpoint, holds objects other than
            tensors and plain values (a crafted or foreign pickle), or lacks an entry.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint; train first (bilevel train --out {path.parent})") from None
    except pickle.UnpicklingError as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), "")
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors and plain values, and "
            f"unpickling them could run code{f' ({reason})' if reason else ''}. bilevel never writes such a "
            "file: do not load it with weights_only=False unless you wrote it yourself") from None
    except Exception as exc:  # zip, pickle and EOF errors alike: the file is damaged
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'truncated'}); it is truncated or "
                              "corrupt: restore it from a copy or train again") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a bilevel checkpoint (it holds a {type(state).__name__}, not a dict)")
    return state


class Checkpointer:
    """Saves and restores one run's state: ``model``, ``optimizer``, ``sampler`` and its
    :class:`Progress`, with the resolved ``config`` stored alongside (as plain values)."""

    def __init__(self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, sampler, config):
        self.path, self.model, self.optimizer, self.sampler, self.config = Path(path), model, optimizer, sampler, config

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, progress: Progress) -> None:
        save_checkpoint(self.path, {
            **dataclasses.asdict(progress),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "config": dataclasses.asdict(self.config),
        })

    def restore(self) -> Progress:
        """Load the saved state into the model, optimizer and sampler; return the saved progress."""
        state = load_checkpoint(self.path)
        missing = [k for k in _REQUIRED if k not in state]
        if missing:
            raise CheckpointError(f"{self.path}: not a training checkpoint (no {', '.join(missing)})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])  # casts the state to the parameters' device
        self.sampler.load_state_dict(state["sampler"])
        return Progress(iteration=int(state["iteration"]), best_val=state["best_val"],
                        train_seconds=float(state["train_seconds"]), timed_iterations=int(state["timed_iterations"]))
