"""A memory budget: the largest ``vmap`` chunk of a meta-batch whose meta-step fits a cap in bytes.

The rule: a meta-step over a meta-batch, computed ``k`` tasks at a time, peaks at
``base + k * per_task`` bytes (``vmap`` holds the graphs of the ``k`` tasks of a chunk; the rest
does not grow with ``k``). Two measurements, at ``k = 1`` and ``k = 2``, give ``base`` and
``per_task``; the chunk size is the largest ``k`` whose predicted peak fits the budget. Chunking
does not change the meta-gradient (``batched_hypergrad(..., chunk_size=k)``), only its memory.

Peaks are measured with CUDA's allocator (:func:`cuda_peak_bytes`). On a CPU the few-shot
trainer runs conv nets as a loop over tasks, and a CPU has no allocator statistics to measure
a step's peak with; there ``chunk_size`` bounds ``vmap`` directly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .validation import check_int, check_positive

__all__ = ["chunk_size_for_budget", "cuda_peak_bytes", "check_measurable"]

MB = 2**20
_MIN_PER_TASK = 1  # bytes: a peak that does not grow with k means every chunk size fits


def _peak(measure: Callable[[int], int], k: int) -> int:
    value = measure(k)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"chunk_size_for_budget: measure({k}) must return the peak in bytes (a number >= 0), "
                         f"got {value!r}.")
    return value


def chunk_size_for_budget(measure: Callable[[int], int], meta_batch: int, budget_bytes: float) -> int:
    """The largest chunk size ``k`` in ``[1, meta_batch]`` whose meta-step fits ``budget_bytes``.

    ``measure(k)`` returns the peak bytes of one meta-step computed ``k`` tasks at a time. It is
    called at ``k = 1`` and, if ``meta_batch >= 2``, at ``k = 2``; the peak is modelled as
    ``base + k * per_task`` with ``per_task = max(peak(2) - peak(1), 1 byte)``, and the answer is
    the largest ``k`` with ``base + k * per_task <= budget_bytes``.

    Raises:
        ValueError: one task's meta-step (``peak(1)``) exceeds the budget (the message gives both
            in MB and the fix), or an argument is not a positive int / positive number.

    >>> MB = 2**20
    >>> chunk_size_for_budget(lambda k: (100 + 30 * k) * MB, meta_batch=32, budget_bytes=400 * MB)
    10
    """
    call = "chunk_size_for_budget"
    if not callable(measure):
        raise TypeError(f"{call}: measure must be a function k -> peak bytes, got {type(measure).__name__}.")
    check_int(call, "meta_batch", meta_batch, minimum=1)
    check_positive(call, "budget_bytes", budget_bytes)
    one = _peak(measure, 1)
    if one > budget_bytes:
        raise ValueError(f"a memory budget of {budget_bytes / MB:.1f} MB is below the {one / MB:.1f} MB peak of "
                         f"one task's meta-step (chunk size 1): raise the budget to at least "
                         f"{-(-one // MB):.0f} MB, or make each task smaller (fewer inner steps, queries or ways, "
                         "or a smaller network).")
    if meta_batch == 1:
        return 1
    per_task = max(_peak(measure, 2) - one, _MIN_PER_TASK)
    base = one - per_task
    return int(min(meta_batch, (budget_bytes - base) // per_task))


def check_measurable(device: torch.device | str, vectorize: bool = True) -> None:
    """Raise ``ValueError`` unless a budget can pick a chunk size here: a CUDA device (peaks are
    measured with its allocator) and ``vmap`` over the tasks (a loop holds one task at a time)."""
    if torch.device(device).type != "cuda":
        raise ValueError(f"a memory budget is measured with CUDA's allocator, and the device is {device}; on a CPU "
                         "the conv nets' tasks run one after another (a loop), so memory is one task's; use "
                         "--chunk-size to bound vmap on a CPU")
    if not vectorize:
        raise ValueError("a memory budget picks the chunk size of vmap, but the tasks run in a loop (--vectorize "
                         "off), one task's memory at a time; drop --memory-budget, or use --vectorize on")


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device | str) -> int:
    """The peak bytes that ``fn()`` allocates on the CUDA ``device`` beyond what was allocated
    before the call (``torch.cuda.max_memory_allocated`` after a reset of the peak statistics,
    minus ``torch.cuda.memory_allocated`` before). ``fn``'s result is dropped.

    Raises ``ValueError`` on a device other than CUDA (:func:`check_measurable`).
    """
    check_measurable(device)
    device = torch.device(device)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before
