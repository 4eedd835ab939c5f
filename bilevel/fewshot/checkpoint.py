"""A run's checkpoint: what resuming needs, written atomically, read without running code.

``checkpoint.pt`` holds tensors and plain values only (``int``, ``float``, ``str``, ``bool``,
``None``, and lists, tuples and dicts of them): the network's parameters, the outer
optimizer's state, the task sampler's position (its generator state is a ``uint8`` tensor),
the loop's :class:`Progress` and the resolved configuration. So it loads with
``torch.load(weights_only=True)``, which refuses any other object instead of running the code
a pickle can name; :func:`save_checkpoint` checks this invariant before writing, so a run
never saves a checkpoint that it could not load. A checkpoint is also never written with a
NaN or infinite parameter or optimizer state.

Loading checks the file, not only its format: ``sha256`` holds a digest of everything else in
the checkpoint (:func:`state_digest`: every tensor's dtype, shape and bytes, every plain
value), so a bit flipped on disk is refused instead of evaluated; every float in it must be
finite; and :func:`check_config` refuses a checkpoint whose saved ``config`` disagrees with the
run's ``config.json`` (only where things are, ``data_root`` and ``device``, and the total
``iterations`` may differ). Each refusal is one :class:`CheckpointError` line naming the file.

Example:
    >>> import tempfile, torch
    >>> path = Path(tempfile.mkdtemp()) / "checkpoint.pt"
    >>> save_checkpoint(path, {"iteration": 3, "model": {"w": torch.ones(2)}})
    >>> load_checkpoint(path)["iteration"]
    3
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.common import atomic_torch_save
from ..errors import NonFiniteError

__all__ = ["CHECKPOINT", "CheckpointError", "Progress", "Checkpointer", "save_checkpoint", "load_checkpoint",
           "state_digest", "check_config", "load_model_state", "MAY_DIFFER"]

CHECKPOINT = "checkpoint.pt"
_PLAIN = (int, float, str, bool, type(None))
_REQUIRED = ("iteration", "model", "optimizer", "sampler", "best_val", "train_seconds", "timed_iterations")
_DIGEST = "sha256"
# Settings that say where things are, or how long the run goes on: a resume may change them.
MAY_DIFFER = ("data_root", "device", "iterations")


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


def _feed(digest, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{t.dtype}{tuple(value.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for k in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            digest.update(f"K{k!r}".encode())
            _feed(digest, value[k])
    elif isinstance(value, (list, tuple)):  # the same after a save and load, whichever it was
        digest.update(f"L{len(value)}".encode())
        for v in value:
            _feed(digest, v)
    else:
        digest.update(f"P{type(value).__name__}{value!r}".encode())


def state_digest(state: dict) -> str:
    """The sha256 of a checkpoint's content, its ``sha256`` entry left out.

    Canonical: it reads each tensor's dtype, shape and bytes and each plain value's ``repr``, in
    sorted key order, so it is the same before saving and after loading, and changes with any
    bit of any tensor."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in state.items() if k != _DIGEST})
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` to ``path`` atomically, with its :func:`state_digest` as ``sha256``, after
    checking that it is all tensors and plain values (``TypeError`` otherwise) and that the
    whole state is finite, parameters, optimizer state and numbers alike, as :func:`load_checkpoint`
    requires (:class:`~bilevel.errors.NonFiniteError` otherwise; nothing is written then: a run
    never saves a checkpoint it could not load). A failed write (``OSError``) keeps the previous file."""
    _check_plain(state, "the checkpoint")
    for key in state:
        bad = _first_nonfinite(state[key], key)
        if bad:
            raise NonFiniteError(f"iteration {state.get('iteration')}: {bad} is not finite; refusing to write "
                                 f"{path} (the previous checkpoint, if any, is kept)")
    atomic_torch_save({**state, _DIGEST: state_digest(state)}, Path(path))


def _looks_crafted(exc: pickle.UnpicklingError) -> bool:
    """``weights_only`` refused an object it was asked to build (a GLOBAL or a reduce), as
    opposed to bytes that are no pickle at all."""
    text = str(exc)  # torch/_weights_only_unpickler.py's messages for a refused object
    return any(words in text for words in ("GLOBAL", "Trying to call reduce", "Can only create new object",
                                            "Can only build"))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint on the CPU with ``weights_only=True`` (no code runs while loading),
    then check its digest and that every float in it is finite.

    Raises:
        CheckpointError: the file is missing, is not a checkpoint (junk or truncated bytes),
            holds objects other than tensors and plain values (a crafted or foreign pickle), was
            changed after it was written (its ``sha256`` disagrees), or holds a NaN or infinity.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint; train first (bilevel train --out {path.parent})") from None
    except pickle.UnpicklingError as exc:
        if not _looks_crafted(exc):
            raise CheckpointError(f"{path}: not a readable checkpoint (not a pickle: {_unpickler_reason(exc)}); it "
                                  "is truncated or corrupt: restore it from a copy or train again") from None
        reason = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), "")
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors and plain values, and "
            f"unpickling them could run code{f' ({reason})' if reason else ''}. bilevel never writes such a "
            "file: do not load it with weights_only=False unless you wrote it yourself") from None
    except Exception as exc:  # zip, pickle and EOF errors alike: the file is damaged
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {_first_line(exc)}); it "
                              "is truncated or corrupt: restore it from a copy or train again") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a bilevel checkpoint (it holds a {type(state).__name__}, not a dict)")
    if _DIGEST in state and state[_DIGEST] != state_digest(state):  # checkpoints before the digest have none
        raise CheckpointError(f"{path}: its content does not match the sha256 written with it: the file was "
                              "changed or damaged on disk after it was saved; restore it from a copy or train again")
    bad = _first_nonfinite(state, "checkpoint")
    if bad:
        raise CheckpointError(f"{path}: {bad} is not finite (NaN or infinity): this checkpoint cannot be evaluated "
                              "or resumed; restore an earlier copy or train again")
    return state


def _unpickler_reason(exc: BaseException) -> str:
    """What torch's weights-only unpickler stumbled on (``Unsupported operand 0``), without its
    advice to retry with ``weights_only=False``, which is wrong for a damaged file."""
    advice = ("Weights only load failed", "Please file an issue", "Check the documentation", "weights_only", "(1)",
              "(2)", "WeightsUnpickler error:")
    lines = [line.strip() for line in str(exc).splitlines()]
    return next((line for line in reversed(lines) if line and not any(a in line for a in advice)), "no valid pickle")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "truncated"


def _normal(value: Any) -> Any:
    """A config value as JSON would give it back (tuples as lists)."""
    return json.loads(json.dumps(value))


def check_config(state: dict, config, path: str | os.PathLike, config_file: str = "config.json") -> None:
    """Refuse (one :class:`CheckpointError` line naming the fields) a checkpoint whose saved
    ``config`` differs from ``config`` (the run's resolved ``config.json``) in a setting that
    changes the run; :data:`MAY_DIFFER` (where the data are, the device, the total iterations)
    may. A checkpoint without a saved config (none were written so) is not checked."""
    saved = state.get("config")
    if saved is None:
        return
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: its saved config is a {type(saved).__name__}, not a dict; the file is "
                              "damaged: restore it from a copy or train again")
    current = dataclasses.asdict(config)
    differ = [f"{name} {_normal(saved[name])!r} in the checkpoint, {_normal(current.get(name))!r} in {config_file}"
              for name in saved if name not in MAY_DIFFER and name in current
              and _normal(saved[name]) != _normal(current[name])]
    if differ:
        shown = "; ".join(differ[:6]) + (f"; and {len(differ) - 6} more" if len(differ) > 6 else "")
        raise CheckpointError(f"{path} was written by another run than {Path(path).parent / config_file} describes: "
                              f"{shown}. Restore {config_file} (or the checkpoint) so that they agree, or start a "
                              "new run with --out")


def load_model_state(model: torch.nn.Module, state: dict, path: str | os.PathLike) -> None:
    """``model.load_state_dict(state["model"])``, or one :class:`CheckpointError` line naming
    the file and the entry (no ``model``, a missing or extra parameter, a wrong shape)."""
    _load_part(model, state, "model", path)


def _load_part(target, state: dict, key: str, path) -> None:
    if not isinstance(state.get(key), dict):
        what = "no" if key not in state else f"a {type(state[key]).__name__} as its"
        raise CheckpointError(f"{path}: not a training checkpoint ({what} {key!r} entry); restore it from a copy "
                              "or train again")
    try:
        target.load_state_dict(state[key])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"{path}: its {key!r} entry does not fit this run's "
                              f"{'network' if key == 'model' else key} ({detail[:300]}); the checkpoint belongs to "
                              "another configuration or is damaged") from None


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
        """Load the saved state into the model, optimizer and sampler (after :func:`check_config`
        against this run's config); return the saved progress."""
        state = load_checkpoint(self.path)
        missing = [k for k in _REQUIRED if k not in state]
        if missing:
            raise CheckpointError(f"{self.path}: not a training checkpoint (no {', '.join(missing)})")
        check_config(state, self.config, self.path)
        for key, target in (("model", self.model), ("optimizer", self.optimizer), ("sampler", self.sampler)):
            _load_part(target, state, key, self.path)  # the optimizer's state is cast to the parameters' device
        try:
            return Progress(iteration=int(state["iteration"]), best_val=state["best_val"],
                            train_seconds=float(state["train_seconds"]), timed_iterations=int(state["timed_iterations"]))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{self.path}: its counters are damaged ({exc}); restore it from a copy or train "
                                  "again") from None
