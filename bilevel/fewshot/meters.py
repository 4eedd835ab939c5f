"""Time per meta-iteration and peak memory of a training run, as reported in ``summary.json``."""

from __future__ import annotations

import os
import resource
import time

import torch

__all__ = ["Stopwatch", "MemoryMeter", "rss_mb"]


class Stopwatch:
    """Wall-clock seconds of one meta-iteration, the GPU's queued work included (CUDA is
    synchronized before reading the clock)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - self._t0

    @staticmethod
    def is_timed(iteration: int, first: int, last: int) -> bool:
        """Whether ``iteration`` counts in the mean: the first of a process is a warm-up
        (allocations, kernel selection) and is left out, unless it is the only one."""
        return iteration > first or last == first


def rss_mb() -> float:
    """The process's resident memory now (MB); its peak so far where ``/proc`` is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MemoryMeter:
    """Peak memory of training: CUDA's ``max_memory_allocated`` on a GPU, else the growth of
    the process's resident memory over its value at construction (sampled by :meth:`sample`)."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.base = self.peak = rss_mb()

    def sample(self) -> None:
        self.peak = max(self.peak, rss_mb())

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return self.peak - self.base

    @property
    def kind(self) -> str:
        return "cuda max_memory_allocated" if self.device.type == "cuda" else "growth of process RSS during training"
