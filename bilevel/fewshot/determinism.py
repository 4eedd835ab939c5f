"""Same seed, same device, same numbers (docs/reliability.md).

On the CPU every operation of training is deterministic: two runs with the same seed give
bit-identical parameters, and so does a run killed and resumed. On a GPU some kernels are
not by default (cuDNN may pick a convolution backward algorithm that accumulates with
atomics; ``index_add``/``scatter_add`` accumulate with atomics), so float sums are added in a
varying order. :func:`make_deterministic` asks for deterministic kernels everywhere; an
operation that has none then raises a ``RuntimeError`` naming it.
"""

from __future__ import annotations

import os

import torch

__all__ = ["make_deterministic"]


def make_deterministic() -> None:
    """Deterministic kernels from here on: ``torch.use_deterministic_algorithms(True)``,
    ``cudnn.benchmark = False``, ``cudnn.deterministic = True`` and, for cuBLAS,
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (unless already set; it must be set before the first
    cuBLAS call, so call this before any CUDA work). Slower on a GPU; no effect on CPU results."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
